"""Integer resize (nearest copies codes; bilinear is the march's fixed-point rule)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from ...resize import output_size_and_steps
from ..qat.resize import bilinear_codes, check_resize_at_run
from .pooling import ScalePreserving


class Upsample(ScalePreserving):
    """Integer ``nn.Upsample`` & co. at the input's scale (see :mod:`qframe_core.resize`)."""

    def __init__(self, float_module: nn.Module, params: QuantParams, name: str, march: str,
                 limits: Sequence[Any] = ()) -> None:
        super().__init__(float_module, params, name)
        self.march = march
        self.limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Upsample:
        return cls(qat.float_module, qat.input_params(0), qat.qframe_name, qat.march, qat.limits)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        m = self.float_module
        out_hw, steps = output_size_and_steps(m, q.shape[-2:])
        check_resize_at_run(self.limits, m, q.shape, out_hw, self.qframe_name, self.march)
        if m.mode != "bilinear":
            return super().forward(q)
        d = self.params.dtype
        out = bilinear_codes(m, q, out_hw, steps, self.march, self.qframe_name, d.quant_min, d.quant_max)
        return out.to(q.dtype)
