"""QAT PReLU: float PReLU + output fake-quantize; VALIDATION runs :mod:`qframe_core.nn.integer_prelu`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from ..integer_prelu import PReLUIntParams, int_prelu, prelu_params
from .base import QATModule, integer_tensor_to_float, make_fake_quant


class PReLU(QATModule):
    """PReLU with a learnable slope, quantized per the march's requantization rule."""

    def __init__(self, weight: torch.Tensor, activation_post_process: FakeQuantize, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.weight = nn.Parameter(weight.detach().clone())
        self.activation_post_process = activation_post_process

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> PReLU:
        if qconfig is None or qconfig.activation is None:
            raise ValueError("PReLU needs an activation qconfig (int8/int16 output)")
        return cls(mod.weight, make_fake_quant(qconfig.activation, "activation", "PReLU"), march)

    def output_params(self) -> QuantParams:
        return self.activation_post_process.quant_params()

    def integer_params(self) -> PReLUIntParams:
        return prelu_params(self.requant_rule, self.weight, self.input_params(0), self.output_params(),
                            what=f"{self.qframe_name} ({self.march})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            return self.activation_post_process(F.prelu(x, self.weight))
        p = self.integer_params()
        q = int_prelu(quantize_to_int(x, p.input.scale, p.input.dtype), p, self.requant_rule)
        return integer_tensor_to_float(q, p.output)
