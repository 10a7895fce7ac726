"""Integer MultiheadAttention: exact linears and matmuls requantized, the integer softmax, an exact out projection.

Shared by QAT simulation (VALIDATION state) and the integer module.  Inputs ``query``, ``key``, ``value``
(codes, ``[L, N, E]``, ``[N, L, E]`` with ``batch_first``, or unbatched ``[L, E]``); ``H`` heads of
``d = E / H``:

1. ``q = requant(x_q W_q^T + b_q, s_q)``, likewise ``k``, ``v`` — the in-projection's int8 per-channel
   weights, exact int64 accumulations, the bias qint32 at ``s_x s_w[c]``, requantized per channel to the
   calibrated qint16 grids ``s_q``, ``s_k``, ``s_v`` (``q_post_process`` & co.);
2. ``a = requant(q_h k_h^T, s_q s_k / (sqrt(d) s_a))`` per head — exact int64 dot products (torch's
   ``1/sqrt(d)`` folded into the ratio) onto the calibrated qint8 logit grid ``s_a`` (``scores_post_process``;
   qint8 like the softmax row's input: the exp table reads ``q - max(q)``, which must fit the table's grid);
3. ``p = softmax(a)`` along the keys — :func:`~.integer_softmax.int_softmax` (exp table, exact sum,
   normalized reciprocal table) onto the fixed qint16 grid ``1/32767`` (``weights_post_process``);
4. ``o = requant(p v_h, s_p s_v / s_o)`` — exact int64 products onto the calibrated qint16 context grid
   ``s_o`` (``context_post_process``), heads concatenated;
5. ``y = requant(o W_out^T + b_out, s_y)`` — the out projection like step 1, onto the output grid.

The attention weights (second output, ``need_weights``) are ``p`` on its grid, averaged over heads by an
exact sum requantized by ``1/H`` (``average_attn_weights``).

Masks (``attn_mask`` ``[L, S]`` or ``[N*H, L, S]``, ``key_padding_mask`` ``[N, S]``; boolean, or float holding
only ``0`` and ``-inf``) are merged into one boolean mask: masked logits are left out of the row's maximum and
their exps are set to 0 before the sum.  A row with every key masked gives 0 (torch gives NaN).  Other float
masks (additive biases) are refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import attrs
import torch

from ..dtype import qint16
from ..errors import UnsupportedOpError
from ..numerics import RequantRule, exact_integer_op
from ..quantization.fake_quantize import QuantParams
from .integer_composite import PRODUCT_BITS, WideRequant, normalize, scale_of, wide_requant, wide_requant_params
from .integer_softmax import SoftmaxIntParams, int_softmax
from .requant_params import accumulator_scale, bias_to_int, requant_multipliers, weight_to_int

#: the fixed grid of the attention probabilities
PROB_SCALE = 1.0 / qint16.quant_max


@attrs.frozen
class LinearIntParams:
    """``requant(round_shift(q W^T + b, pre) * m[c], shift[c])``: int8 per-channel weight, exact accumulation."""

    weight: torch.Tensor  # int64 [O, I]
    bias: torch.Tensor  # int64 [O] at s_x * s_w[c]
    multipliers: torch.Tensor  # int64 [O]
    shift: torch.Tensor  # int64 [O]
    pre_shift: int
    output: QuantParams


def linear_params(rule: RequantRule, inp: QuantParams, w: torch.Tensor, wp: QuantParams, b: Optional[torch.Tensor],
                  out: QuantParams, what: str) -> LinearIntParams:
    acc = accumulator_scale(inp.scale, wp.scale)
    bias = bias_to_int(b, acc)
    if bias.numel() == 1 and w.shape[0] > 1:
        bias = bias.expand(w.shape[0]).clone()
    bound = max(-inp.dtype.quant_min, inp.dtype.quant_max) * 128 * w.shape[1] + int(bias.abs().max())
    pre = max(0, int(bound).bit_length() + (rule.multiplier_bits - 1) - PRODUCT_BITS)
    m, s = requant_multipliers(rule, [acc * 2.0 ** pre], out.scale, what=what)
    return LinearIntParams(weight_to_int(w, wp), bias, m[:, 0], s, pre, out)


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` exactly in int64 (:func:`~qframe_core.numerics.exact_integer_op`: float32 where every
    partial sum fits its mantissa, int8 x int8 up to K = 1024, else float64)."""
    return exact_integer_op(torch.matmul, a, b, a.shape[-1])


