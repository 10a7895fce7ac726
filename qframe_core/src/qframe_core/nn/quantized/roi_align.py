"""Integer ``RoIAlign`` (see :mod:`qframe_core.roi_align`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from ..qat.roi_align import check_boxes, roi_align_codes


class RoIAlign(nn.Module):
    """Integer RoIAlign over integer box codes; the output keeps the feature map's scale and dtype."""

    _qframe_leaf = True

    def __init__(self, float_module: nn.Module, params: QuantParams, box_params: Sequence[QuantParams], name: str,
                 march: str, limits: Sequence[Any] = ()) -> None:
        super().__init__()
        self.float_module = float_module
        self.params = params
        self.box_params = list(box_params)
        self.qframe_name = name
        self.march = march
        self.limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> RoIAlign:
        boxes = [qat.input_params(i) for i in range(1, len(qat._input_producers))]
        return cls(qat.float_module, qat.input_params(0), boxes, qat.qframe_name, qat.march, qat.limits)

    def output_params(self) -> QuantParams:
        return self.params

    def forward(self, q: torch.Tensor, boxes: Any) -> torch.Tensor:
        check_boxes(self.limits, self.float_module, boxes, self.qframe_name, self.march)
        if q.is_floating_point() or any(b.is_floating_point() for b in boxes):
            raise TypeError(f"{self.qframe_name}: expects integer feature and box tensors")
        if len(boxes) != len(self.box_params):
            raise ValueError(f"{self.qframe_name}: {len(boxes)} box tensors, converted for {len(self.box_params)}")
        out = roi_align_codes(self.float_module, q, boxes, self.params, self.box_params, self.march, self.qframe_name)
        return out.to(q.dtype)
