"""QAT LSTMCell: two linears, sigmoid/tanh tables, products — see :mod:`qframe_core.nn.integer_lstm`.

QAT/CALIBRATION: float compute; the weights pass the qconfig's weight fake-quantize (int8 per channel), the
gate pre-activations ``gates_post_process`` (qint16, calibrated), the table outputs a fixed ``1 / 32767``
qint16 grid, the new cell state ``cell_post_process`` (qint16, calibrated) and the new hidden state
``activation_post_process`` (the qconfig's activation).  VALIDATION: :func:`int_lstm_cell` on the codes.

The cell has two outputs, ``(h, c)``, on two grids: :meth:`output_params_at` gives each (prepare binds a
consumer of ``out[1]`` to the cell grid).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedOpError
from ...march import resolve_march
from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams, fake_quantize
from ..integer_composite import intermediate_dtype, intermediate_fake_quant
from ..integer_lstm import UNIT_SCALE, LSTMCellIntParams, int_lstm_cell, lstm_cell_params, lstm_tables
from .base import MultiOutputQAT, integer_tensor_to_float, make_fake_quant


def check_lstm_input(x: torch.Tensor, name: str, march: str) -> None:
    if x.dim() != 2:
        raise UnsupportedOpError(
            f"{name!r} (torch.nn.LSTMCell): input of shape {list(x.shape)}: the input must be 2-D [batch, "
            f"input_size] (march {march!r} op table: 输入是 2 维). Way out: add a batch dimension (x.unsqueeze(0))")


def _unit(x: torch.Tensor) -> torch.Tensor:
    from ...dtype import qint16

    return fake_quantize(x, torch.tensor([UNIT_SCALE], device=x.device), qint16.quant_min, qint16.quant_max)


class LSTMCell(MultiOutputQAT):
    """``nn.LSTMCell`` as integer steps; outputs ``(h, c)``: h on the activation grid, c on the cell grid."""

    output_fake_quants = ("activation_post_process", "cell_post_process")
    output_labels = ("h", "c")

    def __init__(self, mod: nn.LSTMCell, qconfig: Any, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        if qconfig is None or qconfig.activation is None or qconfig.weight is None:
            raise ValueError("LSTMCell needs a qconfig with activation and weight fake-quantizes")
        self.input_size, self.hidden_size = mod.input_size, mod.hidden_size
        self.weight_ih = nn.Parameter(mod.weight_ih.detach().clone())
        self.weight_hh = nn.Parameter(mod.weight_hh.detach().clone())
        self.bias_ih = nn.Parameter(mod.bias_ih.detach().clone()) if mod.bias_ih is not None else None
        self.bias_hh = nn.Parameter(mod.bias_hh.detach().clone()) if mod.bias_hh is not None else None
        self.weight_ih_fake_quant = make_fake_quant(qconfig.weight, "weight", "LSTMCell")
        self.weight_hh_fake_quant = make_fake_quant(qconfig.weight, "weight", "LSTMCell")
        inner = intermediate_dtype(resolve_march(march).activation_dtypes)
        self.gates_post_process = intermediate_fake_quant(qconfig.activation, inner, "LSTMCell")
        self.cell_post_process = intermediate_fake_quant(qconfig.activation, inner, "LSTMCell")
        self.activation_post_process: FakeQuantize = make_fake_quant(qconfig.activation, "activation", "LSTMCell")
        self._tables: tuple[Any, Any] = (None, None)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> LSTMCell:
        return cls(mod, qconfig, march)

    def _bias(self) -> Optional[torch.Tensor]:
        if self.bias_ih is None:
            return None
        return self.bias_ih + self.bias_hh

    def _weight_params(self, fq: FakeQuantize, w: torch.Tensor) -> QuantParams:
        if not bool(fq.calibrated):
            fq.observe(w)
        return fq.quant_params()

    def integer_params(self) -> LSTMCellIntParams:
        spec = resolve_march(self.march)
        n = len(self._input_producers)
        inp = self.input_params(0)
        hidden = self.input_params(1) if n >= 3 else None
        cell = self.input_params(2) if n >= 3 else None
        gates, cell_out, out = (self.gates_post_process.quant_params(), self.cell_post_process.quant_params(),
                                self.activation_post_process.quant_params())
        key = tuple((tuple(p.scale.tolist()), p.dtype) for p in (gates, cell_out))
        what = f"{self.qframe_name} ({self.march})"
        if self._tables[0] != key:
            self._tables = (key, lstm_tables(spec.lookup, gates, cell_out, what))
        return lstm_cell_params(spec.requant, self._tables[1], inp, hidden, cell, gates, cell_out, out,
                                self.weight_ih, self._weight_params(self.weight_ih_fake_quant, self.weight_ih),
                                self.weight_hh, self._weight_params(self.weight_hh_fake_quant, self.weight_hh),
                                self._bias(), what)

    def forward(self, x: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_lstm_input(x, self.qframe_name, self.march)
        h, c = hx if hx is not None else (None, None)
        if self.simulating():
            p = self.integer_params()
            spec = resolve_march(self.march)
            qx = quantize_to_int(x, p.input.scale, p.input.dtype)
            qh = quantize_to_int(h, p.hidden.scale, p.hidden.dtype) if h is not None and p.hidden else None
            qc = quantize_to_int(c, p.cell.scale, p.cell.dtype) if c is not None and p.cell else None
            h_new, c_new = int_lstm_cell(qx, qh, qc, p, spec.requant, spec.lookup)
            return integer_tensor_to_float(h_new, p.output), integer_tensor_to_float(c_new, p.cell_out)
        gates = F.linear(x, self.weight_ih_fake_quant(self.weight_ih), self.bias_ih)
        if h is not None:
            gates = gates + F.linear(h, self.weight_hh_fake_quant(self.weight_hh), self.bias_hh)
        else:
            self.weight_hh_fake_quant(self.weight_hh)
            if self.bias_hh is not None:
                gates = gates + self.bias_hh
        gates = self.gates_post_process(gates)
        gi, gf, gg, go = gates.chunk(4, dim=-1)
        i, f, g, o = _unit(torch.sigmoid(gi)), _unit(torch.sigmoid(gf)), _unit(torch.tanh(gg)), _unit(torch.sigmoid(go))
        c_new = i * g if c is None else f * c + i * g
        c_new = self.cell_post_process(c_new)
        h_new = self.activation_post_process(o * _unit(torch.tanh(c_new)))
        return h_new, c_new

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}, march={self.march}"
