"""Integer softmax: exp table, exact sum, normalized reciprocal table, requantized product.

Shared by QAT simulation (VALIDATION state) and the integer module.  Input ``q`` (codes at ``s_x``),
softmax along ``dim``:

1. ``d = q - max(q)`` along ``dim`` — exact, ``d <= 0`` on the input grid ``s_x`` (held as int16);
2. ``e = exp_table(d)`` — the march's table from ``s_x`` to the exp grid ``s_e = 1 / 32767`` (qint16,
   fixed: every row's largest exp is exactly 1, so its code is 32767);
3. ``S = sum(e)`` along ``dim`` — exact int64 (``S >= 32767``);
4. ``S = M * 2**k`` — normalized (:func:`~.integer_composite.normalize`): ``k = bit_length(S) - 15``,
   ``M = round_shift(S, k)`` in ``[2**14, 2**15)``; ``R = reciprocal_table(M)`` — the march's table of
   ``1 / m`` for ``m = M * 2**-15`` in ``[0.5, 1)``, output at ``2**-14`` (``R ≈ 2**29 / M``);
5. ``y = round_shift(e * R * m_y, s_y + k)`` with ``m_y / 2**s_y ≈ 2**-29 / s_out`` — since
   ``e / S = e * R * 2**(-29 - k)``.

A calibrated grid for the sum would lose relative precision on rows whose sum is small next to the
largest calibrated sum (a peaked row among flat ones); the normalized mantissa keeps 15 bits on every
row.  The exp table covers ``[(qmin - qmax) * s_x, 0]``, the reciprocal table ``m`` in ``[0.5, 1]``;
``exp_kwargs`` / ``reciprocal_kwargs`` narrow them (see :mod:`~.integer_composite`; the reciprocal's
``input_range`` is in mantissa units).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs
import torch

from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams
from .integer_composite import (
    MANTISSA_BITS,
    WideRequant,
    build_inner_table,
    mantissa_table,
    normalize,
    scale_of,
    wide_requant,
    wide_requant_params,
)

#: ``1 / M`` for ``M`` on the mantissa grid ``2**-15``, output at ``2**-14``: ``R * 2**-29 ≈ 1 / M``
RECIPROCAL_SHIFT = MANTISSA_BITS + 14


def softmax_dim(dim: Optional[int], ndim: int) -> int:
    """``dim`` as a non-negative index; ``None`` is torch's legacy choice (0 for 0-, 1- and 3-D inputs, else 1)."""
    if dim is None:
        return 0 if ndim in (0, 1, 3) else 1
    return dim % max(ndim, 1)


@attrs.frozen
class SoftmaxIntParams:
    input: QuantParams
    exp_input: QuantParams  # the grid of q - max(q): s_x, the exp grid's dtype
    exp: QuantParams
    reciprocal_input: QuantParams  # the mantissa grid 2**-15
    reciprocal: QuantParams  # 2**-14
    output: QuantParams
    exp_table: Any
    reciprocal_table: Any
    output_requant: WideRequant
    dim: Optional[int]


def softmax_tables(lookup: Any, inp: QuantParams, exp: QuantParams, exp_kwargs: Mapping[str, Any],
                   reciprocal_kwargs: Mapping[str, Any], what: str) -> tuple[QuantParams, Any, tuple]:
    """The exp table (input grid ``s_x`` in the exp grid's dtype) and the mantissa reciprocal table."""
    exp_in = QuantParams(inp.scale, exp.dtype)
    lowest = (inp.dtype.quant_min - inp.dtype.quant_max) * scale_of(inp)
    exp_table = build_inner_table(lookup, torch.exp, (lowest, 0.0), exp_in, exp, exp_kwargs, f"{what} exp table")
    recip = mantissa_table(lookup, torch.reciprocal, 2.0 ** -MANTISSA_BITS, (0.5, 1.0), reciprocal_kwargs,
                           f"{what} reciprocal table")
    return exp_in, exp_table, recip


def softmax_params(rule: RequantRule, tables: tuple[QuantParams, Any, tuple], dim: Optional[int], inp: QuantParams,
                   exp: QuantParams, out: QuantParams, what: str) -> SoftmaxIntParams:
    exp_in, exp_table, (recip_in, recip_out, recip_table) = tables
    bound = exp.dtype.quant_max * recip_out.dtype.quant_max
    out_req = wide_requant_params(rule, 2.0 ** -RECIPROCAL_SHIFT / scale_of(out), bound, what)
    return SoftmaxIntParams(inp, exp_in, exp, recip_in, recip_out, out, exp_table, recip_table, out_req, dim)


def int_softmax(q: torch.Tensor, p: SoftmaxIntParams, rule: RequantRule, lookup: Any) -> torch.Tensor:
    """Integer softmax of codes ``q`` (int64 result on the output grid)."""
    dim = softmax_dim(p.dim, q.dim())
    q64 = q.to(torch.int64)
    d = q64 - q64.amax(dim=dim, keepdim=True)
    e = lookup.apply(d, p.exp_table, rule, p.exp)
    mantissa, k = normalize(e.sum(dim=dim, keepdim=True), rule)
    r = lookup.apply(mantissa, p.reciprocal_table, rule, p.reciprocal)
    return wide_requant(e * r, p.output_requant, rule, p.output.dtype, extra_shift=k)
