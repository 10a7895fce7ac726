"""QuantStub and DeQuantStub: where the quantized region of a model begins and ends."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class QuantStub(nn.Module):
    """Marks a model input to quantize; identity in the float model.

    Args:
        scale: fix the input scale (``1/128`` for camera/"pyramid" input) instead
            of calibrating it.  ``None`` calibrates it like any activation.
    """

    _qframe_leaf = True

    def __init__(self, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is not None and not float(scale) > 0:
            raise ValueError(f"QuantStub: scale must be positive, got {scale}")
        self.scale = None if scale is None else float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "" if self.scale is None else f"scale={self.scale}"


class DeQuantStub(nn.Module):
    """Marks a model output to dequantize; identity in the float model."""

    _qframe_leaf = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
