"""Clamp as a module: ``torch.clamp``/``clip``/``Tensor.clamp`` with constant bounds become one at prepare."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Clamp(nn.Module):
    """``torch.clamp(x, min, max)`` with constant (or None) bounds.

    The integer model clamps at ``round(bound / scale)`` on the input's grid
    (see :class:`qframe_core.nn.quantized.ScalePreserving`).
    """

    _qframe_leaf = True

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None, name: str = "clamp") -> None:
        super().__init__()
        if min is None and max is None:
            raise ValueError("Clamp: give at least one of min and max")
        self.min_val = None if min is None else float(min)
        self.max_val = None if max is None else float(max)
        self.name = name

    @property
    def lowering_key(self) -> str:
        return f"torch.{self.name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min={self.min_val}, max={self.max_val}"
