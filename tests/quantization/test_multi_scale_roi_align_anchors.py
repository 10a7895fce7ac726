"""MultiScaleRoIAlign and AnchorGenerator (torchvision's detection ops) on both marches.

MultiScaleRoIAlign: the integer module is checked bit for bit against a Python-int reference of the documented
rule (qframe_core/roi_align.py): each box's level from its exact code area compared with the level boundaries
``area * s_b**2 >= 224**2 * 4**(k - 4)`` in exact fractions, then the integer RoIAlign of that level sample by
sample with the level's rescale ``s_level / s_out`` (``s_out`` the largest feature scale) folded into the Q20
reciprocal. The float mirror follows torchvision (level mapping, scale inference). The QAT model in VALIDATION state
must equal the converted model (fx with a dict of features, eager); the table's rules are refused with
UnsupportedOpError naming the module, the op, the march and the rule. AnchorGenerator: float32 anchors from the
shapes, the same in the float, QAT and converted models.
"""

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from qframe_core.dtype import qint8, qint16
from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march
from qframe_core.nn import AnchorGenerator, MultiScaleRoIAlign, roi_align
from qframe_core.nn.quantized.roi_align import MultiScaleRoIAlign as IntegerMultiScaleRoIAlign
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
from qframe_core.registry import registry

#: documented formats: (coordinate, weight, box-multiplier fraction bits, rounding)
FORMATS = {"bayes": (16, 12, 32, "half_even"), "bernoulli2": (16, 8, 32, "half_up")}


def _shift(v, s, rounding):
    if rounding == "half_up":
        return (v + (1 << (s - 1))) >> s
    q, r = divmod(v, 1 << s)
    if r > (1 << (s - 1)) or (r == (1 << (s - 1)) and q % 2 == 1):
        q += 1
    return q


