"""Integer table-lookup ops: the table is built once at convert."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..qat.lookup import build_table


class LookupTable(nn.Module):
    """``out = table(q)`` with the march's lookup rule (direct or segment table)."""

    _qframe_leaf = True

    def __init__(self, table: Any, out: QuantParams, march: str, name: str) -> None:
        super().__init__()
        self.table = table
        self.out = out
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> LookupTable:
        return cls(build_table(qat), qat.output_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.out

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        spec = resolve_march(self.march)
        return spec.lookup.apply(q, self.table, spec.requant, self.out).to(self.out.dtype.torch_dtype)

    def extra_repr(self) -> str:
        return f"{type(self.table).__name__}, out_dtype={self.out.dtype}, march={self.march}"
