"""Integer ``RoIAlign`` and ``MultiScaleRoIAlign`` (see :mod:`qframe_core.roi_align`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from ..qat.roi_align import (
    check_boxes,
    check_features,
    multi_scale_codes,
    multi_scale_output_params,
    roi_align_codes,
)
from ..roi_align import select_features
from .kernels import march_kernels, runs_on_kernels


def kernel_accumulate(march: str) -> Any:
    """The sums of :func:`qframe_core.roi_align.int_roi_align` on the march kernel ``separable_sum``."""
    def accumulate(q: torch.Tensor, batch: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, multiplier: torch.Tensor,
                   shift: int, qmin: int, qmax: int) -> torch.Tensor:
        out = march_kernels(march).separable_sum(q.contiguous().numpy(), batch.numpy(), wy.to(torch.int32).numpy(),
                                                 wx.to(torch.int32).numpy(), multiplier.numpy(), shift, qmin, qmax)
        return torch.from_numpy(out)
    return accumulate


class RoIAlign(nn.Module):
    """Integer RoIAlign over integer box codes; the output keeps the feature map's scale and dtype.

    int8/int16 CPU features sum on the march kernel ``separable_sum`` (the per-box weights come from the rule in
    torch); other inputs and traced models run it all in torch.
    """

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
        accumulate = kernel_accumulate(self.march) if runs_on_kernels(q) else None
        out = roi_align_codes(self.float_module, q, boxes, self.params, self.box_params, self.march, self.qframe_name,
                              accumulate)
        return out.to(q.dtype)


class MultiScaleRoIAlign(nn.Module):
    """Integer MultiScaleRoIAlign over integer feature and box codes; the output is on the largest feature scale."""

    _qframe_leaf = True

    def __init__(self, float_module: nn.Module, feature_params: Sequence[QuantParams], box_params: Sequence[QuantParams],
                 positions: Sequence[int], n_feature_inputs: int, name: str, march: str,
                 limits: Sequence[Any] = ()) -> None:
        super().__init__()
        self.float_module = float_module
        self.feature_params = list(feature_params)
        self.box_params = list(box_params)
        self.positions = list(positions)
        self.n_feature_inputs = n_feature_inputs
        self.params = multi_scale_output_params(self.feature_params)
        self.qframe_name = name
        self.march = march
        self.limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> MultiScaleRoIAlign:
        n_boxes = len(qat._input_producers) - qat.n_feature_inputs
        return cls(qat.float_module, qat.feature_params(), qat.box_params(n_boxes), qat.feature_positions,
                   qat.n_feature_inputs, qat.qframe_name, qat.march, qat.limits)

    def output_params(self) -> QuantParams:
        return self.params

    def forward(self, x: Any, boxes: Any, image_shapes: Any) -> torch.Tensor:
        check_boxes(self.limits, self.float_module, boxes, self.qframe_name, self.march)
        check_features(self.limits, self.float_module, self.feature_params, self.qframe_name, self.march)
        features, positions = select_features(x, self.float_module.featmap_names)
        if positions != self.positions or len(x) != self.n_feature_inputs:
            raise ValueError(f"{self.qframe_name}: feature maps {positions} of {len(x)}, converted for "
                             f"{self.positions} of {self.n_feature_inputs}")
        if any(f.is_floating_point() for f in features) or any(b.is_floating_point() for b in boxes):
            raise TypeError(f"{self.qframe_name}: expects integer feature and box tensors")
        if len(boxes) != len(self.box_params):
            raise ValueError(f"{self.qframe_name}: {len(boxes)} box tensors, converted for {len(self.box_params)}")
        accumulate = kernel_accumulate(self.march) if runs_on_kernels(*features) else None
        out = multi_scale_codes(self.float_module, features, self.feature_params, boxes, self.box_params,
                                image_shapes, self.march, self.qframe_name, accumulate)
        return out.to(features[0].dtype)
