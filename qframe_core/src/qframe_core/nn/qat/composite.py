"""QAT modules of the composite ops: softmax (and, below, layernorm and GLU).

Each is a sequence of integer steps (see :mod:`qframe_core.nn.integer_softmax` & co.) whose
intermediate values have fake-quantizes of their own.  In QAT and CALIBRATION state the module
computes in float, each intermediate passing its fake-quantize (so calibration sets its scale,
and QAT trains through its rounding); in VALIDATION state it runs the integer steps on the
input's codes — the very functions the integer module runs.

The inner tables' parameters can be tuned after calibration, before convert
(``softmax_op.exp_kwargs = {"input_range": (-8.0, 0.0)}``; see :mod:`qframe_core.nn.integer_composite`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ...march import resolve_march
from ...numerics import quantize_to_int
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from ..integer_composite import check_table_kwargs, intermediate_dtype, intermediate_fake_quant
from ..integer_softmax import SoftmaxIntParams, int_softmax, softmax_dim, softmax_params, softmax_tables
from .base import QATModule, integer_tensor_to_float, make_fake_quant


def _output_fake_quant(qconfig: Any, owner: str) -> FakeQuantize:
    if qconfig is None or qconfig.activation is None:
        raise ValueError(f"{owner} needs an activation qconfig: its output is an int8/int16 activation")
    return make_fake_quant(qconfig.activation, "activation", owner)


class _Composite(QATModule):
    """Shared: output params, ``*_kwargs`` validation, table cache keyed by the scales and settings."""

    #: names of the table settings this op exposes
    table_settings: tuple[str, ...] = ()

    def _init_composite(self, march: str, activation_post_process: FakeQuantize, settings: dict) -> None:
        self._init_qat(march)
        self.activation_post_process = activation_post_process
        self._tables: tuple[Any, Any] = (None, None)
        for attr in self.table_settings:
            setattr(self, attr, settings.get(attr))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).table_settings:
            value = check_table_kwargs(value, type(self).__name__, name)
        super().__setattr__(name, value)

    def output_params(self) -> QuantParams:
        return self.activation_post_process.quant_params()

    def _cached(self, key: tuple, build: Any) -> Any:
        key = key + tuple(repr(getattr(self, a)) for a in self.table_settings)
        if self._tables[0] != key:
            self._tables = (key, build())
        return self._tables[1]

    @staticmethod
    def _key(*params: QuantParams) -> tuple:
        return tuple((tuple(p.scale.tolist()), p.dtype) for p in params)

    def _what(self) -> str:
        return f"{self.qframe_name} ({self.march})"


def _settings(mod: nn.Module, names: tuple[str, ...]) -> dict:
    """Table settings a user put on the float module (``float_ln.rsqrt_kwargs = {...}``) carry over."""
    return {n: getattr(mod, n) for n in names if getattr(mod, n, None) is not None}


class Softmax(_Composite):
    """``softmax(x, dim)`` as exp table, exact sum, reciprocal table and a requantized product.

    Intermediate fake-quantizes: ``exp_post_process`` (fixed at ``1 / qmax``: the largest exp of every
    row is exactly 1), ``sum_post_process`` and ``reciprocal_post_process`` (calibrated).
    Settings: ``exp_kwargs``, ``reciprocal_kwargs``.
    """

    table_settings = ("exp_kwargs", "reciprocal_kwargs")

    def __init__(self, dim: Optional[int], activation_post_process: FakeQuantize, exp_post_process: FakeQuantize,
                 sum_post_process: FakeQuantize, reciprocal_post_process: FakeQuantize, march: str,
                 settings: Optional[dict] = None) -> None:
        super().__init__()
        self.dim = dim
        self.exp_post_process = exp_post_process
        self.sum_post_process = sum_post_process
        self.reciprocal_post_process = reciprocal_post_process
        self._init_composite(march, activation_post_process, settings or {})

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Softmax:
        act = _output_fake_quant(qconfig, "Softmax")
        inner = intermediate_dtype(resolve_march(march).activation_dtypes)
        return cls(mod.dim, act,
                   intermediate_fake_quant(qconfig.activation, inner, "Softmax", scale=1.0 / inner.quant_max),
                   intermediate_fake_quant(qconfig.activation, inner, "Softmax"),
                   intermediate_fake_quant(qconfig.activation, inner, "Softmax"),
                   march, _settings(mod, cls.table_settings))

    def integer_params(self) -> SoftmaxIntParams:
        spec = resolve_march(self.march)
        inp, out = self.input_params(0), self.output_params()
        exp = self.exp_post_process.quant_params()
        sum_, recip = self.sum_post_process.quant_params(), self.reciprocal_post_process.quant_params()
        tables = self._cached(self._key(inp, exp, sum_, recip), lambda: softmax_tables(
            spec.lookup, inp, exp, sum_, recip, self.exp_kwargs, self.reciprocal_kwargs, self._what()))
        return softmax_params(spec.requant, tables, self.dim, inp, exp, sum_, recip, out, self._what())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            dim = softmax_dim(self.dim, x.dim())
            e = self.exp_post_process(torch.exp(x - x.detach().amax(dim=dim, keepdim=True)))
            s = self.sum_post_process(e.sum(dim=dim, keepdim=True))
            r = self.reciprocal_post_process(torch.reciprocal(s))
            return self.activation_post_process(e * r)
        p = self.integer_params()
        spec = resolve_march(self.march)
        q = int_softmax(quantize_to_int(x, p.input.scale, p.input.dtype), p, spec.requant, spec.lookup, self._what())
        return integer_tensor_to_float(q, p.output)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
