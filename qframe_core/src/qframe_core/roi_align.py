"""RoIAlign (torchvision's ``roi_align``) in float and in integers, as a march declares it.

Float (:func:`float_roi_align`): torchvision's algorithm in pure torch (torchvision is optional).  Boxes are
``List[Tensor[L, 4]]`` (one tensor per image, ``[x1, y1, x2, y2]``) or ``Tensor[K, 5]`` (batch index first).

Integer (:func:`int_roi_align`): the march's :class:`~qframe_core.resize.BilinearFormat` (``F = coord_frac_bits``,
``W = weight_frac_bits``, ``M = grid_mult_frac_bits``).  Boxes are quantized with their own scale ``s_b`` (codes
``b``, qint16 or qint8).  Per box and axis (``P`` output bins, input size ``n``)::

    A      = floor(s_b * spatial_scale * 2**M + 1/2)             # box-code multiplier, Q(M)
    c      = round_shift(b * A, M - F) - (2**(F-1) if aligned else 0)      # box corner, Q(F)
    roi    = c2 - c1;   roi = max(roi, 2**F) unless aligned
    bin    = floor(roi / P)                                       # Q(F)
    g      = sampling_ratio if > 0 else ceil(roi / (P * 2**F))    # samples per bin (torchvision's adaptive rule)
    y      = c1 + p * bin + floor((2 i + 1) * bin / (2 g))        # sample i of bin p, Q(F)
    weight = 0 when y < -2**F or y > n * 2**F; else y = max(y, 0), i0 = y >> F, and
             i0 >= n - 1: all weight on n - 1; otherwise lam = ((y & (2**F-1)) + 2**(F-W-1)) >> (F-W) on i0 + 1,
             2**W - lam on i0

and for each output bin the samples' four-neighbour products are accumulated exactly::

    acc = sum over samples of wy * wx * q                         # Q(2W), int64
    R   = floor(2**20 / count + 1/2)                              # count = max(gy * gx, 1)
    out = clamp(round_shift(acc * R, 2W + 20))                    # the march's rounding

The output keeps the input's scale (an average of bilinear samples).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Optional, Sequence, Union

import attrs
import torch

from .numerics import RequantRule
from .resize import BilinearFormat

#: fraction bits of the reciprocal of the sample count
COUNT_RECIPROCAL_BITS = 20

Boxes = Union[torch.Tensor, Sequence[torch.Tensor]]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def boxes_to_rois(boxes: Boxes) -> torch.Tensor:
    """``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) from either box format."""
    if isinstance(boxes, torch.Tensor):
        return boxes
    rows = []
    for i, b in enumerate(boxes):
        b = b.reshape(-1, 4)
        rows.append(torch.cat([torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device), b], 1))
    return torch.cat(rows, 0) if rows else torch.zeros(0, 5)


# -- float ------------------------------------------------------------------------------------------------------------
def _float_axis_weights(start: float, roi: float, bins: int, n: int, ratio: int) -> tuple[torch.Tensor, int]:
    """``[bins, n]`` summed bilinear weights of the samples of each bin, and the samples per bin."""
    bin_size = roi / bins
    g = ratio if ratio > 0 else int(math.ceil(roi / bins))
    w = torch.zeros(bins, n, dtype=torch.float64)
    for p in range(bins):
        for i in range(g):
            y = start + p * bin_size + (i + 0.5) * bin_size / g
            if y < -1.0 or y > n:
                continue
            y = max(y, 0.0)
            lo = int(math.floor(y))
            if lo >= n - 1:
                w[p, n - 1] += 1.0
                continue
            frac = y - lo
            w[p, lo] += 1.0 - frac
            w[p, lo + 1] += frac
    return w, g


def float_roi_align(x: torch.Tensor, boxes: Boxes, output_size: Any, spatial_scale: float = 1.0,
                    sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """torchvision's ``roi_align`` in pure torch: ``[K, C, PH, PW]``."""
    rois = boxes_to_rois(boxes).to(torch.float64)
    ph, pw = _pair(output_size)
    h, w = x.shape[-2:]
    off = 0.5 if aligned else 0.0
    outs = []
    for r in rois.tolist():
        n = int(r[0])
        x1, y1, x2, y2 = (v * spatial_scale - off for v in r[1:])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        wy, gy = _float_axis_weights(y1, rh, ph, h, sampling_ratio)
        wx, gx = _float_axis_weights(x1, rw, pw, w, sampling_ratio)
        acc = wy.to(x.dtype) @ x[n] @ wx.to(x.dtype).t()
        outs.append(acc / max(gy * gx, 1))
    return torch.stack(outs) if outs else x.new_zeros(0, x.shape[1], ph, pw)


