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

import attrs
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


def requant(v: np.ndarray, ratio: float, bound: int, lo: int, hi: int, extra=0) -> np.ndarray:
    """Requantize int64 values of magnitude <= bound: drop low bits first so that v * m < 2**61, then shift by
    the multiplier's shift plus ``extra`` (capped at 62: such a product rounds to 0 either way)."""
    pre = max(0, int(bound).bit_length() + 31 - 61)
    v = round_shift(v, pre)
    m, s = multiplier(ratio * 2.0 ** pre)
    shift = np.minimum(s + np.asarray(extra, dtype=np.int64), 62)
    out = np.vectorize(lambda a, t: int(round_shift(np.int64(a), int(t))), otypes=[np.int64])(v * m, shift)
    return np.clip(out, lo, hi)


def normalized(v: np.ndarray, even: bool) -> tuple[np.ndarray, np.ndarray]:
    """``v = M * 2**k``: M in [2**14, 2**15) (even k: [2**13, 2**15)), rounded half to even, in Python ints."""
    ms, ks = [], []
    for x in np.asarray(v, dtype=np.int64).reshape(-1).tolist():
        k = x.bit_length() - 15
        if even and k % 2:
            k += 1
        m = int(round_shift(np.int64(x), k)) if k > 0 else x << -k
        if m == 1 << 15:
            m, k = m >> (2 if even else 1), k + (2 if even else 1)
        ms.append(m)
        ks.append(k)
    shape = np.shape(v)
    return np.array(ms, dtype=np.int64).reshape(shape), np.array(ks, dtype=np.int64).reshape(shape)


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
    mantissa, k = normalized(e.sum(axis=dim, keepdims=True), even=False)
    r = lookup(mantissa, p.reciprocal_table, *rng(p.reciprocal))  # 1 / (M * 2**-15) at 2**-14
    return requant(e * r, 2.0 ** -29 / sc(p.output), 32767 * 32767, *rng(p.output), extra=k)


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
        print(f"softmax n={n} logit std={spread} {name} output: max {worst:.2f} LSB, mean {mean:.3f} LSB")
        assert worst <= bound and mean <= 0.5, (name, worst, mean)


