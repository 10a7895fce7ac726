"""``F.grid_sample`` in integers, as a march declares it, and the op-table rules only a run can check.

The march's fixed-point format is its :class:`~qframe_core.resize.BilinearFormat` (``MarchSpec.bilinear``:
``F = coord_frac_bits``, ``W = weight_frac_bits``), the same registers as bilinear resize.  QAT simulation
(VALIDATION state) and the integer model both call :func:`int_grid_sample`.  The grid is quantized with its
own scale ``s_g`` (codes ``g``, qint8 or qint16; last dim ``(x, y)`` normalized to ``[-1, 1]``).  Per axis of
input size ``n``::

    A    = floor(s_g * n/2 * 2**M + 1/2)       (align_corners=False)   # grid-code multiplier, Q(M)
         = floor(s_g * (n-1)/2 * 2**M + 1/2)   (align_corners=True)    # M = grid_mult_frac_bits (bayes 32)
    B    = (n - 1) * 2**(F-1)                                          # exact, Q(F)
    src  = round_shift(g * A, M - F) + B       # source coordinate in Q(F) (torch's unnormalize), int64;
                                               # round_shift is the march's rounding

(``A`` needs the extra ``M - F`` bits: a qint16 grid step ``s_g`` is ~3e-5, so ``s_g * n/2`` in Q16 alone
would keep only a few significant bits and misplace samples by up to a quarter pixel.)
    src  = clamp(src, 0, (n-1) * 2**F)         (padding_mode="border" only)

bilinear::

    i0 = src >> F (floor);  i1 = i0 + 1
    lam = ((src & (2**F-1)) + 2**(F-W-1)) >> (F-W)    # weight of i1, Q(W), 0..2**W
    acc = sum over the 4 neighbours of wy * wx * q    # exact int64, Q(2W); a neighbour outside the input is 0
    out = clamp(round_shift(acc, 2W))                 # the march's rounding

nearest::

    i = round_shift(src, F)     # the march's rounding (bayes: half to even, as torch's nearbyint)
    out = q[iy, ix], or 0 when outside the input (padding_mode="zeros")

The output keeps the input's scale and dtype: a sample is a convex combination of input codes and zeros.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Optional, Sequence

import attrs
import torch

from .numerics import RequantRule
from .resize import BilinearFormat


def grid_axis_registers(n: int, grid_scale: float, align_corners: bool, fmt: BilinearFormat) -> tuple[int, int]:
    """``(A, B)`` of one axis: ``round_shift(g * A, M - F) + B`` is the source coordinate in Q(F)."""
    f, m = fmt.coord_frac_bits, fmt.grid_mult_frac_bits
    half_span = Fraction(n - 1, 2) if align_corners else Fraction(n, 2)
    a = math.floor(Fraction(float(grid_scale)) * half_span * (1 << m) + Fraction(1, 2))
    b = (n - 1) << (f - 1) if f > 0 else (n - 1) // 2
    return a, b


def _source(g: torch.Tensor, n: int, grid_scale: float, align: bool, border: bool, fmt: BilinearFormat,
            rule: RequantRule) -> torch.Tensor:
    a, b = grid_axis_registers(n, grid_scale, align, fmt)
    shift = torch.tensor(fmt.grid_mult_frac_bits - fmt.coord_frac_bits, dtype=torch.int64)
    src = rule.round_shift(g.to(torch.int64) * a, shift) + b
    if border:
        src = src.clamp(0, (n - 1) << fmt.coord_frac_bits)
    return src


def _axis_taps(i: torch.Tensor, weights: Sequence[torch.Tensor], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Positions ``i, i+1, ...`` of one axis with their weights: clamped into ``[0, n)``, weight 0 outside."""
    taps = []
    for d, wt in enumerate(weights):
        j = i + d
        taps.append((j.clamp(0, n - 1), wt * ((j >= 0) & (j < n))))
    return taps


