"""Integer pooling and scale-preserving ops (exact torch integer arithmetic)."""

from __future__ import annotations

import torch
from torch import nn

from ...march import resolve_march
from ...numerics import float_bound_to_int
from ...quantization.fake_quantize import QuantParams
from ..clamp import Clamp
from ..integer_pooling import int_avg_pool
from ..pad import Pad


class ScalePreserving(nn.Module):
    """Max pooling, ReLU6/Hardtanh/clamp, constant padding and friends on integer tensors, at the input's scale."""

    _qframe_leaf = True

    def __init__(self, float_module: nn.Module, params: QuantParams, name: str) -> None:
        super().__init__()
        self.float_module = float_module
        self.params = params
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> ScalePreserving:
        return cls(qat.float_module, qat.input_params(0), qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.params

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        m = self.float_module
        if isinstance(m, (nn.Hardtanh, Clamp)):  # ReLU6 included: bounds in integer units of this scale
            d = self.params.dtype  # a bound beyond the dtype's range is no bound at all
            lo = None if m.min_val is None else min(max(float_bound_to_int(m.min_val, self.params.scale),
                                                        d.quant_min), d.quant_max)
            hi = None if m.max_val is None else min(max(float_bound_to_int(m.max_val, self.params.scale),
                                                        d.quant_min), d.quant_max)
            return q.clamp(lo, hi)
        if isinstance(m, nn.ConstantPad2d) or (isinstance(m, Pad) and m.mode == "constant"):
            # the pad value in integer units of this scale, saturated
            d = self.params.dtype
            value = min(max(float_bound_to_int(m.value, self.params.scale), d.quant_min), d.quant_max)
            return torch.nn.functional.pad(q, m.padding if isinstance(m, nn.ConstantPad2d) else m.pad, value=value)
        # selection ops (max pool, abs, …) are exact on integers held in float64; saturated (abs(-128) = 127)
        d = self.params.dtype
        return torch.round(m(q.to(torch.float64))).clamp(d.quant_min, d.quant_max).to(q.dtype)


class AvgPool2d(nn.Module):
    """Integer AvgPool2d / AdaptiveAvgPool2d (see :mod:`qframe_core.nn.integer_pooling`)."""

    _qframe_leaf = True

    def __init__(self, float_module: nn.Module, inp: QuantParams, out: QuantParams, march: str, name: str) -> None:
        super().__init__()
        self.float_module = float_module
        self.inp, self.out = inp, out
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> AvgPool2d:
        return cls(qat.float_module, qat.input_params(0), qat.output_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.out

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        out = int_avg_pool(q, self.float_module, self.inp, self.out, resolve_march(self.march).requant,
                           what=f"{self.qframe_name} ({self.march})")
        return out.to(self.out.dtype.torch_dtype)
