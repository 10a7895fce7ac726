"""Composite ops on bayes: softmax, layernorm and GLU as integer steps with calibrated intermediate grids.

Each integer module is checked bit for bit against a reference written here in numpy / Python integers
from the documented steps (README: qframe_march_bayes, "non-linear ops" and the composite rows), reading
only the scales and the table entries the module exposes; each QAT model in VALIDATION state equals its
converted model bit for bit at int8 and int16 activations; accuracy against float is measured in output
LSBs; and the tables' limits and bernoulli2's 不支持 are errors naming module, op, march and rule.
"""

from __future__ import annotations

import copy
import math

import numpy as np
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
    get_default_qconfig,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8

Q16 = get_default_qconfig(activation_qkwargs={"dtype": "qint16"})
MAX_M = 2 ** 31 - 1  # bayes: 32-bit signed multiplier
FIGURES: dict[str, tuple[float, float]] = {}  # measured error figures, printed by the accuracy tests


# -- the reference: the documented integer rules, in numpy / Python integers ---------------------------------
def round_shift(v: np.ndarray, s: int) -> np.ndarray:
    """``v / 2**s`` rounded half to even (bayes), exact on int64."""
    v = np.asarray(v, dtype=np.int64)
    if s == 0:
        return v
    q = v >> s
    rem = v - (q << s)
    half = 1 << (s - 1)
    return q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(np.int64)


def multiplier(ratio: float) -> tuple[int, int]:
    """``m / 2**s ~ ratio`` with the largest shift that keeps ``m <= 2**31 - 1`` (shift in [0, 62])."""
    if ratio == 0:
        return 0, 0
    s = min(62, max(0, math.floor(math.log2(MAX_M / ratio))))
    m = int(np.round(ratio * 2.0 ** s))
    if m > MAX_M:
        s -= 1
        m = int(np.round(ratio * 2.0 ** s))
    return m, s


def requant(v: np.ndarray, ratio: float, bound: int, lo: int, hi: int) -> np.ndarray:
    """Requantize int64 values of magnitude <= bound: drop low bits first so that v * m < 2**62."""
    pre = max(0, int(bound).bit_length() + 31 - 62)
    v = round_shift(v, pre)
    m, s = multiplier(ratio * 2.0 ** pre)
    return np.clip(round_shift(v * m, s), lo, hi)


def lookup(q: np.ndarray, table, lo: int, hi: int) -> np.ndarray:
    """A segment table: ``round_shift(base[j] + slope[j] * offset, frac_bits)``, inputs outside saturating."""
    idx = np.clip(np.asarray(q, dtype=np.int64), table.q_lo, table.q_hi) - table.q_lo
    seg = idx >> table.width_log2
    off = idx - (seg << table.width_log2)
    acc = table.base.numpy()[seg] + table.slope.numpy()[seg] * off
    return np.clip(round_shift(acc, table.frac_bits), lo, hi)


def sc(p) -> float:
    return float(p.scale.double().reshape(-1)[0])


def rng(p) -> tuple[int, int]:
    return p.dtype.quant_min, p.dtype.quant_max


def calibrate_and_convert(model: nn.Module, qconfig_dict: dict, x: torch.Tensor):
    with march("bayes"):
        qat = prepare_qat_fx(copy.deepcopy(model), qconfig_dict)
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat(x)
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    return qat, convert_fx(qat)


def lsb_errors(got: torch.Tensor, want: torch.Tensor, scale: float) -> tuple[float, float]:
    err = (got.double() - want.double()).abs() / scale
    return float(err.max()), float(err.mean())


