"""FloatFunctional: tensor operations as modules, so each gets its own quantization.

``x + y`` in a float model becomes ``self.add_op.add(x, y)``; when traced by
torch.fx the call is recorded as a ``call_method`` on the module, so
prepare can give it an output fake-quantize and convert an integer kernel.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.fx.proxy import Proxy


def _proxy_in(args: Sequence[Any], kwargs: dict) -> Optional[Proxy]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Proxy):
            return a
        if isinstance(a, (list, tuple)):
            found = _proxy_in(a, {})
            if found is not None:
                return found
    return None


def traced_method_call(module: nn.Module, method: str, args: Sequence[Any], kwargs: dict) -> Optional[Proxy]:
    """Record ``module.method(*args)`` as a ``call_method`` node when tracing, else return None."""
    proxy = _proxy_in(args, kwargs)
    if proxy is None:
        return None
    tracer = proxy.tracer
    owner = tracer.create_proxy("get_attr", tracer.path_of_module(module), (), {})
    return tracer.create_proxy("call_method", method, (owner, *args), kwargs)


class FloatFunctional(nn.Module):
    """Float tensor operations with a module identity (the seeds' ``FloatFunctional``)."""

    _qframe_leaf = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("FloatFunctional is not called directly: use one of its methods (add, mul, cat, …)")

    def _call(self, method: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        traced = traced_method_call(self, method, args, kwargs)
        return traced if traced is not None else fn(*args, **kwargs)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._call("add", torch.add, x, y)

    def sub(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._call("sub", torch.sub, x, y)

    def mul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._call("mul", torch.mul, x, y)

    def add_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return self._call("add_scalar", torch.add, x, y)

    def mul_scalar(self, x: torch.Tensor, y: float) -> torch.Tensor:
        return self._call("mul_scalar", torch.mul, x, y)

    def cat(self, x: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return self._call("cat", torch.cat, x, dim=dim)

    def matmul(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._call("matmul", torch.matmul, x, y)

    def sum(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._call("sum", lambda t, dim=None, keepdim=False: t.sum() if dim is None else t.sum(dim, keepdim),
                          x, dim=dim, keepdim=keepdim)

    def mean(self, x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
        return self._call("mean", lambda t, dim=None, keepdim=False: t.mean() if dim is None else t.mean(dim, keepdim),
                          x, dim=dim, keepdim=keepdim)

    def maximum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._call("maximum", torch.maximum, x, y)

    def minimum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._call("minimum", torch.minimum, x, y)
