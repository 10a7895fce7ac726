"""Integer LSTMCell: two exact linears, sigmoid/tanh segment tables, exact products requantized.

Shared by QAT simulation (VALIDATION state) and the integer module.  Inputs: ``x`` (codes at ``s_x``),
``h`` (``s_h``) and ``c`` (``s_c``; both zero when the cell is called without a state).  torch's gate
order ``i, f, g, o``:

1. ``gates = requant(W_ih x + b + W_hh h, s_gates)`` — int8 per-channel weights, exact int64
   accumulations (the bias ``b_ih + b_hh`` in qint32 at ``s_x * s_wih[c]``, added to the first), both
   requantized to one calibrated qint16 grid ``s_gates`` (``gates_post_process``) with one shared shift
   per channel;
2. ``i, f, o = sigmoid_table(gates)``, ``g = tanh_table(gates)`` — the march's tables from ``s_gates`` to the
   fixed qint16 grid ``1 / 32767`` (their values lie in ``(0, 1)`` / ``(-1, 1)``);
3. ``c' = requant(f * c + i * g, s_c')`` — exact products, one requantization to the cell grid
   (``cell_post_process``, calibrated, qint16: the cell state accumulates over time steps and needs the
   range; int8 would lose most of its precision after a few steps);
4. ``h' = requant(o * tanh_table(c'), s_h')`` — the tanh table from ``s_c'`` to ``1 / 32767``, then an exact
   product requantized to the output grid (``activation_post_process``, the qconfig's dtype).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
import torch

from ..dtype import qint16
from ..numerics import RequantRule
from ..quantization.fake_quantize import QuantParams
from .integer_composite import PRODUCT_BITS, build_inner_table
from .requant_params import accumulator_scale, bias_to_int, requant_multipliers, weight_to_int

#: the fixed grid of the sigmoid/tanh table outputs
UNIT_SCALE = 1.0 / qint16.quant_max


def unit_params() -> QuantParams:
    return QuantParams(torch.tensor([UNIT_SCALE]), qint16)


@attrs.frozen
class LSTMCellIntParams:
    input: QuantParams
    hidden: Optional[QuantParams]  # None: the cell runs without an input state (h = c = 0)
    cell: Optional[QuantParams]
    gates: QuantParams
    unit: QuantParams
    cell_out: QuantParams
    output: QuantParams
    weight_ih: torch.Tensor  # int64 [4H, I]
    weight_hh: torch.Tensor  # int64 [4H, H]
    bias: torch.Tensor  # int64 [4H] at s_x * s_wih[c]
    gate_multipliers: torch.Tensor  # int64 [4H, 2]
    gate_shift: torch.Tensor  # int64 [4H]
    gate_pre_shift: int  # low bits dropped from both accumulations first, so products stay below 2**61
    cell_multipliers: tuple[int, int]
    cell_shift: int
    hidden_multiplier: int
    hidden_shift: int
    sigmoid_table: Any
    tanh_table: Any
    cell_tanh_table: Any


def lstm_tables(lookup: Any, gates: QuantParams, cell_out: QuantParams, what: str) -> tuple[Any, Any, Any]:
    unit = unit_params()
    everywhere = (float("-inf"), float("inf"))
    return (build_inner_table(lookup, torch.sigmoid, everywhere, gates, unit, {}, f"{what} sigmoid table"),
            build_inner_table(lookup, torch.tanh, everywhere, gates, unit, {}, f"{what} tanh table"),
            build_inner_table(lookup, torch.tanh, everywhere, cell_out, unit, {}, f"{what} cell tanh table"))


def lstm_cell_params(rule: RequantRule, tables: tuple[Any, Any, Any], inp: QuantParams, hidden: Optional[QuantParams],
                     cell: Optional[QuantParams], gates: QuantParams, cell_out: QuantParams, out: QuantParams,
                     w_ih: torch.Tensor, w_ih_params: QuantParams, w_hh: torch.Tensor, w_hh_params: QuantParams,
                     bias: Optional[torch.Tensor], what: str) -> LSTMCellIntParams:
    unit = unit_params()
    acc_i = accumulator_scale(inp.scale, w_ih_params.scale)
    h_scale = hidden.scale if hidden is not None else torch.ones(1)
    acc_h = accumulator_scale(h_scale, w_hh_params.scale)
    in_max = max(-inp.dtype.quant_min, inp.dtype.quant_max)
    h_max = max(-hidden.dtype.quant_min, hidden.dtype.quant_max) if hidden is not None else 0
    bias_q = bias_to_int(bias, acc_i)
    bound = max(in_max * 128 * w_ih.shape[1] + int(bias_q.abs().max()), h_max * 128 * w_hh.shape[1])
    pre = max(0, int(bound).bit_length() + (rule.multiplier_bits - 1) - PRODUCT_BITS)
    gm, gs = requant_multipliers(rule, [acc_i * 2.0 ** pre, acc_h * 2.0 ** pre], gates.scale, what=f"{what} gates")
    c_scale = cell.scale if cell is not None else torch.ones(1)
    cm, cs = requant_multipliers(rule, [torch.tensor([UNIT_SCALE]) * c_scale.double(),
                                        torch.tensor([UNIT_SCALE * UNIT_SCALE], dtype=torch.float64)],
                                 cell_out.scale, what=f"{what} cell state")
    hm, hs = requant_multipliers(rule, [torch.tensor([UNIT_SCALE * UNIT_SCALE], dtype=torch.float64)], out.scale,
                                 what=f"{what} hidden state")
    return LSTMCellIntParams(
        inp, hidden, cell, gates, unit, cell_out, out,
        weight_to_int(w_ih, w_ih_params), weight_to_int(w_hh, w_hh_params), bias_q,
        gm, gs, pre, (int(cm[0, 0]), int(cm[0, 1])), int(cs[0]), int(hm[0, 0]), int(hs[0]), *tables)


def _t(v: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.int64, device=like.device)


def exact_linear(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``q @ w.T`` exactly in int64 (float64 holds every int16 x int8 dot product below 2**53 exactly)."""
    return torch.round(torch.matmul(q.double(), w.double().t())).to(torch.int64)