# -- softmax ----------------------------------------------------------------------------------------------------
def ref_softmax(q: np.ndarray, p, dim: int) -> np.ndarray:
    d = q - q.max(axis=dim, keepdims=True)
    e = lookup(d, p.exp_table, *rng(p.exp))
    total = e.sum(axis=dim, keepdims=True)
    s = requant(total, sc(p.exp) / sc(p.sum), q.shape[dim] * rng(p.exp)[1], *rng(p.sum))
    r = lookup(s, p.reciprocal_table, *rng(p.reciprocal))
    return requant(e * r, sc(p.exp) * sc(p.reciprocal) / sc(p.output), rng(p.exp)[1] * rng(p.reciprocal)[1],
                   *rng(p.output))


class LinearSoftmax(nn.Module):
    def __init__(self, spelling: str = "module", dim: int = -1):
        super().__init__()
        self.quant = QuantStub()
        self.fc = nn.Linear(12, 10)
        self.softmax = nn.Softmax(dim=dim)
        self.dequant = DeQuantStub()
        self.spelling, self.dim = spelling, dim
        with torch.no_grad():
            self.fc.weight.mul_(4)

    def forward(self, x):
        x = self.fc(self.quant(x))
        if self.spelling == "F":
            x = F.softmax(x, dim=self.dim)
        elif self.spelling == "method":
            x = x.softmax(self.dim)
        elif self.spelling == "torch":
            x = torch.softmax(x, self.dim)
        else:
            x = self.softmax(x)
        return self.dequant(x)


class ConvSoftmax(nn.Module):
    """Softmax over the channels of a conv output (nn.Softmax() without dim: torch's legacy dim=1 on 4-D)."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.softmax = nn.Softmax()
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.softmax(self.conv(self.quant(x))))


@pytest.mark.parametrize("out_qconfig", [Q8, Q16], ids=["int8", "int16"])
@pytest.mark.parametrize("model_cls", [LinearSoftmax, ConvSoftmax])
def test_softmax_qat_validation_equals_converted(model_cls, out_qconfig):
    torch.manual_seed(1)
    x = torch.randn(16, 12) if model_cls is LinearSoftmax else torch.randn(2, 3, 5, 6)
    qat, quantized = calibrate_and_convert(model_cls().eval(), {"": Q8, "module_name": {"softmax": out_qconfig}}, x)
    assert type(quantized.softmax).__name__ == "Softmax" and quantized.softmax.params.output.dtype == \
        out_qconfig.activation().dtype
    for batch in (x, x * 1.7, torch.randn_like(x)):
        assert torch.equal(qat(batch), quantized(batch))


@pytest.mark.parametrize("out_qconfig", [Q8, Q16], ids=["int8", "int16"])
def test_softmax_integer_module_against_reference(out_qconfig):
    torch.manual_seed(2)
    x = torch.randn(64, 12)
    _, quantized = calibrate_and_convert(LinearSoftmax(), {"": Q8, "module_name": {"softmax": out_qconfig}}, x)
    mod = quantized.softmax
    codes = torch.randint(-128, 128, (200, 10), dtype=torch.int8)
    codes[0] = 127  # a flat row
    codes[1] = -128
    codes[2, 3] = 127  # a peaked row
    got = mod(codes)
    assert got.dtype == out_qconfig.activation().dtype.torch_dtype
    np.testing.assert_array_equal(got.numpy().astype(np.int64), ref_softmax(codes.numpy().astype(np.int64),
                                                                             mod.params, 1))


@pytest.mark.parametrize("n,spread", [(10, 2.0), (64, 3.0), (1000, 3.0), (64, 0.3)])
def test_softmax_accuracy_against_float(n, spread):
    """Inputs on the QuantStub's grid, so calibration sees the values validation quantizes."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub(scale=8 / 128)
            self.softmax = nn.Softmax(dim=-1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.softmax(self.quant(x)))

    torch.manual_seed(3)
    x = (torch.randn(64, n) * spread * 16).round().clamp(-128, 127) / 16
    want = torch.softmax(x.double(), -1)
    for name, qconfig, bound in (("int8", Q8, 0.51), ("int16", Q16, 8.0)):
        qat, quantized = calibrate_and_convert(Net(), {"": Q8, "module_name": {"softmax": qconfig}}, x)
        got = quantized(x)
        assert torch.equal(got, qat(x))
        worst, mean = lsb_errors(got, want, sc(quantized.softmax.params.output))
        FIGURES[f"softmax n={n} spread={spread} {name}"] = (worst, mean)
        print(f"softmax n={n} logit std={spread} {name} output: max {worst:.2f} LSB, mean {mean:.3f} LSB")
        assert worst <= bound and mean <= 0.5, (name, worst, mean)