def ref_one_box(ql, n, box, box_scale, out_hw, spatial_scale, ratio, rescale, march_name, qmin=-128, qmax=127):
    """One box of the integer RoIAlign (aligned=False) with Python ints, sample by sample."""
    f, wb, mb, rounding = FORMATS[march_name]
    C, H, W = len(ql[n]), len(ql[n][0]), len(ql[n][0][0])
    ph_n, pw_n = out_hw
    a = math.floor(Fraction(box_scale) * Fraction(spatial_scale) * 2 ** mb + Fraction(1, 2))
    x1, y1, x2, y2 = (_shift(b * a, mb - f, rounding) for b in box)
    rw, rh = max(x2 - x1, 2 ** f), max(y2 - y1, 2 ** f)
    bw, bh = rw // pw_n, rh // ph_n
    gx = ratio if ratio > 0 else -(-rw // (pw_n * 2 ** f))
    gy = ratio if ratio > 0 else -(-rh // (ph_n * 2 ** f))
    recip = math.floor(Fraction(2 ** 20) * rescale / max(gx * gy, 1) + Fraction(1, 2))

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
                plane[c][p][r] = min(max(_shift(acc * recip, 2 * wb + 20, rounding), qmin), qmax)
    return plane


def reference(qs, feature_scales, boxes, box_scale, image_hw, out_hw, ratio, march_name):
    """The documented multi-scale rule: scales 2**round(log2(feature / image)), level by exact area comparison."""
    spatial = [2.0 ** round(math.log2(q.shape[-2] / image_hw[0])) for q in qs]
    k_min, k_max = round(-math.log2(spatial[0])), round(-math.log2(spatial[-1]))
    s_out = max(Fraction(s) for s in feature_scales)
    out = []
    for n, codes in enumerate(boxes):
        for box in codes.tolist():
            area = Fraction((box[2] - box[0]) * (box[3] - box[1])) * Fraction(box_scale) ** 2
            k = k_min
            while k < k_max and area > 0 and area >= Fraction(224) ** 2 * Fraction(4) ** (k + 1 - 4):
                k += 1
            lvl = k - k_min if len(qs) > 1 else 0
            out.append(ref_one_box(qs[lvl].tolist(), n, box, box_scale, out_hw, spatial[lvl], ratio,
                                   Fraction(feature_scales[lvl]) / s_out, march_name))
    return torch.tensor(out, dtype=torch.int64)


IMAGE = (256, 320)
SHAPES = [(64, 80), (32, 40), (16, 20)]  # levels 2, 3, 4


def _box_codes(k, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.rand(k, 1, generator=gen) * math.log(300.0)) * (0.7 + 0.6 * torch.rand(k, 2, generator=gen))
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([300.0, 240.0]) - 10
    boxes = torch.cat([xy, xy + side + 3], 1)  # sides 3 .. 393 px
    big = torch.tensor([[5.0, 7.0, 160.0, 150.0], [12.0, 3.0, 261.0, 250.0]])  # levels 3 and 4
    boxes = torch.cat([boxes, big + seed], 0)
    return torch.round(boxes / scale).clamp(-qmax_of(scale), qmax_of(scale)).to(torch.int64)


def qmax_of(scale):
    return 127 if scale > 1 else 32767


def _integer_module(march_name, feature_scales, box_dtype, box_scale, ratio, n_images, names=("0", "1", "2")):
    m = MultiScaleRoIAlign(list(names), (3, 2), ratio)
    limits = registry.lowering(march_name, MultiScaleRoIAlign).limits
    return IntegerMultiScaleRoIAlign(m, [QuantParams(torch.tensor([s]), qint8) for s in feature_scales],
                                     [QuantParams(torch.tensor([box_scale]), box_dtype)] * n_images,
                                     list(range(len(names))), len(names), "msroi", march_name, limits)


@pytest.mark.parametrize("march_name,box_dtype,ratio", [("bayes", qint16, 2), ("bayes", qint8, -1),
                                                        ("bernoulli2", qint8, 2)])
def test_multi_scale_integer_module_matches_the_reference_bit_for_bit(march_name, box_dtype, ratio):
    gen = torch.Generator().manual_seed(3)
    qs = [torch.randint(-128, 128, (2, 2, *hw), generator=gen) for hw in SHAPES]
    feature_scales = [0.04, 0.07, 0.02]
    box_scale = float(torch.tensor(700.0 / box_dtype.quant_max, dtype=torch.float32))
    b0, b1 = _box_codes(9, 1, box_scale), _box_codes(6, 2, box_scale)
    mod = _integer_module(march_name, feature_scales, box_dtype, box_scale, ratio, 2)
    got = mod({str(i): q.to(torch.int8) for i, q in enumerate(qs)}, [b.to(box_dtype.torch_dtype) for b in (b0, b1)],
              [IMAGE, IMAGE])
    ref = reference(qs, feature_scales, [b0, b1], box_scale, IMAGE, (3, 2), ratio, march_name)
    assert torch.equal(got.to(torch.int64), ref)
    # the boxes reach every level (k = 2, 3, 4)
    from qframe_core.roi_align import int_levels, level_thresholds
    assert set(torch.cat([int_levels(b, level_thresholds(box_scale, 2, 4)) for b in (b0, b1)]).tolist()) == {0, 1, 2}


def test_integer_levels_match_torchvision_level_mapping():
    from qframe_core.roi_align import float_levels, int_levels, level_thresholds

    box_scale = 0.5
    codes = _box_codes(400, 5, box_scale)
    fl = float_levels([codes.double() * box_scale], 1, 4)
    il = int_levels(codes, level_thresholds(box_scale, 1, 4))
    assert torch.equal(fl, il)
    assert set(il.tolist()) == {0, 1, 2, 3}


def test_float_multi_scale_matches_per_level_roi_align_and_list_equals_dict():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 3, *hw, generator=gen, dtype=torch.float64) for hw in SHAPES]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 30.0], [10.0, 10.0, 200.0, 180.0], [5.0, 5.0, 90.0, 100.0]],
                          dtype=torch.float64)]
    m = MultiScaleRoIAlign(["a", "b", "c"], 2, 2)
    out = m({"a": feats[0], "skip": feats[1], "b": feats[1], "c": feats[2]}, boxes, [IMAGE])
    assert torch.equal(out, m(feats, boxes, [IMAGE]))
    # sqrt(area): 24.5 -> level 2 (clamped), 184.4 -> 3, 92.2 -> 2 (floor(4 + log2(92.2/224)) = 2)
    for i, (lvl, sc) in enumerate([(0, 0.25), (1, 0.125), (0, 0.25)]):
        assert torch.equal(out[i:i + 1], roi_align(feats[lvl], [boxes[0][i:i + 1]], 2, sc, 2))


