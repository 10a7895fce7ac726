"""Bilinear resize in integers, as a march declares it, and the op-table rules of a resize.

A march states its fixed-point format with :class:`BilinearFormat` (``MarchSpec.bilinear``);
:func:`int_bilinear` applies it.  QAT simulation (VALIDATION state) and the integer model both
call :func:`int_bilinear`, so they cannot drift.  The rule, per spatial axis (``F`` =
``coord_frac_bits``, ``W`` = ``weight_frac_bits``)::

    r      = torch's source step: (in-1)/(out-1) with align_corners (0 when out == 1),
             else 1/scale_factor when torch uses the given factor, else in/out
    step   = floor(r * 2**F + 1/2)                          # the step register, Q(F)
    offset = 0 with align_corners, else (step - 2**F) >> 1  # (r - 1) / 2 in Q(F), floored
    src    = d * step + offset, clamped at 0 (align_corners=False)   # source coordinate of output d
    i0     = min(src >> F, in - 1);  i1 = min(i0 + 1, in - 1)
    lam    = ((src & (2**F - 1)) + 2**(F-W-1)) >> (F - W)  # weight of i1, Q(W), 0..2**W
    w0, w1 = 2**W - lam, lam

and for each output pixel the four neighbours are accumulated exactly::

    acc = wy0*wx0*q[y0,x0] + wy0*wx1*q[y0,x1] + wy1*wx0*q[y1,x0] + wy1*wx1*q[y1,x1]   # Q(2W)
    out = clamp(round_shift(acc, 2W))     # the march's rounding (RequantRule.round_shift)

The output keeps the input's scale and dtype: a bilinear value is a convex combination of its
neighbours, so it never leaves the input's range and needs no requantization multiplier.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import attrs
import torch

from .numerics import RequantRule


@attrs.frozen
class BilinearFormat:
    """A march's fixed-point bilinear interpolation.

    Attributes:
        coord_frac_bits: fraction bits ``F`` of the source-coordinate step and offset registers.
        weight_frac_bits: fraction bits ``W`` of the interpolation weights (``<= F``); the
            accumulator holds ``2W`` fraction bits.
        grid_mult_frac_bits: fraction bits of grid_sample's grid-code multiplier (``>= coord_frac_bits``):
            ``src = round_shift(g * A, grid_mult_frac_bits - coord_frac_bits) + B`` (:mod:`qframe_core.grid_sample`).
    """

    coord_frac_bits: int = 16
    weight_frac_bits: int = 8
    grid_mult_frac_bits: int = 32

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.weight_frac_bits <= self.coord_frac_bits <= self.grid_mult_frac_bits:
            raise ValueError(f"BilinearFormat: need 0 <= weight_frac_bits <= coord_frac_bits, got {self}")


# -- geometry: what torch's interpolate does with the module's arguments -------------------------
def _pair(value: Any, n: int = 2) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"expected {n} values for a 2-D resize, got {value!r}")
        return tuple(value)
    return (value,) * n


def output_size_and_steps(module: Any, in_hw: Sequence[int]) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output ``(OH, OW)`` and torch's real source steps ``r`` for an ``nn.Upsample``-like module.

    The output size is torch's (``floor(in * scale_factor)``); the steps are those
    ``F.interpolate(mode="bilinear")`` uses, so the fixed-point rule follows the float op.
    """
    align = bool(getattr(module, "align_corners", None))
    size, scale = getattr(module, "size", None), getattr(module, "scale_factor", None)
    if size is not None:
        out = tuple(int(s) for s in _pair(size))
        scales: Optional[tuple] = None
    elif scale is not None:
        sf = tuple(float(s) for s in _pair(scale))
        out = tuple(int(math.floor(float(i * s))) for i, s in zip(in_hw, sf))
        scales = None if getattr(module, "recompute_scale_factor", None) else sf
    else:
        raise ValueError("a resize needs size or scale_factor")
    steps = []
    for k, (i, o) in enumerate(zip(in_hw, out)):
        if align:
            steps.append((i - 1) / (o - 1) if o > 1 else 0.0)
        elif scales is not None and scales[k] > 0:
            steps.append(1.0 / scales[k])
        else:
            steps.append(i / o)
    return (out[0], out[1]), (steps[0], steps[1])


