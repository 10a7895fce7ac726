"""A QAT module kept in the integer model (``preserve_qat_mode``), for single-op conversion debugging.

convert leaves a module whose ``preserve_qat_mode`` is True in its QAT form,
wrapped so it still speaks integers with its neighbours: integer inputs are
dequantized with their producers' scales, the QAT module runs, and its
output is quantized again with its own output scale.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import QuantParams
from ..qat.base import integer_tensor_to_float


class PreservedQAT(nn.Module):
    """Runs ``qat`` (a QAT module) between integer neighbours."""

    _qframe_leaf = True

    def __init__(self, qat: nn.Module) -> None:
        super().__init__()
        self.qat = qat
        self.in_params = [p.output_params() for p in qat._input_producers]
        self.out_params = qat.output_params()

    @classmethod
    def from_qat(cls, qat: nn.Module) -> PreservedQAT:
        return cls(qat)

    def output_params(self) -> QuantParams:
        return self.out_params

    def _floats(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [x if x.is_floating_point() else integer_tensor_to_float(x, p) for x, p in zip(xs, self.in_params)]

    def _ints(self, y: torch.Tensor) -> torch.Tensor:
        p = self.out_params
        return quantize_to_int(y, p.scale, p.dtype, p.ch_axis).to(p.dtype.torch_dtype)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self._ints(self.qat(*self._floats(xs)))

    def _method(self, name: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        if name == "cat":
            return self._ints(self.qat.cat(self._floats(args[0]), *args[1:], **kwargs))
        return self._ints(getattr(self.qat, name)(*self._floats(args), **kwargs))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._method("add", x, y)

    def sub(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._method("sub", x, y)

    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._method("mul", x, y)

    def cat(self, xs: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self._method("cat", list(xs), dim=dim)
