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


# == RoIAlign ======================================================================================================
from qframe_core.nn import RoIAlign, roi_align  # noqa: E402
from qframe_core.nn.quantized.roi_align import RoIAlign as IntegerRoIAlign  # noqa: E402

#: documented formats: (coordinate, weight, box-multiplier fraction bits, rounding)
ROI_FORMATS = {"bayes": (16, 12, 32, "half_even"), "bernoulli2": (16, 8, 32, "half_up")}


def _shift(v, s, rounding):
    if rounding == "half_even":
        return _half_even_shift(v, s)
    return (v + (1 << (s - 1))) >> s


def reference_roi_align(q, boxes, box_scale, out_hw, spatial_scale, ratio, aligned, march_name, qmin=-128, qmax=127):
    """The documented integer rule with Python ints, sample by sample (no separable weight matrices)."""
    f, wb, mb, rounding = ROI_FORMATS[march_name]
    ql = q.tolist()
    C, H, W = q.shape[1:]
    ph_n, pw_n = out_hw
    a = math.floor(Fraction(box_scale) * Fraction(spatial_scale) * 2 ** mb + Fraction(1, 2))
    off = 2 ** (f - 1) if aligned else 0
    out = []
    for n, codes in enumerate(boxes):
        for box in codes.reshape(-1, 4).tolist():
            x1, y1, x2, y2 = (_shift(b * a, mb - f, rounding) - off for b in box)
            rw, rh = x2 - x1, y2 - y1
            if not aligned:
                rw, rh = max(rw, 2 ** f), max(rh, 2 ** f)
            bw, bh = rw // pw_n, rh // ph_n
            gx = ratio if ratio > 0 else -(-rw // (pw_n * 2 ** f))
            gy = ratio if ratio > 0 else -(-rh // (ph_n * 2 ** f))
            count = max(gx * gy, 1)
            recip = math.floor(Fraction(2 ** 20, count) + Fraction(1, 2))

            def taps(c1, b, p, i, g, size):
                y = c1 + p * b + ((2 * i + 1) * b) // (2 * g)
                if y < -2 ** f or y > size * 2 ** f:
                    return []
                y = max(y, 0)
                lo = y >> f
                if lo >= size - 1:
                    return [(size - 1, 2 ** wb)]
                lam = ((y % 2 ** f) + 2 ** (f - wb - 1)) >> (f - wb)
                return [(lo, 2 ** wb - lam), (lo + 1, lam)]

            plane = [[[0] * pw_n for _ in range(ph_n)] for _ in range(C)]
            for c in range(C):
                for p in range(ph_n):
                    for r in range(pw_n):
                        acc = 0
                        for iy in range(gy):
                            for ix in range(gx):
                                for yy, wy in taps(y1, bh, p, iy, gy, H):
                                    for xx, wx in taps(x1, bw, r, ix, gx, W):
                                        acc += wy * wx * ql[n][c][yy][xx]
                        v = _shift(acc * recip, 2 * wb + 20, rounding)
                        plane[c][p][r] = min(max(v, qmin), qmax)
            out.append(plane)
    return torch.tensor(out, dtype=torch.int64)


def _box_codes(k, qmax, seed, extent=(70, 60)):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=gen) * torch.tensor(extent, dtype=torch.float32)
    wh = torch.rand(k, 2, generator=gen) * 40 + 0.5
    boxes = torch.cat([xy - 8, xy + wh], 1)  # some start left of / above the map
    scale = float(torch.tensor(110.0 / qmax, dtype=torch.float32))
    return torch.round(boxes / scale).clamp(-qmax, qmax).to(torch.int64), scale


def _int_roi(march_name, out_hw, spatial_scale, ratio, aligned, box_dtype, box_scale, n_images):
    from qframe_core.registry import registry
    m = RoIAlign(out_hw, spatial_scale, ratio, aligned)
    limits = registry.lowering(march_name, RoIAlign).limits
    return IntegerRoIAlign(m, QuantParams(torch.tensor([0.05]), qint8),
                           [QuantParams(torch.tensor([box_scale]), box_dtype)] * n_images, "roi", march_name, limits)


ROI_CASES = [("bayes", 2, False, qint16), ("bayes", -1, True, qint16), ("bayes", 3, True, qint8),
             ("bernoulli2", 2, False, qint8), ("bernoulli2", -1, False, qint8)]


@pytest.mark.parametrize("march_name,ratio,aligned,box_dtype", ROI_CASES)
def test_roi_align_integer_module_matches_the_reference_bit_for_bit(march_name, ratio, aligned, box_dtype):
    q = _codes((2, 3, 15, 18), -128, 127, 11)
    b0, s = _box_codes(3, box_dtype.quant_max, 12)
    b1, _ = _box_codes(2, box_dtype.quant_max, 13)
    mod = _int_roi(march_name, (3, 4), 0.25, ratio, aligned, box_dtype, s, 2)
    got = mod(q.to(torch.int8), [b0.to(box_dtype.torch_dtype), b1.to(box_dtype.torch_dtype)])
    ref = reference_roi_align(q, [b0, b1], s, (3, 4), 0.25, ratio, aligned, march_name)
    assert torch.equal(got.to(torch.int64), ref)


def test_float_roi_align_of_a_ramp_is_the_ramp_at_the_bin_centres():
    # bilinear interpolation is exact on a linear function, so each bin's average is the ramp at its centre
    h, w = 20, 24
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    feat = (3 * xs - 2 * ys + 1).reshape(1, 1, h, w)
    box = torch.tensor([[4.0, 6.0, 36.0, 30.0]])  # at spatial_scale 0.5: x 2..18, y 3..15
    for aligned in (False, True):
        out = roi_align(feat, [box], (4, 2), 0.5, 2, aligned)
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * 0.5 - off for v in box[0].tolist())
        cy = torch.tensor([y1 + (p + 0.5) * (y2 - y1) / 4 for p in range(4)], dtype=torch.float64)
        cx = torch.tensor([x1 + (p + 0.5) * (x2 - x1) / 2 for p in range(2)], dtype=torch.float64)
        expected = 3 * cx.reshape(1, 2) - 2 * cy.reshape(4, 1) + 1
        assert torch.allclose(out[0, 0], expected, atol=1e-9)
    # Tensor[K, 5] boxes give the same result as the list form
    assert torch.equal(roi_align(feat, torch.tensor([[0.0, 4.0, 6.0, 36.0, 30.0]]), (4, 2), 0.5, 2),
                       RoIAlign((4, 2), 0.5, 2)(feat, [box]))


