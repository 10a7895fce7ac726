"""RequantRule against an independent plain-Python reference (fractions)."""

from fractions import Fraction

import pytest
import torch

from qframe_core.dtype import qint8, qint16
from qframe_core.numerics import RequantRule, Rounding, quantize_to_int

RULES = [RequantRule(16, Rounding.HALF_UP), RequantRule(32, Rounding.HALF_EVEN)]


def ref_round_shift(v: int, s: int, rounding: Rounding) -> int:
    x = Fraction(v, 2 ** s)
    fl = x.numerator // x.denominator
    frac = x - fl
    if frac > Fraction(1, 2):
        return fl + 1
    if frac < Fraction(1, 2):
        return fl
    if rounding is Rounding.HALF_UP:
        return fl + 1
    return fl if fl % 2 == 0 else fl + 1


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rounding.value)
def test_round_shift_matches_fraction_reference(rule):
    g = torch.Generator().manual_seed(1)
    v = torch.randint(-(2 ** 40), 2 ** 40, (4000,), generator=g, dtype=torch.int64)
    s = torch.randint(0, 30, (4000,), generator=g, dtype=torch.int64)
    # force exact ties
    v[:500] = (torch.randint(-1000, 1000, (500,), generator=g) * 2 + 1) * (2 ** (s[:500] - 1).clamp(min=0))
    got = rule.round_shift(v, s).tolist()
    want = [ref_round_shift(a, b, rule.rounding) for a, b in zip(v.tolist(), s.tolist())]
    assert got == want


def test_rounding_modes_differ_on_ties():
    up, even = RULES
    v = torch.tensor([5, -5, 7, -7, 3])  # /2 -> 2.5, -2.5, 3.5, -3.5, 1.5
    s = torch.tensor(1)
    assert up.round_shift(v, s).tolist() == [3, -2, 4, -3, 2]
    assert even.round_shift(v, s).tolist() == [2, -2, 4, -4, 2]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rounding.value)
def test_multipliers_use_the_width_and_approximate_the_ratio(rule):
    ratios = torch.tensor([[1e-5], [0.0031], [0.5], [1.0], [3.7], [250.0]], dtype=torch.float64)
    m, s = rule.multipliers(ratios)
    assert (m <= rule.max_multiplier).all() and (m >= 0).all()
    approx = m[:, 0].double() / torch.exp2(s.double())
    rel = ((approx - ratios[:, 0]) / ratios[:, 0]).abs()
    assert (rel < 2.0 ** -(rule.multiplier_bits - 3)).all()
    # the largest multiplier uses the top half of the range (full precision)
    assert (m[:, 0] > rule.max_multiplier // 2).all()


def test_joint_multipliers_share_a_shift():
    rule = RULES[0]
    m, s = rule.multipliers(torch.tensor([[0.01, 0.5]], dtype=torch.float64))
    assert s.shape == (1,) and m.shape == (1, 2)
    assert abs(m[0, 1].item() / 2 ** s.item() - 0.5) < 1e-4


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_multipliers_reject_bad_ratios(bad):
    with pytest.raises(ValueError, match="finite and non-negative"):
        RULES[0].multipliers(torch.tensor([[bad]]))


def test_multiplier_too_large_is_an_error():
    with pytest.raises(ValueError, match="exceeds what a 16-bit multiplier"):
        RULES[0].multipliers(torch.tensor([[1e6]]), what="conv1")


def test_zero_ratio_gives_zero_multiplier():
    m, s = RULES[1].multipliers(torch.tensor([[0.0]]))
    assert m.item() == 0 and s.item() == 0


def test_requantize_saturates_and_clamps():
    rule = RULES[1]
    x = torch.tensor([-1000, -3, 0, 3, 1000])
    q = rule.requantize([(x, torch.tensor(1))], torch.tensor(0), qint8, clamp_min=0)
    assert q.tolist() == [0, 0, 0, 3, 127]
    q16 = rule.requantize([(x * 100, torch.tensor(1))], torch.tensor(0), qint16)
    assert q16.tolist() == [-32768, -300, 0, 300, 32767]


def test_quantize_to_int_rounds_half_even_and_handles_nonfinite():
    x = torch.tensor([0.5, 1.5, -0.5, 2.5, 1000.0, float("nan"), float("inf"), float("-inf")])
    q = quantize_to_int(x, torch.tensor([1.0]), qint8)
    assert q.tolist() == [0, 2, 0, 2, 127, 0, 127, -128]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rounding.value)