def test_multi_scale_error_against_float():
    gen = torch.Generator().manual_seed(9)
    qs = [torch.randint(-128, 128, (1, 4, *hw), generator=gen) for hw in SHAPES]
    feature_scales = [0.04, 0.07, 0.02]
    box_scale = float(torch.tensor(700.0 / 32767, dtype=torch.float32))
    b = _box_codes(30, 4, box_scale)
    got = _integer_module("bayes", feature_scales, qint16, box_scale, 2, 1)(
        {str(i): q.to(torch.int8) for i, q in enumerate(qs)}, [b.to(torch.int16)], [IMAGE])
    feats = {str(i): q.double() * s for i, (q, s) in enumerate(zip(qs, feature_scales))}
    ref = MultiScaleRoIAlign(["0", "1", "2"], (3, 2), 2)(feats, [b.double() * box_scale], [IMAGE])
    err = (got.double() * max(feature_scales) - ref).abs() / max(feature_scales)
    # measured (3 seeds): bayes qint16 boxes max 0.505 LSB of s_out, mean <= 0.238; bernoulli2 max 0.644
    assert err.max().item() <= 0.8 and err.mean().item() <= 0.3


class MSNet(nn.Module):
    def __init__(self, names=("p2", "p3", "p4"), ratio=2):
        super().__init__()
        self.qx, self.qb0, self.qb1, self.dq = QuantStub(), QuantStub(), QuantStub(), DeQuantStub()
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.c3 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.pool = MultiScaleRoIAlign(list(names), (3, 2), ratio)

    def forward(self, x, b0, b1):
        x = self.qx(x)
        feats = {"p2": self.c2(x), "p3": self.c3(x), "p4": self.c4(x)}
        return self.dq(self.pool(feats, [self.qb0(b0), self.qb1(b1)], [(64, 80), (64, 80)]))


def _ms_inputs(seed):
    gen = torch.Generator().manual_seed(seed)

    def boxes(k):
        xy = torch.rand(k, 2, generator=gen) * torch.tensor([60.0, 50.0])
        return torch.cat([xy, xy + torch.exp(torch.rand(k, 2, generator=gen) * 4) + 1], 1)
    return torch.randn(2, 3, 16, 20, generator=gen), boxes(4), boxes(3)


class _Small(MSNet):  # feature maps 16x20, 8x10, 4x5 of a 64x80 image: levels 2, 3, 4 with canonical_scale 16
    def __init__(self, **kw):
        super().__init__(**kw)
        self.pool.canonical_scale = 16


@pytest.mark.parametrize("march_name,box_qconfig", [("bayes", Q16), ("bayes", Q8), ("bernoulli2", Q8)])
def test_multi_scale_validation_state_equals_the_converted_model(march_name, box_qconfig):
    with march(march_name):
        qat = prepare_qat_fx(_Small(), {"": Q8, "module_name": [("qb0", box_qconfig), ("qb1", box_qconfig)]})
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        for s in range(3):
            qat(*_ms_inputs(s))
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        inputs = _ms_inputs(7)
        validation = qat(*inputs)
        assert validation.shape == (7, 4, 3, 2)
        assert torch.equal(validation, convert_fx(qat)(*inputs))
        # the float model's levels are spread over all three maps on these inputs
        from qframe_core.roi_align import float_levels
        assert set(float_levels(list(inputs[1:]), 2, 4, 16).tolist()) == {0, 1, 2}


def test_multi_scale_eager():
    model = _Small()
    model.qconfig = Q8
    model.qb0.qconfig = model.qb1.qconfig = Q16
    with march("bayes"):
        qat = prepare_qat(model)
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        qat(*_ms_inputs(0))
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        inputs = _ms_inputs(1)
        assert torch.equal(qat(*inputs), convert(qat.eval())(*inputs))


class MSTensorBoxes(nn.Module):
    def __init__(self, n_maps=1):
        super().__init__()
        self.qx, self.qb, self.dq = QuantStub(), QuantStub(), DeQuantStub()
        self.pool = MultiScaleRoIAlign([str(i) for i in range(n_maps)], 2, 2)

    def forward(self, x, rois):
        x = self.qx(x)
        return self.dq(self.pool([x] * len(self.pool.featmap_names), self.qb(rois), [(8, 8)]))


