"""``F.grid_sample`` as a module: prepare turns ``F.grid_sample(x, grid, mode=…, padding_mode=…,
align_corners=…)`` with constant keyword arguments into one; eager models use it directly."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class GridSample(nn.Module):
    """``F.grid_sample(x, grid, mode, padding_mode, align_corners)``; integer rule in :mod:`qframe_core.grid_sample`."""

    _qframe_leaf = True

    @property
    def lowering_key(self) -> object:
        return F.grid_sample  # the op-table key of the function

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros", align_corners: Optional[bool] = None) -> None:
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding_mode,
                             align_corners=bool(self.align_corners))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}, align_corners={self.align_corners}"