# -- integer ----------------------------------------------------------------------------------------------------------
def box_multiplier(box_scale: float, spatial_scale: float, fmt: BilinearFormat) -> int:
    """``A``: box codes times ``A`` are box corners on the feature map in Q(grid_mult_frac_bits)."""
    return math.floor(Fraction(float(box_scale)) * Fraction(spatial_scale) * (1 << fmt.grid_mult_frac_bits)
                      + Fraction(1, 2))


def _int_axis_weights(c1: torch.Tensor, roi: torch.Tensor, bins: int, n: int, ratio: int,
                      fmt: BilinearFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of every box (``c1``, ``roi``: int64 ``[K]``, Q(F)): ``[K, bins, n]`` summed Q(W) weights of each
    bin's samples, and the samples per bin ``g`` ``[K]`` (``<= 0``: none; the count keeps torchvision's value)."""
    f, wb = fmt.coord_frac_bits, fmt.weight_frac_bits
    one, unit = 1 << wb, 1 << f
    bin_size = torch.div(roi, bins, rounding_mode="floor")
    g = torch.full_like(roi, ratio) if ratio > 0 else -torch.div(-roi, bins * unit, rounding_mode="floor")
    k = roi.shape[0]
    w = torch.zeros(k, bins * n, dtype=torch.int64)
    gmax = int(g.max()) if k else 0
    if gmax <= 0:
        return w.reshape(k, bins, n), g
    p = torch.arange(bins).reshape(1, bins, 1)
    i = torch.arange(gmax).reshape(1, 1, gmax)
    bs, gg = bin_size.reshape(k, 1, 1), g.reshape(k, 1, 1)
    y = c1.reshape(k, 1, 1) + p * bs + torch.div((2 * i + 1) * bs, 2 * gg.clamp(min=1), rounding_mode="floor")
    valid = (i < gg) & (y >= -unit) & (y <= n * unit)
    y = y.clamp(min=0)
    lo = torch.bitwise_right_shift(y, f)
    frac = torch.bitwise_and(y, unit - 1)
    lam = torch.bitwise_right_shift(frac + ((1 << (f - wb)) >> 1), f - wb) if f > wb else frac
    last = lo >= n - 1  # all weight on the last row
    i0 = torch.where(last, n - 1, lo)
    w0 = torch.where(last, one, one - lam) * valid
    w1 = torch.where(last, 0, lam) * valid
    i1 = torch.where(last, n - 1, lo + 1).clamp(max=n - 1)
    base = (p * n).expand_as(y)
    w.scatter_add_(1, (base + i0).reshape(k, -1), w0.reshape(k, -1))
    w.scatter_add_(1, (base + i1).reshape(k, -1), w1.reshape(k, -1))
    return w.reshape(k, bins, n), g


def roi_align_weights(box_codes: Sequence[torch.Tensor], box_scales: Sequence[float], output_size: Any,
                      spatial_scale: float, sampling_ratio: int, aligned: bool, hw: Sequence[int], fmt: BilinearFormat,
                      rule: RequantRule, rescale: Fraction = Fraction(1)
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rule above per box: ``(batch [K], wy [K, PH, H], wx [K, PW, W], R [K])``, int64 — box ``k``'s output
    is ``clamp(round_shift(R[k] * wy[k] @ q[batch[k]] @ wx[k].T, 2W + 20))`` (:func:`separable_sum`)."""
    ph, pw = _pair(output_size)
    h, w = hw
    f, m = fmt.coord_frac_bits, fmt.grid_mult_frac_bits
    off = (1 << (f - 1)) if aligned else 0
    shift = torch.tensor(m - f, dtype=torch.int64)
    batch, corners = [], []
    for n, (codes, scale) in enumerate(zip(box_codes, box_scales)):
        a = box_multiplier(scale, spatial_scale, fmt)
        c = rule.round_shift(codes.reshape(-1, 4).to(torch.int64).cpu() * a, shift) - off
        corners.append(c)
        batch.append(torch.full((c.shape[0],), n, dtype=torch.int64))
    c = torch.cat(corners) if corners else torch.zeros(0, 4, dtype=torch.int64)
    x1, y1, x2, y2 = c.unbind(1)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1 << f), rh.clamp(min=1 << f)
    wy, gy = _int_axis_weights(y1, rh, ph, h, sampling_ratio, fmt)
    wx, gx = _int_axis_weights(x1, rw, pw, w, sampling_ratio, fmt)
    # R = floor(2**20 * rescale / count + 1/2) in exact fractions, once per distinct count
    counts, where = torch.unique((gy * gx).clamp(min=1), return_inverse=True)
    recips = torch.tensor([math.floor(Fraction(1 << COUNT_RECIPROCAL_BITS) * rescale / n + Fraction(1, 2))
                           for n in counts.tolist()], dtype=torch.int64)[where]
    return torch.cat(batch) if batch else torch.zeros(0, dtype=torch.int64), wy, wx, recips


