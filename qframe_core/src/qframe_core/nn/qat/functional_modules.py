"""QAT FloatFunctional: fake-quantized tensor operations.

Only the methods the march lowers are callable here (prepare checks the
op table first); each output gets this module's fake-quantize, so a
FloatFunctional must serve exactly one call site.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from ..requant_params import requant_multipliers
from .base import QATModule, integer_tensor_to_float, make_fake_quant


@attrs.frozen
class AddIntParams:
    """Integers of ``out = clamp(round_shift(a * ma + b * mb, shift))``."""

    a: QuantParams
    b: QuantParams
    output: QuantParams
    multiplier_a: int
    multiplier_b: int
    shift: int


class FloatFunctional(QATModule):
    """QAT counterpart of :class:`qframe_core.nn.quantized.FloatFunctional`."""

    def __init__(self, activation_post_process: FakeQuantize, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.activation_post_process = activation_post_process

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> FloatFunctional:
        if qconfig is None or qconfig.activation is None:
            raise ValueError("FloatFunctional needs an activation qconfig: its output is an int8/int16 activation")
        return cls(make_fake_quant(qconfig.activation, "activation", "FloatFunctional"), march)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("FloatFunctional is not called directly: use one of its methods")

    def output_params(self) -> QuantParams:
        return self.activation_post_process.quant_params()

    def add_params(self) -> AddIntParams:
        a, b, out = self.input_params(0), self.input_params(1), self.output_params()
        m, shift = requant_multipliers(self.requant_rule, [a.scale, b.scale], out.scale,
                                       what=f"{self.qframe_name}.add ({self.march})")
        return AddIntParams(a, b, out, int(m[0, 0]), int(m[0, 1]), int(shift[0]))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            return self.activation_post_process(torch.add(x, y))
        p = self.add_params()
        qa = quantize_to_int(x, p.a.scale, p.a.dtype)
        qb = quantize_to_int(y, p.b.scale, p.b.dtype)
        q = self.requant_rule.requantize(
            [(qa, torch.tensor(p.multiplier_a)), (qb, torch.tensor(p.multiplier_b))],
            torch.tensor(p.shift), p.output.dtype)
        return integer_tensor_to_float(q, p.output)