def test_round_shift_full_range_broadcast_and_traced(rule):
    """Products up to 2**61 with shifts 0..62, a scalar shift broadcast over values, per-row shifts
    broadcast over columns, and a traced function replayed with other shifts (no data-dependent branch
    may be baked into the trace: rows whose shift is 0 must stay exact)."""
    g = torch.Generator().manual_seed(2)
    v = torch.randint(-(2 ** 61), 2 ** 61, (3000,), generator=g, dtype=torch.int64)
    s = torch.randint(0, 63, (3000,), generator=g, dtype=torch.int64)
    assert rule.round_shift(v, s).tolist() == [ref_round_shift(a, b, rule.rounding) for a, b in zip(v.tolist(), s.tolist())]
    for k in (0, 1, 17, 62):
        assert rule.round_shift(v, torch.tensor(k)).tolist() == [ref_round_shift(a, k, rule.rounding) for a in v.tolist()]
    rows = torch.randint(-(2 ** 20), 2 ** 20, (4, 9), generator=g, dtype=torch.int64)
    per_row = torch.tensor([[0], [3], [1], [9]])
    want = [[ref_round_shift(a, int(per_row[i, 0]), rule.rounding) for a in rows[i].tolist()] for i in range(4)]
    assert rule.round_shift(rows, per_row).tolist() == want
    traced = torch.jit.trace(lambda a, b: rule.round_shift(a, b), (rows, torch.tensor([[5], [3], [1], [9]])))
    assert traced(rows, per_row).tolist() == want


def test_exact_integer_op_in_float32_and_float64():
    """Convolutions/linears of integer codes: the float32 path (bound <= 2**24) equals the float64 path,
    including at the bound; a lowered float32 matmul precision switches to float64."""
    import torch.nn.functional as F

    from qframe_core.numerics import FLOAT32_EXACT, exact_integer_op, float32_is_ieee

    g = torch.Generator().manual_seed(5)
    x = torch.randint(-128, 128, (2, 64, 9, 9), generator=g)
    x[0, :, 0, 0] = -128
    w = torch.randint(-128, 128, (64, 64, 4, 4), generator=g)  # ConvTranspose2d weight [I, O, kh, kw]
    w[:, 0, 0, 0] = -128
    ops = [(lambda a, b: F.conv_transpose2d(a, b, None, 2, 1), 64 * 16),  # 128 * 128 * 1024 = 2**24 exactly
           (lambda a, b: F.conv2d(a, b.transpose(0, 1), None, 1, 1), 64 * 16),
           (lambda a, b: F.linear(a.flatten(1)[:, :64], b[:, :, 0, 0]), 64)]
    assert 128 * 128 * 1024 == FLOAT32_EXACT and float32_is_ieee(x.device)
    for op, reduction in ops:
        want = torch.round(op(x.double(), w.double())).to(torch.int64)
        assert torch.equal(exact_integer_op(op, x, w, reduction), want)
        assert torch.equal(exact_integer_op(op, x * 2, w, reduction), torch.round(op(x.double() * 2, w.double())).long())
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not float32_is_ieee(x.device)
        assert torch.equal(exact_integer_op(ops[2][0], x, w, 64), torch.round(ops[2][0](x.double(), w.double())).long())
    finally:
        torch.set_float32_matmul_precision(old)
