"""Integer MultiheadAttention: :func:`~qframe_core.nn.integer_mha.int_mha` with the parameters fixed at convert."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..integer_mha import LinearIntParams, MHAIntParams, int_linear, int_masked_softmax, int_mha, matmul_requant
from ..qat.attention import attention_mask, check_masks
from . import ops
from .composite import kernel_softmax, kernel_softmax_applies
from .kernels import march_kernels, runs_on_kernels


def _fits_16_bits(t: torch.Tensor) -> bool:
    """int8/int16 codes, or int64 codes (a torch step's result) whose values int16 holds."""
    if t.dtype in (torch.int8, torch.int16):
        return True
    if t.dtype != torch.int64 or t.numel() == 0:
        return False
    lo, hi = t.aminmax()
    return -32768 <= int(lo) and int(hi) <= 32767


class MultiheadAttention(nn.Module):
    """``(out, weights)`` of multi-head attention on integer codes (boolean masks)."""

    _qframe_leaf = True

    def __init__(self, params: MHAIntParams, march: str, name: str) -> None:
        super().__init__()
        self.params = params
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> MultiheadAttention:
        return cls(qat.integer_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.params.output

    def output_params_at(self, index: int) -> QuantParams:
        return (self.params.output, self.params.weights)[index]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Any:
        check_masks(self.qframe_name, self.march, is_causal)
        mask = attention_mask(query, key, self.params.batch_first, self.params.num_heads, attn_mask,
                              key_padding_mask, self.qframe_name, self.march)
        for t in (query, key, value):
            if t.is_floating_point():
                raise TypeError(f"{self.qframe_name}: expects integer tensors, got {t.dtype}")
        spec = resolve_march(self.march)
        out, weights = int_mha(query, key, value, self.params, spec.requant, spec.lookup, need_weights,
                               average_attn_weights, mask, softmax=self._softmax, linear=self._linear,
                               matmul=self._matmul)
        return (out.to(self.params.output.dtype.torch_dtype),
                weights.to(self.params.weights.dtype.torch_dtype) if weights is not None else None)

    def _softmax(self, scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention softmax of score codes (int64 on the softmax input's grid) on the march kernel, masked
        entries (True) left out."""
        p = self.params.softmax
        codes = scores.to(p.input.dtype.torch_dtype)  # the scores are clamped to that dtype
        if not kernel_softmax_applies(codes, p) or (mask is not None and not mask.is_cpu):
            spec = resolve_march(self.march)
            return int_masked_softmax(scores, mask, p, spec.requant, spec.lookup)
        return kernel_softmax(codes, p, self.march, -1, self.__dict__.setdefault("_dense", {}), self.qframe_name,
                              mask)

    def _linear(self, q: torch.Tensor, p: LinearIntParams, rule: Any) -> torch.Tensor:
        """A projection (:func:`~qframe_core.nn.integer_mha.int_linear`) on the march kernel ``linear``: exact
        int32 accumulation with the per-channel requantization in the kernel, or, with a pre-shift (a second
        rounding the kernel's epilogue does not have), the raw int32 sums requantized in torch."""
        cache = self.__dict__.setdefault("_linears", {})
        entry = cache.get(id(p))
        if entry is None or entry[0] is not p:
            bias_max = int(p.bias.abs().max()) if p.bias.numel() else 0
            entry = cache[id(p)] = (p, p.weight.to(torch.int8), p.bias.to(torch.int32) if bias_max < 2 ** 31 else None,
                                    p.multipliers.to(torch.int32), p.shift.to(torch.int32), bias_max)
        _, w, b, m, s, bias_max = entry
        if b is None or not runs_on_kernels(q) or p.output.dtype.bits > 16:
            return int_linear(q, p, rule)
        x = q.reshape(-1, q.shape[-1])
        if p.pre_shift == 0:
            d = p.output.dtype
            out = ops.linear_direct(self.march, x, w, b, m, s, f"int{d.bits}", d.quant_min, d.quant_max,
                                    self.qframe_name)
            return out.reshape(*q.shape[:-1], out.shape[-1])
        if (torch.iinfo(q.dtype).max + 1) * 128 * q.shape[-1] + bias_max >= 2 ** 31:
            return int_linear(q, p, rule)  # the raw sums could saturate int32
        acc = ops.linear_direct(self.march, x, w, b, None, None, "int32", -2 ** 31, 2 ** 31 - 1, self.qframe_name)
        acc = rule.round_shift(acc.to(torch.int64), torch.tensor(p.pre_shift))
        out = rule.requantize([(acc, p.multipliers)], p.shift, p.output.dtype)
        return out.reshape(*q.shape[:-1], out.shape[-1])

    def _matmul(self, a: torch.Tensor, bt: torch.Tensor, req: Any, rule: Any, dtype: Any) -> torch.Tensor:
        """:func:`~qframe_core.nn.integer_mha.matmul_requant` on the march kernel ``matmul_requant`` (codes of
        at most 16 bits: the scores' and context's operands are)."""
        if (dtype.bits > 16 or not (a.is_cpu and bt.is_cpu) or torch.jit.is_tracing() or not _fits_16_bits(a)
                or not _fits_16_bits(bt)):
            return matmul_requant(a, bt, req, rule, dtype)
        lead = a.shape[:-2]
        a3 = (a if a.dtype != torch.int64 else a.to(torch.int16)).reshape(-1, *a.shape[-2:])
        b3 = (bt if bt.dtype != torch.int64 else bt.to(torch.int16)).reshape(-1, *bt.shape[-2:])
        out = march_kernels(self.march).matmul_requant(a3.contiguous().numpy(), b3.contiguous().numpy(),
                                                       (req.pre_shift, req.multiplier, req.shift), f"int{dtype.bits}")
        return torch.from_numpy(out).reshape(*lead, *out.shape[-2:])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dense", None)
        state.pop("_linears", None)
        return state

    def extra_repr(self) -> str:
        return f"num_heads={self.params.num_heads}, batch_first={self.params.batch_first}, march={self.march}"
