"""Integer ConvTranspose2d, Conv3d and Linear+add: exact torch arithmetic instead of a C++ kernel.

They hold the same integer parameters as the kernel-backed Conv2d (per-output-channel int8
weight in conv2d's ``[O, I/groups, ...]`` layout, int32 bias, the march's multipliers and
shifts) and compute with :func:`~qframe_core.nn.qat.weighted.integer_weighted` — the function
the QAT modules call in VALIDATION state — so deployment and simulation agree bit for bit.
The accumulation is exact (:func:`~qframe_core.numerics.exact_integer_op`: float32 where every
partial sum fits its mantissa, float64 below 2**53 otherwise); without a residual the march kernel
``requantize`` applies the same rule to it.  Slower than the kernels of Conv2d/Linear (these ops are
rare in the models the marches target).
"""

from __future__ import annotations

import abc
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...march import resolve_march
from ...quantization.fake_quantize import QuantParams
from ..intrinsic import CalledAsAdd, swap_transposed_layout
from ..qat.weighted import WeightedIntParams, integer_accumulate, integer_weighted
from .kernels import dtype_name, march_kernels


class _ExactWeighted(CalledAsAdd, nn.Module, abc.ABC):
    _qframe_leaf = True
    channel_axis = 1
    #: the op's hyper-parameters copied from the QAT module
    op_attrs: tuple[str, ...] = ()

    def __init__(self, p: WeightedIntParams, march: str, name: str) -> None:
        super().__init__()
        self.march = march
        self.qframe_name = name
        self.register_buffer("weight", p.weight.to(torch.int8))
        self.register_buffer("bias", p.bias.to(torch.int32))
        self.register_buffer("multiplier", None if p.multiplier is None else p.multiplier.to(torch.int64))
        self.register_buffer("shift", None if p.shift is None else p.shift.to(torch.int64))
        self.register_buffer("residual_multiplier",
                             None if p.residual_multiplier is None else p.residual_multiplier.to(torch.int64))
        self.register_buffer("out_scale", p.output.scale.detach().clone().float())
        self.in_params = p.input
        self.residual_params = p.residual
        self.out_dtype = p.output.dtype
        self.out_ch_axis = p.output.ch_axis
        self.clamp_min = p.clamp_min
        self.clamp_max = p.clamp_max

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Any:
        mod = cls(qat.integer_params(), qat.march, qat.qframe_name)
        for attr in cls.op_attrs:
            setattr(mod, attr, getattr(qat, attr))
        return mod

    def output_params(self) -> QuantParams:
        return QuantParams(self.out_scale, self.out_dtype, self.out_ch_axis)

    @abc.abstractmethod
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The float op (conv_transpose2d / conv3d / linear) evaluated on integer codes held in floats."""

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.is_floating_point():
            raise TypeError(f"{self.qframe_name}: the integer {type(self).__name__} takes integer codes, got "
                            f"{x.dtype}: is a QuantStub missing before it?")
        if (other is None) != (self.residual_multiplier is None):
            raise ValueError(f"{self.qframe_name}: {'a' if other is None else 'no'} residual input expected")
        if other is None and self.multiplier is not None and x.is_cpu and not torch.jit.is_tracing():
            # the march kernel requantizes the exact accumulators (the rule of integer_weighted, in C++)
            acc = integer_accumulate(self._op, x.to(torch.int64), self.weight, self.bias, self.channel_axis)
            lo, hi = self._clamp_bounds()
            out = march_kernels(self.march).requantize(
                acc.contiguous().numpy(), self.multiplier.to(torch.int32).numpy(), self.shift.to(torch.int32).numpy(),
                self.channel_axis, dtype_name(self.out_dtype.bits), lo, hi)
            return torch.from_numpy(out)
        p = WeightedIntParams(self.in_params, self.weight, self.bias, self.output_params(), self.multiplier,
                              self.shift, self.residual_params, self.residual_multiplier, self.clamp_min,
                              self.clamp_max)
        q = integer_weighted(self._op, x.to(torch.int64), p, None if other is None else other.to(torch.int64),
                             resolve_march(self.march).requant, self.channel_axis)
        return q.to(self.out_dtype.torch_dtype)

    def _clamp_bounds(self) -> tuple[int, int]:
        lo = self.out_dtype.quant_min if self.clamp_min is None else max(self.out_dtype.quant_min, self.clamp_min)
        hi = self.out_dtype.quant_max if self.clamp_max is None else min(self.out_dtype.quant_max, self.clamp_max)
        return lo, hi

    def extra_repr(self) -> str:
        attrs = ", ".join(f"{a}={getattr(self, a, None)}" for a in self.op_attrs)
        return f"weight={tuple(self.weight.shape)}, {attrs}, out_dtype={self.out_dtype}, march={self.march}"


class ConvTranspose2d(_ExactWeighted):
    """Integer ConvTranspose2d (+ fused residual add and ReLU/ReLU6 bounds)."""

    op_attrs = ("stride", "padding", "output_padding", "groups", "dilation")

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = swap_transposed_layout(w, self.groups)  # stored output channels first: back to [I, O/groups, kh, kw]
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)


class Conv3d(_ExactWeighted):
    """Integer Conv3d (+ fused residual add and ReLU/ReLU6 bounds)."""

    op_attrs = ("stride", "padding", "dilation", "groups")

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class LinearAdd(_ExactWeighted):
    """Integer Linear fused with a residual add (+ ReLU/ReLU6): the GEMM kernel of :class:`Linear` has no
    residual input, so this form computes exactly in torch (``Linear.from_qat`` picks it)."""

    channel_axis = -1

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, b)
