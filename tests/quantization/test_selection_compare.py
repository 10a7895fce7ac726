"""max/min/argmax/topk/gather (selections on codes), comparisons (qbool), abs, F.pad, tile.

Each integer result is checked against a reference computed another way: on the dequantized
values of the QAT model's inputs (numpy), or on the VALIDATION-state QAT model.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.nn.compare import Compare
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from qframe_core.quantization.qconfig import default_qat_16bit_fake_quant_qconfig as Q16
from tests.quant_helpers import calibrate_and_convert


class Selections(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.conv = QuantStub(), nn.Conv2d(3, 6, 1)
        self.dq_max, self.dq_top, self.dq_gather, self.dq_min, self.dq_abs, self.dq_tile, self.dq_pad = (
            DeQuantStub() for _ in range(7))
        self.register_buffer("index", torch.full((2, 1, 5, 4), 2, dtype=torch.long))

    def forward(self, x):
        y = self.conv(self.quant(x))
        m = torch.max(y, dim=1)
        top = torch.topk(y, 2, dim=1)
        g = torch.gather(y, 1, self.index)
        return (self.dq_max(m.values), m.indices, y.argmax(1), self.dq_top(top[0]), top[1], self.dq_gather(g),
                self.dq_min(torch.min(y, 1)[0]), self.dq_abs(y.abs()), self.dq_tile(y.tile(1, 1, 2, 1)),
                self.dq_pad(F.pad(y, (1, 2, 0, 1), mode="constant", value=0.3)),
                y > 0.25, torch.le(y, y * 0.5))


@pytest.mark.parametrize("qconfig", [Q8, Q16], ids=["int8", "int16"])
def test_selections_compare_abs_pad_on_bayes(qconfig):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4) * 2
    qat, quantized = calibrate_and_convert(Selections(), "bayes", [x], qconfig, spread=2.0)
    assert isinstance(qat.get_submodule("_generated_gt_0").float_module, Compare)
    with torch.no_grad():
        got, sim = quantized(x), qat(x)
        y = qat.conv(qat.quant(x))  # the QAT model's (fake-quantized) conv output: the values the march holds
    for g, s in zip(got, sim):
        assert g.dtype == s.dtype
        torch.testing.assert_close(g, s, atol=0, rtol=0)
    yn = y.numpy().astype(np.float64)
    np.testing.assert_array_equal(got[0].numpy(), yn.max(1).astype(np.float32))
    np.testing.assert_array_equal(got[1].numpy(), yn.argmax(1))
    np.testing.assert_array_equal(got[2].numpy(), yn.argmax(1))
    np.testing.assert_array_equal(got[3].numpy(), -np.sort(-yn, 1)[:, :2].astype(np.float32))
    np.testing.assert_array_equal(got[5].numpy(), yn[:, 2:3].astype(np.float32))
    np.testing.assert_array_equal(got[6].numpy(), yn.min(1).astype(np.float32))
    scale = qat.conv.activation_post_process.quant_params().scale.item()
    qmax = qconfig.activation().dtype.quant_max
    np.testing.assert_allclose(got[7].numpy(), np.minimum(np.abs(yn), qmax * scale), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got[8].numpy(), np.tile(yn, (1, 1, 2, 1)).astype(np.float32))
    pad_code = round(0.3 / scale)
    assert got[9][0, 0, 0, 0].item() == pytest.approx(pad_code * scale, rel=1e-6)
    np.testing.assert_array_equal(got[10].numpy(), yn > 0.25)
    assert got[11].dtype == torch.bool and got[11].any() and not got[11].all()


def test_abs_saturates_the_most_negative_code():
    class AbsNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(scale=1 / 128), DeQuantStub()

        def forward(self, x):
            return self.dequant(torch.abs(self.quant(x)))

    qat, quantized = calibrate_and_convert(AbsNet(), "bayes", [torch.randn(4)], spread=2.0)
    x = torch.tensor([-1.0, -0.5, 0.25, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), torch.tensor([127, 64, 32, 127]) / 128, atol=0, rtol=0)
        torch.testing.assert_close(qat(x), quantized(x), atol=0, rtol=0)


class ArgmaxOut(nn.Module):
    def __init__(self, used_inside=False):
        super().__init__()
        self.quant, self.conv, self.dequant = QuantStub(), nn.Conv2d(3, 4, 1), DeQuantStub()
        self.used_inside = used_inside

    def forward(self, x):
        y = self.conv(self.quant(x))
        v, i = torch.max(y, dim=1, keepdim=True)
        if self.used_inside:
            return self.dequant(y * v)
        return self.dequant(v), i


def test_bernoulli2_max_only_as_model_output():
    x = torch.randn(2, 3, 4, 4)
    qat, quantized = calibrate_and_convert(ArgmaxOut(), "bernoulli2", [x], spread=2.0)
    with torch.no_grad():
        for g, s in zip(quantized(x), qat(x)):
            torch.testing.assert_close(g, s, atol=0, rtol=0)
    with pytest.raises(UnsupportedOpError, match=r"may only be a model output.*只能作为模型输出"):
        prepare_qat_fx(ArgmaxOut(used_inside=True), {"": Q8}, march="bernoulli2")


def test_index_outputs_are_not_dequantized():
    """A DeQuantStub after argmax leaves the indices alone (they are not quantized codes)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.conv, self.dequant = QuantStub(), nn.Conv2d(3, 4, 1), DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv(self.quant(x)).argmax(1))

    x = torch.randn(2, 3, 4, 4)
    qat, quantized = calibrate_and_convert(Net(), "bayes", [x], spread=2.0)
    with torch.no_grad():
        out = quantized(x)
        assert out.dtype == torch.int64
        torch.testing.assert_close(out, qat(x), atol=0, rtol=0)


