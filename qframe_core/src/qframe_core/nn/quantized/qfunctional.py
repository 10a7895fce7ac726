"""Integer FloatFunctional (``QFunctional``): add, sub, mul, cat and sum/mean on the march's kernels (their rules
in :mod:`~qframe_core.nn.integer_functional`); the others in exact torch integer ops."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from .. import integer_functional as intf
from . import ops
from .kernels import dtype_name, runs_on_kernels


def _traced_in_scope(method: Callable) -> Callable:
    """Record the method's ops under this module's scope when traced (torch.jit.trace scopes only forward), so
    deployment checks of a traced model see them as this integer module's work."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = torch._C._get_tracing_state()
        names = torch.jit._trace._trace_module_map if state is not None else None
        name = names.get(self) if names else None
        if not name:
            return method(self, *args, **kwargs)
        state.push_scope(name)
        try:
            return method(self, *args, **kwargs)
        finally:
            state.pop_scope()

    return wrapper


class QFunctional(nn.Module):
    """Integer tensor operation of one call site, with the march's rescaling."""

    _qframe_leaf = True

    def __init__(self, march: str, name: str, method: str, params: Any) -> None:
        super().__init__()
        self.march = march
        self.qframe_name = name
        self.method = method
        self.params = params

    @classmethod
    def from_qat(cls, qat: nn.Module) -> QFunctional:
        return cls(qat.march, qat.qframe_name, qat.method, qat.integer_params())

    def output_params(self) -> QuantParams:
        return self.params.output

    @property
    def accepts_channels_last(self) -> bool:
        """``add`` runs element-wise in the operands' own order (two channels-last operands stay so)."""
        return self.method == "add"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use one of its methods")

    def _check(self, method: str) -> None:
        if method != self.method:
            raise RuntimeError(f"{self.qframe_name}: converted for {self.method!r}, called as {method!r}")

    @_traced_in_scope
    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check("add")
        p = self.params
        return ops.add(self.march, x, y, p.multiplier_a, p.multiplier_b, p.shift, dtype_name(p.output.dtype.bits),
                       p.output.dtype.quant_min, p.output.dtype.quant_max, self.qframe_name)

    def _torch_int(self, method: str, fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check(method)
        out = fn(*args, self.params, resolve_march(self.march).requant, **kwargs)
        return out.to(self.params.output.dtype.torch_dtype)

    @_traced_in_scope
    def sub(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``add``'s kernel with the second multiplier negated (the rule of ``int_sub``)."""
        self._check("sub")
        p = self.params
        return ops.add(self.march, x, y, p.multiplier_a, -p.multiplier_b, p.shift, dtype_name(p.output.dtype.bits),
                       p.output.dtype.quant_min, p.output.dtype.quant_max, self.qframe_name)

    @_traced_in_scope
    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check("mul")
        p = self.params
        return ops.mul(self.march, x, y, p.multiplier_a, p.shift, dtype_name(p.output.dtype.bits),
                       p.output.dtype.quant_min, p.output.dtype.quant_max, self.qframe_name)

    @_traced_in_scope
    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("matmul", intf.int_matmul, x, y)

    def _scalar(self, method: str, x: torch.Tensor, value: float) -> torch.Tensor:
        if float(value) != self.params.value:
            raise ValueError(f"{self.qframe_name}: converted for {method}({self.params.value}), called with {value}")
        return self._torch_int(method, intf.int_scalar, x)

    @_traced_in_scope
    def mul_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar("mul_scalar", x, value)

    @_traced_in_scope
    def add_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar("add_scalar", x, value)

    @_traced_in_scope
    def maximum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("maximum", intf.int_extremum, x, y, pick=torch.maximum)

    @_traced_in_scope
    def minimum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("minimum", intf.int_extremum, x, y, pick=torch.minimum)

    def _reduce(self, method: str, x: torch.Tensor, dim: Any, keepdim: bool) -> torch.Tensor:
        self._check(method)
        dims = () if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
        if dims != self.params.dims or keepdim != self.params.keepdim:
            raise ValueError(f"{self.qframe_name}: converted for {method}(dim={self.params.dims}, "
                             f"keepdim={self.params.keepdim}), called with dim={dims}, keepdim={keepdim}")
        what = f"{self.qframe_name} ({self.march})"
        if not runs_on_kernels(x):
            out = intf.int_reduce(x, self.params, resolve_march(self.march).requant, what)
            return out.to(self.params.output.dtype.torch_dtype)
        # the exact sums (int32 where they fit), requantized on the march kernel
        total, m, s = intf.reduce_sums(x, self.params, resolve_march(self.march).requant, what)
        d = self.params.output.dtype
        return ops.requantize(self.march, total, m, s, None, dtype_name(d.bits), d.quant_min, d.quant_max,
                              self.qframe_name)

    @_traced_in_scope
    def sum(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._reduce("sum", x, dim, keepdim)

    @_traced_in_scope
    def mean(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._reduce("mean", x, dim, keepdim)

    @_traced_in_scope
    def cat(self, xs: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        xs = list(xs)
        if not runs_on_kernels(*xs):
            return self._torch_int("cat", intf.int_cat, xs, dim=dim)
        self._check("cat")
        p, d = self.params, self.params.output.dtype
        parts = [ops.requantize(self.march, q, m, s, None, dtype_name(d.bits), d.quant_min, d.quant_max,
                                self.qframe_name).reshape(q.shape) for q, m, s in zip(xs, p.multipliers, p.shifts)]
        return torch.cat(parts, dim=dim)

    def extra_repr(self) -> str:
        return f"method={self.method}, out_dtype={self.params.output.dtype}, march={self.march}"
