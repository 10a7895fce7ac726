"""QAT modules of the composite ops: softmax, layernorm and GLU.

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
from ...quantization.fake_quantize import FakeQuantize, QuantParams, fake_quantize
from ..integer_composite import (
    check_shape,
    check_table_kwargs,
    intermediate_dtype,
    intermediate_fake_quant,
    shape_limits,
)
from ..integer_glu import GLUIntParams, glu_halves, glu_params, glu_table, int_glu
from ..integer_layernorm import (
    WEIGHT_DTYPE,
    LayerNormIntParams,
    int_layernorm,
    layernorm_params,
    rsqrt_table,
    weight_scale,
)
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
    """``softmax(x, dim)`` as exp table, exact sum, normalized reciprocal table and a requantized product.

    Intermediate fake-quantize: ``exp_post_process`` (fixed at ``1 / 32767``: the largest exp of every row is
    exactly 1).  The sum and its reciprocal need no calibrated grid: the sum is normalized to a 15-bit
    mantissa and an exponent.  Settings: ``exp_kwargs``, ``reciprocal_kwargs``.
    """

    table_settings = ("exp_kwargs", "reciprocal_kwargs")

    def __init__(self, dim: Optional[int], activation_post_process: FakeQuantize, exp_post_process: FakeQuantize,
                 march: str, settings: Optional[dict] = None) -> None:
        super().__init__()
        self.dim = dim
        self.exp_post_process = exp_post_process
        self._init_composite(march, activation_post_process, settings or {})

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Softmax:
        act = _output_fake_quant(qconfig, "Softmax")
        inner = intermediate_dtype(resolve_march(march).activation_dtypes)
        exp = intermediate_fake_quant(qconfig.activation, inner, "Softmax", scale=1.0 / inner.quant_max)
        return cls(mod.dim, act, exp, march, _settings(mod, cls.table_settings))

    def integer_params(self) -> SoftmaxIntParams:
        spec = resolve_march(self.march)
        inp, out, exp = self.input_params(0), self.output_params(), self.exp_post_process.quant_params()
        tables = self._cached(self._key(inp, exp), lambda: softmax_tables(
            spec.lookup, inp, exp, self.exp_kwargs, self.reciprocal_kwargs, self._what()))
        return softmax_params(spec.requant, tables, self.dim, inp, exp, out, self._what())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            dim = softmax_dim(self.dim, x.dim())
            e = self.exp_post_process(torch.exp(x - x.detach().amax(dim=dim, keepdim=True)))
            return self.activation_post_process(e / e.sum(dim=dim, keepdim=True))
        p = self.integer_params()
        spec = resolve_march(self.march)
        q = int_softmax(quantize_to_int(x, p.input.scale, p.input.dtype), p, spec.requant, spec.lookup)
        return integer_tensor_to_float(q, p.output)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LayerNorm(_Composite):
    """``layer_norm(x, normalized_shape, weight, bias, eps)`` as exact moments, a normalized rsqrt table and an
    affine step with a qint16 weight and a qint32 bias.

    Intermediate fake-quantize (calibrated), with affine parameters: ``norm_post_process`` (the normalized
    value before weight and bias).  The variance needs no calibrated grid: it is normalized to a mantissa
    and an even exponent.  Setting: ``rsqrt_kwargs`` (the seeds' ``layernorm_op.rsqrt_kwargs``).  The
    march table's input-shape limits are checked when it runs.
    """

    table_settings = ("rsqrt_kwargs",)

    def __init__(self, normalized_shape: tuple[int, ...], eps: float, weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], activation_post_process: FakeQuantize,
                 norm_post_process: Optional[FakeQuantize], march: str, settings: Optional[dict] = None,
                 limits: tuple = ()) -> None:
        super().__init__()
        self.normalized_shape = tuple(int(d) for d in normalized_shape)
        self.eps = float(eps)
        self.weight = nn.Parameter(weight.detach().clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.norm_post_process = norm_post_process
        self.shape_limits = tuple(limits)
        self._init_composite(march, activation_post_process, settings or {})

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> LayerNorm:
        act = _output_fake_quant(qconfig, "LayerNorm")
        inner = intermediate_dtype(resolve_march(march).activation_dtypes)
        weight, bias = getattr(mod, "weight", None), getattr(mod, "bias", None)
        affine = weight is not None or bias is not None
        norm = intermediate_fake_quant(qconfig.activation, inner, "LayerNorm") if affine else None
        return cls(mod.normalized_shape, mod.eps, weight, bias, act, norm, march, _settings(mod, cls.table_settings),
                   shape_limits(march, type(mod)))

    @property
    def affine(self) -> bool:
        return self.weight is not None or self.bias is not None

    def integer_params(self) -> LayerNormIntParams:
        spec = resolve_march(self.march)
        inp, out = self.input_params(0), self.output_params()
        norm = self.norm_post_process.quant_params() if self.norm_post_process is not None else None
        table = self._cached((), lambda: rsqrt_table(spec.lookup, self.rsqrt_kwargs, self._what()))
        return layernorm_params(spec.requant, table, self.normalized_shape, self.eps, inp, norm, out, self.weight,
                                self.bias, self._what())

    def check_input(self, shape: Any) -> None:
        check_shape(self.shape_limits, shape, self.qframe_name, "torch.nn.LayerNorm", self.march)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x.shape)
        if not self.simulating():
            dims = tuple(range(x.dim() - len(self.normalized_shape), x.dim()))
            c = x - x.mean(dim=dims, keepdim=True)
            n = c * torch.rsqrt((c * c).mean(dim=dims, keepdim=True) + self.eps)
            if self.affine:
                n = self.norm_post_process(n)
                if self.weight is not None:
                    n = n * fake_quantize(self.weight, weight_scale(self.weight), WEIGHT_DTYPE.quant_min,
                                          WEIGHT_DTYPE.quant_max)
                if self.bias is not None:
                    n = n + self.bias
            return self.activation_post_process(n)
        p = self.integer_params()
        spec = resolve_march(self.march)
        q = int_layernorm(quantize_to_int(x, p.input.scale, p.input.dtype), p, spec.requant, spec.lookup)
        return integer_tensor_to_float(q, p.output)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.affine}"


class GLU(_Composite):
    """``glu(x, dim) = a * sigmoid(b)`` as a sigmoid table and an exact product.

    Intermediate fake-quantize (calibrated): ``sigmoid_post_process``.  Setting: ``sigmoid_kwargs``.
    """

    table_settings = ("sigmoid_kwargs",)

    def __init__(self, dim: int, activation_post_process: FakeQuantize, sigmoid_post_process: FakeQuantize,
                 march: str, settings: Optional[dict] = None) -> None:
        super().__init__()
        self.dim = int(dim)
        self.sigmoid_post_process = sigmoid_post_process
        self._init_composite(march, activation_post_process, settings or {})

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> GLU:
        act = _output_fake_quant(qconfig, "GLU")
        inner = intermediate_dtype(resolve_march(march).activation_dtypes)
        return cls(mod.dim, act, intermediate_fake_quant(qconfig.activation, inner, "GLU"), march,
                   _settings(mod, cls.table_settings))

    def integer_params(self) -> GLUIntParams:
        spec = resolve_march(self.march)
        inp, out, sig = self.input_params(0), self.output_params(), self.sigmoid_post_process.quant_params()
        table = self._cached(self._key(inp, sig), lambda: glu_table(spec.lookup, inp, sig, self.sigmoid_kwargs,
                                                                    self._what()))
        return glu_params(spec.requant, table, self.dim, inp, sig, out, self._what())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.simulating():
            a, b = glu_halves(x, self.dim, self.qframe_name)
            return self.activation_post_process(a * self.sigmoid_post_process(torch.sigmoid(b)))
        p = self.integer_params()
        spec = resolve_march(self.march)
        q = int_glu(quantize_to_int(x, p.input.scale, p.input.dtype), p, spec.requant, spec.lookup, self.qframe_name)
        return integer_tensor_to_float(q, p.output)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
