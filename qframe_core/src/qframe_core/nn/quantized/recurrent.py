"""Integer LSTMCell: :func:`~qframe_core.nn.integer_lstm.int_lstm_cell` with the parameters fixed at convert."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..integer_lstm import LSTMCellIntParams, exact_linear, int_lstm_cell
from ..qat.recurrent import check_lstm_input
from . import ops
from .kernels import runs_on_kernels
from .lookup import KernelLookup


class LSTMCell(nn.Module):
    """``(h', c') = lstm_cell(x, (h, c))`` on integer codes; ``h'`` on the output grid, ``c'`` on the cell grid."""

    _qframe_leaf = True

    def __init__(self, params: LSTMCellIntParams, march: str, name: str) -> None:
        super().__init__()
        self.params = params
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> LSTMCell:
        return cls(qat.integer_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.params.output

    def output_params_at(self, index: int) -> QuantParams:
        return (self.params.output, self.params.cell_out)[index]

    def forward(self, x: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> Any:
        for t in (x, *(hx or ())):
            if t.is_floating_point():
                raise TypeError(f"{self.qframe_name}: expects integer tensors, got {t.dtype}")
        check_lstm_input(x, self.qframe_name, self.march)
        h, c = hx if hx is not None and self.params.hidden is not None else (None, None)
        spec = resolve_march(self.march)
        lookup = self.__dict__.get("_lookup")
        if lookup is None:  # the tables through the march kernel (derived data: not saved)
            lookup = self.__dict__["_lookup"] = KernelLookup(self.march)
        h_new, c_new = int_lstm_cell(x, h, c, self.params, spec.requant, lookup, self._linear)
        return h_new.to(self.params.output.dtype.torch_dtype), c_new.to(self.params.cell_out.dtype.torch_dtype)

    def _linear(self, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``q @ w.T`` exactly (:func:`~qframe_core.nn.integer_lstm.exact_linear`) as the raw int32 sums of the
        march kernel ``linear`` where they cannot saturate."""
        if not runs_on_kernels(q) or (torch.iinfo(q.dtype).max + 1) * 128 * q.shape[-1] >= 2 ** 31:
            return exact_linear(q, w)
        cache = self.__dict__.setdefault("_weights", {})
        entry = cache.get(id(w))
        if entry is None or entry[0] is not w:
            entry = cache[id(w)] = (w, w.to(torch.int8), torch.zeros(w.shape[0], dtype=torch.int32))
        acc = ops.linear_direct(self.march, q.reshape(-1, q.shape[-1]), entry[1], entry[2], None, None, "int32",
                                -2 ** 31, 2 ** 31 - 1, self.qframe_name)
        return acc.reshape(*q.shape[:-1], w.shape[0]).to(torch.int64)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lookup", None)
        state.pop("_weights", None)
        return state

    def extra_repr(self) -> str:
        w = self.params.weight_ih
        return (f"{w.shape[1]}, {w.shape[0] // 4}, out_dtype={self.params.output.dtype}, "
                f"cell_dtype={self.params.cell_out.dtype}, march={self.march}")
