"""Integer softmax: five integer steps with calibrated intermediate grids (shared by QAT simulation and convert).

Input ``q`` (codes at ``s_x``), softmax along ``dim``:

1. ``d = q - max(q)`` along ``dim`` — exact, ``d <= 0`` on the input grid ``s_x`` (held as int16);
2. ``e = exp_table(d)`` — the march's table from ``s_x`` to the exp grid ``s_e = 1 / qmax`` of the
   intermediate dtype (fixed: every row's largest exp is exactly 1);
3. ``S = sum(e)`` along ``dim`` — exact int64, at ``s_e``;
4. ``S' = requant(S, s_e / s_S)`` — to the sum grid ``s_S`` (calibrated, intermediate dtype); then
   ``r = reciprocal_table(S')`` — the table from ``s_S`` to the reciprocal grid ``s_r`` (calibrated);
5. ``y = requant(e * r, s_e * s_r / s_y)`` — exact int64 product, requantized to the output.

Requantizations use the march's rule (:func:`~.integer_composite.wide_requant`); the tables'
domains are ``[(qmin - qmax) * s_x, 0]`` for exp and ``[1, inf)`` for the reciprocal, narrowed by
``exp_kwargs`` / ``reciprocal_kwargs`` (see :mod:`~.integer_composite`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs
import torch

from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams
from .integer_composite import WideRequant, build_inner_table, scale_of, wide_requant, wide_requant_params


def softmax_dim(dim: Optional[int], ndim: int) -> int:
    """``dim`` as a non-negative index; ``None`` is torch's legacy choice (0 for 0-, 1- and 3-D inputs, else 1)."""
    if dim is None:
        return 0 if ndim in (0, 1, 3) else 1
    return dim % max(ndim, 1)


@attrs.frozen
class SoftmaxIntParams:
    input: QuantParams
    exp_input: QuantParams  # the grid of q - max(q): s_x, intermediate dtype
    exp: QuantParams
    sum: QuantParams
    reciprocal: QuantParams
    output: QuantParams
    exp_table: Any
    reciprocal_table: Any
    sum_requant: WideRequant  # valid for sums up to SUM_BOUND (rows of up to 65536 elements at int16)
    output_requant: WideRequant
    dim: Optional[int]


#: the largest row sum ``sum_requant`` is chosen for; longer rows get their own (a pre-shift) at run time
SUM_BOUND = 2 ** 31 - 1


def softmax_tables(lookup: Any, inp: QuantParams, exp: QuantParams, sum_: QuantParams, recip: QuantParams,
                   exp_kwargs: Mapping[str, Any], reciprocal_kwargs: Mapping[str, Any],
                   what: str) -> tuple[QuantParams, Any, Any]:
    """The exp table (input grid ``s_x`` in the intermediate dtype) and the reciprocal table."""
    exp_in = QuantParams(inp.scale, exp.dtype)
    lowest = (inp.dtype.quant_min - inp.dtype.quant_max) * scale_of(inp)
    exp_table = build_inner_table(lookup, torch.exp, (lowest, 0.0), exp_in, exp, exp_kwargs, f"{what} exp table")
    recip_table = build_inner_table(lookup, torch.reciprocal, (1.0, float("inf")), sum_, recip, reciprocal_kwargs,
                                    f"{what} reciprocal table")
    return exp_in, exp_table, recip_table


def softmax_params(rule: RequantRule, tables: tuple[QuantParams, Any, Any], dim: Optional[int], inp: QuantParams,
                   exp: QuantParams, sum_: QuantParams, recip: QuantParams, out: QuantParams,
                   what: str) -> SoftmaxIntParams:
    exp_in, exp_table, recip_table = tables
    bound = exp.dtype.quant_max * recip.dtype.quant_max
    out_req = wide_requant_params(rule, scale_of(exp) * scale_of(recip) / scale_of(out), bound, what)
    sum_req = wide_requant_params(rule, scale_of(exp) / scale_of(sum_), SUM_BOUND, what)
    return SoftmaxIntParams(inp, exp_in, exp, sum_, recip, out, exp_table, recip_table, sum_req, out_req, dim)


def int_softmax(q: torch.Tensor, p: SoftmaxIntParams, rule: RequantRule, lookup: Any, what: str) -> torch.Tensor:
    """Integer softmax of codes ``q`` (int64 result on the output grid)."""
    dim = softmax_dim(p.dim, q.dim())
    q64 = q.to(torch.int64)
    d = q64 - q64.amax(dim=dim, keepdim=True)
    e = lookup.apply(d, p.exp_table, rule, p.exp)
    total = e.sum(dim=dim, keepdim=True)
    n = q.shape[dim] if q.dim() else 1
    sum_req = p.sum_requant
    if n * p.exp.dtype.quant_max > SUM_BOUND:
        sum_req = wide_requant_params(rule, scale_of(p.exp) / scale_of(p.sum), n * p.exp.dtype.quant_max, what)
    s = wide_requant(total, sum_req, rule, p.sum.dtype)
    r = lookup.apply(s, p.reciprocal_table, rule, p.reciprocal)
    return wide_requant(e * r, p.output_requant, rule, p.output.dtype)
