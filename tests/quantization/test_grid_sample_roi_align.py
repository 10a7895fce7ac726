"""F.grid_sample on bayes (qframe_core.nn.GridSample; constant-argument F.grid_sample becomes one at prepare).

The integer module is checked bit for bit against an independent reference of the documented rule
(qframe_core/grid_sample.py, bayes README): loops over output pixels with Python ints, the grid-code multiplier
computed with exact fractions. The QAT model in VALIDATION state must equal the converted model; the integer result
is compared with torch's float grid_sample of the dequantized input and grid; each op-table rule is refused with
UnsupportedOpError naming the module, the op, the march and the rule. bernoulli2's table says 不支持.
"""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.dtype import qint8, qint16
from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march, resolve_march
from qframe_core.nn import GridSample
from qframe_core.nn.quantized.grid_sample import GridSample as IntegerGridSample
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert,
    convert_fx,
    prepare_qat,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.fake_quantize import QuantParams
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8
from qframe_core.quantization.qconfig import default_qat_16bit_fake_quant_qconfig as Q16

#: bayes's documented format: coordinate, weight and grid-multiplier fraction bits; rounding half to even
CBITS, WBITS, MBITS = 16, 12, 32


# -- the independent reference ---------------------------------------------------------------------------------
def _half_even_shift(v: int, s: int) -> int:
    """round(v / 2**s), ties to even, on Python ints."""
    q, r = divmod(v, 1 << s)  # floor division: r in [0, 2**s)
    half = 1 << (s - 1)
    if r > half or (r == half and q % 2 == 1):
        q += 1
    return q


def _ref_src(g: int, n: int, scale: float, align: bool, border: bool) -> int:
    half_span = Fraction(n - 1, 2) if align else Fraction(n, 2)
    a = math.floor(Fraction(scale) * half_span * 2 ** MBITS + Fraction(1, 2))
    src = _half_even_shift(g * a, MBITS - CBITS) + (n - 1) * 2 ** (CBITS - 1)
    if border:
        src = min(max(src, 0), (n - 1) * 2 ** CBITS)
    return src


def reference_grid_sample(q, g, scale, mode, padding, align, qmin=-128, qmax=127):
    N, C, H, W = q.shape
    _, Ho, Wo, _ = g.shape
    ql, gl = q.tolist(), g.tolist()
    out = [[[[0] * Wo for _ in range(Ho)] for _ in range(C)] for _ in range(N)]
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                sx = _ref_src(gl[n][i][j][0], W, scale, align, padding == "border")
                sy = _ref_src(gl[n][i][j][1], H, scale, align, padding == "border")
                for c in range(C):
                    def at(y, x, plane=ql[n][c]):
                        return plane[y][x] if 0 <= y < H and 0 <= x < W else 0
                    if mode == "nearest":
                        v = at(_half_even_shift(sy, CBITS), _half_even_shift(sx, CBITS))
                    else:
                        x0, y0 = sx >> CBITS, sy >> CBITS
                        lx = ((sx % 2 ** CBITS) + 2 ** (CBITS - WBITS - 1)) >> (CBITS - WBITS)
                        ly = ((sy % 2 ** CBITS) + 2 ** (CBITS - WBITS - 1)) >> (CBITS - WBITS)
                        one = 2 ** WBITS
                        acc = ((one - ly) * (one - lx) * at(y0, x0) + (one - ly) * lx * at(y0, x0 + 1)
                               + ly * (one - lx) * at(y0 + 1, x0) + ly * lx * at(y0 + 1, x0 + 1))
                        v = _half_even_shift(acc, 2 * WBITS)
                    out[n][c][i][j] = min(max(v, qmin), qmax)
    return torch.tensor(out, dtype=torch.int64)


def _codes(shape, lo, hi, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=gen)