def _axis(in_size: int, out_size: int, step_real: float, align: bool, fmt: BilinearFormat,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour indices ``i0, i1`` and integer weights ``w0, w1`` (Q(W)) of one axis."""
    f, w = fmt.coord_frac_bits, fmt.weight_frac_bits
    step = int(math.floor(step_real * (1 << f) + 0.5))
    offset = 0 if align else (step - (1 << f)) >> 1
    src = torch.arange(out_size, dtype=torch.int64, device=device) * step + offset
    if not align:
        src = src.clamp(min=0)
    i0 = torch.bitwise_right_shift(src, f).clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    frac = torch.bitwise_and(src, (1 << f) - 1)
    lam = torch.bitwise_right_shift(frac + ((1 << (f - w)) >> 1), f - w) if f > w else frac
    return i0, i1, (1 << w) - lam, lam


def bilinear_axis_weights(in_size: int, out_size: int, step_real: float, align_corners: bool,
                          fmt: BilinearFormat) -> torch.Tensor:
    """The rule of one axis as a matrix: ``[out_size, in_size]`` int64, row ``d`` holding ``w0`` at ``i0`` and
    ``w1`` at ``i1`` (their sum where ``i0 == i1``), so that a resize is ``Wy @ q @ Wx.T`` before rounding (the
    form the march kernel ``separable_sum`` takes)."""
    i0, i1, w0, w1 = _axis(in_size, out_size, step_real, align_corners, fmt, torch.device("cpu"))
    m = torch.zeros(out_size, in_size, dtype=torch.int64)
    rows = torch.arange(out_size)
    m.index_put_((rows, i0), w0, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def int_bilinear(q: torch.Tensor, out_hw: Sequence[int], steps: Sequence[float], align_corners: bool,
                 fmt: BilinearFormat, rule: RequantRule, qmin: int, qmax: int) -> torch.Tensor:
    """Bilinear resize of integer codes ``q`` ``[..., H, W]`` to ``out_hw`` (int64 result, same scale).

    Exact int64 accumulation of the four weighted neighbours, then ``rule.round_shift`` by
    ``2 * weight_frac_bits`` and saturation to ``[qmin, qmax]`` (a no-op for a convex combination,
    kept as the hardware's output stage).
    """
    h, w = q.shape[-2:]
    q = q.to(torch.int64)
    y0, y1, wy0, wy1 = _axis(h, out_hw[0], steps[0], align_corners, fmt, q.device)
    x0, x1, wx0, wx1 = _axis(w, out_hw[1], steps[1], align_corners, fmt, q.device)
    # rows first, still exact: t = wy0 * q[y0] + wy1 * q[y1] (Q(W)); then columns (Q(2W)) —
    # algebraically the four-term sum above, each product an integer
    rows = q.index_select(-2, y0) * wy0.unsqueeze(-1) + q.index_select(-2, y1) * wy1.unsqueeze(-1)
    acc = rows.index_select(-1, x0) * wx0 + rows.index_select(-1, x1) * wx1
    out = rule.round_shift(acc, torch.tensor(2 * fmt.weight_frac_bits, dtype=torch.int64))
    return out.clamp(qmin, qmax)


# -- op-table rules of a resize (records with ``violated(module)``, as lowering.Limit) -----------
def _scale_text(value: float) -> str:
    if value >= 1 or value <= 0:
        return f"{value:g}"
    inv = 1 / value
    return f"1/{inv:g}" if abs(inv - round(inv)) < 1e-9 else f"{value:g}"


@attrs.frozen
class ScaleRange:
    """Bounds on a resize's scale (output size / input size per axis), e.g. ``1/256 < scale <= 256``.

    Checked on ``scale_factor`` at prepare and, by :meth:`violated_at_run`, on the actual sizes
    when the module runs (``size=`` given).
    """

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = True
    high_open: bool = False
    text: str = ""

    def _breaks(self, s: float) -> bool:
        if self.low is not None and (s <= self.low if self.low_open else s < self.low):
            return True
        return self.high is not None and (s >= self.high if self.high_open else s > self.high)

    def violated(self, module: Any) -> Optional[str]:
        scale = getattr(module, "scale_factor", None)
        if scale is None or getattr(module, "size", None) is not None:
            return None
        if any(self._breaks(float(s)) for s in _pair(scale)):
            return f"scale_factor={scale!r} breaks {self.text}"
        return None

    def violated_at_run(self, module: Any, in_shape: Sequence[int], out_hw: Sequence[int]) -> Optional[str]:
        scales = [o / i for i, o in zip(in_shape[-2:], out_hw)]
        if any(self._breaks(s) for s in scales):
            shown = ", ".join(_scale_text(s) for s in scales)
            return f"resizing {list(in_shape[-2:])} to {list(out_hw)} (scale {shown}) breaks {self.text}"
        return None


@attrs.frozen
class ShapeLimit:
    """Bounds on input dims (``dims`` of ``[N, C, H, W]``), checked when the module runs."""

    dims: tuple[int, ...]
    min: Optional[int] = None
    max: Optional[int] = None
    text: str = ""

    def violated(self, module: Any) -> Optional[str]:
        return None  # shapes are known only when the module runs

    def violated_at_run(self, module: Any, in_shape: Sequence[int], out_hw: Sequence[int]) -> Optional[str]:
        if len(in_shape) != 4:
            return f"input shape {list(in_shape)} is not [N, C, H, W] ({self.text})"
        for d in self.dims:
            v = in_shape[d]
            if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
                return f"input shape {list(in_shape)} breaks {self.text}"
        return None


@attrs.frozen
class RecomputeScaleFactor:
    """The hardware steps by input size / output size (``recompute_scale_factor=True``).

    A ``scale_factor`` that is not an integer, without ``recompute_scale_factor=True``, makes torch
    step by ``1/scale_factor`` instead (``floor(in * s)`` outputs at ``1/s``), which the hardware
    cannot follow; integer factors give the same steps either way.  Applies to ``modes``.
    """

    modes: tuple[str, ...] = ("bilinear",)
    text: str = ""

    def violated(self, module: Any) -> Optional[str]:
        scale = getattr(module, "scale_factor", None)
        if getattr(module, "mode", None) not in self.modes or scale is None or getattr(module, "size", None) is not None:
            return None
        if getattr(module, "recompute_scale_factor", None) or getattr(module, "align_corners", None):
            return None  # align_corners steps by (in-1)/(out-1) whatever the factor
        if all(float(s).is_integer() for s in _pair(scale)):
            return None
        return (f"scale_factor={scale!r} without recompute_scale_factor=True breaks {self.text} "
                f"(a non-integer factor steps by 1/scale_factor, not by input/output size)")


def violations_at_run(limits: Sequence[Any], module: Any, in_shape: Sequence[int],
                      out_hw: Sequence[int]) -> list[str]:
    """The run-time rules (shapes, actual scales) of ``limits`` that a resize of ``in_shape`` breaks."""
    found = []
    for lim in limits:
        check = getattr(lim, "violated_at_run", None)
        msg = check(module, in_shape, out_hw) if check is not None else None
        if msg is not None:
            found.append(msg)
    return found
