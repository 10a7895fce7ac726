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

from ..numerics import RequantRule, float32_is_ieee
from ..quantization.fake_quantize import QuantParams


def _adaptive_sizes(size: int, out: int) -> torch.Tensor:
    return torch.tensor([math.ceil((i + 1) * size / out) - (i * size) // out for i in range(out)],
                        dtype=torch.float64)


def _window_elements(pool: nn.Module) -> int:
    """The elements of one window of a (non-adaptive) average pool."""
    k = pool.kernel_size
    return k * k if isinstance(k, int) else k[0] * k[1]


def window_sums_and_divisors(q: torch.Tensor, pool: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact window sums ``[N, C, OH, OW]`` and torch's divisors ``[OH, OW]`` (int64).  Int8/int16 codes give
    int32 sums where every window sum fits: a global average pool sums in int32, a window pool in float32 (exact
    below 2**24); otherwise float64 (int64 sums; an adaptive pool recovers its sums from float64 means)."""
    h, w = q.shape[-2:]
    narrow = q.dtype in (torch.int8, torch.int16)
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        size = pool.output_size if not isinstance(pool.output_size, int) else (pool.output_size,) * 2
        if narrow and tuple(size) == (1, 1) and h * w * (torch.iinfo(q.dtype).max + 1) < 2 ** 31:
            div = torch.full((1, 1), h * w, dtype=torch.int64, device=q.device)
            return q.sum(dim=(-2, -1), keepdim=True, dtype=torch.int32), div
        avg = F.adaptive_avg_pool2d(q.double(), pool.output_size)
        oh, ow = avg.shape[-2:]
        div = torch.outer(_adaptive_sizes(h, oh), _adaptive_sizes(w, ow)).to(q.device)
        return torch.round(avg * div).to(torch.int64), div.to(torch.int64)
    small = narrow and _window_elements(pool) * (torch.iinfo(q.dtype).max + 1) < 2 ** 24 and \
        float32_is_ieee(q.device)
    qd = q.float() if small else q.double()
    as_int = torch.int32 if small else torch.int64
    args = (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad)
    sums = F.avg_pool2d(qd, *args, divisor_override=1)
    ones = torch.ones(1, 1, h, w, dtype=torch.float64, device=q.device)
    real = F.avg_pool2d(ones, *args, divisor_override=1)[0, 0]
    mean_of_ones = F.avg_pool2d(ones, *args, divisor_override=pool.divisor_override)[0, 0]
    div = torch.round(real / mean_of_ones)
    return torch.round(sums).to(as_int), div.to(torch.int64)


def avg_pool_multipliers(div: torch.Tensor, inp: QuantParams, out: QuantParams, rule: RequantRule,
                         what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(multiplier, shift)`` per output position (``[OH, OW]``) for ``in_scale / (divisor * out_scale)``."""
    ratio = inp.scale.double().reshape(()) / (div.double() * out.scale.double().reshape(()))
    m, s = rule.multipliers(ratio.reshape(-1, 1), what=what)
    return m[:, 0].reshape(div.shape), s.reshape(div.shape)


def int_avg_pool(q: torch.Tensor, pool: nn.Module, inp: QuantParams, out: QuantParams, rule: RequantRule,
                 what: str) -> torch.Tensor:
    """Integer average pooling of ``q`` (int tensor at ``inp``) to ``out``'s scale and dtype."""
    sums, div = window_sums_and_divisors(q, pool)
    m, s = avg_pool_multipliers(div, inp, out, rule, what)
    return rule.requantize([(sums.to(torch.int64), m)], s, out.dtype)