def _integer(mode, padding, align, grid_dtype, grid_scale):
    m = GridSample(mode, padding, align)
    with march("bayes"):
        from qframe_core.registry import registry
        limits = registry.lowering("bayes", F.grid_sample).limits
    return IntegerGridSample(m, QuantParams(torch.tensor([0.05]), qint8),
                             QuantParams(torch.tensor([grid_scale], dtype=torch.float32), grid_dtype),
                             "gs", "bayes", limits)


CASES = [(mode, pad, align, gd) for mode in ("bilinear", "nearest") for pad in ("zeros", "border")
         for align in (False, True) for gd in (qint8, qint16)]


@pytest.mark.parametrize("mode,padding,align,grid_dtype", CASES)
def test_integer_module_matches_the_reference_bit_for_bit(mode, padding, align, grid_dtype):
    q = _codes((2, 3, 7, 10), -128, 127, 1)
    qmax = grid_dtype.quant_max
    # grid codes reaching past [-1, 1] (outside samples: zeros or border)
    scale = float(torch.tensor(1.25 / qmax, dtype=torch.float32))
    g = _codes((2, 5, 6, 2), -qmax, qmax, 2)
    g[0, 0, 0] = torch.tensor([qmax, -qmax])  # corners
    g[0, 0, 1] = torch.tensor([0, 0])          # the centre
    mod = _integer(mode, padding, align, grid_dtype, scale)
    got = mod(q.to(torch.int8), g.to(grid_dtype.torch_dtype))
    assert got.dtype == torch.int8
    ref = reference_grid_sample(q, g, scale, mode, padding, align)
    assert torch.equal(got.to(torch.int64), ref)


def test_the_documented_format_is_bayes():
    fmt = resolve_march("bayes").bilinear
    assert (fmt.coord_frac_bits, fmt.weight_frac_bits, fmt.grid_mult_frac_bits) == (CBITS, WBITS, MBITS)


def _float_error(mode, padding, align, grid_dtype, seed):
    q = _codes((1, 4, 32, 40), -128, 127, seed)
    qmax = grid_dtype.quant_max
    scale = float(torch.tensor(1.1 / qmax, dtype=torch.float32))
    g = _codes((1, 24, 24, 2), -qmax, qmax, seed + 1)
    got = _integer(mode, padding, align, grid_dtype, scale)(q.to(torch.int8), g.to(grid_dtype.torch_dtype))
    # torch's float grid_sample of the dequantized codes, in units of the input's scale (1 LSB)
    ref = F.grid_sample(q.double(), g.double() * scale, mode=mode, padding_mode=padding, align_corners=align)
    return (got.double() - ref).abs()


@pytest.mark.parametrize("grid_dtype", [qint8, qint16])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("align", [False, True])
def test_bilinear_is_within_about_an_lsb_of_float(grid_dtype, padding, align):
    err = _float_error("bilinear", padding, align, grid_dtype, 3)
    # measured (3 seeds, every padding/align): max 0.520 LSB (qint8 grid) / 0.519 (qint16 grid), mean <= 0.250:
    # the output rounding (0.5) plus the Q12 weights
    assert err.max().item() <= 0.6
    assert err.mean().item() <= 0.26


@pytest.mark.parametrize("grid_dtype", [qint8, qint16])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_nearest_picks_torchs_element_almost_always(grid_dtype, padding):
    err = _float_error("nearest", padding, False, grid_dtype, 5)
    # measured: the same element everywhere; a different one is possible only where the source coordinate lies
    # within 2**-16 of a tie
    assert (err > 0).double().mean().item() <= 0.002


# -- QAT VALIDATION == converted ----------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, mode="bilinear", padding="zeros", align=False, functional=True):
        super().__init__()
        self.qx, self.qg, self.dq = QuantStub(), QuantStub(), DeQuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.kw = dict(mode=mode, padding_mode=padding, align_corners=align)
        self.gs = None if functional else GridSample(mode, padding, align)

    def forward(self, x, g):
        x, g = self.conv(self.qx(x)), self.qg(g)
        y = F.grid_sample(x, g, **self.kw) if self.gs is None else self.gs(x, g)
        return self.dq(y)


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 12, 16, generator=gen), torch.rand(2, 7, 9, 2, generator=gen) * 2.4 - 1.2