def separable_sum(q: torch.Tensor, batch: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, multiplier: torch.Tensor,
                  shift: int, rule: RequantRule, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round_shift(multiplier[k] * wy[k] @ q[batch[k]] @ wx[k].T, shift))`` in torch, exact int64
    (``[K, C, PH, PW]``); the march kernel ``separable_sum`` computes the same."""
    q = q.to(torch.int64)
    outs = [wy[k].to(q.device) @ q[int(batch[k])] @ wx[k].to(q.device).t() * int(multiplier[k])
            for k in range(batch.shape[0])]
    if not outs:
        return q.new_zeros(0, q.shape[1], wy.shape[1], wx.shape[1])
    return rule.round_shift(torch.stack(outs), torch.tensor(shift, dtype=torch.int64)).clamp(qmin, qmax)


def int_roi_align(q: torch.Tensor, box_codes: Sequence[torch.Tensor], box_scales: Sequence[float], output_size: Any,
                  spatial_scale: float, sampling_ratio: int, aligned: bool, fmt: BilinearFormat, rule: RequantRule,
                  qmin: int, qmax: int, rescale: Fraction = Fraction(1), accumulate: Any = None) -> torch.Tensor:
    """Integer RoIAlign of codes ``q`` ``[N, C, H, W]`` over per-image box codes (``[K, C, PH, PW]``).

    ``rescale`` (input scale / output scale, MultiScaleRoIAlign's levels) is folded into the Q20 reciprocal:
    ``R = floor(2**20 * rescale / count + 1/2)``; 1 keeps the input's scale.  ``accumulate(q, batch, wy, wx, R,
    shift, qmin, qmax)`` does the sums (a march's compiled kernel); by default :func:`separable_sum` in torch."""
    batch, wy, wx, recips = roi_align_weights(box_codes, box_scales, output_size, spatial_scale, sampling_ratio,
                                              aligned, q.shape[-2:], fmt, rule, rescale)
    shift = 2 * fmt.weight_frac_bits + COUNT_RECIPROCAL_BITS
    if accumulate is None:
        return separable_sum(q, batch, wy, wx, recips, shift, rule, qmin, qmax)
    return accumulate(q, batch, wy, wx, recips, shift, qmin, qmax)


@attrs.frozen
class BoxFormat:
    """The box argument's format the table allows (``bbox 仅支持 List[Tensor] 格式``), checked when it runs."""

    text: str = ""

    def violated(self, module: Any) -> Optional[str]:
        return None

    def violated_by_boxes(self, boxes: Any) -> Optional[str]:
        if isinstance(boxes, torch.Tensor):
            return f"boxes given as one Tensor{list(boxes.shape)} break {self.text}"
        for b in boxes:
            if b.shape[-1] != 4 or b.dim() not in (2, 3) or (b.dim() == 3 and b.shape[0] != 1):
                return f"a box tensor of shape {list(b.shape)} breaks {self.text}"
        return None


# -- MultiScaleRoIAlign -----------------------------------------------------------------------------------------------
#: torchvision's LevelMapper defaults: a box of side ``CANONICAL_SCALE`` maps to level ``CANONICAL_LEVEL``
CANONICAL_SCALE, CANONICAL_LEVEL = 224, 4


def infer_scale(feature_hw: Sequence[int], image_hw: Sequence[int]) -> float:
    """torchvision's ``_infer_scale``: the power of two nearest (in log2) to ``feature / image`` along the height."""
    return 2.0 ** round(math.log2(float(feature_hw[0]) / float(image_hw[0])))


def level_range(scales: Sequence[float]) -> tuple[int, int]:
    """``(k_min, k_max)``: the levels of the first and last feature maps (``-log2(scale)``)."""
    return int(round(-math.log2(scales[0]))), int(round(-math.log2(scales[-1])))


def float_levels(boxes: Sequence[torch.Tensor], k_min: int, k_max: int, canonical_scale: int = CANONICAL_SCALE,
                 canonical_level: int = CANONICAL_LEVEL) -> torch.Tensor:
    """torchvision's ``LevelMapper`` (``floor(lvl0 + log2(sqrt(area) / s0) + 1e-6)``, clamped): level indices."""
    b = torch.cat([x.reshape(-1, 4) for x in boxes], 0)
    s = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    lv = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(1e-6, dtype=s.dtype))
    return (lv.clamp(min=k_min, max=k_max).to(torch.int64) - k_min)


