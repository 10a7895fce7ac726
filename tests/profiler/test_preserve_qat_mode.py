"""set_preserve_qat_mode: chosen ops stay QAT in the integer model, which still runs (and, here, agrees)."""

import copy

import torch
from torch import nn

from qframe_core.march import march
from qframe_core.nn.quantized import FloatFunctional
from qframe_core.nn.quantized.preserved import PreservedQAT
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from qframe_profiler import set_preserve_qat_mode


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv0 = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.add = FloatFunctional()
        self.relu = nn.ReLU()
        self.cat = FloatFunctional()
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv0(self.quant(x))
        y = self.relu(self.add.add(self.bn(self.conv(x)), x))
        return self.dequant(self.cat.cat([x, y], dim=1))


def _run(model, x):
    with march("bayes"):
        q = prepare_qat_fx(model, {"": Q8})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    return q


def test_on_the_float_model_the_fused_module_inherits_from_its_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = Block().eval()
    reference = convert_fx(_run(copy.deepcopy(model), x))(x)
    assert set_preserve_qat_mode(model, types=(nn.Conv2d,)) == ["conv0", "conv"]
    q = _run(model, x)
    converted = convert_fx(q)
    assert isinstance(converted.add, PreservedQAT)  # conv+bn+add+relu fused at the FloatFunctional's name
    assert isinstance(converted.conv0, PreservedQAT)
    assert not isinstance(converted.cat, PreservedQAT)
    assert torch.equal(converted(x), reference)


def test_on_the_qat_model_by_prefix_and_by_float_type():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    q = _run(Block().eval(), x)
    assert set_preserve_qat_mode(q, types=(FloatFunctional,)) == ["cat"]  # the FloatFunctional.cat call site
    assert "add" in set_preserve_qat_mode(q, prefixes=("add",))  # conv+bn+add+relu, fused at the add
    converted = convert_fx(q)
    assert isinstance(converted.cat, PreservedQAT) and isinstance(converted.add, PreservedQAT)
    assert torch.equal(converted(x), q(x))