@pytest.mark.parametrize("mode,padding,align", [("bilinear", "zeros", False), ("bilinear", "border", True),
                                                ("nearest", "zeros", True), ("nearest", "border", False)])
@pytest.mark.parametrize("grid_qconfig", [Q8, Q16])
def test_validation_state_equals_the_converted_model(mode, padding, align, grid_qconfig):
    x, g = _inputs()
    with march("bayes"):
        qat = prepare_qat_fx(Net(mode, padding, align), {"": Q8, "module_name": [("qg", grid_qconfig)]})
        assert isinstance(qat.get_submodule("_generated_grid_sample_0").float_module, GridSample)
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        for s in range(3):
            qat(*_inputs(s))
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        validation = qat(x, g)
        integer = convert_fx(qat)
        assert torch.equal(validation, integer(x, g))
        # QAT state computes float grid_sample; the integer model stays within a few output LSB of it
        set_fake_quantize(qat, FakeQuantState.QAT)
        out_scale = integer.get_submodule("_generated_grid_sample_0").params.scale
        assert ((qat(x, g) - validation).abs().max() / out_scale).item() <= 3.0


def test_eager_grid_sample_module():
    x, g = _inputs(1)
    model = Net("bilinear", "border", False, functional=False)
    model.qconfig = Q8
    model.qg.qconfig = Q16
    with march("bayes"):
        qat = prepare_qat(model)
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        qat(x, g)
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        assert torch.equal(qat(x, g), convert(qat.eval())(x, g))


# -- op-table rules ----------------------------------------------------------------------------------------------
class Plain(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.qx, self.qg, self.dq = QuantStub(), QuantStub(), DeQuantStub()
        self.kw = kw

    def forward(self, x, g):
        return self.dq(F.grid_sample(self.qx(x), self.qg(g), **self.kw))


def _refused(m, model, x, g, qconfig, *patterns):
    with march(m), pytest.raises(UnsupportedOpError) as info:
        qat = prepare_qat_fx(model, qconfig)
        qat(x, g)
    text = str(info.value)
    for p in (m, "grid_sample", *patterns):
        assert p in text, text
    return text


SMALL = (torch.randn(1, 2, 8, 8), torch.rand(1, 4, 4, 2) * 2 - 1)


@pytest.mark.parametrize("kw,rule", [(dict(mode="bicubic"), "只支持 bilinear 和 nearest 插值"),
                                     (dict(padding_mode="reflection"), "padding 模式只支持 zeros 和 border")])
def test_modes_outside_the_table_are_refused(kw, rule):
    _refused("bayes", Plain(align_corners=False, **kw), *SMALL, {"": Q8}, rule, "_generated_grid_sample_0")


def test_int16_input_is_refused():
    _refused("bayes", Plain(align_corners=False), *SMALL, {"": Q16}, "input：qint8", "_generated_grid_sample_0")


@pytest.mark.parametrize("shape,rule", [((1, 1, 1025, 8), "1<=H, W<=1024"), ((1, 1, 8, 1100), "1<=H, W<=1024"),
                                        ((1, 1, 1024, 721), "H*W<=720*1024")])
def test_shape_limits_are_refused_when_it_runs(shape, rule):
    _refused("bayes", Plain(align_corners=False), torch.randn(shape), SMALL[1], {"": Q8}, rule,
             "_generated_grid_sample_0")


def test_the_largest_allowed_input_runs():
    with march("bayes"):
        qat = prepare_qat_fx(Plain(align_corners=False), {"": Q8})
        qat(torch.randn(1, 1, 1024, 720), SMALL[1])


def test_bernoulli2_refuses_grid_sample():
    text = _refused("bernoulli2", Plain(align_corners=False), *SMALL, {"": Q8}, "不支持")
    assert "Way out" in text and "hybrid=True" in text