def level_thresholds(box_scale: float, k_min: int, k_max: int, canonical_scale: int = CANONICAL_SCALE,
                     canonical_level: int = CANONICAL_LEVEL) -> list[int]:
    """Box-code areas at which a box moves up one level: ``T_k = ceil(s0**2 * 4**(k - lvl0) / s_b**2)`` for
    ``k = k_min+1 .. k_max`` (exact fractions): ``floor(lvl0 + log2(sqrt(area) / s0)) >= k`` exactly when
    ``area = a * s_b**2 >= s0**2 * 4**(k - lvl0)``, i.e. when the integer code area ``a >= T_k``."""
    s = Fraction(float(box_scale))
    return [math.ceil(Fraction(canonical_scale) ** 2 * Fraction(4) ** (k - canonical_level) / (s * s))
            for k in range(k_min + 1, k_max + 1)]


def int_levels(box_codes: torch.Tensor, thresholds: Sequence[int]) -> torch.Tensor:
    """Level indices of box codes ``[L, 4]``: the number of thresholds the exact code area reaches."""
    b = box_codes.reshape(-1, 4).to(torch.int64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lv = torch.zeros_like(area)
    for t in thresholds:
        lv += (area >= t).to(torch.int64)
    return lv


def float_multi_scale_roi_align(features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor],
                                image_shapes: Sequence[Sequence[int]], output_size: Any, sampling_ratio: int,
                                canonical_scale: int = CANONICAL_SCALE,
                                canonical_level: int = CANONICAL_LEVEL) -> torch.Tensor:
    """torchvision's ``MultiScaleRoIAlign`` (``aligned=False``) on the selected feature maps, in pure torch."""
    image_hw = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [infer_scale(f.shape[-2:], image_hw) for f in features]
    if len(features) == 1:
        return float_roi_align(features[0], boxes, output_size, scales[0], sampling_ratio)
    k_min, k_max = level_range(scales)
    levels = float_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
    rois = boxes_to_rois(boxes)
    ph, pw = _pair(output_size)
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], ph, pw)
    for lvl, (f, sc) in enumerate(zip(features, scales)):
        idx = torch.nonzero(levels == lvl).reshape(-1)
        if idx.numel():
            out[idx] = float_roi_align(f, rois[idx], output_size, sc, sampling_ratio).to(out.dtype)
    return out


