"""Comparisons (``==``, ``>``, ``torch.ge`` …) as modules: their inputs may have different scales.

prepare turns a comparison of quantized values into a generated :class:`Compare`.  Its output is a
``bool`` tensor (the seeds' ``qbool``), not a quantized value, so ops after it are not quantized.
The integer rule (:func:`compare_codes`) compares the exactly dequantized values: ``q * scale`` in
float64 is exact for int8/int16 codes and float32 scales, so no requantization can flip a result.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import nn

#: name -> torch function (the seeds list every spelling as its own row)
COMPARE_FUNCTIONS: dict[str, Any] = {
    "eq": torch.eq, "gt": torch.gt, "ge": torch.ge, "lt": torch.lt, "le": torch.le,
    "greater": torch.greater, "greater_equal": torch.greater_equal, "less": torch.less, "less_equal": torch.less_equal,
}

#: callables and operator spellings in a traced graph -> name
FUNCTION_ALIASES: dict[Any, str] = {fn: name for name, fn in COMPARE_FUNCTIONS.items()}
FUNCTION_ALIASES.update({operator.eq: "eq", operator.gt: "gt", operator.ge: "ge", operator.lt: "lt", operator.le: "le"})

#: tensor method names that compare
METHOD_NAMES: frozenset[str] = frozenset(COMPARE_FUNCTIONS)


class Compare(nn.Module):
    """``COMPARE_FUNCTIONS[name](x, other)`` where ``other`` is a tensor input or the constant ``value``."""

    _qframe_leaf = True
    #: its output is a bool tensor, not quantized codes (read by the fx passes)
    quantized_output = False

    def __init__(self, name: str, value: Optional[float] = None) -> None:
        super().__init__()
        if name not in COMPARE_FUNCTIONS:
            raise ValueError(f"Compare: unknown comparison {name!r}; known: {sorted(COMPARE_FUNCTIONS)}")
        self.name = name
        self.value = None if value is None else float(value)

    @property
    def lowering_key(self) -> str:
        return f"torch.{self.name}"

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        return COMPARE_FUNCTIONS[self.name](x, self.value if other is None else other)

    def extra_repr(self) -> str:
        return self.name if self.value is None else f"{self.name}, value={self.value}"


def compare_codes(name: str, qa: torch.Tensor, scale_a: torch.Tensor, qb: Optional[torch.Tensor],
                  scale_b: Optional[torch.Tensor], value: Optional[float]) -> torch.Tensor:
    """The integer rule: compare ``qa * scale_a`` with ``qb * scale_b`` (or ``value``) exactly, in float64."""
    a = qa.to(torch.float64) * scale_a.to(torch.float64).reshape(())
    b = value if qb is None else qb.to(torch.float64) * scale_b.to(torch.float64).reshape(())
    return COMPARE_FUNCTIONS[name](a, b)
