"""``AnchorGenerator`` mirroring ``torchvision.models.detection.rpn.AnchorGenerator`` (torchvision is optional).

The anchors depend only on the shapes of the image batch and of the feature maps (the op table: "仅支持
Tensor.shape 可以离线确定的情况"), never on their values, so every march computes them the same way in float32 —
the table's output column is float32 on both marches — whatever the feature maps' dtype (qint8, qint16, qint32
codes or float32).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """torchvision's ``generate_anchors`` in float32: ``[-w, -h, w, h] / 2`` rounded, zero-centred."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """``AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))``; ``forward(images,
    feature_maps)`` with ``images`` an image batch tensor ``[N, C, H, W]`` or an object with ``tensors`` and
    ``image_sizes`` (torchvision's ``ImageList``): one float32 ``[sum(H_i * W_i * A_i), 4]`` tensor per image."""

    _qframe_leaf = True

    def __init__(self, sizes: Any = ((128, 256, 512),), aspect_ratios: Any = ((0.5, 1.0, 2.0),)) -> None:
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = [cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def forward(self, images: Any, feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        tensors = images.tensors if hasattr(images, "tensors") else images
        n_images = len(images.image_sizes) if hasattr(images, "image_sizes") else tensors.shape[0]
        image_h, image_w = tensors.shape[-2:]
        if len(feature_maps) != len(self.cell_anchors):
            raise ValueError(f"AnchorGenerator: {len(feature_maps)} feature maps, anchors for {len(self.cell_anchors)}")
        per_map = []
        for f, base in zip(feature_maps, self.cell_anchors):
            gh, gw = f.shape[-2:]
            sy, sx = image_h // gh, image_w // gw
            shift_y, shift_x = torch.meshgrid(torch.arange(gh, dtype=torch.int32) * sy,
                                              torch.arange(gw, dtype=torch.int32) * sx, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            per_map.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        anchors = torch.cat(per_map) if per_map else torch.zeros(0, 4)
        return [anchors.clone() for _ in range(n_images)]

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"