def test_softmax_accuracy_on_rows_of_mixed_temperature():
    """Peaked rows (sum of exps near 1) among flat ones (sum near n): the normalized sum keeps 15 bits on each."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub(scale=8 / 128)
            self.softmax = nn.Softmax(dim=-1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.softmax(self.quant(x)))

    torch.manual_seed(7)
    for n in (64, 1000):
        x = (torch.randn(64, n) * torch.exp(torch.randn(64, 1) * 1.2) * 16).round().clamp(-128, 127) / 16
        want = torch.softmax(x.double(), -1)
        for name, qconfig, bound in (("int8", Q8, 0.51), ("int16", Q16, 16.0)):
            _, quantized = calibrate_and_convert(Net(), {"": Q8, "module_name": {"softmax": qconfig}}, x)
            worst, mean = lsb_errors(quantized(x), want, sc(quantized.softmax.params.output))
            print(f"softmax mixed temperatures n={n} {name} output: max {worst:.2f} LSB, mean {mean:.3f} LSB")
            # int16: each of the n exps is rounded to 1/32767, their sum's error grows like sqrt(n)
            assert worst <= bound and mean <= 0.5, (name, worst, mean)


def test_inner_tables_follow_their_functions():
    torch.manual_seed(8)
    x = torch.randn(32, 12)
    _, quantized = calibrate_and_convert(LinearSoftmax(), {"": Q8}, x)
    p = quantized.softmax.params
    d = np.arange(-255, 1)
    want = np.round(np.exp(d * sc(p.input)) / sc(p.exp))
    np.testing.assert_array_equal(lookup(d, p.exp_table, *rng(p.exp)), want)  # per code: <= 1024 segments
    mantissas = np.arange(1 << 14, 1 << 15)
    got = lookup(mantissas, p.reciprocal_table, -32768, 32767)
    assert np.abs(got - np.minimum(np.round(2.0 ** 29 / mantissas), 32767)).max() <= 1


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
    qat.softmax.reciprocal_kwargs = {"auto_divide_strategy": "evenly", "input_range": (0.5, 0.75)}
    mantissas = torch.arange(1 << 14, 1 << 15)
    table = convert_fx(qat).softmax.params.reciprocal_table
    assert table.q_hi == 3 << 13  # m = 0.75: the table's segments end there, larger mantissas read its end
    want = np.round(2.0 ** 29 / np.minimum(mantissas.numpy(), 3 << 13))
    assert np.abs(lookup(mantissas.numpy(), table, -32768, 32767) - want).max() <= 1


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


# -- layernorm --------------------------------------------------------------------------------------------------
def ref_layernorm(q: np.ndarray, p, eps: float, weight, bias) -> np.ndarray:
    axes = tuple(range(q.ndim - p.normalized_ndim, q.ndim))
    n_el = int(np.prod([q.shape[a] for a in axes]))
    s_x = sc(p.input)
    a = q.sum(axis=axes, keepdims=True)
    b = (q * q).sum(axis=axes, keepdims=True)
    c = n_el * q - a
    v = np.maximum(n_el * b - a * a + int(round(eps * n_el * n_el / (s_x * s_x))), 1)
    mantissa, k = normalized(v, even=True)
    r = lookup(mantissa, p.rsqrt_table, -32768, 32767)  # rsqrt(M * 2**-14) at 2**-14
    span = rng(p.input)[1] - rng(p.input)[0]
    n = requant(c * r, 2.0 ** -14 / sc(p.norm), n_el * span * 32767, *rng(p.norm), extra=7 + k // 2)
    if weight is None and bias is None:
        return n
    w = np.ones(q.shape[-p.normalized_ndim:], dtype=np.float32) if weight is None else weight.detach().numpy()
    s_g = np.float32(np.abs(w).max()) / np.float32(32767.5)  # qint16 per tensor, in float32
    g = np.clip(np.round(w.astype(np.float32) / s_g), -32768, 32767).astype(np.int64)
    acc_scale = sc(p.norm) * float(s_g)
    bb = np.zeros_like(w, dtype=np.float64) if bias is None else bias.detach().double().numpy()
    b_int = np.clip(np.round(bb / acc_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int64)
    return requant(n * g + b_int, acc_scale / sc(p.output), rng(p.norm)[1] * 32768 + 2 ** 31, *rng(p.output))


class LinearLayerNorm(nn.Module):
    def __init__(self, spelling: str = "module", affine: bool = True):
        super().__init__()
        self.quant = QuantStub()
        self.fc = nn.Linear(12, 32)
        self.layernorm = nn.LayerNorm(32, elementwise_affine=affine)
        self.dequant = DeQuantStub()
        self.spelling = spelling
        if affine:
            with torch.no_grad():
                self.layernorm.weight.uniform_(0.3, 1.7)
                self.layernorm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.fc(self.quant(x))
        if self.spelling == "F":
            ln = self.layernorm
            x = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        else:
            x = self.layernorm(x)
        return self.dequant(x)


class ConvLayerNorm(nn.Module):
    """LayerNorm over (H, W) of a conv output (normalized_shape H * W < 16384)."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.layernorm = nn.LayerNorm((6, 7))
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.layernorm(self.conv(self.quant(x))))


@pytest.mark.parametrize("out_qconfig", [Q8, Q16], ids=["int8", "int16"])
@pytest.mark.parametrize("model", [LinearLayerNorm, lambda: LinearLayerNorm(affine=False), ConvLayerNorm],
                         ids=["linear", "linear-no-affine", "conv"])
def test_layernorm_qat_validation_equals_converted(model, out_qconfig):
    torch.manual_seed(11)
    m = model().eval()
    x = torch.randn(16, 12) if isinstance(m, LinearLayerNorm) else torch.randn(2, 3, 6, 7)
    qat, quantized = calibrate_and_convert(m, {"": Q8, "module_name": {"layernorm": out_qconfig}}, x)
    assert type(quantized.layernorm).__name__ == "LayerNorm"
    for batch in (x, x * 0.6, torch.randn_like(x) * 2):
        assert torch.equal(qat(batch), quantized(batch))


