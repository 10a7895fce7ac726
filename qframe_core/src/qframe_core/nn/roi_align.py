"""``RoIAlign`` / ``roi_align`` / ``MultiScaleRoIAlign`` mirroring ``torchvision.ops`` (torchvision is optional): float in pure torch."""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from ..roi_align import CANONICAL_LEVEL, CANONICAL_SCALE, Boxes, float_multi_scale_roi_align, float_roi_align


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


Features = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


def select_features(x: Features, featmap_names: Sequence[str]) -> tuple[list[torch.Tensor], list[int]]:
    """The feature maps ``featmap_names`` picks and their positions among the forward's feature inputs: by name
    from a dict (torchvision's form; prepare flattens a dict's values in insertion order), in order from a list
    (one per name)."""
    if isinstance(x, Mapping):
        keys = list(x.keys())
        return [x[n] for n in featmap_names], [keys.index(n) for n in featmap_names]
    if len(x) != len(featmap_names):
        raise ValueError(f"MultiScaleRoIAlign: {len(x)} feature maps given as a list, {len(featmap_names)} names")
    return list(x), list(range(len(x)))


class MultiScaleRoIAlign(nn.Module):
    """``torchvision.ops.MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, *, canonical_scale=224,
    canonical_level=4)``; ``forward(x, boxes, image_shapes)`` with ``x`` a dict of feature maps (torchvision's
    form) or a list in ``featmap_names`` order, boxes ``List[Tensor[L, 4]]`` and ``image_shapes`` ``List[(H, W)]``.
    Scales are inferred from the shapes (powers of two) and each box goes to level
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale))`` clamped to the feature maps' levels."""

    _qframe_leaf = True

    def __init__(self, featmap_names: Sequence[str], output_size: Any, sampling_ratio: int, *,
                 canonical_scale: int = CANONICAL_SCALE, canonical_level: int = CANONICAL_LEVEL) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: Features, boxes: Sequence[torch.Tensor], image_shapes: Sequence[Sequence[int]]) -> torch.Tensor:
        features, _ = select_features(x, self.featmap_names)
        return float_multi_scale_roi_align(features, boxes, image_shapes, self.output_size, self.sampling_ratio,
                                           self.canonical_scale, self.canonical_level)

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")
