"""QAT modules of pooling and of ops whose output lies on their input's grid."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from ..integer_pooling import int_avg_pool
from .base import QATModule, integer_tensor_to_float, make_fake_quant


class ScalePreserving(QATModule):
    """Max pooling, ReLU6, Hardtanh…: the output keeps the input's scale and dtype.

    In VALIDATION state the output is snapped to the input grid (a bound such as
    ReLU6's 6.0 may fall between grid points), exactly as the integer model clamps.
    """

    def __init__(self, float_module: nn.Module, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> ScalePreserving:
        return cls(mod, march)

    def output_params(self) -> QuantParams:
        return self.input_params(0)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.float_module(x)
        if self.simulating():
            p = self.input_params(0)
            out = integer_tensor_to_float(quantize_to_int(out, p.scale, p.dtype, p.ch_axis), p)
        return out


class AvgPool2d(QATModule):
    """QAT AvgPool2d / AdaptiveAvgPool2d with its own output fake-quantize."""

    def __init__(self, float_module: nn.Module, activation_post_process: FakeQuantize, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module
        self.activation_post_process = activation_post_process

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> AvgPool2d:
        if qconfig is None or qconfig.activation is None:
            raise ValueError(f"{type(mod).__name__} needs an activation qconfig (int8/int16 output)")
        return cls(mod, make_fake_quant(qconfig.activation, "activation", type(mod).__name__), march)

    def output_params(self) -> QuantParams:
        return self.activation_post_process.quant_params()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            return self.activation_post_process(self.float_module(x))
        inp, out = self.input_params(0), self.output_params()
        q = int_avg_pool(quantize_to_int(x, inp.scale, inp.dtype), self.float_module, inp, out, self.requant_rule,
                         what=f"{self.qframe_name} ({self.march})")
        return integer_tensor_to_float(q, out)
