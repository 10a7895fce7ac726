"""QAT ``AnchorGenerator``: the anchors depend on shapes only, float32 in every state (the op table's output)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .base import QATModule


class AnchorGenerator(QATModule):
    """Float32 anchors from the image batch's and the feature maps' shapes; binds no input (their quantization
    plays no part: the table accepts qint8, qint16, qint32 and float32 feature maps)."""

    #: prepare binds none of the inputs: only their shapes are read
    quantized_inputs = 0

    def __init__(self, float_module: nn.Module, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> AnchorGenerator:
        return cls(mod, march)

    def simulating(self) -> bool:
        return False

    def forward(self, images: Any, feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.float_module(images, feature_maps)