@pytest.mark.parametrize("out_qconfig", [Q8, Q16], ids=["int8", "int16"])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_integer_module_against_reference(out_qconfig, affine):
    torch.manual_seed(12)
    model = LinearLayerNorm(affine=affine)
    _, quantized = calibrate_and_convert(model, {"": Q8, "module_name": {"layernorm": out_qconfig}},
                                         torch.randn(64, 12))
    mod = quantized.layernorm
    codes = torch.randint(-128, 128, (100, 32), dtype=torch.int8)
    codes[0] = 5  # a constant row (zero variance)
    codes[1, ::2], codes[1, 1::2] = 1, -1  # a row of tiny variance
    codes[2, ::2], codes[2, 1::2] = 127, -128  # the largest variance
    got = mod(codes)
    assert got.dtype == out_qconfig.activation().dtype.torch_dtype
    ln = model.layernorm
    want = ref_layernorm(codes.numpy().astype(np.int64), mod.params, ln.eps, ln.weight if affine else None,
                         ln.bias if affine else None)
    np.testing.assert_array_equal(got.numpy().astype(np.int64), want)


def test_layernorm_rsqrt_table_follows_the_function():
    _, quantized = calibrate_and_convert(LinearLayerNorm(), {"": Q8}, torch.randn(16, 12))
    mantissas = np.arange(1 << 13, 1 << 15)
    got = lookup(mantissas, quantized.layernorm.params.rsqrt_table, -32768, 32767)
    want = np.minimum(np.round(2.0 ** 14 / np.sqrt(mantissas * 2.0 ** -14)), 32767)
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("shape,rows", [((64,), "similar"), ((64,), "mixed"), ((768,), "mixed"), ((8, 8), "mixed")])
def test_layernorm_accuracy_against_float(shape, rows):
    """Inputs on the QuantStub's grid; "mixed": row standard deviations spanning ~50x (0.1 to 6)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub(scale=1 / 16)
            self.layernorm = nn.LayerNorm(shape)
            self.dequant = DeQuantStub()
            with torch.no_grad():
                self.layernorm.weight.uniform_(0.5, 1.5)
                self.layernorm.bias.uniform_(-0.5, 0.5)

        def forward(self, x):
            return self.dequant(self.layernorm(self.quant(x)))

    torch.manual_seed(13)
    batch = (48, *shape)
    per_row = torch.exp(torch.randn(48, *([1] * len(shape))) * 0.7) if rows == "mixed" else 1.5
    x = (torch.randn(*batch) * per_row * 16).round().clamp(-128, 127) / 16
    model = Net().eval()
    want = model.layernorm(x).double()
    for name, qconfig, bound in (("int8", Q8, 0.6), ("int16", Q16, 4.0)):
        qat, quantized = calibrate_and_convert(model, {"": Q8, "module_name": {"layernorm": qconfig}}, x)
        got = quantized(x)
        assert torch.equal(got, qat(x))
        worst, mean = lsb_errors(got, want, sc(quantized.layernorm.params.output))
        print(f"layernorm {shape} rows {rows} {name} output: max {worst:.2f} LSB, mean {mean:.3f} LSB")
        assert worst <= bound and mean <= 0.5, (name, worst, mean)


def test_functional_layer_norm_becomes_the_module():
    torch.manual_seed(14)
    x = torch.randn(8, 12)
    model = LinearLayerNorm("F")
    qat, quantized = calibrate_and_convert(model, {"": Q8}, x)
    generated = [m for m in qat.modules() if type(m).__name__ == "LayerNorm" and hasattr(m, "norm_post_process")]
    assert len(generated) == 1 and generated[0].normalized_shape == (32,)
    assert torch.equal(generated[0].weight, model.layernorm.weight)
    assert torch.equal(qat(x), quantized(x))
    module_form = LinearLayerNorm()
    module_form.load_state_dict(model.state_dict())
    reference, _ = calibrate_and_convert(module_form, {"": Q8}, x)
    assert torch.equal(reference(x), qat(x))


def test_layernorm_rsqrt_kwargs():
    torch.manual_seed(15)
    x = torch.randn(16, 12)
    qat, quantized = calibrate_and_convert(LinearLayerNorm(), {"": Q8}, x)
    with pytest.raises(ValueError, match=r"LayerNorm.rsqrt_kwargs: auto_divide_strategy='curvature' is not available"):
        qat.layernorm.rsqrt_kwargs = {"auto_divide_strategy": "curvature"}
    qat.layernorm.rsqrt_kwargs = {"input_range": (0.5, 1.0)}
    narrowed = convert_fx(qat)
    assert narrowed.layernorm.params.rsqrt_table.q_hi == 1 << 14  # m = 1.0
    assert torch.equal(qat(x), narrowed(x))
    # the setting on the float module carries over (eager users set it before prepare)
    model = LinearLayerNorm()
    model.layernorm.rsqrt_kwargs = {"input_range": (0.5, 1.0)}
    with march("bayes"):
        assert prepare_qat_fx(model, {"": Q8}).layernorm.rsqrt_kwargs == {"input_range": (0.5, 1.0)}


def test_layernorm_bad_paths():
    class Big(nn.Module):
        def __init__(self, normalized_shape):
            super().__init__()
            self.quant = QuantStub()
            self.layernorm = nn.LayerNorm(normalized_shape)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.layernorm(self.quant(x)))

    # the table: normalized_shape H * W < 16384 (checked at prepare)
    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"'layernorm' \(torch.nn.LayerNorm\): "
                                                                 r"normalized_shape=\[128, 128\] \(product 16384\) "
                                                                 r"breaks normalized_shape H \* W < 16384"):
        prepare_qat_fx(Big((128, 128)), {"": Q8})
    # the table: input H * W <= 16384 (checked when it runs: prepare sees no shapes)
    with march("bayes"):
        qat = prepare_qat_fx(Big(130), {"": Q8})
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with pytest.raises(UnsupportedOpError, match=r"'layernorm' \(torch.nn.LayerNorm\): input shape \[1, 2, 130, 130\]"
                                                 r".*breaks H \* W <= 16384 \(march 'bayes' op table\)"):
        qat(torch.randn(1, 2, 130, 130))
    qat(torch.randn(1, 2, 100, 130))  # 13000 <= 16384
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert_fx(qat)
    with pytest.raises(UnsupportedOpError, match=r"input shape \[1, 2, 130, 130\].*H \* W <= 16384"):
        quantized(torch.randn(1, 2, 130, 130))
    # the table: input qint8 only
    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"'layernorm' \(torch.nn.LayerNorm\) input 0: dtype "
                                                                 r"qint16 is not accepted on march 'bayes'"):
        prepare_qat_fx(ConvLayerNorm(), {"": Q16})
    # bernoulli2: 不支持 (F.layer_norm too)
    for model in (ConvLayerNorm(), LinearLayerNorm("F")):
        with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"\(torch.nn.LayerNorm\): torch.nn.LayerNorm "
                                                                          r"is not supported on bernoulli2 \(op table: "
                                                                          r"不支持\).*target bayes"):
            prepare_qat_fx(model, {"": Q8})


# -- GLU --------------------------------------------------------------------------------------------------------
def ref_glu(q: np.ndarray, p) -> np.ndarray:
    a, b = np.split(q, 2, axis=p.dim)
    g = lookup(b, p.sigmoid_table, *rng(p.sigmoid))
    bound = max(-rng(p.input)[0], rng(p.input)[1]) * rng(p.sigmoid)[1]
    return requant(a * g, sc(p.input) * sc(p.sigmoid) / sc(p.output), bound, *rng(p.output))


class ConvGLU(nn.Module):
    def __init__(self, spelling: str = "module"):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.glu = nn.GLU(dim=1)
        self.dequant = DeQuantStub()
        self.spelling = spelling

    def forward(self, x):
        x = self.conv(self.quant(x))
        return self.dequant(F.glu(x, 1) if self.spelling == "F" else self.glu(x))


class LinearGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.fc = nn.Linear(12, 16)
        self.glu = nn.GLU()
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.glu(self.fc(self.quant(x))))


@pytest.mark.parametrize("qconfig_dict", [{"": Q8}, {"": Q16}, {"": Q8, "module_name": {"glu": Q16}}],
                         ids=["int8", "int16", "int8-in-int16-out"])
def test_glu_qat_validation_equals_converted(qconfig_dict):
    torch.manual_seed(21)
    x = torch.randn(2, 3, 5, 6)
    qat, quantized = calibrate_and_convert(ConvGLU(), qconfig_dict, x)
    assert type(quantized.glu).__name__ == "GLU"
    for batch in (x, x * 1.5, torch.randn_like(x)):
        assert torch.equal(qat(batch), quantized(batch))
    qat, quantized = calibrate_and_convert(LinearGLU(), {"": Q8}, torch.randn(16, 12))
    batch = torch.randn(16, 12)
    assert torch.equal(qat(batch), quantized(batch))


@pytest.mark.parametrize("qconfig_dict", [{"": Q8}, {"": Q16}], ids=["int8", "int16"])
def test_glu_integer_module_against_reference(qconfig_dict):
    torch.manual_seed(22)
    _, quantized = calibrate_and_convert(ConvGLU(), qconfig_dict, torch.randn(4, 3, 5, 6))
    mod = quantized.glu
    lo, hi = rng(mod.params.input)
    codes = torch.randint(lo, hi + 1, (3, 8, 5, 6), dtype=mod.params.input.dtype.torch_dtype)
    codes[0, 4:] = lo  # sigmoid's saturated ends
    codes[1, 4:] = hi
    got = mod(codes)
    np.testing.assert_array_equal(got.numpy().astype(np.int64), ref_glu(codes.numpy().astype(np.int64), mod.params))


def test_glu_accuracy_against_float():
    """Inputs on the QuantStub's grid (int8 at 1/16, int16 at 1/4096), GLU along the last dim."""
    torch.manual_seed(23)

    class Net(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.quant = QuantStub(scale=scale)
            self.glu = nn.GLU()
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.glu(self.quant(x)))

    for name, qconfig, scale, bound in (("int8", Q8, 1 / 16, 0.51), ("int16", Q16, 1 / 4096, 1.0)):
        lim = (qconfig.activation().dtype.quant_max) * scale
        x = (torch.randn(64, 32) * 2 / scale).round() * scale
        x = x.clamp(-lim, lim)
        _, quantized = calibrate_and_convert(Net(scale), {"": qconfig}, x)
        got = quantized(x)
        want = F.glu(x.double(), -1)
        worst, mean = lsb_errors(got, want, sc(quantized.glu.params.output))
        print(f"glu {name}: max {worst:.2f} LSB, mean {mean:.3f} LSB")
        assert worst <= bound and mean <= 0.5, (name, worst, mean)


