"""QAT MultiheadAttention — the steps of :mod:`qframe_core.nn.integer_mha`.

QAT/CALIBRATION: float compute; the in/out projection weights pass the qconfig's weight fake-quantize (int8 per
channel), and each intermediate its own fake-quantize: ``q_post_process``, ``k_post_process``,
``v_post_process`` (projections), ``scores_post_process`` (scaled logits, qint8: the softmax's input), ``exp_post_process`` (fixed
``1/32767``), ``weights_post_process`` (attention probabilities, fixed ``1/32767``), ``context_post_process``
(``p v``), all qint16 and calibrated unless fixed; the output ``activation_post_process`` (the qconfig's
activation).  VALIDATION: :func:`int_mha` on the codes.  Two outputs, like torch's: ``(out, weights)``.

Masks: boolean ``attn_mask`` / ``key_padding_mask`` (or float ones holding only 0 and -inf) are lowered; refused:
additive float masks and ``is_causal`` (when it runs); ``add_bias_kv``, ``add_zero_attn`` and different q/k/v
embedding sizes (at prepare, from the op table).  Only query, key and value carry quantization (masks are not
quantized: ``quantized_inputs = 3``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...dtype import qint8
from ...errors import UnsupportedOpError
from ...march import resolve_march
from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from ..integer_composite import intermediate_dtype, intermediate_fake_quant
from ..integer_mha import PROB_SCALE, MHAIntParams, int_mha, linear_params, merged_mask, mha_params
from ..integer_softmax import softmax_params, softmax_tables
from .base import MultiOutputQAT, integer_tensor_to_float, make_fake_quant


class NoBiasKV:
    """Op-table limit: ``add_bias_kv`` (a ``bias_k`` parameter) is not supported."""

    text = "不支持 add_bias_kv"

    def violated(self, module: nn.Module) -> Optional[str]:
        if getattr(module, "bias_k", None) is not None:
            return "add_bias_kv=True breaks 不支持 add_bias_kv"
        return None


def check_masks(name: str, march: str, is_causal: bool) -> None:
    if is_causal:
        raise UnsupportedOpError(
            f"{name!r} (torch.nn.MultiheadAttention): is_causal=True is not lowered on march {march!r} (op table: "
            f"mask 量化可能带来精度风险). Way out: pass the causal mask itself as a boolean attn_mask")


def attention_mask(query: torch.Tensor, key: torch.Tensor, batch_first: bool, num_heads: int,
                   attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], name: str,
                   march: str) -> Optional[torch.Tensor]:
    """The merged boolean mask (see :func:`~qframe_core.nn.integer_mha.merged_mask`) for these inputs."""
    if attn_mask is None and key_padding_mask is None:
        return None
    unbatched = query.dim() == 2
    if unbatched:
        n, length, s = 1, query.shape[0], key.shape[0]
    elif batch_first:
        n, length, s = query.shape[0], query.shape[1], key.shape[1]
    else:
        n, length, s = query.shape[1], query.shape[0], key.shape[0]
    return merged_mask(attn_mask, key_padding_mask, n, num_heads, length, s, unbatched, name, march)


class MultiheadAttention(MultiOutputQAT):
    """``nn.MultiheadAttention`` as integer steps; outputs ``(out, weights)``."""

    output_fake_quants = ("activation_post_process", "weights_post_process")
    output_labels = ("out", "weights")

    #: prepare binds only query, key and value to producers (masks are boolean, not quantized)
    quantized_inputs = 3

    def __init__(self, mod: nn.MultiheadAttention, qconfig: Any, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        if qconfig is None or qconfig.activation is None or qconfig.weight is None:
            raise ValueError("MultiheadAttention needs a qconfig with activation and weight fake-quantizes")
        self.embed_dim, self.num_heads, self.batch_first = mod.embed_dim, mod.num_heads, mod.batch_first
        self.in_proj_weight = nn.Parameter(mod.in_proj_weight.detach().clone())
        self.in_proj_bias = nn.Parameter(mod.in_proj_bias.detach().clone()) if mod.in_proj_bias is not None else None
        self.out_proj_weight = nn.Parameter(mod.out_proj.weight.detach().clone())
        self.out_proj_bias = (nn.Parameter(mod.out_proj.bias.detach().clone()) if mod.out_proj.bias is not None
                              else None)
        self.in_proj_weight_fake_quant = make_fake_quant(qconfig.weight, "weight", "MultiheadAttention")
        self.out_proj_weight_fake_quant = make_fake_quant(qconfig.weight, "weight", "MultiheadAttention")
        inner = intermediate_dtype(resolve_march(march).activation_dtypes)
        for n in ("q", "k", "v", "context"):
            setattr(self, f"{n}_post_process", intermediate_fake_quant(qconfig.activation, inner, "MultiheadAttention"))
        # the softmax's input is qint8 (its op-table row): the exp table reads q - max(q), which must fit its grid
        self.scores_post_process = intermediate_fake_quant(qconfig.activation, qint8, "MultiheadAttention")
        self.exp_post_process = intermediate_fake_quant(qconfig.activation, inner, "MultiheadAttention", PROB_SCALE)
        self.weights_post_process = intermediate_fake_quant(qconfig.activation, inner, "MultiheadAttention",
                                                            PROB_SCALE)
        self.activation_post_process: FakeQuantize = make_fake_quant(qconfig.activation, "activation",
                                                                     "MultiheadAttention")
        self._tables: tuple[Any, Any] = (None, None)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> MultiheadAttention:
        return cls(mod, qconfig, march)

    def _weight_params(self, fq: FakeQuantize, w: torch.Tensor) -> QuantParams:
        if not bool(fq.calibrated):
            fq.observe(w)
        return fq.quant_params()

    def integer_params(self) -> MHAIntParams:
        spec = resolve_march(self.march)
        rule, what = spec.requant, f"{self.qframe_name} ({self.march})"
        n_in = len(self._input_producers)
        inputs = tuple(self.input_params(min(i, n_in - 1)) for i in range(3))
        e = self.embed_dim
        wp = self._weight_params(self.in_proj_weight_fake_quant, self.in_proj_weight)
        projections = []
        for j, fq in enumerate((self.q_post_process, self.k_post_process, self.v_post_process)):
            rows = slice(j * e, (j + 1) * e)
            scale = wp.scale.reshape(-1)
            part = QuantParams(scale[rows] if scale.numel() > 1 else scale, wp.dtype, wp.ch_axis)
            bias = self.in_proj_bias[rows] if self.in_proj_bias is not None else None
            projections.append(linear_params(rule, inputs[j], self.in_proj_weight[rows], part, bias,
                                             fq.quant_params(), f"{what} in_proj"))
        scores, exp, probs = (self.scores_post_process.quant_params(), self.exp_post_process.quant_params(),
                              self.weights_post_process.quant_params())
        key = tuple((tuple(p.scale.tolist()), p.dtype) for p in (scores, exp))
        if self._tables[0] != key:
            self._tables = (key, softmax_tables(spec.lookup, scores, exp, {}, {}, what))
        softmax = softmax_params(rule, self._tables[1], -1, scores, exp, probs, what)
        out_proj = linear_params(rule, self.context_post_process.quant_params(), self.out_proj_weight,
                                 self._weight_params(self.out_proj_weight_fake_quant, self.out_proj_weight),
                                 self.out_proj_bias, self.activation_post_process.quant_params(), f"{what} out_proj")
        return mha_params(rule, self.num_heads, self.batch_first, inputs, tuple(projections), scores, softmax,
                          self.context_post_process.quant_params(), out_proj, what)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        check_masks(self.qframe_name, self.march, is_causal)
        mask = attention_mask(query, key, self.batch_first, self.num_heads, attn_mask, key_padding_mask,
                              self.qframe_name, self.march)
        if self.simulating():
            p = self.integer_params()
            spec = resolve_march(self.march)
            codes = [quantize_to_int(t, ip.scale, ip.dtype) for t, ip in zip((query, key, value),
                                                                                (p.query, p.key, p.value))]
            out, weights = int_mha(*codes, p, spec.requant, spec.lookup, need_weights, average_attn_weights, mask)
            return (integer_tensor_to_float(out, p.output),
                    integer_tensor_to_float(weights, p.weights) if weights is not None else None)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        if not self.batch_first or unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e, h = self.embed_dim, self.num_heads
        w = self.in_proj_weight_fake_quant(self.in_proj_weight)
        b = self.in_proj_bias if self.in_proj_bias is not None else None

        def proj(x: torch.Tensor, j: int, fq: FakeQuantize) -> torch.Tensor:
            y = fq(F.linear(x, w[j * e:(j + 1) * e], b[j * e:(j + 1) * e] if b is not None else None))
            n, length, _ = y.shape
            return y.reshape(n, length, h, e // h).transpose(1, 2)

        q, k, v = proj(query, 0, self.q_post_process), proj(key, 1, self.k_post_process), proj(value, 2,
                                                                                                self.v_post_process)
        scores = self.scores_post_process(q @ k.transpose(-2, -1) / math.sqrt(e // h))
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        ex = self.exp_post_process(torch.exp(scores - scores.detach().amax(dim=-1, keepdim=True)))
        probs = self.weights_post_process(ex / ex.sum(dim=-1, keepdim=True))
        ctx = self.context_post_process(probs @ v)
        n, _, length, d = ctx.shape
        out = F.linear(ctx.transpose(1, 2).reshape(n, length, e), self.out_proj_weight_fake_quant(self.out_proj_weight),
                       self.out_proj_bias)
        out = self.activation_post_process(out)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = self.weights_post_process(probs.mean(dim=1)) if average_attn_weights else probs
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, march={self.march}"
