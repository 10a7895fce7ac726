"""QAT FloatFunctional: fake-quantized tensor operations.

Only the methods the march lowers are callable here (prepare checks the
op table first); each output gets this module's fake-quantize, so a
FloatFunctional serves exactly one call site, and prepare records which
method that is (:attr:`method`).  In VALIDATION state the methods compute
with :mod:`qframe_core.nn.integer_functional`, as the integer model does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from .. import integer_functional as intf
from .base import QATModule, integer_tensor_to_float, make_fake_quant


class FloatFunctional(QATModule):
    """QAT counterpart of :class:`qframe_core.nn.quantized.FloatFunctional`."""

    def __init__(self, activation_post_process: FakeQuantize, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.activation_post_process = activation_post_process
        #: the FloatFunctional method this module serves (set by prepare)
        self.method = ""
        #: sum/mean arguments (set by prepare from the call, refreshed by each call)
        self.reduce_dims: tuple[int, ...] = ()
        #: the constant of mul_scalar/add_scalar (set by prepare, refreshed by each call)
        self.scalar = 0.0
        self.keepdim = False

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> FloatFunctional:
        if qconfig is None or qconfig.activation is None:
            raise ValueError("FloatFunctional needs an activation qconfig: its output is an int8/int16 activation")
        return cls(make_fake_quant(qconfig.activation, "activation", "FloatFunctional"), march)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("FloatFunctional is not called directly: use one of its methods")

    def output_params(self) -> QuantParams:
        return self.activation_post_process.quant_params()

    def integer_params(self) -> Any:
        """The integer parameters of :attr:`method` (see :mod:`qframe_core.nn.integer_functional`)."""
        what = f"{self.qframe_name}.{self.method} ({self.march})"
        out = self.output_params()
        if self.method in ("cat", "maximum", "minimum"):
            return intf.cat_params(self.requant_rule, [p.output_params() for p in self._input_producers], out, what)
        if self.method in ("mul_scalar", "add_scalar"):
            return intf.scalar_params(self.requant_rule, self.input_params(0), out, self.scalar,
                                      self.method == "mul_scalar", what)
        if self.method in ("sum", "mean"):
            return intf.reduce_params(self.input_params(0), out, self.reduce_dims, self.keepdim,
                                      self.method == "mean")
        a, b = self.input_params(0), self.input_params(1)
        if self.method in ("mul", "matmul"):
            return intf.mul_params(self.requant_rule, a, b, out, what)
        return intf.sum_params(self.requant_rule, a, b, out, what)

    def _quantized_inputs(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        params = [p.output_params() for p in self._input_producers]
        return [quantize_to_int(x, p.scale, p.dtype) for x, p in zip(xs, params)]

    def _binary(self, float_fn: Any, int_fn: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            return self.activation_post_process(float_fn(x, y))
        qa, qb = self._quantized_inputs([x, y])
        return integer_tensor_to_float(int_fn(qa, qb, self.integer_params(), self.requant_rule), self.output_params())

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._binary(torch.add, intf.int_add, x, y)

    def sub(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._binary(torch.sub, intf.int_sub, x, y)

    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._binary(torch.mul, intf.int_mul, x, y)

    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._binary(torch.matmul, intf.int_matmul, x, y)

    def _scalar(self, mul: bool, x: torch.Tensor, value: float) -> torch.Tensor:
        self.scalar = float(value)
        if not self.simulating():
            return self.activation_post_process(x * value if mul else x + value)
        (q,) = self._quantized_inputs([x])
        return integer_tensor_to_float(intf.int_scalar(q, self.integer_params(), self.requant_rule),
                                       self.output_params())

    def mul_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar(True, x, value)

    def add_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar(False, x, value)

    def maximum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._binary(torch.maximum, lambda a, b, p, r: intf.int_extremum(a, b, p, r, torch.maximum), x, y)

    def minimum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._binary(torch.minimum, lambda a, b, p, r: intf.int_extremum(a, b, p, r, torch.minimum), x, y)

    def _reduce(self, mean: bool, x: torch.Tensor, dim: Any, keepdim: bool) -> torch.Tensor:
        self.reduce_dims = () if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
        self.keepdim = keepdim
        if not self.simulating():
            fn = torch.mean if mean else torch.sum
            out = fn(x) if dim is None else fn(x, dim=self.reduce_dims, keepdim=keepdim)
            return self.activation_post_process(out)
        (q,) = self._quantized_inputs([x])
        out = intf.int_reduce(q, self.integer_params(), self.requant_rule, f"{self.qframe_name} ({self.march})")
        return integer_tensor_to_float(out, self.output_params())

    def sum(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._reduce(False, x, dim, keepdim)

    def mean(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._reduce(True, x, dim, keepdim)

    def cat(self, xs: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        if not self.simulating():
            return self.activation_post_process(torch.cat(list(xs), dim=dim))
        qs = self._quantized_inputs(list(xs))
        return integer_tensor_to_float(intf.int_cat(qs, self.integer_params(), self.requant_rule, dim),
                                       self.output_params())

    def extra_repr(self) -> str:
        return f"method={self.method or '?'}, march={self.march}"
