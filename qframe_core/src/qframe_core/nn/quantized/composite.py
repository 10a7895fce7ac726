"""Integer composite ops (softmax, layernorm, GLU): the integer steps of :mod:`qframe_core.nn.integer_softmax` & co.,
with the tables and multipliers fixed at convert from the QAT module's calibrated scales and settings."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..integer_composite import MANTISSA_BITS, check_shape
from ..integer_glu import glu_halves, int_glu
from ..integer_layernorm import RSQRT_FRAC_BITS, RSQRT_SHIFT, int_layernorm
from ..integer_softmax import int_softmax, softmax_dim
from .kernels import as_array, march_kernels, runs_on_kernels


class _IntegerComposite(nn.Module):
    _qframe_leaf = True

    def __init__(self, params: Any, march: str, name: str) -> None:
        super().__init__()
        self.params = params
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Any:
        return cls(qat.integer_params(), qat.march, qat.qframe_name)

    def output_params(self) -> QuantParams:
        return self.params.output

    def _codes(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        return q

    def _what(self) -> str:
        return f"{self.qframe_name} ({self.march})"

    def extra_repr(self) -> str:
        return f"out_dtype={self.params.output.dtype}, march={self.march}"


def softmax_tables(params: Any, march: str, dtype: torch.dtype, cache: dict) -> tuple:
    """(exp code of every ``d = q - max`` in ``[-span, 0]``, reciprocal code of every mantissa in
    ``[0, 2**15)``) by the march's lookup rule, for softmax inputs of ``dtype``; kept in ``cache``."""
    entry = cache.get(dtype)
    if entry is None or entry[0] is not params:
        spec = resolve_march(march)
        info = torch.iinfo(dtype)
        d = torch.arange(info.min - info.max, 1, dtype=torch.int64)
        e = spec.lookup.apply(d, params.exp_table, spec.requant, params.exp)
        m = torch.arange(0, 1 << MANTISSA_BITS, dtype=torch.int64)
        r = spec.lookup.apply(m, params.reciprocal_table, spec.requant, params.reciprocal)
        entry = cache[dtype] = (params, e.to(torch.int32).numpy(), r.to(torch.int32).numpy())
    return entry[1], entry[2]


