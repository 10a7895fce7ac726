"""Integer arithmetic rules, as data a march declares and code that applies them in torch.

A march states *how* its hardware requantizes with a :class:`RequantRule`
(multiplier width, rounding mode).  This module applies a rule to torch
tensors; QAT simulation (VALIDATION state) and convert both call it, and
each march's compiled kernel implements the very same rule in C++
(``qframe_kernels/rounding.hpp``), tested bit-for-bit against this and
against an independent numpy reference.

Requantization of integer terms ``x_i`` with real ratios ``r_i`` (input
scale / output scale) is::

    m_i, s = multipliers(r)                    # integers, shared shift s
    y = round_shift(sum_i x_i * m_i, s)        # in int64, the march's rounding
    y = clamp(y, lo, hi)                       # output dtype ∩ fused activation bounds
"""

from __future__ import annotations

import enum
from typing import Any, Optional, Sequence

import attrs
import torch

from .dtype import QuantDType

#: The largest right shift any kernel accepts.
MAX_SHIFT = 62


class Rounding(enum.Enum):
    """How a right shift rounds the bits it drops."""

    #: ties toward +infinity: ``(v + 2**(s-1)) >> s``
    HALF_UP = "half_up"
    #: ties to the even neighbour (banker's rounding)
    HALF_EVEN = "half_even"


def _pow2(shift: torch.Tensor) -> torch.Tensor:
    return torch.bitwise_left_shift(torch.ones_like(shift), shift)


