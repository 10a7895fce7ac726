"""QAT module of table-lookup ops (sigmoid, tanh, exp, …).

QAT/CALIBRATION: the float op, then the output fake-quantize.  VALIDATION:
the march's lookup rule (:mod:`qframe_core.lookup`) on the integer input —
the same table the integer model uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...march import resolve_march
from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from .base import QATModule, integer_tensor_to_float, make_fake_quant


def build_table(qat: Any) -> Any:
    """The march's table parameters for ``qat`` (a QAT LookupTable) at its current scales."""
    rule = resolve_march(qat.march).lookup
    if rule is None:
        raise ValueError(f"{qat.qframe_name}: march {qat.march!r} declares no table-lookup rule")
    return rule.build(qat.float_module, qat.input_params(0), qat.output_params(),
                      what=f"{qat.qframe_name} ({qat.march})")


class LookupTable(QATModule):
    """A non-linear op computed by the march's lookup table."""

    def __init__(self, float_module: nn.Module, activation_post_process: FakeQuantize, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module
        self.activation_post_process = activation_post_process
        self._table_cache: tuple[Any, Any] = (None, None)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> LookupTable:
        if qconfig is None or qconfig.activation is None:
            raise ValueError(f"{type(mod).__name__} needs an activation qconfig: its output is an int8/int16 "
                             f"activation")
        return cls(mod, make_fake_quant(qconfig.activation, "activation", type(mod).__name__), march)

    def output_params(self) -> QuantParams:
        return self.activation_post_process.quant_params()

    def table(self) -> Any:
        inp, out = self.input_params(0), self.output_params()
        key = (tuple(inp.scale.tolist()), inp.dtype, tuple(out.scale.tolist()), out.dtype)
        if self._table_cache[0] != key:
            self._table_cache = (key, build_table(self))
        return self._table_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            return self.activation_post_process(self.float_module(x))
        inp, out = self.input_params(0), self.output_params()
        spec = resolve_march(self.march)
        q = spec.lookup.apply(quantize_to_int(x, inp.scale, inp.dtype), self.table(), spec.requant, out)
        return integer_tensor_to_float(q, out)