def grid_sample_taps(g: torch.Tensor, h: int, w: int, grid_scale: float, mode: str, padding_mode: str,
                     align_corners: bool, fmt: BilinearFormat, rule: RequantRule
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The rule above as taps: ``(index, weight, shift)``, int64 ``[N, K, Ho*Wo]`` (``K`` = 4 bilinear, 1 nearest):
    a sample is ``round_shift(sum_k weight[n, k, p] * q[n, c].flatten()[index[n, k, p]], shift)``; a neighbour
    outside the input has weight 0 (and some position inside)."""
    border = padding_mode == "border"
    sx = _source(g[..., 0], w, grid_scale, bool(align_corners), border, fmt, rule)
    sy = _source(g[..., 1], h, grid_scale, bool(align_corners), border, fmt, rule)
    f, wb = fmt.coord_frac_bits, fmt.weight_frac_bits
    if mode == "nearest":
        ix = rule.round_shift(sx, torch.tensor(f, dtype=torch.int64))
        iy = rule.round_shift(sy, torch.tensor(f, dtype=torch.int64))
        ones = torch.ones_like(ix)
        xs, ys, shift = _axis_taps(ix, [ones], w), _axis_taps(iy, [ones], h), 0
    else:
        def split(src: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            i0 = torch.bitwise_right_shift(src, f)
            frac = torch.bitwise_and(src, (1 << f) - 1)
            lam = torch.bitwise_right_shift(frac + ((1 << (f - wb)) >> 1), f - wb) if f > wb else frac
            return _axis_taps(i0, [(1 << wb) - lam, lam], n)

        xs, ys, shift = split(sx, w), split(sy, h), 2 * wb
    n = g.shape[0]
    index = torch.stack([(iy * w + ix).reshape(n, -1) for iy, _ in ys for ix, _ in xs], 1)
    weight = torch.stack([(wy * wx).reshape(n, -1) for _, wy in ys for _, wx in xs], 1)
    return index, weight, shift


def apply_taps(q: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, shift: int, rule: RequantRule,
               qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round_shift(sum_k weight * q[..., index], shift))`` of codes ``q`` ``[N, C, H, W]`` (int64
    ``[N, C, P]``): the taps of :func:`grid_sample_taps` in torch."""
    n, c = q.shape[:2]
    flat = q.reshape(n, c, -1).to(torch.int64)
    acc = torch.zeros(n, c, index.shape[-1], dtype=torch.int64, device=q.device)
    for k in range(index.shape[1]):
        acc += torch.gather(flat, 2, index[:, k].unsqueeze(1).expand(n, c, -1)) * weight[:, k].unsqueeze(1)
    return rule.round_shift(acc, torch.tensor(shift, dtype=torch.int64)).clamp(qmin, qmax)


def int_grid_sample(q: torch.Tensor, g: torch.Tensor, grid_scale: float, mode: str, padding_mode: str,
                    align_corners: bool, fmt: BilinearFormat, rule: RequantRule, qmin: int, qmax: int) -> torch.Tensor:
    """Sample integer codes ``q`` ``[N, C, H, W]`` at grid codes ``g`` ``[N, Ho, Wo, 2]`` (int64, ``q``'s scale):
    :func:`grid_sample_taps` summed by :func:`apply_taps`.  (The integer module runs the same steps on the march
    kernels ``grid_taps`` and ``gather_taps``.)"""
    n, c, h, w = q.shape
    index, weight, shift = grid_sample_taps(g, h, w, grid_scale, mode, padding_mode, align_corners, fmt, rule)
    return apply_taps(q, index, weight, shift, rule, qmin, qmax).reshape(n, c, *g.shape[1:3])


@attrs.frozen
class InputDType:
    """The dtypes one input of a multi-input op may have (``index``), e.g. grid_sample's ``input: qint8``."""

    index: int
    dtypes: tuple
    text: str = ""

    def violated(self, module: Any) -> Optional[str]:
        return None  # dtypes are known once the inputs are bound

    def violated_by_dtypes(self, dtypes: Sequence[Any]) -> Optional[str]:
        if self.index < len(dtypes) and dtypes[self.index] not in self.dtypes:
            return f"input {self.index} has dtype {dtypes[self.index]}, which breaks {self.text}"
        return None


def run_violations(limits: Sequence[Any], module: Any, in_shape: Sequence[int],
                   dtypes: Sequence[Any] = ()) -> list[str]:
    """The rules of ``limits`` that only a run (shapes, input dtypes) can check and that it breaks."""
    found = []
    for lim in limits:
        msg = None
        if hasattr(lim, "violated_at_run"):
            msg = lim.violated_at_run(module, in_shape, ())
        elif hasattr(lim, "violated_by_shape"):
            msg = lim.violated_by_shape(tuple(in_shape))
        elif hasattr(lim, "violated_by_dtypes"):
            msg = lim.violated_by_dtypes(dtypes)
        if msg is not None:
            found.append(msg)
    return found