@pytest.mark.parametrize("spelling", ["F", "method", "torch"])
def test_functional_softmax_becomes_the_module(spelling):
    torch.manual_seed(4)
    x = torch.randn(8, 12)
    model = LinearSoftmax(spelling, dim=1)
    qat, quantized = calibrate_and_convert(model, {"": Q8}, x)
    generated = [m for m in qat.modules() if type(m).__name__ == "Softmax" and hasattr(m, "exp_post_process")]
    assert len(generated) == 1 and generated[0].dim == 1
    assert torch.equal(qat(x), quantized(x))
    module_form = LinearSoftmax("module", dim=1)
    module_form.load_state_dict(model.state_dict())
    reference, _ = calibrate_and_convert(module_form, {"": Q8}, x)
    assert torch.equal(reference(x), qat(x))  # the same integers as nn.Softmax(dim=1)


def test_softmax_table_settings():
    torch.manual_seed(5)
    x = torch.randn(32, 12)
    qat, quantized = calibrate_and_convert(LinearSoftmax(), {"": Q8}, x)
    wide = quantized.softmax.params.exp_table
    qat.softmax.exp_kwargs = {"input_range": (-4.0, 0.0)}
    narrowed = convert_fx(qat)
    table = narrowed.softmax.params.exp_table
    assert table.q_lo > wide.q_lo and table.q_hi == wide.q_hi == 0
    assert torch.equal(qat(x), narrowed(x))  # validation follows the setting too
    codes = torch.randint(-128, 128, (50, 10), dtype=torch.int8)
    np.testing.assert_array_equal(narrowed.softmax(codes).numpy().astype(np.int64),
                                  ref_softmax(codes.numpy().astype(np.int64), narrowed.softmax.params, 1))
    with pytest.raises(ValueError, match=r"Softmax.exp_kwargs: unknown key\(s\) \['segments'\]"):
        qat.softmax.exp_kwargs = {"segments": 8}
    with pytest.raises(ValueError, match=r"auto_divide_strategy='curvature' is not available.*input_range"):
        qat.softmax.reciprocal_kwargs = {"auto_divide_strategy": "curvature"}
    qat.softmax.reciprocal_kwargs = {"auto_divide_strategy": "evenly"}


def test_softmax_bad_paths():
    # the table: Softmax input qint8 only
    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"'softmax' \(torch.nn.Softmax\) input 0: dtype "
                                                                 r"qint16 is not accepted on march 'bayes'"):
        prepare_qat_fx(ConvSoftmax(), {"": Q16})
    # bernoulli2: 不支持, with the way out; F.softmax is refused the same way
    for model in (ConvSoftmax(), LinearSoftmax("F")):
        with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"\(torch.nn.Softmax\): torch.nn.Softmax is "
                                                                          r"not supported on bernoulli2 \(op table: "
                                                                          r"不支持\).*target bayes"):
            prepare_qat_fx(model, {"": Q8})
    # hybrid: bernoulli2 runs it on the CPU
    torch.manual_seed(6)
    x = torch.randn(2, 3, 5, 6)
    with march("bernoulli2"):
        qat = prepare_qat_fx(ConvSoftmax(), {"": Q8}, hybrid=True)
    assert "softmax" in qat.meta["qframe_cpu_ops"]
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat(x)
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    assert torch.equal(qat(x), convert_fx(qat)(x))
