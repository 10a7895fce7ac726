"""Integer table-lookup ops: the table is built once at convert."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..qat.lookup import build_table
from .kernels import as_array, from_layout_array, march_kernels, nhwc_view

_CODE_DTYPES = (torch.int8, torch.int16)


class KernelLookup:
    """The march's lookup rule (``.apply(codes, table, rule, out)``, as ``MarchSpec.lookup``) through the march
    kernel ``lookup``: each table is evaluated once on every int16 code (the same numbers as the rule), then
    looked up; codes outside int16, other devices and traced models use the rule itself.  For composite ops
    (LSTMCell) that apply several tables to int64 codes: the result is int64, as the rule's."""

    def __init__(self, march: str) -> None:
        self.march = march
        self.rule_lookup = resolve_march(march).lookup
        self._dense: dict = {}

    def apply(self, codes: torch.Tensor, table: Any, rule: Any, out: QuantParams) -> torch.Tensor:
        if not codes.is_cpu or torch.jit.is_tracing() or codes.numel() == 0 or out.dtype.bits > 16:
            return self.rule_lookup.apply(codes, table, rule, out)
        lo, hi = codes.aminmax()
        if int(lo) < -32768 or int(hi) > 32767:
            return self.rule_lookup.apply(codes, table, rule, out)
        entry = self._dense.get(id(table))
        if entry is None or entry[0] is not table or entry[1] is not out:
            every = torch.arange(-32768, 32768, dtype=torch.int64)
            dense = self.rule_lookup.apply(every, table, rule, out).to(torch.int16 if out.dtype.bits <= 16 else
                                                                       torch.int32)
            entry = self._dense[id(table)] = (table, out, dense.numpy())
        k = march_kernels(self.march)
        return torch.from_numpy(k.lookup(codes.to(torch.int16).contiguous().numpy(), entry[2])).to(torch.int64)


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
        if q.dtype not in _CODE_DTYPES or not q.is_cpu or torch.jit.is_tracing():
            return spec.lookup.apply(q, self.table, spec.requant, self.out).to(self.out.dtype.torch_dtype)
        # the march kernel through the dense table (the rule evaluated on every code of q's dtype): the same
        # numbers as the rule, one table read an element; the memory format of q is kept
        dense = self.dense_table(q.dtype)
        k = march_kernels(self.march)
        a = nhwc_view(q)
        if a is not None:
            return from_layout_array(k.lookup(a, dense), "nhwc")
        return torch.from_numpy(k.lookup(as_array(q, "input", self.qframe_name), dense))

    def dense_table(self, dtype: torch.dtype):
        """The output code of every code of ``dtype`` (int8: 256, int16: 65536 entries), by the march's
        lookup rule; built once per input dtype (derived data: not saved, rebuilt after unpickling)."""
        cache = self.__dict__.setdefault("_dense", {})
        entry = cache.get(dtype)
        if entry is None or entry[0] is not self.table:
            info = torch.iinfo(dtype)
            spec = resolve_march(self.march)
            codes = torch.arange(info.min, info.max + 1, dtype=torch.int64)
            dense = spec.lookup.apply(codes, self.table, spec.requant, self.out).to(self.out.dtype.torch_dtype)
            entry = cache[dtype] = (self.table, dense.contiguous().numpy())
        return entry[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dense", None)
        return state

    def extra_repr(self) -> str:
        return f"{type(self.table).__name__}, out_dtype={self.out.dtype}, march={self.march}"
