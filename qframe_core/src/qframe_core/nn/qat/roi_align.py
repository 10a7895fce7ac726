"""QAT ``RoIAlign``: float in QAT / CALIBRATION state, the march's integer rule in VALIDATION state."""

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
from ...roi_align import int_roi_align
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
                    box_params: Sequence[QuantParams], march: str, name: str) -> torch.Tensor:
    """The integer RoIAlign on ``march`` (int64 codes at the input's scale): QAT simulation and the integer model."""
    return int_roi_align(q, boxes, [float(p.scale.reshape(-1)[0]) for p in box_params], module.output_size,
                         float(module.spatial_scale), int(module.sampling_ratio), bool(module.aligned),
                         bilinear_format(march, name), resolve_march(march).requant,
                         inp.dtype.quant_min, inp.dtype.quant_max)


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
