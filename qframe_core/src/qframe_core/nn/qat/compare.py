"""QAT comparison: float compare, or in VALIDATION state the integer rule on its inputs' grids."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ...numerics import quantize_to_int
from ..compare import Compare as FloatCompare
from ..compare import compare_codes
from .base import QATModule


class Compare(QATModule):
    """A comparison of quantized values (bool output, no fake-quantize of its own)."""

    quantized_output = False

    def __init__(self, float_module: FloatCompare, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Compare:
        return cls(mod, march)


    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.simulating():
            return self.float_module(x, other)
        pa = self.input_params(0)
        qa = quantize_to_int(x, pa.scale, pa.dtype)
        if other is None:
            return compare_codes(self.float_module.name, qa, pa.scale, None, None, self.float_module.value)
        pb = self.input_params(1)
        return compare_codes(self.float_module.name, qa, pa.scale, quantize_to_int(other, pb.scale, pb.dtype),
                             pb.scale, None)
