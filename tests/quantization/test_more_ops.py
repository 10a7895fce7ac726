"""Pooling, ReLU6, sub, mul and cat: integer model == QAT validation, and an independent reference."""

import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march, resolve_march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class OpsNet(nn.Module):
    def __init__(self, adaptive: bool):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.relu6 = nn.ReLU6()
        self.avg = nn.AdaptiveAvgPool2d((2, 3)) if adaptive else nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.relu6(self.pool(self.conv(self.quant(x))))  # standalone ReLU6 (not after a conv)
        a, b = self.a(x), self.b(x)
        y = torch.cat([a * b, a - b, x], dim=1)
        return self.dequant(self.avg(y))


@pytest.mark.parametrize("m,adaptive", [("bernoulli2", False), ("bayes", False), ("bayes", True)])
def test_integer_model_equals_qat_validation(m, adaptive):
    torch.manual_seed(3)
    model = OpsNet(adaptive).eval()
    x = torch.randn(3, 3, 13, 11) * 3
    with march(m):
        q = prepare_qat_fx(copy.deepcopy(model), {"": Q8})
    names = {type(mod).__name__ for mod in q.modules()}
    assert {"AvgPool2d", "ScalePreserving", "FloatFunctional"} <= names
    assert {"_generated_mul_0", "_generated_sub_0", "_generated_cat_0"} <= set(dict(q.named_children()))
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    expected = q(x)
    got = convert_fx(q)(x)
    assert torch.equal(got, expected), (got - expected).abs().max()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), model(x).flatten(), dim=0)
    assert cos > 0.98


def _ref_round_shift(v, s, half_up):
    x = Fraction(int(v), 2 ** int(s))
    fl = x.numerator // x.denominator
    frac = x - fl
    if frac != Fraction(1, 2):
        return fl + (1 if frac > Fraction(1, 2) else 0)
    return fl + 1 if half_up or fl % 2 else fl


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_avg_pool_against_a_loop_reference(m):
    from qframe_core.dtype import qint8
    from qframe_core.nn.integer_pooling import int_avg_pool
    from qframe_core.quantization.fake_quantize import QuantParams

    rule = resolve_march(m).requant
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (1, 2, 7, 6), generator=g)
    inp, out = QuantParams(torch.tensor([0.05]), qint8), QuantParams(torch.tensor([0.031]), qint8)
    pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    got = int_avg_pool(q, pool, inp, out, rule, "test").numpy()
    qn = q.numpy()
    want = np.zeros_like(got)
    for c in range(2):
        for i in range(got.shape[2]):
            for j in range(got.shape[3]):
                rows = [r for r in range(2 * i - 1, 2 * i + 2) if 0 <= r < 7]
                cols = [k for k in range(2 * j - 1, 2 * j + 2) if 0 <= k < 6]
                total = int(sum(qn[0, c, r, k] for r in rows for k in cols))
                div = len(rows) * len(cols)
                mult, shift = rule.multipliers(torch.tensor([[0.05 / (div * 0.031)]], dtype=torch.float64))
                y = _ref_round_shift(total * int(mult), int(shift), m == "bernoulli2")
                want[0, c, i, j] = min(max(y, -128), 127)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_integer_avg_pool_kernel_path_equals_the_float64_rule(m):
    """The integer AvgPool2d (int32 sums: a global pool by an int32 sum, a window pool in float32, requantized on
    the march kernel per tensor or per output position) equals the rule's float64 sums on full-range codes."""
    from qframe_core.dtype import qint8, qint16
    from qframe_core.nn import integer_pooling
    from qframe_core.nn.quantized.pooling import AvgPool2d as IntegerAvgPool2d
    from qframe_core.quantization.fake_quantize import QuantParams

    rule = resolve_march(m).requant
    g = torch.Generator().manual_seed(2)
    for dt in (qint8, qint16):
        info = torch.iinfo(dt.torch_dtype)
        q = torch.randint(info.min, info.max + 1, (2, 3, 9, 11), generator=g).to(dt.torch_dtype)
        inp, out = QuantParams(torch.tensor([0.05]), dt), QuantParams(torch.tensor([0.031]), dt)
        for pool in (nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((2, 3)), nn.AvgPool2d(2),
                     nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1, ceil_mode=True),
                     nn.AvgPool2d((5, 4), 1, 2, count_include_pad=False)):
            wide = q.to(torch.int64)  # int64 codes: the float64 sums and the torch requantization
            want = integer_pooling.int_avg_pool(wide, pool, inp, out, rule, "t").to(dt.torch_dtype)
            mod = IntegerAvgPool2d(pool, inp, out, m, "pool")
            for x in (q, q.contiguous(memory_format=torch.channels_last)):
                assert torch.equal(mod(x), want), (dt, pool)
                assert torch.equal(mod(x), want)  # the cached multipliers


def test_relu6_snaps_to_the_input_grid():
    from qframe_core.dtype import qint8
    from qframe_core.numerics import relu6_bound

    scale = torch.tensor([0.07])
    assert relu6_bound(scale) == 86  # 6 / 0.07 = 85.71 -> 86
    assert relu6_bound(torch.tensor([0.1])) == 60
    assert qint8.quant_max == 127