def test_multi_scale_tensor_boxes_are_refused():
    with march("bayes"), pytest.raises(UnsupportedOpError) as info:
        qat = prepare_qat_fx(MSTensorBoxes(), {"": Q8, "module_name": [("qb", Q16)]})
        qat(torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 1, 1, 5, 5]]))
    for p in ("'pool'", "MultiScaleRoIAlign", "'bayes'", "bbox 仅支持 List[Tensor] 格式"):
        assert p in str(info.value), str(info.value)


class MSSix(nn.Module):
    def __init__(self):
        super().__init__()
        self.qx, self.qb, self.dq = QuantStub(), QuantStub(), DeQuantStub()
        self.pool = MultiScaleRoIAlign([str(i) for i in range(6)], 2, 2)

    def forward(self, x, b):
        x = self.qx(x)
        return self.dq(self.pool([x, x, x, x, x, x], [self.qb(b)], [(8, 8)]))


def test_multi_scale_more_than_five_feature_maps_are_refused_on_bayes():
    with march("bayes"), pytest.raises(UnsupportedOpError) as info:
        qat = prepare_qat_fx(MSSix(), {"": Q8, "module_name": [("qb", Q16)]})
        qat(torch.randn(1, 2, 8, 8), torch.tensor([[1.0, 1, 5, 5]]))
    for p in ("'pool'", "MultiScaleRoIAlign", "'bayes'", "1<=feature number<=5"):
        assert p in str(info.value), str(info.value)


class MSInt16(nn.Module):
    def __init__(self):
        super().__init__()
        self.qx, self.qb, self.dq = QuantStub(), QuantStub(), DeQuantStub()
        self.pool = MultiScaleRoIAlign(["0"], 2, 2)

    def forward(self, x, b):
        return self.dq(self.pool([self.qx(x)], [self.qb(b)], [(8, 8)]))


def test_multi_scale_int16_features_are_refused_on_bayes():
    with march("bayes"), pytest.raises(UnsupportedOpError) as info:
        qat = prepare_qat_fx(MSInt16(), {"": Q16})
        qat(torch.randn(1, 2, 8, 8), torch.tensor([[1.0, 1, 5, 5]]))
    for p in ("'pool'", "MultiScaleRoIAlign", "'bayes'", "input：qint8"):
        assert p in str(info.value), str(info.value)


# -- AnchorGenerator --------------------------------------------------------------------------------------------------
def test_anchor_generator_matches_torchvision_rule():
    gen = AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    feats = [torch.zeros(1, 4, 4, 5), torch.zeros(1, 4, 2, 3)]
    anchors = gen(torch.zeros(2, 3, 32, 40), feats)
    assert len(anchors) == 2 and anchors[0].dtype == torch.float32
    assert anchors[0].shape == (4 * 5 * 3 + 2 * 3 * 3, 4)
    # cell anchors: [-w, -h, w, h] / 2 rounded with w = size / sqrt(r), h = size * sqrt(r); stride 8 then 16/13
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    assert anchors[0][0].tolist() == [round(-w / 2), round(-h / 2), round(w / 2), round(h / 2)]
    assert anchors[0][3].tolist() == [8 + round(-w / 2), round(-h / 2), 8 + round(w / 2), round(h / 2)]
    assert anchors[0][60 + 3].tolist() == [13 - 45, -23, 13 + 45, 23]  # second map: stride (16, 13), size 64, r 0.5


class AnchorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.qx, self.dq = QuantStub(), DeQuantStub()
        self.c = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.anchors = AnchorGenerator(((16,),), ((1.0, 2.0),))

    def forward(self, x):
        f = self.c(self.qx(x))
        return self.dq(f), self.anchors(x, [f])


@pytest.mark.parametrize("march_name,qconfig", [("bayes", Q8), ("bayes", Q16), ("bernoulli2", Q8)])
def test_anchor_generator_output_is_float32_and_identical_after_convert(march_name, qconfig):
    x = torch.randn(2, 3, 16, 20)
    expected = AnchorNet().anchors(x, [torch.zeros(2, 4, 4, 5)])
    with march(march_name):
        qat = prepare_qat_fx(AnchorNet(), {"": qconfig})
        set_fake_quantize(qat, FakeQuantState.CALIBRATION)
        qat(x)
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        _, a_qat = qat(x)
        _, a_int = convert_fx(qat)(x)
    for a in (a_qat, a_int):
        assert len(a) == 2 and all(t.dtype == torch.float32 and torch.equal(t, e) for t, e in zip(a, expected))
