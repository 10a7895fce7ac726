"""Integer pooling and scale-preserving ops (exact torch integer arithmetic)."""

from __future__ import annotations

import torch
from torch import nn

from ...march import resolve_march
from ...numerics import float_bound_to_int
from ...quantization.fake_quantize import QuantParams
from ..clamp import Clamp
from ..integer_pooling import avg_pool_multipliers, int_avg_pool, window_sums_and_divisors
from ..pad import Pad
from . import ops
from .kernels import dtype_name, runs_on_kernels


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
        # selection ops (max pool, abs, …) are exact on integers held in floats (float32 holds every int16 code);
        # saturated (abs(-128) = 127)
        d = self.params.dtype
        held = q.to(torch.float32 if q.dtype in (torch.int8, torch.int16) else torch.float64)
        return torch.round(m(held)).clamp(d.quant_min, d.quant_max).to(q.dtype)


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
        rule, what = resolve_march(self.march).requant, f"{self.qframe_name} ({self.march})"
        if not runs_on_kernels(q) or q.dim() != 4:
            return int_avg_pool(q, self.float_module, self.inp, self.out, rule, what).to(self.out.dtype.torch_dtype)
        # the exact window sums, requantized per output position on the march kernel (multipliers kept per size)
        sums, div = window_sums_and_divisors(q, self.float_module)
        cache = self.__dict__.setdefault("_multipliers", {})
        key = tuple(q.shape[-2:])
        if key not in cache:
            cache[key] = avg_pool_multipliers(div, self.inp, self.out, rule, what)
        m, s = cache[key]
        n, c, oh, ow = sums.shape
        d = self.out.dtype
        if bool((m == m.reshape(-1)[0]).all()) and bool((s == s.reshape(-1)[0]).all()):
            m, s, axis = m.reshape(-1)[:1], s.reshape(-1)[:1], None  # one divisor: per tensor
        else:
            m, s, axis = m.reshape(-1), s.reshape(-1), 1  # per output position (edges of padded windows)
        out = ops.requantize(self.march, sums.reshape(n * c, oh * ow), m, s, axis, dtype_name(d.bits), d.quant_min,
                             d.quant_max, self.qframe_name)
        return out.reshape(n, c, oh, ow)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_multipliers", None)
        return state