def kernel_softmax(q: torch.Tensor, params: Any, march: str, dim: int, cache: dict, owner: str,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`~qframe_core.nn.integer_softmax.int_softmax` of int8/int16 CPU codes along ``dim`` on the march
    kernel ``softmax`` (the same steps in one pass a row; the same codes), as the output dtype.  ``mask``
    (boolean, broadcastable to ``q``, True = masked; ``dim`` = -1 only) gives
    :func:`~qframe_core.nn.integer_mha.int_masked_softmax`."""
    rows = q.movedim(dim, -1)
    exp_table, reciprocal_table = softmax_tables(params, march, q.dtype, cache)
    req = params.output_requant
    flat = rows.reshape(-1, rows.shape[-1])
    if mask is not None:
        mask = mask.expand(q.shape).to(torch.int8).reshape(flat.shape).numpy()
    out = march_kernels(march).softmax(as_array(flat, "input", owner), exp_table,
                                       reciprocal_table, req.pre_shift, req.multiplier, req.shift,
                                       f"int{params.output.dtype.bits}", mask)
    return torch.from_numpy(out).reshape(rows.shape).movedim(-1, dim)


def kernel_softmax_applies(q: torch.Tensor, params: Any) -> bool:
    """int8/int16 CPU codes with an int8/int16 output, outside tracing (traced models record the torch steps)."""
    return (q.dtype in (torch.int8, torch.int16) and q.is_cpu and q.dim() > 0 and params.output.dtype.bits <= 16
            and not torch.jit.is_tracing())


class Softmax(_IntegerComposite):
    """Integer softmax: ``exp_table(q - max) * reciprocal_table(mantissa(sum))``, requantized by the exponent.

    int8/int16 CPU inputs run the march kernel ``softmax`` (the same steps in one pass a row, the tables
    evaluated once on every index: the same numbers); other inputs and traced models run the steps in torch.
    """

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        q = self._codes(q)
        if not kernel_softmax_applies(q, self.params):
            spec = resolve_march(self.march)
            return int_softmax(q, self.params, spec.requant, spec.lookup).to(self.params.output.dtype.torch_dtype)
        return kernel_softmax(q, self.params, self.march, softmax_dim(self.params.dim, q.dim()),
                              self.__dict__.setdefault("_dense", {}), self.qframe_name)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dense", None)
        return state

    def extra_repr(self) -> str:
        return f"dim={self.params.dim}, " + super().extra_repr()


class LayerNorm(_IntegerComposite):
    """Integer layer normalization: exact moments, ``rsqrt_table``, ``requant(n * g + b)``."""

    def __init__(self, params: Any, march: str, name: str, limits: tuple = ()) -> None:
        super().__init__(params, march, name)
        self.shape_limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> LayerNorm:
        return cls(qat.integer_params(), qat.march, qat.qframe_name, qat.shape_limits)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        check_shape(self.shape_limits, q.shape, self.qframe_name, "torch.nn.LayerNorm", self.march)
        spec = resolve_march(self.march)
        q = self._codes(q)
        p = self.params
        if q.dtype not in (torch.int8, torch.int16) or not q.is_cpu or p.output.dtype.bits > 16 \
                or p.norm.dtype.bits > 32 or p.count > (1 << 20) or torch.jit.is_tracing():
            return int_layernorm(q, p, spec.requant, spec.lookup).to(p.output.dtype.torch_dtype)
        # the march kernel: the same steps in one pass a row (the rsqrt table evaluated once on every mantissa)
        rows = q.reshape(-1, p.count)
        norm = (p.norm_requant.pre_shift, p.norm_requant.multiplier, p.norm_requant.shift)
        affine = None if p.affine_requant is None else \
            (p.affine_requant.pre_shift, p.affine_requant.multiplier, p.affine_requant.shift)
        weight = None if affine is None else p.weight.reshape(-1).to(torch.int64).numpy()
        bias = None if affine is None else p.bias.reshape(-1).to(torch.int64).numpy()
        out = march_kernels(self.march).layernorm(
            as_array(rows, "input", self.qframe_name), p.eps, self.dense_rsqrt_table(), norm,
            RSQRT_SHIFT - RSQRT_FRAC_BITS, f"int{p.norm.dtype.bits}", weight, bias, affine,
            f"int{p.output.dtype.bits}")
        return torch.from_numpy(out).reshape(q.shape)

    def dense_rsqrt_table(self):
        """The rsqrt code of every mantissa in ``[0, 2**15)`` by the march's lookup rule (built once)."""
        entry = self.__dict__.get("_dense")
        if entry is None or entry[0] is not self.params:
            spec = resolve_march(self.march)
            m = torch.arange(0, 1 << MANTISSA_BITS, dtype=torch.int64)
            r = spec.lookup.apply(m, self.params.rsqrt_table, spec.requant, self.params.rsqrt)
            entry = self.__dict__["_dense"] = (self.params, r.to(torch.int32).numpy())
        return entry[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dense", None)
        return state

    def extra_repr(self) -> str:
        return f"normalized_ndim={self.params.normalized_ndim}, affine={self.params.weight is not None}, " + \
            super().extra_repr()


class GLU(_IntegerComposite):
    """Integer GLU: ``requant(a * sigmoid_table(b))``.

    int8/int16 CPU inputs run the march kernel ``glu`` (the sigmoid table evaluated once on every input code:
    the same numbers); other inputs and traced models run the steps in torch.
    """

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        p = self.params
        q = self._codes(q)
        if not runs_on_kernels(q) or q.dim() == 0 or p.output.dtype.bits > 16:
            spec = resolve_march(self.march)
            return int_glu(q, p, spec.requant, spec.lookup, self.qframe_name).to(p.output.dtype.torch_dtype)
        dim = p.dim % q.dim()
        size = q.shape[dim]
        if size % 2:
            glu_halves(q, dim, self.qframe_name)  # torch's error for an odd dimension
        outer = math.prod(q.shape[:dim])
        inner = size // 2 * math.prod(q.shape[dim + 1:])
        req = p.output_requant
        out = march_kernels(self.march).glu(as_array(q, "input", self.qframe_name).reshape(outer, 2, inner),
                                            self.dense_sigmoid_table(q.dtype),
                                            (req.pre_shift, req.multiplier, req.shift), f"int{p.output.dtype.bits}")
        return torch.from_numpy(out).reshape(*q.shape[:dim], size // 2, *q.shape[dim + 1:])

    def dense_sigmoid_table(self, dtype: torch.dtype):
        """The sigmoid code of every code of ``dtype``, by the march's lookup rule (built once per dtype)."""
        cache = self.__dict__.setdefault("_dense", {})
        entry = cache.get(dtype)
        if entry is None or entry[0] is not self.params:
            spec = resolve_march(self.march)
            info = torch.iinfo(dtype)
            codes = torch.arange(info.min, info.max + 1, dtype=torch.int64)
            g = spec.lookup.apply(codes, self.params.sigmoid_table, spec.requant, self.params.sigmoid)
            narrow = torch.int16 if self.params.sigmoid.dtype.bits <= 16 else torch.int32  # int16: the vector path
            entry = cache[dtype] = (self.params, g.to(narrow).numpy())
        return entry[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dense", None)
        return state

    def extra_repr(self) -> str:
        return f"dim={self.params.dim}, " + super().extra_repr()
