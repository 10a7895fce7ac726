"""QAT ``RoIAlign`` and ``MultiScaleRoIAlign``: float in QAT / CALIBRATION state, the march's integer rule in VALIDATION state."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ...errors import UnsupportedOpError
from ...lowering import op_display_name
from ...march import resolve_march
from ...numerics import quantize_to_int
from ...quantization.fake_quantize import QuantParams
from ...registry import registry
from ...roi_align import int_multi_scale_roi_align, int_roi_align
from ..roi_align import select_features
from .base import QATModule, integer_tensor_to_float
from .resize import bilinear_format


def check_boxes(limits: Sequence[Any], module: nn.Module, boxes: Any, name: str, march: str) -> None:
    """Raise :class:`UnsupportedOpError` when the boxes break the table's box rule."""
    broken = [m for m in (lim.violated_by_boxes(boxes) for lim in limits if hasattr(lim, "violated_by_boxes"))
              if m is not None]
    if broken:
        raise UnsupportedOpError(
            f"march {march!r} cannot run {name!r} ({op_display_name(type(module))}): "
            + "; ".join(f"{b} (march {march!r} op table)" for b in broken)
            + ". Way out: pass the boxes as a list with one [box_num, 4] tensor per image, each quantized "
              "(QuantStub), or keep RoIAlign outside the QuantStub/DeQuantStub region (float)")


def roi_align_codes(module: nn.Module, q: torch.Tensor, boxes: Sequence[torch.Tensor], inp: QuantParams,
                    box_params: Sequence[QuantParams], march: str, name: str, accumulate: Any = None) -> torch.Tensor:
    """The integer RoIAlign on ``march`` (codes at the input's scale): QAT simulation and the integer model (which
    passes the march kernel as ``accumulate``, see :func:`qframe_core.roi_align.int_roi_align`)."""
    return int_roi_align(q, boxes, [float(p.scale.reshape(-1)[0]) for p in box_params], module.output_size,
                         float(module.spatial_scale), int(module.sampling_ratio), bool(module.aligned),
                         bilinear_format(march, name), resolve_march(march).requant,
                         inp.dtype.quant_min, inp.dtype.quant_max, accumulate=accumulate)


class RoIAlign(QATModule):
    """RoIAlign of a quantized feature map over quantized boxes; the output keeps the feature map's scale."""

    def __init__(self, float_module: nn.Module, march: str, limits: Sequence[Any] = ()) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module
        self.limits = tuple(limits)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> RoIAlign:
        lowering: Optional[Any] = registry.lowering(march, type(mod))
        return cls(mod, march, lowering.limits if lowering is not None else ())

    def output_params(self) -> QuantParams:
        return self.input_params(0)


    def forward(self, x: torch.Tensor, boxes: Any) -> torch.Tensor:
        check_boxes(self.limits, self.float_module, boxes, self.qframe_name, self.march)
        if not self.simulating():
            return self.float_module(x, boxes)
        p = self.input_params(0)
        q = quantize_to_int(x, p.scale, p.dtype, p.ch_axis)
        box_params = [self.input_params(1 + i) for i in range(len(boxes))]
        codes = [quantize_to_int(b, bp.scale, bp.dtype) for b, bp in zip(boxes, box_params)]
        out = roi_align_codes(self.float_module, q, codes, p, box_params, self.march, self.qframe_name)
        return integer_tensor_to_float(out, p)


def check_features(limits: Sequence[Any], module: nn.Module, params: Sequence[QuantParams], name: str,
                   march: str) -> None:
    """Raise :class:`UnsupportedOpError` when the selected feature maps break the table's feature rule."""
    broken = [m for m in (lim.violated_by_features([p.dtype for p in params]) for lim in limits
                          if hasattr(lim, "violated_by_features")) if m is not None]
    if broken:
        raise UnsupportedOpError(
            f"march {march!r} cannot run {name!r} ({op_display_name(type(module))}): "
            + "; ".join(f"{b} (march {march!r} op table)" for b in broken)
            + ". Way out: pass at most as many feature maps as the table allows, each quantized to an accepted dtype "
              "(its producer's qconfig), or keep MultiScaleRoIAlign outside the QuantStub/DeQuantStub region (float)")


