"""Integer semantics of FloatFunctional's add, sub, mul, cat, sum, mean and matmul.

``*_params`` turn float scales into the integers a march computes with
(its :class:`~qframe_core.numerics.RequantRule`); ``int_*`` apply them in
torch.  QAT simulation (VALIDATION state) calls these; the integer model runs
add, sub, mul, cat and sum/mean on the march's C++ kernels (``add`` with a
negated second multiplier for sub, ``mul``, ``requantize``), tested bit-exact
against the ``int_*`` functions here.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams
from .requant_params import requant_multipliers


@attrs.frozen
class BinaryIntParams:
    """``out = clamp(round_shift(a * ma ± b * mb, shift))`` (add/sub) or ``round_shift(a * b * ma, shift)`` (mul)."""

    a: QuantParams
    b: QuantParams
    output: QuantParams
    multiplier_a: int
    multiplier_b: int
    shift: int


@attrs.frozen
class CatIntParams:
    """Each input requantized to the output scale with its own multiplier and shift."""

    inputs: tuple[QuantParams, ...]
    output: QuantParams
    multipliers: tuple[int, ...]
    shifts: tuple[int, ...]


def sum_params(rule: RequantRule, a: QuantParams, b: QuantParams, out: QuantParams, what: str) -> BinaryIntParams:
    """Parameters of ``a + b`` and ``a - b``: both operands rescaled with one shared shift."""
    m, shift = requant_multipliers(rule, [a.scale, b.scale], out.scale, what=what)
    return BinaryIntParams(a, b, out, int(m[0, 0]), int(m[0, 1]), int(shift[0]))


def mul_params(rule: RequantRule, a: QuantParams, b: QuantParams, out: QuantParams, what: str) -> BinaryIntParams:
    """Parameters of ``a * b``: the product of the integers rescaled by ``sa * sb / so``."""
    m, shift = requant_multipliers(rule, [a.scale.double() * b.scale.double()], out.scale, what=what)
    return BinaryIntParams(a, b, out, int(m[0, 0]), 0, int(shift[0]))


def cat_params(rule: RequantRule, inputs: Sequence[QuantParams], out: QuantParams, what: str) -> CatIntParams:
    ms, ss = [], []
    for p in inputs:
        m, s = requant_multipliers(rule, [p.scale], out.scale, what=what)
        ms.append(int(m[0, 0]))
        ss.append(int(s[0]))
    return CatIntParams(tuple(inputs), out, tuple(ms), tuple(ss))


@attrs.frozen
class ReduceIntParams:
    """``sum``/``mean`` over ``dims``: exact int64 sums requantized by ``in_scale / (count * out_scale)``
    (count = 1 for sum); the multiplier depends on the reduced size, so it is chosen per call."""

    a: QuantParams
    output: QuantParams
    dims: tuple[int, ...]
    keepdim: bool
    mean: bool


def reduce_params(a: QuantParams, out: QuantParams, dims: Sequence[int], keepdim: bool, mean: bool) -> ReduceIntParams:
    return ReduceIntParams(a, out, tuple(dims), keepdim, mean)


def reduce_sums(q: torch.Tensor, p: ReduceIntParams, rule: RequantRule, what: str) -> tuple[torch.Tensor, int, int]:
    """The exact sums of ``sum``/``mean`` (int32 where every sum fits, else int64) and their ``(multiplier,
    shift)``."""
    dims = tuple(d % q.dim() for d in p.dims) if p.dims else tuple(range(q.dim()))
    count = 1
    for d in dims:
        count *= q.shape[d]
    narrow = q.dtype in (torch.int8, torch.int16) and count * (torch.iinfo(q.dtype).max + 1) < 2 ** 31
    total = q.sum(dim=dims, keepdim=p.keepdim, dtype=torch.int32 if narrow else torch.int64)
    ratio = p.a.scale.double().reshape(()) / ((count if p.mean else 1) * p.output.scale.double().reshape(()))
    m, s = rule.multipliers(ratio.reshape(1, 1), what=what)
    return total, int(m[0, 0]), int(s[0])


def int_reduce(q: torch.Tensor, p: ReduceIntParams, rule: RequantRule, what: str) -> torch.Tensor:
    total, m, s = reduce_sums(q, p, rule, what)
    return rule.requantize([(total.to(torch.int64), _t(m, total))], _t(s, total), p.output.dtype)


def int_matmul(qa: torch.Tensor, qb: torch.Tensor, p: BinaryIntParams, rule: RequantRule) -> torch.Tensor:
    # float64 holds every int8/int16 dot product of realistic length exactly
    acc = torch.round(torch.matmul(qa.double(), qb.double())).to(torch.int64)
    return rule.requantize([(acc, _t(p.multiplier_a, qa))], _t(p.shift, qa), p.output.dtype)


@attrs.frozen
class ScalarIntParams:
    """``x * c`` or ``x + c`` with a constant ``c``: ``round_shift(q * m_x + m_c, shift)``
    (``m_c`` is 0 for mul; the sign of ``c`` rides on the integer multipliers)."""

    a: QuantParams
    output: QuantParams
    multiplier: int
    constant: int
    shift: int
    value: float


def scalar_params(rule: RequantRule, a: QuantParams, out: QuantParams, value: float, mul: bool,
                  what: str) -> ScalarIntParams:
    if mul:
        m, s = requant_multipliers(rule, [a.scale.double() * abs(value)], out.scale, what=what)
        return ScalarIntParams(a, out, int(m[0, 0]) * (-1 if value < 0 else 1), 0, int(s[0]), value)
    m, s = requant_multipliers(rule, [a.scale, torch.tensor([abs(value)], dtype=torch.float64)], out.scale, what=what)
    return ScalarIntParams(a, out, int(m[0, 0]), int(m[0, 1]) * (-1 if value < 0 else 1), int(s[0]), value)


def int_scalar(q: torch.Tensor, p: ScalarIntParams, rule: RequantRule) -> torch.Tensor:
    return rule.requantize([(q, _t(p.multiplier, q)), (torch.ones_like(q), _t(p.constant, q))], _t(p.shift, q),
                           p.output.dtype)


def int_extremum(qa: torch.Tensor, qb: torch.Tensor, p: CatIntParams, rule: RequantRule, pick: Any) -> torch.Tensor:
    """``maximum``/``minimum``: both operands requantized to the output scale, then compared."""
    a, b = (rule.requantize([(q, _t(m, q))], _t(s, q), p.output.dtype)
            for q, m, s in zip((qa, qb), p.multipliers, p.shifts))
    return pick(a, b)


def _t(v: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int64, device=like.device)


def int_add(qa: torch.Tensor, qb: torch.Tensor, p: BinaryIntParams, rule: RequantRule) -> torch.Tensor:
    return rule.requantize([(qa, _t(p.multiplier_a, qa)), (qb, _t(p.multiplier_b, qa))], _t(p.shift, qa),
                           p.output.dtype)


def int_sub(qa: torch.Tensor, qb: torch.Tensor, p: BinaryIntParams, rule: RequantRule) -> torch.Tensor:
    return rule.requantize([(qa, _t(p.multiplier_a, qa)), (qb, _t(-p.multiplier_b, qa))], _t(p.shift, qa),
                           p.output.dtype)


def int_mul(qa: torch.Tensor, qb: torch.Tensor, p: BinaryIntParams, rule: RequantRule) -> torch.Tensor:
    prod = qa.to(torch.int64) * qb.to(torch.int64)
    return rule.requantize([(prod, _t(p.multiplier_a, qa))], _t(p.shift, qa), p.output.dtype)


def int_cat(qs: Sequence[torch.Tensor], p: CatIntParams, rule: RequantRule, dim: int) -> torch.Tensor:
    parts = [rule.requantize([(q, _t(m, q))], _t(s, q), p.output.dtype)
             for q, m, s in zip(qs, p.multipliers, p.shifts)]
    return torch.cat(parts, dim=dim)