@pytest.mark.parametrize("march_name,ratio,aligned,box_dtype", ROI_CASES)
def test_roi_align_error_against_float(march_name, ratio, aligned, box_dtype):
    q = _codes((1, 4, 30, 36), -128, 127, 21)
    b, s = _box_codes(12, box_dtype.quant_max, 22, extent=(130, 110))
    got = _int_roi(march_name, (4, 4), 0.25, ratio, aligned, box_dtype, s, 1)(q.to(torch.int8),
                                                                             [b.to(box_dtype.torch_dtype)])
    # float RoIAlign of the dequantized codes at the dequantized boxes, in input LSB
    err = (got.double() - roi_align(q.double(), [b.double() * s], (4, 4), 0.25, ratio, aligned)).abs()
    # measured (3 seeds): bayes max 0.511 LSB, mean <= 0.262; bernoulli2 (8-bit weights, half up) max 0.770,
    # mean <= 0.271: the output rounding plus the weights' and the box corners' rounding
    assert err.max().item() <= 0.8
    assert err.mean().item() <= 0.3


class RoINet(nn.Module):
    def __init__(self, ratio=2, aligned=False):
        super().__init__()
        self.qx, self.qb0, self.qb1, self.dq = QuantStub(), QuantStub(), QuantStub(), DeQuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.roi = RoIAlign((3, 4), 0.25, ratio, aligned)

    def forward(self, x, b0, b1):
        return self.dq(self.roi(self.conv(self.qx(x)), [self.qb0(b0), self.qb1(b1)]))


def _roi_inputs(seed):
    gen = torch.Generator().manual_seed(seed)

    def boxes(k):
        xy = torch.rand(k, 2, generator=gen) * torch.tensor([60.0, 50.0])
        return torch.cat([xy, xy + torch.rand(k, 2, generator=gen) * 30 + 2], 1)
    return torch.randn(2, 3, 16, 20, generator=gen), boxes(3), boxes(2)


@pytest.mark.parametrize("march_name,box_qconfig,ratio,aligned", [("bayes", Q16, 2, False), ("bayes", Q8, -1, True),
                                                                  ("bernoulli2", Q8, 2, True)])
def test_roi_align_validation_state_equals_the_converted_model(march_name, box_qconfig, ratio, aligned):
    with march(march_name):
        qat = prepare_qat_fx(RoINet(ratio, aligned), {"": Q8, "module_name": [("qb0", box_qconfig),
                                                                              ("qb1", box_qconfig)]})
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        for s in range(3):
            qat(*_roi_inputs(s))
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        inputs = _roi_inputs(7)
        validation = qat(*inputs)
        assert validation.shape == (5, 4, 3, 4)
        assert torch.equal(validation, convert_fx(qat)(*inputs))


def test_roi_align_eager():
    model = RoINet()
    model.qconfig = Q8
    model.qb0.qconfig = model.qb1.qconfig = Q16
    with march("bayes"):
        qat = prepare_qat(model)
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        qat(*_roi_inputs(0))
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        inputs = _roi_inputs(1)
        assert torch.equal(qat(*inputs), convert(qat.eval())(*inputs))


class RoITensorBoxes(nn.Module):
    def __init__(self):
        super().__init__()
        self.qx, self.qb, self.dq = QuantStub(), QuantStub(), DeQuantStub()
        self.roi = RoIAlign(2, 1.0, 2)

    def forward(self, x, rois):
        return self.dq(self.roi(self.qx(x), self.qb(rois)))


def test_roi_align_tensor_boxes_are_refused():
    with march("bayes"), pytest.raises(UnsupportedOpError) as info:
        qat = prepare_qat_fx(RoITensorBoxes(), {"": Q8, "module_name": [("qb", Q16)]})
        qat(torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]]))
    for p in ("'roi'", "RoIAlign", "'bayes'", "bbox 仅支持 List[Tensor] 格式"):
        assert p in str(info.value), str(info.value)


def test_roi_align_int16_features_are_refused_on_bayes():
    with march("bayes"), pytest.raises(UnsupportedOpError) as info:
        prepare_qat_fx(RoINet(), {"": Q16})
    for p in ("'roi'", "RoIAlign", "'bayes'", "input：qint8"):
        assert p in str(info.value), str(info.value)