def test_table_rules_for_pooling():
    class Adaptive(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.pool(self.quant(x)))

    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match="AdaptiveAvgPool2d is not supported on bernoulli2"):
        prepare_qat_fx(Adaptive(), {"": Q8})

    class BigPool(Adaptive):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(65)

    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"kernel_size=65 breaks 1<=kernel<=64"):
        prepare_qat_fx(BigPool(), {"": Q8})


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_functional_kernels_equal_the_torch_rules(m):
    """The integer FloatFunctional's methods on the march kernels -- add, sub, mul (broadcast operands, channels-last
    pairs), matmul (broadcast batch dims), maximum/minimum, mul/add with a constant, cat, sum/mean -- equal the
    torch rules of qframe_core.nn.integer_functional (which QAT runs), on full-range int8/int16 codes with random
    scales."""
    from qframe_core.dtype import qint8, qint16
    from qframe_core.nn import integer_functional as intf
    from qframe_core.nn.quantized.qfunctional import QFunctional
    from qframe_core.quantization.fake_quantize import QuantParams

    rule = resolve_march(m).requant
    g = torch.Generator().manual_seed(11)

    def codes(shape, dt):
        info = torch.iinfo(dt.torch_dtype)
        return torch.randint(info.min, info.max + 1, shape, generator=g, dtype=torch.int64).to(dt.torch_dtype)

    def qp(dt):
        return QuantParams(torch.tensor([float(torch.rand(1, generator=g)) * 0.1 + 1e-3]), dt)

    for da, db, do in ((qint8, qint8, qint8), (qint16, qint8, qint16), (qint16, qint16, qint8)):
        for sa, sb in (((2, 5, 6, 7), (2, 5, 6, 7)), ((2, 5, 6, 7), (2, 5, 1, 1)), ((3, 1, 4), (5, 1))):
            a, b = codes(sa, da), codes(sb, db)
            pa, pb, po = qp(da), qp(db), qp(do)
            for method, params, ref in (("add", intf.sum_params(rule, pa, pb, po, "t"), intf.int_add),
                                        ("sub", intf.sum_params(rule, pa, pb, po, "t"), intf.int_sub),
                                        ("mul", intf.mul_params(rule, pa, pb, po, "t"), intf.int_mul)):
                mod = QFunctional(m, "f", method, params)
                want = ref(a, b, params, rule).to(do.torch_dtype)
                assert torch.equal(getattr(mod, method)(a, b), want), (method, sa, sb)
                if len(sa) == 4 and sa == sb:
                    cl = getattr(mod, method)(a.contiguous(memory_format=torch.channels_last),
                                              b.contiguous(memory_format=torch.channels_last))
                    assert torch.equal(cl, want), (method, "channels_last")
        # matmul (broadcast batch dims), maximum/minimum, mul/add with a constant (negative too)
        a, b = codes((2, 3, 5, 7), da), codes((3, 7, 4), db)
        params = intf.mul_params(rule, qp(da), qp(db), qp(do), "t")
        want = intf.int_matmul(a, b, params, rule).to(do.torch_dtype)
        assert torch.equal(QFunctional(m, "f", "matmul", params).matmul(a, b), want)
        a, b = codes((2, 5, 6), da), codes((2, 5, 6), db)
        params = intf.cat_params(rule, [qp(da), qp(db)], qp(do), "t")
        for method, pick in (("maximum", torch.maximum), ("minimum", torch.minimum)):
            want = intf.int_extremum(a, b, params, rule, pick).to(do.torch_dtype)
            assert torch.equal(getattr(QFunctional(m, "f", method, params), method)(a, b), want), method
        for value, mul in ((0.37, True), (-2.5, True), (0.8, False), (-0.05, False)):
            params = intf.scalar_params(rule, qp(da), qp(do), value, mul, "t")
            method = "mul_scalar" if mul else "add_scalar"
            want = intf.int_scalar(a, params, rule).to(do.torch_dtype)
            assert torch.equal(getattr(QFunctional(m, "f", method, params), method)(a, value), want), (method, value)
        parts = [codes((2, 3, 4, 5), da), codes((2, 2, 4, 5), db)]
        po = qp(do)
        same = QuantParams(po.scale, da)  # a part on the output's grid: copied when the dtypes agree
        for params in (intf.cat_params(rule, [qp(da), qp(db)], po, "t"), intf.cat_params(rule, [same, qp(db)], po, "t")):
            want = intf.int_cat(parts, params, rule, 1).to(do.torch_dtype)
            mod = QFunctional(m, "f", "cat", params)
            assert torch.equal(mod.cat(parts, 1), want)
            cl = [t.contiguous(memory_format=torch.channels_last) for t in parts]
            assert torch.equal(mod.cat(cl, 1), want) and mod.cat(cl, 1).is_contiguous()
            mod.channels_last_output = True  # as convert's layout pass sets it: the same values, channels-last
            assert torch.equal(mod.cat(cl, 1), want)
        for mean in (False, True):
            for dims, keepdim in (((1,), True), ((2, 3), False), ((), False)):
                params = intf.reduce_params(qp(da), qp(do), dims, keepdim, mean)
                x = codes((2, 3, 4, 5), da)
                want = intf.int_reduce(x.to(torch.int64), params, rule, "t").to(do.torch_dtype)
                mod = QFunctional(m, "f", "mean" if mean else "sum", params)
                got = getattr(mod, "mean" if mean else "sum")(x, None if not dims else list(dims), keepdim)
                assert torch.equal(got, want), (mean, dims)