def test_element_wise_max_of_two_tensors_is_maximum():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q1, self.q2, self.dequant = QuantStub(), QuantStub(), DeQuantStub()

        def forward(self, a, b):
            return self.dequant(torch.max(self.q1(a), self.q2(b) * 3))

    a, b = torch.randn(2, 8), torch.randn(2, 8)
    qat, quantized = calibrate_and_convert(Net(), "bayes", [a, b], spread=2.0)
    assert any("_generated_maximum" in n for n, _ in qat.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(quantized(a, b), qat(a, b), atol=0, rtol=0)


def test_bad_paths():
    class Reflect(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()

        def forward(self, x):
            return self.dequant(F.pad(self.quant(x), (1, 1, 1, 1), mode="reflect"))

    with pytest.raises(UnsupportedOpError, match=r"mode='reflect' breaks 不支持 reflect 模式.*bayes"):
        prepare_qat_fx(Reflect(), {"": Q8}, march="bayes")
    with pytest.raises(UnsupportedOpError, match=r"torch.gt.*not supported on bernoulli2"):
        prepare_qat_fx(Selections(), {"": Q8}, march="bernoulli2")


class PowDiv(nn.Module):
    def __init__(self):
        super().__init__()
        self.q1, self.q2 = QuantStub(), QuantStub()
        self.dq1, self.dq2, self.dq3 = DeQuantStub(), DeQuantStub(), DeQuantStub()

    def forward(self, a, b):
        a, b = self.q1(a), self.q2(b)
        return self.dq1(a ** 2), self.dq2(a / b), self.dq3(torch.div(a, 4.0))


def test_pow_and_div_on_bayes():
    torch.manual_seed(0)
    a, b = torch.randn(64), torch.rand(64) + 0.5
    qat = prepare_qat_fx(PowDiv(), {"": Q16}, march="bayes")
    names = {n for n, _ in qat.named_modules()}
    assert {"_generated_pow_0", "_generated_reciprocal_0", "_generated_mul_0", "_generated_mul_scalar_0"} <= names
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        qat(a, b)  # calibrated on the data it is evaluated on: the test is about arithmetic, not range
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert_fx(qat)
    with torch.no_grad():
        got, sim = quantized(a, b), qat(a, b)
    for g, s, ref in zip(got, sim, (a ** 2, a / b, a / 4)):
        torch.testing.assert_close(g, s, atol=0, rtol=0)
        assert (g - ref).abs().max() < 0.02 * ref.abs().max()  # int16: close to the float result


def test_pow_refused_on_bernoulli2():
    with pytest.raises(UnsupportedOpError, match=r"torch.pow.*not supported on bernoulli2"):
        prepare_qat_fx(PowDiv(), {"": Q8}, march="bernoulli2")
