"""Integer composite ops (softmax, layernorm, GLU): the integer steps of :mod:`qframe_core.nn.integer_softmax` & co.,
with the tables and multipliers fixed at convert from the QAT module's calibrated scales and settings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..integer_composite import check_shape
from ..integer_glu import int_glu
from ..integer_layernorm import int_layernorm
from ..integer_softmax import int_softmax


class _IntegerComposite(nn.Module):
    _qframe_leaf = True

    def __init__(self, params: Any, march: str, name: str) -> None:
        super().__init__()
        self.params = params
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Any:
        return cls(qat.integer_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.params.output

    def _codes(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        return q

    def _what(self) -> str:
        return f"{self.qframe_name} ({self.march})"

    def extra_repr(self) -> str:
        return f"out_dtype={self.params.output.dtype}, march={self.march}"


class Softmax(_IntegerComposite):
    """Integer softmax: ``exp_table(q - max) * reciprocal_table(mantissa(sum))``, requantized by the exponent."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        spec = resolve_march(self.march)
        out = int_softmax(self._codes(q), self.params, spec.requant, spec.lookup)
        return out.to(self.params.output.dtype.torch_dtype)

    def extra_repr(self) -> str:
        return f"dim={self.params.dim}, " + super().extra_repr()


class LayerNorm(_IntegerComposite):
    """Integer layer normalization: exact moments, ``rsqrt_table``, ``requant(n * g + b)``."""

    def __init__(self, params: Any, march: str, name: str, limits: tuple = ()) -> None:
        super().__init__(params, march, name)
        self.shape_limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> LayerNorm:
        return cls(qat.integer_params(), qat.march, qat.qframe_name, qat.shape_limits)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        check_shape(self.shape_limits, q.shape, self.qframe_name, "torch.nn.LayerNorm", self.march)
        spec = resolve_march(self.march)
        out = int_layernorm(self._codes(q), self.params, spec.requant, spec.lookup)
        return out.to(self.params.output.dtype.torch_dtype)

    def extra_repr(self) -> str:
        return f"normalized_ndim={self.params.normalized_ndim}, affine={self.params.weight is not None}, " + \
            super().extra_repr()


class GLU(_IntegerComposite):
    """Integer GLU: ``requant(a * sigmoid_table(b))``."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        spec = resolve_march(self.march)
        out = int_glu(self._codes(q), self.params, spec.requant, spec.lookup, self.qframe_name)
        return out.to(self.params.output.dtype.torch_dtype)

    def extra_repr(self) -> str:
        return f"dim={self.params.dim}, " + super().extra_repr()