def test_functional_glu_becomes_the_module():
    torch.manual_seed(24)
    x = torch.randn(2, 3, 5, 6)
    model = ConvGLU("F")
    qat, quantized = calibrate_and_convert(model, {"": Q8}, x)
    generated = [m for m in qat.modules() if type(m).__name__ == "GLU" and hasattr(m, "sigmoid_post_process")]
    assert len(generated) == 1 and generated[0].dim == 1
    assert torch.equal(qat(x), quantized(x))
    module_form = ConvGLU()
    module_form.load_state_dict(model.state_dict())
    reference, _ = calibrate_and_convert(module_form, {"": Q8}, x)
    assert torch.equal(reference(x), qat(x))


def test_glu_bad_paths():
    # torch's own rule: the halved dimension must be even (the float model fails the same way)
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.glu = nn.GLU(dim=1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.glu(self.quant(x)))

    with march("bayes"):
        qat = prepare_qat_fx(Odd(), {"": Q8})
    with pytest.raises(RuntimeError, match=r"glu: halving dimension must be even, but dimension 1 is size 5"):
        qat(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"GLU.sigmoid_kwargs: input_range must be \(lo, hi\)"):
        qat.glu.sigmoid_kwargs = {"input_range": (1.0, -1.0)}
    # bernoulli2: 不支持 (F.glu too)
    for model in (ConvGLU(), ConvGLU("F")):
        with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"\(torch.nn.GLU\): torch.nn.GLU is not "
                                                                          r"supported on bernoulli2 \(op table: "
                                                                          r"不支持\).*target bayes"):
            prepare_qat_fx(model, {"": Q8})


