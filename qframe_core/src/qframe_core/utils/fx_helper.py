"""``fx_wrap`` (also importable as ``wrap``): keep a function or method out of torch.fx tracing.

A function decorated with ``@fx_wrap()`` is recorded as one node instead of
being traced through, so it may contain Python control flow on tensor
values (or on ``self.training``).  The function runs in float in every
model (it is not quantized)::

    @fx_wrap()
    def postprocess(x):
        if x.sum() > 0:
            ...

Decorating a method of a module works the same way (the seeds' RetinaNet
``_post_process``): the traced model calls the method as it is, on a view of
the module that reads the prepared model's submodules, so modules the method
calls are part of the prepared and converted model (see
:mod:`qframe_core.quantization.fx.wrapped_methods`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from torch import nn
from torch.fx.proxy import Proxy


def _first_proxy(args: Any, kwargs: dict) -> Optional[Proxy]:
    stack = list(args) + list(kwargs.values())
    while stack:
        a = stack.pop()
        if isinstance(a, Proxy):
            return a
        if isinstance(a, (list, tuple)):
            stack.extend(a)
        elif isinstance(a, dict):
            stack.extend(a.values())
    return None


def fx_wrap(fn: Optional[Callable[..., Any]] = None) -> Any:
    """Decorator (usable as ``@fx_wrap`` or ``@fx_wrap()``) marking a function as a leaf for tracing."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            proxy = _first_proxy(args, kwargs)
            if proxy is None:
                return f(*args, **kwargs)
            if args and isinstance(args[0], nn.Module):  # a method: record which module's, by path
                from ..quantization.fx.wrapped_methods import wrapped_method_call

                owner = proxy.tracer.path_of_module(args[0])
                out = proxy.tracer.create_proxy("call_function", wrapped_method_call,
                                                (owner, f.__name__, *args[1:]), kwargs)
            else:
                out = proxy.tracer.create_proxy("call_function", f, args, kwargs)
            out.node.meta["qframe_fx_wrapped"] = True  # runs in float: prepare dequantizes its inputs
            return out

        wrapper.__qframe_fx_wrapped__ = f  # type: ignore[attr-defined]
        return wrapper

    return decorate(fn) if fn is not None else decorate


#: the seeds import it as ``from horizon_plugin_pytorch.utils.fx_helper import wrap as fx_warp``
wrap = fx_wrap