def matmul_requant(a: torch.Tensor, bt: torch.Tensor, req: WideRequant, rule: RequantRule,
                   dtype: Any) -> torch.Tensor:
    """``wide_requant(a @ bt^T)`` of codes ``[..., M, K]`` and ``[..., N, K]``: exact int64 products requantized."""
    return wide_requant(exact_matmul(a.to(torch.int64), bt.to(torch.int64).transpose(-2, -1)), req, rule, dtype)


def int_linear(q: torch.Tensor, p: LinearIntParams, rule: RequantRule) -> torch.Tensor:
    acc = exact_matmul(q.to(torch.int64), p.weight.t()) + p.bias.to(q.device)
    acc = rule.round_shift(acc, torch.tensor(p.pre_shift, device=q.device))
    return rule.requantize([(acc, p.multipliers.to(q.device))], p.shift.to(q.device), p.output.dtype)


@attrs.frozen
class MHAIntParams:
    num_heads: int
    batch_first: bool
    query: QuantParams
    key: QuantParams
    value: QuantParams
    q_proj: LinearIntParams
    k_proj: LinearIntParams
    v_proj: LinearIntParams
    scores_requant: WideRequant
    softmax: SoftmaxIntParams  # its input grid is the logit grid s_a, its output the probability grid
    context: QuantParams
    context_requant: WideRequant
    out_proj: LinearIntParams
    average_requant: tuple[int, int]  # (multiplier, shift) of 1 / num_heads

    @property
    def output(self) -> QuantParams:
        return self.out_proj.output

    @property
    def weights(self) -> QuantParams:
        return self.softmax.output