# -- the three together: eager mode, TorchScript ---------------------------------------------------------------------
class AllThree(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.glu = nn.GLU(dim=1)
        self.layernorm = nn.LayerNorm((5, 6))
        self.softmax = nn.Softmax(dim=-1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.softmax(self.layernorm(self.glu(self.conv(self.quant(x))))))


def test_eager_mode_and_torchscript():
    from qframe_core.quantization import convert, prepare_qat

    torch.manual_seed(25)
    x = torch.randn(2, 3, 5, 6)
    model = AllThree().eval()
    model.qconfig = Q8
    with march("bayes"):
        qat = prepare_qat(model)
    assert {type(qat.glu).__module__, type(qat.layernorm).__module__, type(qat.softmax).__module__} == \
        {"qframe_core.nn.qat.composite"}
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat(x)
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert(qat)
    assert torch.equal(qat(x), quantized(x))
    traced = torch.jit.trace(quantized, x, check_trace=False)
    for batch in (x, x * 0.7):
        assert torch.equal(traced(batch), quantized(batch))



@pytest.mark.parametrize("out_qconfig", [Q8, Q16], ids=["int8", "int16"])
def test_softmax_kernel_equals_the_torch_steps(out_qconfig):
    """The integer Softmax runs the march kernel on int8/int16 CPU inputs; it must give the codes of the
    torch steps (int_softmax) on every row: full-range codes (int8, and int16 codes, which the kernel takes
    although bayes feeds softmax int8 only), flat and peaked rows, the softmax dim in the middle (moved last
    for the kernel), a single-element axis, and after a deep copy (derived tables)."""
    from qframe_core.march import resolve_march
    from qframe_core.nn.integer_softmax import int_softmax

    torch.manual_seed(4)
    x = torch.randn(32, 12)
    _, quantized = calibrate_and_convert(LinearSoftmax(), {"": Q8, "module_name": {"softmax": out_qconfig}}, x)
    mod = quantized.softmax
    spec = resolve_march(mod.march)
    out_dtype = out_qconfig.activation().dtype.torch_dtype
    for in_dtype in (torch.int8, torch.int16):
        info = torch.iinfo(in_dtype)
        codes = torch.randint(info.min, info.max + 1, (3, 37, 5), dtype=in_dtype)
        codes[0, :, 0] = info.max  # a flat row along dim 1
        codes[1, :, 1] = info.min
        codes[2, 4, 2] = info.max  # a peaked row
        for dim, q in ((1, codes), (-1, codes.transpose(1, 2)), (0, codes[:1])):
            mod.params = attrs.evolve(mod.params, dim=dim)
            want = int_softmax(q, mod.params, spec.requant, spec.lookup).to(out_dtype)
            got = mod(q)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want), (in_dtype, dim)
            assert torch.equal(copy.deepcopy(mod)(q), want)


