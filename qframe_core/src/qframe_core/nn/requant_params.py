"""From float quantization parameters to the integers a kernel takes.

QAT simulation (VALIDATION state) and convert both call these functions,
so the integers the QAT model simulates are exactly the integers the
quantized model's kernel receives.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..dtype import qint8, qint32
from ..numerics import RequantRule, quantize_to_int, relu6_bound
from ..quantization.fake_quantize import QuantParams


def weight_to_int(weight: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """Per-output-channel qint8 weight (int64 tensor)."""
    return quantize_to_int(weight.detach(), params.scale, qint8, params.ch_axis)


def accumulator_scale(in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``in_scale * w_scale[c]`` in float64 — the scale of the int32 accumulator."""
    return in_scale.detach().double().reshape(-1)[:1] * w_scale.detach().double().reshape(-1)


def bias_to_int(bias: Optional[torch.Tensor], acc_scale: torch.Tensor) -> torch.Tensor:
    """qint32 bias at the accumulator scale (zeros when the op has no bias)."""
    if bias is None:
        return torch.zeros(acc_scale.numel(), dtype=torch.int64, device=acc_scale.device)
    q = torch.round(bias.detach().double() / acc_scale.to(bias.device))
    return q.clamp(qint32.quant_min, qint32.quant_max).to(torch.int64)


def int32_output_scale(acc_scale: torch.Tensor) -> torch.Tensor:
    """float32 per-channel scale of a high-precision (int32) output."""
    return acc_scale.float()


def activation_bounds(activation: Optional[str], out_scale: Optional[torch.Tensor]) -> tuple[Optional[int], Optional[int]]:
    """Integer clamp bounds of a fused ReLU/ReLU6 at the output scale."""
    if activation == "relu":
        return 0, None
    if activation == "relu6":
        if out_scale is None:
            raise ValueError("ReLU6 fused into a high-precision (int32) output is not supported: give the op an "
                             "int8/int16 output qconfig or remove the ReLU6")
        return 0, relu6_bound(out_scale)
    return None, None


def requant_multipliers(rule: RequantRule, term_scales: Sequence[torch.Tensor], out_scale: torch.Tensor,
                        what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Multipliers ``[C, k]`` and shifts ``[C]`` for ``k`` integer terms requantized to ``out_scale``.

    ``term_scales`` are the real scales of the terms (per channel ``[C]`` or scalar);
    the ratio of each to ``out_scale`` becomes an integer multiplier, all sharing one shift.
    """
    n = max(int(t.numel()) for t in term_scales)
    cols = [t.detach().double().reshape(-1).expand(n) if t.numel() == 1 else t.detach().double().reshape(-1)
            for t in term_scales]
    ratios = torch.stack(cols, dim=-1) / out_scale.detach().double().reshape(())
    return rule.multipliers(ratios, what=what)
