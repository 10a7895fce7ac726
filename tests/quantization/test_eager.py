"""Eager mode: fuse_modules/fuse_known_modules, prepare_qat, convert — results and bad paths."""

import copy

import pytest
import torch
from torch import nn

from qframe_core.errors import QframeError, UnsupportedOpError
from qframe_core.march import march
from qframe_core.nn import Exp, Interpolate
from qframe_core.nn.intrinsic import ConvAddReLU2d, ConvReLU62d, LinearReLU
from qframe_core.nn.quantized import FloatFunctional
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert,
    fuse_known_modules,
    fuse_modules,
    get_default_qat_qconfig,
    prepare_qat,
    set_fake_quantize,
)


class Block(nn.Module):
    """conv-bn-add-relu written in eager style (module ops only)."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.add = FloatFunctional()
        self.relu = nn.ReLU()
        self.exp = Exp()
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv0(self.quant(x))
        y = self.relu(self.add.add(self.bn(self.conv(x)), x))
        return self.dequant(self.exp(y))


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def test_fuse_known_modules_shapes_the_list_like_torch():
    conv, bn, relu6 = nn.Conv2d(2, 4, 3).eval(), nn.BatchNorm2d(4).eval(), nn.ReLU6()
    out = fuse_known_modules([conv, bn, relu6])
    assert [type(m) for m in out] == [ConvReLU62d, nn.Identity, nn.Identity]
    assert type(fuse_known_modules([nn.Linear(3, 4), nn.ReLU()])[0]) is LinearReLU
    with pytest.raises(ValueError, match="no fusion pattern.*ReLU -> Conv2d"):
        fuse_known_modules([nn.ReLU(), nn.Conv2d(1, 1, 1)])


def test_fuse_modules_with_add_keeps_the_float_result():
    torch.manual_seed(0)
    model = Block().eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    fused = fuse_modules(model, [["conv", "bn", "add", "relu"]])
    assert fused is not model and type(model.conv) is nn.Conv2d  # not in place
    assert [type(fused.conv), type(fused.bn), type(fused.relu)] == [nn.Identity] * 3
    assert type(fused.add) is ConvAddReLU2d
    torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="has no module"):
        fuse_modules(model, ["conv", "nope"])


@pytest.mark.parametrize("march_name", ["bernoulli2", "bayes"])
def test_prepare_qat_convert_bit_exact(march_name):
    torch.manual_seed(1)
    model = Block().eval()
    _randomize_bn(model)
    fuse_modules(model, [["conv", "bn", "add", "relu"]], inplace=True)
    model.qconfig = get_default_qat_qconfig()
    with march(march_name):
        qat = prepare_qat(model)
    assert qat is not model and type(model.conv0) is nn.Conv2d
    assert type(qat.add).__module__ == "qframe_core.nn.qat.weighted" and type(qat.exp).__name__ != "Exp"
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for _ in range(4):
            qat(torch.randn(4, 3, 6, 6))
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert(qat)
    assert type(quantized) is Block and type(quantized.add).__module__ == "qframe_core.nn.quantized.weighted"
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), qat(x), atol=0, rtol=0)
    with pytest.raises(QframeError, match="prepared for march"):
        convert(qat, march="bayes" if march_name == "bernoulli2" else "bernoulli2")


class FunctionalAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        x = self.quant(x)
        return self.dequant(self.conv(x) + x)


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.dequant(self.conv(self.conv(self.quant(x))))


def test_bad_paths():
    with march("bayes"):
        m = FunctionalAdd()
        m.qconfig = get_default_qat_qconfig()
        with pytest.raises(UnsupportedOpError, match=r"eager mode quantizes modules only.*FloatFunctional"):
            prepare_qat(m)
        m = CalledTwice()
        m.qconfig = get_default_qat_qconfig()
        with pytest.raises(UnsupportedOpError, match=r"'conv' are called more than once"):
            prepare_qat(m)
        with pytest.raises(ValueError, match="hybrid"):
            prepare_qat(m, hybrid=True)
        with pytest.raises(QframeError, match="was not prepared"):
            convert(copy.deepcopy(m))


def test_mapping_overrides_the_qat_class():
    from qframe_core.nn.qat.weighted import Conv2d as QATConv2d

    class MyQATConv(QATConv2d):
        pass

    class Plain(FunctionalAdd):
        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)))

    m = Plain()
    m.qconfig = get_default_qat_qconfig()
    with march("bayes"):
        qat = prepare_qat(m, mapping={nn.Conv2d: MyQATConv})
    assert type(qat.conv) is MyQATConv


def test_interpolate_module_is_an_upsample_for_the_op_tables():
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(Interpolate(scale_factor=2, mode="nearest")(x),
                               nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    assert Interpolate().lowering_key is nn.Upsample