def int_lstm_cell(x: torch.Tensor, h: Optional[torch.Tensor], c: Optional[torch.Tensor], p: LSTMCellIntParams,
                  rule: RequantRule, lookup: Any, linear: Any = exact_linear) -> tuple[torch.Tensor, torch.Tensor]:
    """One integer LSTM step on codes; ``(h', c')`` as int64 codes on the output and cell grids.  ``lookup``
    applies the tables (``MarchSpec.lookup`` or an implementation of it) and ``linear(codes, weight)`` the
    exact products (:func:`exact_linear` or an implementation of it: the integer module's march kernels)."""
    acc_i = linear(x, p.weight_ih) + p.bias.to(x.device)
    x = x.to(torch.int64)
    pre = _t(p.gate_pre_shift, x)
    terms = [(rule.round_shift(acc_i, pre), p.gate_multipliers[:, 0].to(x.device))]
    if h is not None:
        acc_h = linear(h, p.weight_hh)
        terms.append((rule.round_shift(acc_h, pre), p.gate_multipliers[:, 1].to(x.device)))
    gates = rule.requantize(terms, p.gate_shift.to(x.device), p.gates.dtype)
    gi, gf, gg, go = gates.chunk(4, dim=-1)
    i = lookup.apply(gi, p.sigmoid_table, rule, p.unit)
    f = lookup.apply(gf, p.sigmoid_table, rule, p.unit)
    g = lookup.apply(gg, p.tanh_table, rule, p.unit)
    o = lookup.apply(go, p.sigmoid_table, rule, p.unit)
    cterms = [(i * g, _t(p.cell_multipliers[1], x))]
    if c is not None:
        cterms.insert(0, (f * c.to(torch.int64), _t(p.cell_multipliers[0], x)))
    c_new = rule.requantize(cterms, _t(p.cell_shift, x), p.cell_out.dtype)
    tc = lookup.apply(c_new, p.cell_tanh_table, rule, p.unit)
    h_new = rule.requantize([(o * tc, _t(p.hidden_multiplier, x))], _t(p.hidden_shift, x), p.output.dtype)
    return h_new, c_new