@attrs.frozen
class RequantRule:
    """A march's requantization rule.

    Attributes:
        multiplier_bits: signed width of the integer multiplier; multipliers
            lie in ``[0, 2**(multiplier_bits-1) - 1]``.
        rounding: how the final right shift rounds.
    """

    multiplier_bits: int
    rounding: Rounding

    @property
    def max_multiplier(self) -> int:
        return (1 << (self.multiplier_bits - 1)) - 1

    # -- choosing integer multipliers --------------------------------------------
    def multipliers(self, ratios: torch.Tensor, what: str = "requantization") -> tuple[torch.Tensor, torch.Tensor]:
        """Integer multipliers with a shared shift for each row of real ratios.

        Args:
            ratios: float tensor ``[..., k]`` of non-negative real ratios
                (e.g. ``in_scale * w_scale / out_scale``); the ``k`` terms of a
                row share one shift.
            what: named in the error message.

        Returns:
            ``(m, s)``: int64 ``[..., k]`` multipliers and int64 ``[...]`` shifts with
            ``m / 2**s`` ≈ ratio, using as many of the rule's bits as possible.

        Raises:
            ValueError: when a ratio is negative, not finite, or too large to be
                represented (``ratio > max_multiplier``).
        """
        r = ratios.detach().to(torch.float64)
        if not torch.isfinite(r).all() or (r < 0).any():
            raise ValueError(f"{what}: scale ratios must be finite and non-negative, got {r.flatten()[:8].tolist()}")
        peak = r.amax(dim=-1)
        if (peak > self.max_multiplier).any():
            raise ValueError(
                f"{what}: a scale ratio of {float(peak.max()):.4g} exceeds what a "
                f"{self.multiplier_bits}-bit multiplier can represent ({self.max_multiplier}); "
                f"the output scale is far too small for its inputs — recalibrate"
            )
        safe = torch.where(peak > 0, peak, torch.ones_like(peak))
        shift = torch.floor(torch.log2(self.max_multiplier / safe)).clamp(0, MAX_SHIFT)
        m = torch.round(r * torch.exp2(shift).unsqueeze(-1))
        # log2 rounding can overshoot by one ulp: step the shift back where needed
        over = (m.amax(dim=-1) > self.max_multiplier) & (shift > 0)
        shift = torch.where(over, shift - 1, shift)
        m = torch.round(r * torch.exp2(shift).unsqueeze(-1))
        shift = torch.where(peak > 0, shift, torch.zeros_like(shift))
        return m.to(torch.int64), shift.to(torch.int64)

    # -- applying them -------------------------------------------------------------
    def round_shift(self, v: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``v / 2**shift`` rounded by this rule (int64 in, int64 out; shift broadcasts)."""
        v = v.to(torch.int64)
        shift = torch.as_tensor(shift, dtype=torch.int64, device=v.device)
        s1 = (shift - 1).clamp(min=0)
        half = torch.where(shift > 0, _pow2(s1), torch.zeros_like(shift))
        if self.rounding is Rounding.HALF_UP:
            return torch.bitwise_right_shift(v + half, shift)
        # half to even without compares (the C++ epilogue's identity): with q = v >> s,
        # (v + 2**(s-1) - 1 + (q & 1)) >> s is q + 1 above the tie, q below it and q + (q & 1) on it; for
        # s == 0 both added terms are 0.  |v| + 2**(s-1) stays below 2**63 for every value the rules shift
        # (products below 2**62).
        # (no data-dependent Python branch: traced models replay these ops for any shift)
        positive = shift > 0
        parity = torch.bitwise_right_shift(v, shift).bitwise_and_(1).mul_(positive)
        t = v + torch.where(positive, half - 1, torch.zeros_like(half))
        return t.add_(parity).bitwise_right_shift_(shift)

    def requantize(
        self,
        terms: Sequence[tuple[torch.Tensor, torch.Tensor]],
        shift: torch.Tensor,
        out_dtype: QuantDType,
        clamp_min: Optional[int] = None,
        clamp_max: Optional[int] = None,
    ) -> torch.Tensor:
        """``clamp(round_shift(sum(x * m for x, m in terms), shift))`` as int64.

        ``x`` are integer tensors, ``m`` and ``shift`` broadcast against them
        (per-channel values are reshaped by the caller).
        """
        acc = None
        for x, m in terms:
            t = x.to(torch.int64) * m.to(torch.int64)
            acc = t if acc is None else acc + t
        y = self.round_shift(acc, shift)
        lo = out_dtype.quant_min if clamp_min is None else max(out_dtype.quant_min, clamp_min)
        hi = out_dtype.quant_max if clamp_max is None else min(out_dtype.quant_max, clamp_max)
        return y.clamp(lo, hi)


#: integers up to this magnitude, and every sum of them that stays within it, are exact in float32
FLOAT32_EXACT = 1 << 24


def float32_is_ieee(device: torch.device) -> bool:
    """True when torch computes float32 matmuls and convolutions on ``device`` in IEEE float32 (its default
    on CPUs): a lower precision setting ("high"/"medium", "tf32"/"bf16") may round products, so integer
    arithmetic held in float32 is exact only under this one (callers fall back to float64).  CUDA is
    refused (cuDNN convolutions default to TF32)."""
    if device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = getattr(torch.backends, "mkldnn", None)
    for part in (torch.backends, mkldnn, getattr(mkldnn, "conv", None), getattr(mkldnn, "matmul", None)):
        if getattr(part, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return True


def exact_integer_op(op: Any, x: torch.Tensor, w: torch.Tensor, reduction: int) -> torch.Tensor:
    """``op(x, w)`` (a matmul, linear or convolution without bias) of integer tensors, exactly, as int64:
    in float32 when ``max|x| * max|w| * reduction <= 2**24`` (every partial sum, in any order, is then an
    integer float32 holds; ``reduction`` bounds the terms of one output) and torch runs float32 in IEEE
    arithmetic, else in float64 (exact below 2**53)."""
    if x.numel() and w.numel() and reduction and float32_is_ieee(x.device):
        if int(x.abs().amax()) * int(w.abs().amax()) * reduction <= FLOAT32_EXACT:
            return op(x.float(), w.float()).to(torch.int64)
    return torch.round(op(x.double(), w.double())).to(torch.int64)


def quantize_to_int(x: torch.Tensor, scale: torch.Tensor, dtype: QuantDType, ch_axis: Optional[int] = None,
                    out_dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``clamp(round_half_even(x / scale), qmin, qmax)`` as an int64 tensor.

    This is the one float->integer rule of qframe: fake quantization, QuantStub
    and weight/bias quantization at convert all use it.  ``scale`` is a scalar
    tensor, or per-channel along ``ch_axis``.  ``out_dtype`` (an integer dtype
    holding ``[qmin, qmax]``, e.g. ``dtype.torch_dtype``) gives the same values
    without the int64 pass (the QuantStub of an integer model).
    """
    s = scale.to(x.device)
    if ch_axis is not None and s.numel() > 1:
        shape = [1] * x.dim()
        shape[ch_axis] = -1
        s = s.reshape(shape)
    with torch.no_grad():  # an integer result has no gradient; in place: one buffer, not four (large weights)
        q = x / s
        q.round_()
        q.nan_to_num_(nan=0.0, posinf=dtype.quant_max, neginf=dtype.quant_min)
        return q.clamp_(dtype.quant_min, dtype.quant_max).to(out_dtype)


def float_bound_to_int(value: float, scale: torch.Tensor) -> int:
    """The integer a float clamp bound becomes at ``scale`` — what :func:`quantize_to_int` maps it to."""
    return int(torch.round(torch.tensor(float(value), dtype=torch.float32) / scale.float().reshape(())).item())


def relu6_bound(out_scale: torch.Tensor) -> int:
    """The integer that 6.0 becomes at ``out_scale``: ReLU6's upper clamp after requantization."""
    return float_bound_to_int(6.0, out_scale)