def mha_params(rule: RequantRule, num_heads: int, batch_first: bool, inputs: tuple[QuantParams, ...],
               projections: tuple[LinearIntParams, ...], scores: QuantParams, softmax: SoftmaxIntParams,
               context: QuantParams, out_proj: LinearIntParams, what: str) -> MHAIntParams:
    q_proj, k_proj, v_proj = projections
    head_dim = q_proj.weight.shape[0] // num_heads
    qk_bound = 2 ** 30 * head_dim
    scores_req = wide_requant_params(
        rule, scale_of(q_proj.output) * scale_of(k_proj.output) / (math.sqrt(head_dim) * scale_of(scores)), qk_bound,
        f"{what} scores")
    # the probability codes of a row sum to about 32767: |sum p v| <= 2 * 32767 * 32768 leaves room for rounding
    context_req = wide_requant_params(rule, scale_of(softmax.output) * scale_of(v_proj.output) / scale_of(context),
                                      2 ** 31, f"{what} context")
    m, s = rule.multipliers(torch.tensor([[1.0 / num_heads]], dtype=torch.float64), what=f"{what} head average")
    return MHAIntParams(num_heads, batch_first, *inputs, q_proj, k_proj, v_proj, scores_req, softmax, context, context_req,
                        out_proj, (int(m[0, 0]), int(s[0])))


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[N, L, E]`` -> ``[N, H, L, d]``."""
    n, length, e = t.shape
    return t.reshape(n, length, n_heads, e // n_heads).transpose(1, 2)


def _bool_mask(m: torch.Tensor, what: str, name: str, march: str) -> torch.Tensor:
    if m.dtype == torch.bool:
        return m
    if m.is_floating_point() and bool(((m == 0) | (m == float("-inf"))).all()):
        return m == float("-inf")
    raise UnsupportedOpError(
        f"{name!r} (torch.nn.MultiheadAttention): a {m.dtype} {what} with values other than 0 and -inf (an "
        f"additive bias) is not lowered on march {march!r} (op table: mask 量化可能带来精度风险). Way out: pass a "
        f"boolean mask (True = masked), or run the attention after the DeQuantStub (float)")


def merged_mask(attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], n: int, h: int,
                length: int, s: int, unbatched: bool, name: str, march: str) -> Optional[torch.Tensor]:
    """One boolean mask broadcastable to ``[N, H, L, S]`` (True = masked), or None."""
    out = None
    if attn_mask is not None:
        m = _bool_mask(attn_mask, "attn_mask", name, march)
        m = m.reshape(1, 1, length, s) if m.dim() == 2 else m.reshape(n, h, length, s)
        out = m
    if key_padding_mask is not None:
        m = _bool_mask(key_padding_mask, "key_padding_mask", name, march)
        m = m.reshape(1 if unbatched else n, 1, 1, s)
        out = m if out is None else out | m
    return out


def int_masked_softmax(q: torch.Tensor, mask: Optional[torch.Tensor], p: SoftmaxIntParams, rule: RequantRule,
                       lookup: Any) -> torch.Tensor:
    """:func:`int_softmax` along the last dim with masked entries left out (their output 0)."""
    if mask is None:
        return int_softmax(q, p, rule, lookup)
    q64 = q.to(torch.int64)
    mask = mask.to(q.device).expand(q64.shape)
    top = torch.where(mask, torch.full_like(q64, -(1 << 40)), q64).amax(dim=-1, keepdim=True)
    d = torch.where(mask, torch.zeros_like(q64), q64 - top)
    e = torch.where(mask, torch.zeros_like(q64), lookup.apply(d, p.exp_table, rule, p.exp))
    mantissa, k = normalize(e.sum(dim=-1, keepdim=True).clamp(min=1), rule)
    r = lookup.apply(mantissa, p.reciprocal_table, rule, p.reciprocal)
    return wide_requant(e * r, p.output_requant, rule, p.output.dtype, extra_shift=k)


def int_mha(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, p: MHAIntParams, rule: RequantRule,
            lookup: Any, need_weights: bool = True, average_attn_weights: bool = True,
            mask: Optional[torch.Tensor] = None,
            softmax: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]] = None,
            linear: Callable[[torch.Tensor, LinearIntParams, RequantRule], torch.Tensor] = int_linear,
            matmul: Callable[..., torch.Tensor] = matmul_requant,
            ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Integer attention on codes: ``(output codes, attention-weight codes or None)``.  ``softmax``
    (``(scores, mask) -> probability codes``), ``linear`` and ``matmul`` replace :func:`int_masked_softmax`,
    :func:`int_linear` and :func:`matmul_requant` with implementations of the same steps (the integer module's
    march kernels)."""
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = (t.unsqueeze(1) for t in (query, key, value))
    if not p.batch_first or unbatched:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    q = _heads(linear(query, p.q_proj, rule), p.num_heads)
    k = _heads(linear(key, p.k_proj, rule), p.num_heads)
    v = _heads(linear(value, p.v_proj, rule), p.num_heads)
    scores = matmul(q, k, p.scores_requant, rule, p.softmax.input.dtype)
    if softmax is not None:
        probs = softmax(scores, mask)
    else:
        probs = int_masked_softmax(scores, mask, p.softmax, rule, lookup)
    ctx = matmul(probs, v.transpose(-2, -1), p.context_requant, rule, p.context.dtype)
    n, h, length, d = ctx.shape
    out = linear(ctx.transpose(1, 2).reshape(n, length, h * d).to(p.context.dtype.torch_dtype), p.out_proj, rule)
    if not p.batch_first or unbatched:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
    weights = None
    if need_weights:
        weights = probs
        if average_attn_weights:
            m, s = p.average_requant
            weights = rule.requantize([(probs.sum(dim=1, dtype=torch.int64), torch.tensor(m))], torch.tensor(s),
                                      p.weights.dtype)
        if unbatched:
            weights = weights.squeeze(0)
    return out, weights
