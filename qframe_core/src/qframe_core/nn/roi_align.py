"""``RoIAlign`` / ``roi_align`` mirroring ``torchvision.ops`` (torchvision is optional): float in pure torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..roi_align import Boxes, float_roi_align


def roi_align(input: torch.Tensor, boxes: Boxes, output_size: Any, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """``torchvision.ops.roi_align``'s signature and result, computed by :func:`qframe_core.roi_align.float_roi_align`."""
    return float_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


class RoIAlign(nn.Module):
    """``torchvision.ops.RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)``; ``forward(input, boxes)``
    with boxes ``List[Tensor[L, 4]]`` (``[x1, y1, x2, y2]`` per image) or ``Tensor[K, 5]``."""

    _qframe_leaf = True

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int, aligned: bool = False) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: Boxes) -> torch.Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")
