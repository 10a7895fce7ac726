"""Layout ops (pad, shuffles, split/getitem, slicing, permute, nearest upsample) run on integer tensors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class LayoutNet(nn.Module):
    def __init__(self, mode="nearest"):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.cpad = nn.ConstantPad2d((1, 1, 0, 2), 0.3)
        self.shuffle = nn.PixelShuffle(2)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.channels = nn.ChannelShuffle(2)
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.head = nn.Conv2d(8, 4, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.cpad(self.pad(self.conv(self.quant(x))))
        x = self.channels(self.unshuffle(self.shuffle(x)))
        a, b = torch.split(x, 4, dim=1)
        x = torch.cat([b, a], dim=1).permute(0, 1, 3, 2)
        x = self.up(x[:, :, 1:, :-1].contiguous())
        x = F.interpolate(x, scale_factor=0.5, mode=self.up.mode)  # becomes a generated nn.Upsample
        return self.dequant(self.head(x))


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_layout_ops_are_exact(m):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 8)
    model = LayoutNet().eval()
    with march(m):
        q = prepare_qat_fx(model, {"": Q8})
    assert isinstance(q.get_submodule("_generated_interpolate_0").float_module, nn.Upsample)
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    expected = q(x)
    assert torch.equal(convert_fx(q)(x), expected)
    assert torch.nn.functional.cosine_similarity(expected.flatten(), model(x).flatten(), dim=0) > 0.99


def test_resize_modes_beyond_nearest_and_bilinear_are_refused_by_rule():
    # bilinear is lowered (tests/quantization/test_bilinear.py); bicubic is not in the table
    with march("bayes"), pytest.raises(UnsupportedOpError,
                                       match=r"'up'.*mode='bicubic' breaks 只支持 nearest 和 billinear 插值模式"):
        prepare_qat_fx(LayoutNet(mode="bicubic"), {"": Q8})
