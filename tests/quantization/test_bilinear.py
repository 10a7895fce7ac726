"""Bilinear resize on both marches: nn.Upsample(mode="bilinear"), nn.UpsamplingBilinear2d, F.interpolate and
qframe_core.nn.Interpolate.

The integer module is checked bit for bit against an independent reference of the documented fixed-point rule
(qframe_core/resize.py, the march READMEs' rules tables): explicit loops over output pixels with Python ints and
exact fractions. The QAT model in VALIDATION state must equal the converted model; the integer result must stay
within about an LSB of torch's float bilinear; each op-table limit must be refused with its rule.
"""

import math
import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qframe_core.dtype import qint8
from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march, resolve_march
from qframe_core.nn import Interpolate
from qframe_core.nn import quantized as qnn
from qframe_core.nn.qat.resize import Upsample as QATUpsample
from qframe_core.nn.quantized.resize import Upsample as IntegerUpsample
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

MARCHES = ["bernoulli2", "bayes"]
#: the documented per-march formats: (coordinate fraction bits, weight fraction bits, rounding)
DOCUMENTED = {"bernoulli2": (16, 8, "half_up"), "bayes": (16, 12, "half_even")}


# -- the independent reference -------------------------------------------------------------------------------
def _ref_out_size_and_step(in_size, size, scale, align, recompute):
    """Output size and the exact source step torch uses (as a Fraction), written from torch's documentation."""
    if size is not None:
        out, given = size, None
    else:
        out = math.floor(in_size * scale)
        given = None if recompute else scale
    if align:
        step = Fraction(in_size - 1, out - 1) if out > 1 else Fraction(0)
    elif given is not None:
        step = 1 / Fraction(given)
    else:
        step = Fraction(in_size, out)
    return out, step


