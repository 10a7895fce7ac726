"""Integer comparison (see :func:`qframe_core.nn.compare.compare_codes`)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..compare import compare_codes


class Compare(nn.Module):
    """Compares integer codes of (possibly) different scales exactly; returns a bool tensor."""

    _qframe_leaf = True
    quantized_output = False

    def __init__(self, name: str, value: Optional[float], scales: list[torch.Tensor], qframe_name: str) -> None:
        super().__init__()
        self.name = name
        self.value = value
        self.scales = scales
        self.qframe_name = qframe_name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Compare:
        n = 1 if qat.float_module.value is not None or len(qat._input_producers) == 1 else 2
        return cls(qat.float_module.name, qat.float_module.value,
                   [qat.input_params(i).scale.detach().clone() for i in range(n)], qat.qframe_name)

    def forward(self, qa: torch.Tensor, qb: Optional[torch.Tensor] = None) -> torch.Tensor:
        if qa.is_floating_point() or (qb is not None and qb.is_floating_point()):
            raise TypeError(f"{self.qframe_name}: expects integer tensors")
        return compare_codes(self.name, qa, self.scales[0], qb, self.scales[1] if qb is not None else None,
                             self.value)
