"""Integer PReLU (see :mod:`qframe_core.nn.integer_prelu`)."""

from __future__ import annotations

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..integer_prelu import PReLUIntParams, int_prelu


class PReLU(nn.Module):
    _qframe_leaf = True

    def __init__(self, params: PReLUIntParams, march: str, name: str) -> None:
        super().__init__()
        self.params = params
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> PReLU:
        return cls(qat.integer_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.params.output

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        out = int_prelu(q, self.params, resolve_march(self.march).requant)
        return out.to(self.params.output.dtype.torch_dtype)
