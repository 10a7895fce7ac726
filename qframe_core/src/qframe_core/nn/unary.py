"""Non-linear element-wise ops as modules, so each gets its own quantization and table.

prepare turns functional spellings (``torch.exp(x)``, ``x.sigmoid()``,
``F.silu(x)``) into generated :class:`Unary` modules; ``nn.Sigmoid`` and
the other module forms in :data:`LOOKUP_MODULES` are used as they are.
Users of eager mode can instantiate ``Unary("exp")`` directly.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

#: functional ops computed by table lookup: name -> float function
UNARY_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "erf": torch.erf,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "asin": torch.asin, "acos": torch.acos,
    "atan": torch.atan, "sinh": torch.sinh, "cosh": torch.cosh, "asinh": torch.asinh, "acosh": torch.acosh,
    "atanh": torch.atanh, "ceil": torch.ceil, "floor": torch.floor,
    "silu": F.silu, "gelu": F.gelu, "elu": F.elu, "selu": F.selu, "softplus": F.softplus,
    "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish, "mish": F.mish, "leaky_relu": F.leaky_relu,
    "pow": torch.pow,  # with a constant exponent
}

#: element-wise ops whose output lies on the input's grid (computed on the codes, saturated), not tables
GRID_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"abs": torch.abs}

#: every op a :class:`Unary` can compute
ALL_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {**UNARY_FUNCTIONS, **GRID_FUNCTIONS}

#: torch callables (functions) that mean each name, for prepare's functional -> module pass
FUNCTION_ALIASES: dict[Any, str] = {fn: name for name, fn in ALL_FUNCTIONS.items()}
FUNCTION_ALIASES.update({F.sigmoid: "sigmoid", F.tanh: "tanh", torch.special.expit: "sigmoid",
                         torch.special.erf: "erf", operator.pow: "pow"})

#: tensor method names (``x.exp()``) that are table lookups
METHOD_NAMES: frozenset[str] = frozenset(n for n in ALL_FUNCTIONS if hasattr(torch.Tensor, n))

#: module classes computed by table lookup
LOOKUP_MODULES: tuple[type, ...] = (nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.ELU, nn.SELU, nn.Softplus,
                                    nn.Hardsigmoid, nn.Hardswish, nn.Mish, nn.LeakyReLU)


class Unary(nn.Module):
    """``UNARY_FUNCTIONS[name](x, *args, **kwargs)`` as a module (the seeds' horizon.nn.Exp & co.)."""

    _qframe_leaf = True

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if name not in ALL_FUNCTIONS:
            raise ValueError(f"Unary: unknown op {name!r}; known: {sorted(ALL_FUNCTIONS)}")
        self.name = name
        self.args = args
        self.kwargs = kwargs

    @property
    def lowering_key(self) -> str:
        """The op-table key of this op (``"torch.exp"``), so each function has its own row."""
        return f"torch.{self.name}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ALL_FUNCTIONS[self.name](x, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        extra = ", ".join([repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"{self.name}{', ' + extra if extra else ''}"


#: the seeds' module forms of functional ops without one in torch.nn (``horizon.nn.Exp()`` …), for eager mode
NAMED_UNARY: tuple[str, ...] = ("exp", "log", "sqrt", "rsqrt", "reciprocal", "erf", "sin", "cos", "tan", "asin",
                                "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "ceil", "floor")


def _named_unary(name: str) -> type:
    def __init__(self: Unary, *args: Any, **kwargs: Any) -> None:
        Unary.__init__(self, name, *args, **kwargs)

    cls_name = name.capitalize()
    cls = type(cls_name, (Unary,), {"__init__": __init__, "__module__": __name__,
                                    "__doc__": f"``torch.{name}`` as a module (a table lookup when quantized)."})
    cls.__qualname__ = cls_name
    return cls


for _name in NAMED_UNARY:
    globals()[_name.capitalize()] = _named_unary(_name)


class Interpolate(nn.Upsample):
    """``F.interpolate`` as a module (the seeds' ``horizon.nn.Interpolate``); lowers like ``nn.Upsample``."""

    lowering_key = nn.Upsample

    def __init__(self, size: Any = None, scale_factor: Any = None, mode: str = "bilinear",
                 align_corners: Any = None, recompute_scale_factor: Any = None) -> None:
        super().__init__(size, scale_factor, mode, align_corners, recompute_scale_factor)
