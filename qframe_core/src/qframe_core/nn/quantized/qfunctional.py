"""Integer FloatFunctional (``QFunctional``): every method on the march's kernels for int8/int16 CPU codes (the
rules of :mod:`~qframe_core.nn.integer_functional`, which QAT runs in torch); other inputs and traced models use
those torch steps, except add/sub/mul, which trace as ``torch.ops.qframe`` operators."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from .. import integer_functional as intf
from . import ops
from .kernels import dtype_name, march_kernels, runs_on_kernels


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


def _op(name: str) -> Callable:
    """The kernel call ``name`` of :mod:`.ops`: the registered operator while tracing (recorded in the trace),
    else the direct call (no operator dispatch)."""
    return getattr(ops, name) if torch.jit.is_tracing() else getattr(ops, name + "_direct")


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

    #: set by convert's layout pass (quantization/fx/layout.py) when every consumer takes channels-last
    channels_last_output = False

    @property
    def accepts_channels_last(self) -> bool:
        """The element-wise methods and cat run in the operands' own order (channels-last pairs stay so)."""
        return self.method in ("add", "sub", "mul", "cat", "add_scalar", "mul_scalar")

    def _layout(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` as NCHW-contiguous unless the layout pass allowed channels-last."""
        return out if self.channels_last_output else out.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use one of its methods")

    def _check(self, method: str) -> None:
        if method != self.method:
            raise RuntimeError(f"{self.qframe_name}: converted for {self.method!r}, called as {method!r}")

    @_traced_in_scope
    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check("add")
        p = self.params
        return self._layout(_op("add")(self.march, x, y, p.multiplier_a, p.multiplier_b, p.shift,
                                       dtype_name(p.output.dtype.bits), p.output.dtype.quant_min,
                                       p.output.dtype.quant_max, self.qframe_name))

    def _torch_int(self, method: str, fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check(method)
        out = fn(*args, self.params, resolve_march(self.march).requant, **kwargs)
        return out.to(self.params.output.dtype.torch_dtype)

    @_traced_in_scope
    def sub(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``add``'s kernel with the second multiplier negated (the rule of ``int_sub``)."""
        self._check("sub")
        p = self.params
        return self._layout(_op("add")(self.march, x, y, p.multiplier_a, -p.multiplier_b, p.shift,
                                       dtype_name(p.output.dtype.bits), p.output.dtype.quant_min,
                                       p.output.dtype.quant_max, self.qframe_name))

    @_traced_in_scope
    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check("mul")
        p = self.params
        return self._layout(_op("mul")(self.march, x, y, p.multiplier_a, p.shift, dtype_name(p.output.dtype.bits),
                                       p.output.dtype.quant_min, p.output.dtype.quant_max, self.qframe_name))

    @_traced_in_scope
    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, d = self.params, self.params.output.dtype
        if not runs_on_kernels(x, y) or x.dim() < 2 or y.dim() < 2 or d.bits > 16:
            return self._torch_int("matmul", intf.int_matmul, x, y)
        # the march kernel matmul_requant over the broadcast batch dims (the rule of int_matmul: no pre-shift)
        self._check("matmul")
        lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
        a = x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])
        bt = y.transpose(-2, -1).expand(*lead, y.shape[-1], y.shape[-2]).reshape(-1, y.shape[-1], y.shape[-2])
        out = march_kernels(self.march).matmul_requant(a.contiguous().numpy(), bt.contiguous().numpy(),
                                                       (0, p.multiplier_a, p.shift), dtype_name(d.bits))
        return torch.from_numpy(out).reshape(*lead, x.shape[-2], y.shape[-1])

    def _scalar(self, method: str, x: torch.Tensor, value: float) -> torch.Tensor:
        if float(value) != self.params.value:
            raise ValueError(f"{self.qframe_name}: converted for {method}({self.params.value}), called with {value}")
        p, d = self.params, self.params.output.dtype
        limit = 2 ** (march_kernels(self.march).MULTIPLIER_BITS - 1) - 1
        if not runs_on_kernels(x) or abs(p.multiplier) > limit or abs(p.constant) > limit:
            return self._torch_int(method, intf.int_scalar, x)
        self._check(method)
        # the rule of int_scalar, round_shift(q * m + m_c, s), on the add kernel with a second operand of ones
        ones = torch.ones(1, dtype=torch.int8).expand(x.shape)
        return _op("add")(self.march, x, ones, p.multiplier, p.constant, p.shift, dtype_name(d.bits), d.quant_min,
                       d.quant_max, self.qframe_name)

    @_traced_in_scope
    def mul_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar("mul_scalar", x, value)

    @_traced_in_scope
    def add_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar("add_scalar", x, value)

    def _extremum(self, method: str, x: torch.Tensor, y: torch.Tensor, pick: Any) -> torch.Tensor:
        if not runs_on_kernels(x, y):
            return self._torch_int(method, intf.int_extremum, x, y, pick=pick)
        self._check(method)
        p, d = self.params, self.params.output.dtype
        a, b = (ops.requantize(self.march, q, m, s, None, dtype_name(d.bits), d.quant_min, d.quant_max,
                               self.qframe_name).reshape(q.shape) for q, m, s in zip((x, y), p.multipliers, p.shifts))
        return pick(a, b)

    @_traced_in_scope
    def maximum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._extremum("maximum", x, y, torch.maximum)

    @_traced_in_scope
    def minimum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._extremum("minimum", x, y, torch.minimum)

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
        full = (d.quant_min, d.quant_max) == (torch.iinfo(d.torch_dtype).min, torch.iinfo(d.torch_dtype).max)
        parts = []
        for q, m, s in zip(xs, p.multipliers, p.shifts):
            if m == 1 << s and q.dtype == d.torch_dtype and full:
                parts.append(q)  # round_shift(q * 2**s, s) == q: a part already on the output grid
            else:
                parts.append(ops.requantize(self.march, q, m, s, None, dtype_name(d.bits), d.quant_min, d.quant_max,
                                            self.qframe_name))
        return self._layout(torch.cat(parts, dim=dim))

    def extra_repr(self) -> str:
        return f"method={self.method}, out_dtype={self.params.output.dtype}, march={self.march}"
