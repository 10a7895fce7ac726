"""Integer-model ``AnchorGenerator``: the same float32 anchors, read from the shapes of integer (or float) inputs."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class AnchorGenerator(nn.Module):
    """Float32 anchors (the op table's output dtype on both marches) from the inputs' shapes."""

    _qframe_leaf = True

    def __init__(self, float_module: nn.Module, name: str, march: str) -> None:
        super().__init__()
        self.float_module = float_module
        self.qframe_name = name
        self.march = march

    @classmethod
    def from_qat(cls, qat: nn.Module) -> AnchorGenerator:
        return cls(qat.float_module, qat.qframe_name, qat.march)

    def forward(self, images: Any, feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.float_module(images, feature_maps)