def multi_scale_output_params(feature_params: Sequence[QuantParams]) -> QuantParams:
    """The output grid: the largest of the feature maps' scales (each level is requantized onto it)."""
    scale = max(float(p.scale.reshape(-1)[0]) for p in feature_params)
    return QuantParams(torch.tensor([scale], dtype=torch.float32), feature_params[0].dtype)


def multi_scale_codes(module: nn.Module, qs: Sequence[torch.Tensor], feature_params: Sequence[QuantParams],
                      boxes: Sequence[torch.Tensor], box_params: Sequence[QuantParams], image_shapes: Any,
                      march: str, name: str, accumulate: Any = None) -> torch.Tensor:
    """The integer MultiScaleRoIAlign on ``march`` (codes on :func:`multi_scale_output_params`'s grid)."""
    dt = feature_params[0].dtype
    return int_multi_scale_roi_align(
        qs, [float(p.scale.reshape(-1)[0]) for p in feature_params], boxes,
        [float(p.scale.reshape(-1)[0]) for p in box_params], image_shapes, module.output_size,
        int(module.sampling_ratio), bilinear_format(march, name), resolve_march(march).requant, dt.quant_min,
        dt.quant_max, module.canonical_scale, module.canonical_level, accumulate)


class MultiScaleRoIAlign(QATModule):
    """MultiScaleRoIAlign of quantized feature maps over quantized boxes: per box the level from its exact code
    area, the integer RoIAlign of that level requantized onto the largest feature scale."""

    def __init__(self, float_module: nn.Module, march: str, limits: Sequence[Any] = ()) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module
        self.limits = tuple(limits)
        self.feature_positions: list[int] = []
        self.n_feature_inputs = 0

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> MultiScaleRoIAlign:
        lowering: Optional[Any] = registry.lowering(march, type(mod))
        return cls(mod, march, lowering.limits if lowering is not None else ())

    def feature_params(self) -> list[QuantParams]:
        if not self.feature_positions:
            raise UnsupportedOpError(f"{self.qframe_name}: run the QAT model once (calibration) before converting: "
                                     "the feature maps it uses are known only when it runs")
        return [self.input_params(i) for i in self.feature_positions]

    def box_params(self, n_boxes: int) -> list[QuantParams]:
        return [self.input_params(self.n_feature_inputs + i) for i in range(n_boxes)]

    def output_params(self) -> QuantParams:
        return multi_scale_output_params(self.feature_params())

    def simulating(self) -> bool:
        producer = self._input_producers[0] if self._input_producers else None
        return producer is not None and hasattr(producer, "simulating") and producer.simulating()

    def forward(self, x: Any, boxes: Any, image_shapes: Any) -> torch.Tensor:
        features, positions = select_features(x, self.float_module.featmap_names)
        self.feature_positions, self.n_feature_inputs = positions, len(x)
        check_boxes(self.limits, self.float_module, boxes, self.qframe_name, self.march)
        if self._input_producers:
            check_features(self.limits, self.float_module, self.feature_params(), self.qframe_name, self.march)
        if not self.simulating():
            return self.float_module(x, boxes, image_shapes)
        fps = self.feature_params()
        qs = [quantize_to_int(f, p.scale, p.dtype, p.ch_axis) for f, p in zip(features, fps)]
        bps = self.box_params(len(boxes))
        codes = [quantize_to_int(b, bp.scale, bp.dtype) for b, bp in zip(boxes, bps)]
        out = multi_scale_codes(self.float_module, qs, fps, codes, bps, image_shapes, self.march, self.qframe_name)
        return integer_tensor_to_float(out, multi_scale_output_params(fps))
