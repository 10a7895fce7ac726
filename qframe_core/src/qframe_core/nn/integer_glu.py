"""Integer GLU: ``a * sigmoid(b)`` with a sigmoid table and an exact product (shared by QAT simulation and convert).

Input ``q`` (codes at ``s_x``), halves ``a``, ``b`` along ``dim`` (``F.glu``'s split):

1. ``g = sigmoid_table(b)`` — the march's table from the input grid ``s_x`` to the sigmoid grid ``s_g``
   (qint16, calibrated by ``sigmoid_post_process``);
2. ``y = requant(a * g, s_x * s_g / s_y)`` — exact int64 product, requantized to the output.

``sigmoid_kwargs`` narrows the table (``input_range`` in input units; see :mod:`~.integer_composite`).
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import torch

from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams
from .integer_composite import WideRequant, build_inner_table, scale_of, wide_requant, wide_requant_params


def glu_halves(x: torch.Tensor, dim: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves ``F.glu`` splits ``x`` into (torch's rule: the dimension must be even)."""
    size = x.shape[dim] if x.dim() else 0
    if size % 2:
        raise RuntimeError(f"{what}: halving dimension must be even, but dimension {dim} is size {size}")
    a, b = x.chunk(2, dim=dim)
    return a, b


@attrs.frozen
class GLUIntParams:
    input: QuantParams
    sigmoid: QuantParams
    output: QuantParams
    sigmoid_table: Any
    output_requant: WideRequant
    dim: int


def glu_table(lookup: Any, inp: QuantParams, sigmoid: QuantParams, kwargs: Mapping[str, Any], what: str) -> Any:
    return build_inner_table(lookup, torch.sigmoid, (float("-inf"), float("inf")), inp, sigmoid, kwargs,
                             f"{what} sigmoid table")


def glu_params(rule: RequantRule, table: Any, dim: int, inp: QuantParams, sigmoid: QuantParams, out: QuantParams,
               what: str) -> GLUIntParams:
    bound = max(-inp.dtype.quant_min, inp.dtype.quant_max) * sigmoid.dtype.quant_max
    out_req = wide_requant_params(rule, scale_of(inp) * scale_of(sigmoid) / scale_of(out), bound, what)
    return GLUIntParams(inp, sigmoid, out, table, out_req, dim)


def int_glu(q: torch.Tensor, p: GLUIntParams, rule: RequantRule, lookup: Any, what: str) -> torch.Tensor:
    """Integer GLU of codes ``q`` (int64 result on the output grid)."""
    a, b = glu_halves(q.to(torch.int64), p.dim, what)
    g = lookup.apply(b, p.sigmoid_table, rule, p.sigmoid)
    return wide_requant(a * g, p.output_requant, rule, p.output.dtype)
