"""Table-lookup rules for non-linear ops (sigmoid, tanh, exp, …), as data a march declares.

Two formats, both exact by construction (QAT simulation and the integer
model evaluate the very same integers):

* :class:`DirectTable` — one entry per input code: ``out = table[q - qmin]``.
  A 256-entry table indexed by the int8 input (bernoulli2).  Each entry is
  ``quantize(f(q * in_scale))``, so the only error is output rounding.
* :class:`SegmentTable` — piecewise-linear over segments (bayes, int8 and
  int16).  A *dense region* ``[q_lo, q_hi]`` of input codes (where ``f``
  still changes by at least half an output step) is cut into at most
  ``max_segments`` segments of ``2**w`` codes; each stores an integer base
  and slope with ``frac_bits`` fractional bits; inputs outside the dense
  region saturate to its ends.  ``out = round_shift(base[j] + slope[j] *
  (q - start[j]), frac_bits)`` with the march's rounding, then saturation.

Table parameters are chosen at convert time (and in VALIDATION state) from
the calibrated input and output scales.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import attrs
import torch

from .numerics import RequantRule
from .quantization.fake_quantize import QuantParams

FloatFn = Callable[[torch.Tensor], torch.Tensor]


def _f_on_codes(fn: FloatFn, codes: torch.Tensor, inp: QuantParams) -> torch.Tensor:
    """``f(code * in_scale)`` in float64, non-finite results mapped to +-huge (they saturate)."""
    x = codes.to(torch.float64) * inp.scale.double().reshape(())
    with torch.no_grad():
        y = fn(x).to(torch.float64)
    return torch.nan_to_num(y, nan=0.0, posinf=1e30, neginf=-1e30)


def _to_out_codes(y: torch.Tensor, out: QuantParams) -> torch.Tensor:
    return torch.round(y / out.scale.double().reshape(())).clamp(out.dtype.quant_min, out.dtype.quant_max)


@attrs.frozen
class DirectTableParams:
    qmin: int
    table: torch.Tensor  # int64 [qmax - qmin + 1]


@attrs.frozen
class DirectTable:
    """One table entry per input code (``entries`` = 256 for int8 inputs)."""

    entries: int = 256

    def build(self, fn: FloatFn, inp: QuantParams, out: QuantParams, what: str) -> DirectTableParams:
        n = inp.dtype.quant_max - inp.dtype.quant_min + 1
        if n > self.entries:
            raise ValueError(f"{what}: a {self.entries}-entry lookup table cannot index {inp.dtype} inputs "
                             f"({n} codes); use a qint8 input")
        codes = torch.arange(inp.dtype.quant_min, inp.dtype.quant_max + 1)
        table = _to_out_codes(_f_on_codes(fn, codes, inp), out).to(torch.int64)
        return DirectTableParams(inp.dtype.quant_min, table)

    def apply(self, q: torch.Tensor, p: DirectTableParams, rule: RequantRule, out: QuantParams) -> torch.Tensor:
        return p.table.to(q.device)[q.to(torch.int64) - p.qmin]


@attrs.frozen
class SegmentTableParams:
    q_lo: int
    q_hi: int
    width_log2: int
    base: torch.Tensor  # int64 [S], output codes << frac_bits at each segment start
    slope: torch.Tensor  # int64 [S], output codes per input code << frac_bits
    frac_bits: int


@attrs.frozen
class SegmentTable:
    """Piecewise-linear table with a dense region and saturating tails."""

    max_segments: int = 256
    frac_bits: int = 16

    def dense_region(self, fn: FloatFn, inp: QuantParams, out: QuantParams) -> tuple[int, int]:
        """The input codes outside of which the rounded output equals its value at the range's ends."""
        codes = torch.arange(inp.dtype.quant_min, inp.dtype.quant_max + 1)
        y = _f_on_codes(fn, codes, inp) / out.scale.double().reshape(())
        y = torch.round(y).clamp(out.dtype.quant_min, out.dtype.quant_max)
        changes_left = y != y[0]
        changes_right = y != y[-1]
        lo = int(codes[int(changes_left.float().argmax()) - 1]) if bool(changes_left.any()) else int(codes[0])
        hi_index = len(codes) - int(changes_right.flip(0).float().argmax())
        hi = int(codes[min(hi_index, len(codes) - 1)]) if bool(changes_right.any()) else int(codes[-1])
        return lo, hi

    def build(self, fn: FloatFn, inp: QuantParams, out: QuantParams, what: str) -> SegmentTableParams:
        q_lo, q_hi = self.dense_region(fn, inp, out)
        span = q_hi - q_lo + 1
        width_log2 = max(0, math.ceil(math.log2(span / self.max_segments))) if span > self.max_segments else 0
        width = 1 << width_log2
        n_seg = (span + width - 1) // width
        starts = q_lo + torch.arange(n_seg, dtype=torch.int64) * width
        ends = torch.minimum(starts + width, torch.tensor(q_hi))
        one = float(1 << self.frac_bits)
        y0 = _f_on_codes(fn, starts, inp) / out.scale.double().reshape(())
        y1 = _f_on_codes(fn, ends, inp) / out.scale.double().reshape(())
        limit = float(2 ** 40)
        steps = (ends - starts).clamp(min=1).to(torch.float64)
        base = torch.round(y0.clamp(-limit, limit) * one).to(torch.int64)
        slope = torch.round(((y1 - y0) / steps).clamp(-limit, limit) * one).to(torch.int64)
        return SegmentTableParams(q_lo, q_hi, width_log2, base, slope, self.frac_bits)

    def apply(self, q: torch.Tensor, p: SegmentTableParams, rule: RequantRule, out: QuantParams) -> torch.Tensor:
        idx = q.to(torch.int64).clamp(p.q_lo, p.q_hi) - p.q_lo
        seg = torch.bitwise_right_shift(idx, p.width_log2)
        offset = idx - torch.bitwise_left_shift(seg, p.width_log2)
        acc = p.base.to(q.device)[seg] + p.slope.to(q.device)[seg] * offset
        y = rule.round_shift(acc, torch.tensor(p.frac_bits, device=q.device))
        return y.clamp(out.dtype.quant_min, out.dtype.quant_max)


LookupRule = Union[DirectTable, SegmentTable]
