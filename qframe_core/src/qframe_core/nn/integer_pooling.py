"""Integer average pooling: exact window sums, then the march's requantization.

``out = clamp(round_shift(window_sum * m, s))`` with ``m / 2**s ≈ in_scale /
(divisor * out_scale)``; the divisor is torch's (``count_include_pad``,
``divisor_override``, ceil-mode edges, adaptive windows), so the integer op
averages over exactly the elements the float op does.  Shared by QAT
simulation and the integer model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams


def _adaptive_sizes(size: int, out: int) -> torch.Tensor:
    return torch.tensor([math.ceil((i + 1) * size / out) - (i * size) // out for i in range(out)],
                        dtype=torch.float64)


def window_sums_and_divisors(q: torch.Tensor, pool: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact int64 window sums ``[N, C, OH, OW]`` and torch's divisors ``[OH, OW]`` (int64)."""
    qd = q.double()
    h, w = q.shape[-2:]
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        avg = F.adaptive_avg_pool2d(qd, pool.output_size)
        oh, ow = avg.shape[-2:]
        div = torch.outer(_adaptive_sizes(h, oh), _adaptive_sizes(w, ow)).to(q.device)
        return torch.round(avg * div).to(torch.int64), div.to(torch.int64)
    args = (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad)
    sums = F.avg_pool2d(qd, *args, divisor_override=1)
    ones = torch.ones(1, 1, h, w, dtype=torch.float64, device=q.device)
    real = F.avg_pool2d(ones, *args, divisor_override=1)[0, 0]
    mean_of_ones = F.avg_pool2d(ones, *args, divisor_override=pool.divisor_override)[0, 0]
    div = torch.round(real / mean_of_ones)
    return torch.round(sums).to(torch.int64), div.to(torch.int64)


def int_avg_pool(q: torch.Tensor, pool: nn.Module, inp: QuantParams, out: QuantParams, rule: RequantRule,
                 what: str) -> torch.Tensor:
    """Integer average pooling of ``q`` (int tensor at ``inp``) to ``out``'s scale and dtype."""
    sums, div = window_sums_and_divisors(q, pool)
    ratio = inp.scale.double().reshape(()) / (div.double() * out.scale.double().reshape(()))
    m, s = rule.multipliers(ratio.reshape(-1, 1), what=what)
    shape = div.shape
    return rule.requantize([(sums, m[:, 0].reshape(shape))], s.reshape(shape), out.dtype)
