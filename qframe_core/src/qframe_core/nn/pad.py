"""``F.pad`` as a module: prepare turns ``F.pad(x, pad, mode, value)`` with constant arguments into one."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Pad(nn.Module):
    """``F.pad(x, pad, mode, value)``; in the integer model the codes are padded (a constant value
    becomes ``round(value / scale)`` on the input grid, see ``nn.quantized.ScalePreserving``)."""

    _qframe_leaf = True

    @property
    def lowering_key(self) -> object:
        return F.pad  # the op-table key of the function (a class attribute would bind it as a method)

    def __init__(self, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> None:
        super().__init__()
        self.pad = tuple(int(p) for p in pad)
        self.mode = mode
        self.value = 0.0 if value is None else float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pad, mode="constant", value=self.value)
        return F.pad(x, self.pad, mode=self.mode)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, mode={self.mode!r}" + (f", value={self.value}" if self.mode == "constant" else "")
