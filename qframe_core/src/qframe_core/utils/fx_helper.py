"""``fx_wrap``: keep a function out of torch.fx tracing.

A function decorated with ``@fx_wrap()`` is recorded as one node instead of
being traced through, so it may contain Python control flow on tensor
values.  The function runs in float in every model (it is not quantized)::

    @fx_wrap()
    def postprocess(x):
        if x.sum() > 0:
            ...
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

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
            if proxy is not None:
                return proxy.tracer.create_proxy("call_function", f, args, kwargs)
            return f(*args, **kwargs)

        wrapper.__qframe_fx_wrapped__ = f  # type: ignore[attr-defined]
        return wrapper

    return decorate(fn) if fn is not None else decorate