def _ref_axis(in_size, out_size, step, align, cbits, wbits):
    """Per output index: (i0, i1, w0, w1) with Python ints, following the README's rule."""
    one = 1 << cbits
    reg = math.floor(step * one + Fraction(1, 2))          # the step register, Q(cbits)
    off = 0 if align else math.floor(Fraction(reg - one, 2))
    taps = []
    for d in range(out_size):
        src = d * reg + off
        if not align and src < 0:
            src = 0
        i0 = min(src // one, in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src % one
        drop = cbits - wbits
        lam = (frac + (1 << drop) // 2) // (1 << drop) if drop else frac
        taps.append((i0, i1, (1 << wbits) - lam, lam))
    return taps


def _ref_round(acc, shift, mode):
    div = 1 << shift
    q, r = divmod(acc, div)       # floor division: q <= acc / div, 0 <= r < div
    if 2 * r > div or (2 * r == div and (mode == "half_up" or q % 2 == 1)):
        q += 1
    return q


def reference_bilinear(codes, size, scale, align, recompute, march_name):
    """Nested lists [N][C][H][W] of ints -> the march's integer bilinear result (nested lists)."""
    cbits, wbits, mode = DOCUMENTED[march_name]
    h, w = len(codes[0][0]), len(codes[0][0][0])
    sh, sw = (size if size is not None else (None, None))
    fh, fw = (scale if isinstance(scale, tuple) else (scale, scale))
    oh, step_h = _ref_out_size_and_step(h, sh, fh, align, recompute)
    ow, step_w = _ref_out_size_and_step(w, sw, fw, align, recompute)
    ys = _ref_axis(h, oh, step_h, align, cbits, wbits)
    xs = _ref_axis(w, ow, step_w, align, cbits, wbits)
    out = []
    for plane_n in codes:
        out_n = []
        for plane in plane_n:
            rows = []
            for (y0, y1, wy0, wy1) in ys:
                row = []
                for (x0, x1, wx0, wx1) in xs:
                    acc = (wy0 * wx0 * plane[y0][x0] + wy0 * wx1 * plane[y0][x1]
                           + wy1 * wx0 * plane[y1][x0] + wy1 * wx1 * plane[y1][x1])
                    row.append(max(-128, min(127, _ref_round(acc, 2 * wbits, mode))))
                rows.append(row)
            out_n.append(rows)
        out.append(out_n)
    return out


def _integer_module(m, module):
    return IntegerUpsample(module, QuantParams(torch.tensor(0.05), qint8), "up", m)


CASES = [  # (input H, W, kwargs of nn.Upsample)
    (7, 5, dict(scale_factor=2)),
    (5, 7, dict(scale_factor=3)),
    (9, 7, dict(scale_factor=1.3)),
    (9, 7, dict(scale_factor=1.3, recompute_scale_factor=True)),
    (7, 9, dict(scale_factor=(2.5, 0.7))),
    (13, 11, dict(size=(5, 4))),                 # downscale to odd sizes
    (13, 9, dict(scale_factor=0.5)),
    (12, 12, dict(scale_factor=0.25)),
    (6, 5, dict(size=(17, 3))),                  # up in H, down in W
    (1, 1, dict(scale_factor=3)),                # 1x1 inputs
    (1, 1, dict(size=(4, 5))),
    (1, 6, dict(size=(3, 1))),
    (3, 2, dict(size=(1, 1))),                   # 1x1 output
    (8, 8, dict(size=(8, 8))),                   # identity
]


@pytest.mark.parametrize("m", MARCHES)
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_integer_module_matches_the_reference_bit_for_bit(m, align, case):
    h, w, kw = CASES[case]
    rng = random.Random(case * 7 + align)
    codes = [[[[rng.randint(-128, 127) for _ in range(w)] for _ in range(h)] for _ in range(3)] for _ in range(2)]
    codes[0][0][0][0], codes[1][2][-1][-1] = -128, 127  # the extremes
    module = nn.Upsample(mode="bilinear", align_corners=align, **kw)
    got = _integer_module(m, module)(torch.tensor(codes, dtype=torch.int8))
    expected = reference_bilinear(codes, kw.get("size"), kw.get("scale_factor"), align,
                                  kw.get("recompute_scale_factor"), m)
    assert got.dtype == torch.int8
    assert got.shape == module(torch.zeros(2, 3, h, w)).shape  # torch's output size
    assert got.tolist() == expected


def test_the_documented_formats_are_the_marches():
    for m, (cbits, wbits, mode) in DOCUMENTED.items():
        spec = resolve_march(m)
        assert (spec.bilinear.coord_frac_bits, spec.bilinear.weight_frac_bits) == (cbits, wbits)
        assert spec.requant.rounding.value == mode


def test_marches_round_ties_differently():
    # [a, b] resized to 3 columns with align_corners=True: the middle output sits at src 0.5, weights 1/2 and 1/2,
    # so it is the tie (a + b) / 2
    up = nn.Upsample(size=(1, 3), mode="bilinear", align_corners=True)
    q = torch.tensor([[[[-1, 0]]], [[[1, 2]]], [[[2, 3]]]], dtype=torch.int8).reshape(3, 1, 1, 2)
    b2 = _integer_module("bernoulli2", up)(q)[:, 0, 0, 1].tolist()
    bayes = _integer_module("bayes", up)(q)[:, 0, 0, 1].tolist()
    assert b2 == [0, 2, 3]      # -0.5 -> 0, 1.5 -> 2, 2.5 -> 3 (half up)
    assert bayes == [0, 2, 2]   # -0.5 -> -0 , 1.5 -> 2, 2.5 -> 2 (half to even)


@pytest.mark.parametrize("m", MARCHES)
def test_integer_result_is_within_about_an_lsb_of_float_bilinear(m):
    torch.manual_seed(0)
    errors = []
    for h, w, kw in CASES:
        for align in (False, True):
            module = nn.Upsample(mode="bilinear", align_corners=align, **kw)
            q = torch.randint(-128, 128, (2, 4, h, w), dtype=torch.int8)
            got = _integer_module(m, module)(q).double()
            errors.append((got - module(q.double())).abs().flatten())
    err = torch.cat(errors)
    # measured: bernoulli2 max 1.50, mean 0.28, 0.1% above 1 LSB; bayes max 1.09, mean 0.26, 0.001% above 1 LSB
    assert err.max() <= 2.0
    assert err.mean() < 0.35
    assert (err > 1).float().mean() < 0.01


# -- the quantized pipeline ----------------------------------------------------------------------------------
class Net(nn.Module):
    """QuantStub -> conv -> resize -> conv -> DeQuantStub."""

    def __init__(self, up=None, functional=None):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up = up
        self.functional = functional
        self.head = nn.Conv2d(6, 4, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        x = self.up(x) if self.up is not None else F.interpolate(x, **self.functional)
        return self.dequant(self.head(x))


def _pipeline_variants(m):
    variants = [
        ("upsample_x2", dict(up=nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))),
        ("upsample_size", dict(up=nn.Upsample(size=(13, 6), mode="bilinear"))),
        ("interpolate_module", dict(up=Interpolate(scale_factor=1.7, recompute_scale_factor=True))),
        ("functional_down", dict(functional=dict(size=(4, 3), mode="bilinear", align_corners=False))),
    ]
    if m == "bernoulli2":  # align_corners=True is refused on bayes
        variants += [("upsampling_bilinear2d", dict(up=nn.UpsamplingBilinear2d(scale_factor=1.5))),
                     ("functional_1_3", dict(functional=dict(scale_factor=1.3, mode="bilinear")))]
    return variants


def _resize_module(model):
    """The one resize module (``up``; ``_generated_interpolate_0`` for F.interpolate, also inside ``Interpolate``)."""
    (found,) = [mod for mod in model.modules() if isinstance(mod, (QATUpsample, IntegerUpsample))]
    return found


def _calibrated(m, model, x):
    with march(m):
        qat = prepare_qat_fx(model, {"": Q8})
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    for _ in range(3):
        qat(x + 0.1 * torch.randn_like(x))
    return qat


@pytest.mark.parametrize("m", MARCHES)
def test_validation_state_equals_the_converted_model(m):
    for label, kwargs in _pipeline_variants(m):
        torch.manual_seed(1)
        x = torch.randn(2, 3, 9, 7)
        model = Net(**kwargs).eval()
        qat = _calibrated(m, model, x)
        qat_up = _resize_module(qat)
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        expected = qat(x)
        quantized = convert_fx(qat)
        assert torch.equal(quantized(x), expected), (m, label)
        assert torch.nn.functional.cosine_similarity(expected.flatten(), model(x).flatten(), dim=0) > 0.98, label

        # layer level: the QAT module's VALIDATION output is the integer module's codes at the input's scale
        int_up = _resize_module(quantized)
        assert isinstance(qat_up, QATUpsample) and isinstance(int_up, IntegerUpsample), label
        scale = qat_up.input_params(0).scale
        codes = torch.randint(-128, 128, (2, 6, 9, 7), dtype=torch.int8)
        assert torch.equal(qat_up(codes.float() * scale), int_up(codes).float() * scale), label


@pytest.mark.parametrize("m", MARCHES)
def test_qat_and_calibration_states_compute_float_bilinear(m):
    torch.manual_seed(2)
    x = torch.randn(1, 3, 6, 5)
    up = nn.Upsample(scale_factor=2, mode="bilinear")
    qat = _calibrated(m, Net(up=up).eval(), x)
    t = torch.randn(1, 6, 6, 5)
    for state in (FakeQuantState.CALIBRATION, FakeQuantState.QAT):
        set_fake_quantize(qat, state)
        assert torch.equal(qat.up(t), F.interpolate(t, scale_factor=2, mode="bilinear"))
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    scale = qat.up.input_params(0).scale
    out = qat.up(t)
    assert torch.equal(out, torch.round(out / scale) * scale)  # on the input's grid


@pytest.mark.parametrize("m", MARCHES)
def test_pipeline_error_against_float_is_about_one_lsb(m):
    """Through calibrated scales: integer resize vs torch's float bilinear of the same dequantized input."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 11, 9)
    qat = _calibrated(m, Net(up=nn.Upsample(size=(17, 20), mode="bilinear")).eval(), x)
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert_fx(qat)
    captured = {}
    quantized.up.register_forward_hook(lambda mod, inp, out: captured.update(q=inp[0], out=out))
    quantized(x)
    ref = F.interpolate(captured["q"].double(), size=(17, 20), mode="bilinear")
    err = (captured["out"].double() - ref).abs()
    assert err.max() <= 1.5 and (err > 1).float().mean() < 0.01


@pytest.mark.parametrize("m", MARCHES)
def test_eager_interpolate_and_torchscript(m):
    class Eager(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv = nn.Conv2d(3, 4, 1)
            self.interp = Interpolate(size=(10, 7))
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.interp(self.conv(self.quant(x))))

    torch.manual_seed(4)
    x = torch.randn(1, 3, 5, 6)
    model = Eager()
    model.qconfig = Q8
    with march(m):
        qat = prepare_qat(model)
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat(x)
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    expected = qat(x)
    quantized = convert(qat)
    assert torch.equal(quantized(x), expected)
    traced = torch.jit.trace(quantized, x)
    assert torch.equal(traced(x), expected)


# -- the op tables' limits ---------------------------------------------------------------------------------------
def _refused(m, model, *patterns, x=None):
    with march(m):
        with pytest.raises(UnsupportedOpError) as info:
            qat = prepare_qat_fx(model, {"": Q8})
            qat(x)
    text = str(info.value)
    for p in patterns:
        assert p in text, (p, text)
    return text


def _upsample_net(up):
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.up = up
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.up(self.quant(x)))

    return Up()


@pytest.mark.parametrize("m,rule", [("bernoulli2", "支持 nearest 和 billinear 插值模式"),
                                    ("bayes", "只支持 nearest 和 billinear 插值模式")])
def test_other_modes_are_refused(m, rule):
    _refused(m, Net(up=nn.Upsample(scale_factor=2, mode="bicubic")),
             "'up' (torch.nn.Upsample)", "mode='bicubic'", rule, f"march {m!r}")


def test_bernoulli2_scale_range_at_prepare():
    for scale in (300, 257.0, 1 / 256, (2, 1 / 300)):
        _refused("bernoulli2", Net(up=nn.Upsample(scale_factor=scale, mode="bilinear")),
                 "'up' (torch.nn.Upsample)", "scale_factor=", "1/256<缩放比例<=256", "march 'bernoulli2'")
    with march("bernoulli2"):  # the bounds themselves: 256 allowed, just above 1/256 allowed
        prepare_qat_fx(Net(up=nn.Upsample(scale_factor=256, mode="bilinear")), {"": Q8})
        prepare_qat_fx(Net(up=nn.Upsample(scale_factor=1 / 255, mode="bilinear")), {"": Q8})


def test_bernoulli2_scale_range_at_run_time_with_size():
    """size= fixes the scale only when the input arrives: the QAT and the integer module check it then."""
    model = _upsample_net(nn.Upsample(size=(300, 2), mode="bilinear"))
    text = _refused("bernoulli2", model, "'up' (torch.nn.Upsample)", "resizing [1, 1] to [300, 2]",
                    "1/256<缩放比例<=256", "march 'bernoulli2'", x=torch.randn(1, 2, 1, 1))
    assert "scale 300, 2" in text
    with march("bernoulli2"):
        qat = prepare_qat_fx(model, {"": Q8})
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    qat(torch.randn(1, 2, 2, 2))  # scale 150, 1: fine
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    quantized = convert_fx(qat)
    with pytest.raises(UnsupportedOpError, match=r"'up' \(torch.nn.Upsample\).*1/256<缩放比例<=256.*'bernoulli2'"):
        quantized(torch.randn(1, 2, 1, 1))


@pytest.mark.parametrize("up", [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                nn.UpsamplingBilinear2d(scale_factor=2)])
def test_bayes_refuses_align_corners_true(up):
    op = "torch.nn.UpsamplingBilinear2d" if isinstance(up, nn.UpsamplingBilinear2d) else "torch.nn.Upsample"
    _refused("bayes", Net(up=up), f"'up' ({op})", "align_corners=True", "align_corners 支持 False 和 None",
             "march 'bayes'")


def test_bayes_needs_recompute_scale_factor_for_fractional_scales():
    _refused("bayes", Net(functional=dict(scale_factor=1.3, mode="bilinear", align_corners=False)),
             "'_generated_interpolate_0' (torch.nn.Upsample)", "scale_factor=1.3 without recompute_scale_factor=True",
             "scale=[] 时要求 recompute_scale_factors 为 True", "march 'bayes'")
    with march("bayes"):  # integer factors step by 1/s = in/out either way; recompute_scale_factor=True always fits
        prepare_qat_fx(Net(up=nn.Upsample(scale_factor=2, mode="bilinear")), {"": Q8})
        prepare_qat_fx(Net(up=nn.Upsample(scale_factor=1.3, mode="bilinear", recompute_scale_factor=True)), {"": Q8})
        prepare_qat_fx(Net(up=Interpolate(scale_factor=0.5, recompute_scale_factor=True)), {"": Q8})


@pytest.mark.parametrize("shape", [(1, 8193, 2, 2), (1, 1, 2, 8193), (1, 1, 8193, 1)])
def test_bayes_shape_limit_at_run_time(shape):
    _refused("bayes", _upsample_net(nn.Upsample(scale_factor=1, mode="bilinear")), "'up' (torch.nn.Upsample)",
             f"input shape {list(shape)}", "1<=C, H, W<=8192", "march 'bayes'", x=torch.zeros(shape))


def test_bayes_refuses_int16_input():
    with march("bayes"), pytest.raises(UnsupportedOpError) as info:
        prepare_qat_fx(Net(up=nn.Upsample(scale_factor=2, mode="bilinear")), {"": Q16})
    text = str(info.value)
    assert "'up' (torch.nn.Upsample) input 0" in text and "qint16 is not accepted on march 'bayes'" in text


def test_a_march_without_a_bilinear_format_refuses_to_compute_it(monkeypatch):
    import attrs

    from qframe_core.registry import registry

    spec = resolve_march("bayes")
    monkeypatch.setattr(registry, "march", lambda name: attrs.evolve(spec, bilinear=None))
    with pytest.raises(UnsupportedOpError, match="declares no bilinear format"):
        IntegerUpsample(nn.Upsample(scale_factor=2, mode="bilinear"), QuantParams(torch.tensor(0.1), qint8),
                        "up", "bayes")(torch.zeros(1, 1, 2, 2, dtype=torch.int8))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_still_copies_codes(dtype, mode):
    # int8 runs torch's op on the same bits read as uint8, int16 on exact float32 values: every code, both
    # memory formats, non-integer factors
    info = torch.iinfo(dtype)
    for size, factor in (((1, 2, 3, 3), 2), ((2, 3, 5, 7), 1.5), ((1, 4, 4, 6), (0.5, 3))):
        up = nn.Upsample(scale_factor=factor, mode=mode)
        q = torch.randint(info.min, info.max + 1, size, dtype=dtype)
        q.view(-1)[:2] = torch.tensor([info.min, info.max], dtype=dtype)
        for x in (q, q.contiguous(memory_format=torch.channels_last)):
            got = _integer_module("bayes", up)(x)
            assert got.dtype == dtype
            assert torch.equal(got, F.interpolate(q.double(), scale_factor=factor, mode=mode).to(dtype))
    assert qnn.ScalePreserving in type(_integer_module("bayes", nn.Upsample(scale_factor=2))).__mro__