def int_multi_scale_roi_align(qs: Sequence[torch.Tensor], feature_scales: Sequence[float],
                              box_codes: Sequence[torch.Tensor], box_scales: Sequence[float],
                              image_shapes: Sequence[Sequence[int]], output_size: Any, sampling_ratio: int,
                              fmt: BilinearFormat, rule: RequantRule, qmin: int, qmax: int,
                              canonical_scale: int = CANONICAL_SCALE,
                              canonical_level: int = CANONICAL_LEVEL, accumulate: Any = None) -> torch.Tensor:
    """Integer MultiScaleRoIAlign: each box's level from its exact code area (:func:`level_thresholds`), the
    integer RoIAlign on that level with the level's ``rescale = s_level / s_out`` folded into the Q20 reciprocal,
    ``s_out = max(feature scales)`` (int64 ``[K, C, PH, PW]`` in box order)."""
    image_hw = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [infer_scale(q.shape[-2:], image_hw) for q in qs]
    s_out = Fraction(max(float(s) for s in feature_scales))
    rescales = [Fraction(float(s)) / s_out for s in feature_scales]
    if len(qs) == 1:
        return int_roi_align(qs[0], box_codes, box_scales, output_size, scales[0], sampling_ratio, False, fmt, rule,
                             qmin, qmax, rescales[0], accumulate)
    k_min, k_max = level_range(scales)
    levels = [int_levels(c, level_thresholds(s, k_min, k_max, canonical_scale, canonical_level))
              for c, s in zip(box_codes, box_scales)]
    ph, pw = _pair(output_size)
    counts = [c.reshape(-1, 4).shape[0] for c in box_codes]
    out = torch.zeros(sum(counts), qs[0].shape[1], ph, pw, dtype=torch.int64 if accumulate is None else qs[0].dtype)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    for lvl, (q, sc) in enumerate(zip(qs, scales)):
        picks = [torch.nonzero(lv == lvl).reshape(-1) for lv in levels]
        if not any(p.numel() for p in picks):
            continue
        part = int_roi_align(q, [c.reshape(-1, 4)[p] for c, p in zip(box_codes, picks)], box_scales, output_size,
                             sc, sampling_ratio, False, fmt, rule, qmin, qmax, rescales[lvl], accumulate)
        out[torch.cat([p + s for p, s in zip(picks, starts)])] = part.to(out.dtype)
    return out


@attrs.frozen
class FeatureMaps:
    """MultiScaleRoIAlign's feature maps: their dtypes and (``max_count``) how many (``1<=feature number<=5``),
    checked when it runs (the number of feature maps is known only then)."""

    dtypes: tuple
    max_count: Optional[int] = None
    text: str = ""

    def violated(self, module: Any) -> Optional[str]:
        return None

    def violated_by_features(self, dtypes: Sequence[Any]) -> Optional[str]:
        if self.max_count is not None and not 1 <= len(dtypes) <= self.max_count:
            return f"{len(dtypes)} feature maps break {self.text}"
        bad = [str(d) for d in dtypes if d not in self.dtypes]
        if bad:
            return f"feature maps of dtype {', '.join(bad)} break {self.text}"
        return None