@pytest.mark.parametrize("out_qconfig", [Q8, Q16], ids=["int8", "int16"])
@pytest.mark.parametrize("model", [LinearLayerNorm, lambda: LinearLayerNorm(affine=False), ConvLayerNorm],
                         ids=["linear", "linear-no-affine", "conv"])
def test_layernorm_kernel_equals_the_torch_steps(model, out_qconfig):
    """The integer LayerNorm runs the march kernel on int8/int16 CPU inputs; it must give the codes of
    the torch steps (int_layernorm): full-range codes of its input dtype (bayes feeds layernorm int8 only),
    constant rows (variance eps only), normalized over one or two dims, with and without the affine step,
    and after a deep copy."""
    from qframe_core.march import resolve_march
    from qframe_core.nn.integer_layernorm import int_layernorm

    torch.manual_seed(12)
    m = model().eval()
    x = torch.randn(16, 12) if isinstance(m, LinearLayerNorm) else torch.randn(2, 3, 6, 7)
    _, quantized = calibrate_and_convert(m, {"": Q8, "module_name": {"layernorm": out_qconfig}}, x)
    mod = quantized.layernorm
    spec = resolve_march(mod.march)
    shape = (5, 9, 32) if isinstance(m, LinearLayerNorm) else (4, 3, 6, 7)
    assert mod.params.input.dtype.torch_dtype == torch.int8
    q = torch.randint(-128, 128, shape, dtype=torch.int8)
    q[0, 0] = 127  # a constant row
    q[0, 1] = 0
    q[1, 0, :3] = -128  # an outlier
    want = int_layernorm(q, mod.params, spec.requant, spec.lookup).to(out_qconfig.activation().dtype.torch_dtype)
    got = mod(q)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(copy.deepcopy(mod)(q), want)
