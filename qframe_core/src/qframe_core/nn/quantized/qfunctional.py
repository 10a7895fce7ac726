"""Integer FloatFunctional (``QFunctional``): add on the march's kernel; sub, mul, cat in exact torch integer ops."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from .. import integer_functional as intf
from . import ops
from .kernels import dtype_name


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use one of its methods")

    def _check(self, method: str) -> None:
        if method != self.method:
            raise RuntimeError(f"{self.qframe_name}: converted for {self.method!r}, called as {method!r}")

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check("add")
        p = self.params
        return ops.add(self.march, x, y, p.multiplier_a, p.multiplier_b, p.shift, dtype_name(p.output.dtype.bits),
                       p.output.dtype.quant_min, p.output.dtype.quant_max, self.qframe_name)

    def _torch_int(self, method: str, fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check(method)
        out = fn(*args, self.params, resolve_march(self.march).requant, **kwargs)
        return out.to(self.params.output.dtype.torch_dtype)

    def sub(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("sub", intf.int_sub, x, y)

    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("mul", intf.int_mul, x, y)

    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("matmul", intf.int_matmul, x, y)

    def _scalar(self, method: str, x: torch.Tensor, value: float) -> torch.Tensor:
        if float(value) != self.params.value:
            raise ValueError(f"{self.qframe_name}: converted for {method}({self.params.value}), called with {value}")
        return self._torch_int(method, intf.int_scalar, x)

    def mul_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar("mul_scalar", x, value)

    def add_scalar(self, x: torch.Tensor, value: float) -> torch.Tensor:
        return self._scalar("add_scalar", x, value)

    def maximum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("maximum", intf.int_extremum, x, y, pick=torch.maximum)

    def minimum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._torch_int("minimum", intf.int_extremum, x, y, pick=torch.minimum)

    def _reduce(self, method: str, x: torch.Tensor, dim: Any, keepdim: bool) -> torch.Tensor:
        self._check(method)
        dims = () if dim is None else ((dim,) if isinstance(dim, int) else tuple(dim))
        if dims != self.params.dims or keepdim != self.params.keepdim:
            raise ValueError(f"{self.qframe_name}: converted for {method}(dim={self.params.dims}, "
                             f"keepdim={self.params.keepdim}), called with dim={dims}, keepdim={keepdim}")
        out = intf.int_reduce(x, self.params, resolve_march(self.march).requant, f"{self.qframe_name} ({self.march})")
        return out.to(self.params.output.dtype.torch_dtype)

    def sum(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._reduce("sum", x, dim, keepdim)

    def mean(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._reduce("mean", x, dim, keepdim)

    def cat(self, xs: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self._torch_int("cat", intf.int_cat, list(xs), dim=dim)

    def extra_repr(self) -> str:
        return f"method={self.method}, out_dtype={self.params.output.dtype}, march={self.march}"
