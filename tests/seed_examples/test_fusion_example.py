"""advanced.zh.md, "实现原理" of 算子融合: fuse_fx on ModelForFusion (imports renamed to qframe_core)."""

import torch
from torch import nn
from torch.quantization import DeQuantStub

from qframe_core.nn.intrinsic import ConvAddReLU2d
from qframe_core.quantization import QuantStub, fuse_fx


class ModelForFusion(torch.nn.Module):
    def __init__(
        self,
    ):
        super().__init__()
        self.quantx = QuantStub()
        self.quanty = QuantStub()
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.dequant = DeQuantStub()

    def forward(self, x, y):
        x = self.quantx(x)
        y = self.quanty(y)
        x = self.conv(x)
        x = self.bn(x)
        x = x + y
        x = self.relu(x)
        x = self.dequant(x)

        return x


def test_seed_fusion_example_prints_what_the_seeds_print():
    float_model = ModelForFusion().eval()
    fused_model = fuse_fx(float_model)  # no march set: every installed march's patterns
    text = str(fused_model)
    # the seeds' printout: conv, bn and relu became Identity, the fusion lives in _generated_add_0
    for line in ("(conv): Identity()", "(bn): Identity()", "(relu): Identity()", "(_generated_add_0): ConvAddReLU2d("):
        assert line in text, text
    assert isinstance(fused_model._generated_add_0, ConvAddReLU2d)
    code = fused_model.code
    assert "self._generated_add_0(quantx, quanty)" in code and "self.conv(" not in code
    x, y = torch.randn(1, 3, 6, 6), torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(fused_model(x, y), float_model(x, y), atol=1e-5, rtol=1e-5)
