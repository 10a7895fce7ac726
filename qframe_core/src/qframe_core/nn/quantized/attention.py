"""Integer MultiheadAttention: :func:`~qframe_core.nn.integer_mha.int_mha` with the parameters fixed at convert."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..integer_mha import MHAIntParams, int_masked_softmax, int_mha
from ..qat.attention import attention_mask, check_masks
from .composite import kernel_softmax, kernel_softmax_applies


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
                               average_attn_weights, mask, softmax=self._softmax)
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

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dense", None)
        return state

    def extra_repr(self) -> str:
        return f"num_heads={self.params.num_heads}, batch_first={self.params.batch_first}, march={self.march}"
