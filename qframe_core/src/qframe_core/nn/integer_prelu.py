"""Integer PReLU: ``q >= 0 ? q * m_pos : q * m_neg[c]`` with one shift per channel, the march's rounding.

``m_pos / 2**s ≈ in_scale / out_scale`` and ``m_neg[c] / 2**s ≈ in_scale * alpha[c] / out_scale``
(the sign of ``alpha`` rides on the integer multiplier).  Shared by QAT
simulation and the integer model.
"""

from __future__ import annotations

import attrs
import torch

from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams
from .requant_params import requant_multipliers


@attrs.frozen
class PReLUIntParams:
    input: QuantParams
    output: QuantParams
    positive: torch.Tensor  # int64 [C] (C = 1 for a single alpha)
    negative: torch.Tensor  # int64 [C], signed
    shift: torch.Tensor  # int64 [C]


def prelu_params(rule: RequantRule, alpha: torch.Tensor, inp: QuantParams, out: QuantParams,
                 what: str) -> PReLUIntParams:
    a = alpha.detach().double().reshape(-1)
    s_in = inp.scale.double().reshape(())
    m, shift = requant_multipliers(rule, [s_in.expand(a.numel()), s_in * a.abs()], out.scale, what=what)
    return PReLUIntParams(inp, out, m[:, 0], m[:, 1] * torch.where(a < 0, -1, 1), shift)


def int_prelu(q: torch.Tensor, p: PReLUIntParams, rule: RequantRule) -> torch.Tensor:
    shape = [1] * q.dim()
    if q.dim() > 1 and p.positive.numel() > 1:
        shape[1] = -1
    pos, neg, shift = (t.to(q.device).reshape(shape) for t in (p.positive, p.negative, p.shift))
    q64 = q.to(torch.int64)
    mult = torch.where(q64 >= 0, pos, neg)
    return rule.requantize([(q64, mult)], shift, p.output.dtype)
