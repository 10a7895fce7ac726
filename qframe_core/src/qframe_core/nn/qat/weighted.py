"""QAT Conv2d and Linear (plain or fused with add and ReLU/ReLU6).

QAT and CALIBRATION states compute in float with fake-quantized weights
and output.  VALIDATION state computes what the march computes: integer
input, per-channel qint8 weight, qint32 bias, exact accumulation, the
march's requantization (multiplier, shift, rounding, saturation) and
fused activation bounds — via :meth:`integer_params`, the same function
convert uses to build the quantized module.
"""

from __future__ import annotations

import abc
from typing import Any, Optional

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ...dtype import qint32
from ...numerics import exact_integer_op, quantize_to_int
from ...quantization.fake_quantize import QuantParams
from ..intrinsic import CalledAsAdd, FusedConv2d, FusedLinear, apply_activation, swap_transposed_layout
from ..requant_params import (
    accumulator_scale,
    activation_bounds,
    bias_to_int,
    int32_output_scale,
    requant_multipliers,
    weight_to_int,
)
from .base import QATModule, integer_tensor_to_float, make_fake_quant


@attrs.frozen
class WeightedIntParams:
    """Everything the integer kernel of a conv/linear needs (int64 tensors; cast by the caller).

    ``multiplier``/``shift`` are None for a high-precision int32 output.
    """

    input: QuantParams
    weight: torch.Tensor
    bias: torch.Tensor
    output: QuantParams
    multiplier: Optional[torch.Tensor]
    shift: Optional[torch.Tensor]
    residual: Optional[QuantParams]
    residual_multiplier: Optional[torch.Tensor]
    clamp_min: Optional[int]
    clamp_max: Optional[int]


def _channel_view(t: torch.Tensor, ndim: int, channel_axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[channel_axis] = -1
    return t.reshape(shape)


def integer_accumulate(op: Any, qx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       channel_axis: int) -> torch.Tensor:
    """The exact int64 accumulators (with bias) of a conv/linear of codes: ``op(input, weight, bias)`` is the
    float op, run without bias on the codes exactly (:func:`~qframe_core.numerics.exact_integer_op`: float32
    where every partial sum fits its mantissa, float64 otherwise -- every int8/int16 product sum of realistic
    size, below 2**53); the bias is added in int64."""
    dev = qx.device
    w = weight.to(dev)
    reduction = w[0].numel() if w.dim() else 1  # the terms of one output: [O, I/groups, *kernel] or [O, I]
    acc = exact_integer_op(lambda a, b: op(a, b, None), qx, w, reduction)
    return acc + _channel_view(bias.to(dev, torch.int64), acc.dim(), channel_axis)


def integer_weighted(op: Any, qx: torch.Tensor, p: WeightedIntParams, qr: Optional[torch.Tensor], rule: Any,
                     channel_axis: int) -> torch.Tensor:
    """The integer result (int64 codes) of a conv/linear: exact accumulation (:func:`integer_accumulate`),
    the march's requantization.  Used by QAT simulation and by the integer modules that have no C++ conv
    kernel (ConvTranspose2d, Conv3d, Linear + add), so the two cannot drift."""
    dev = qx.device
    acc = integer_accumulate(op, qx, p.weight, p.bias, channel_axis)
    if p.multiplier is None:
        lo = qint32.quant_min if p.clamp_min is None else p.clamp_min
        return acc.clamp(lo, qint32.quant_max)
    nd = acc.dim()
    terms = [(acc, _channel_view(p.multiplier.to(dev), nd, channel_axis))]
    if qr is not None:
        terms.append((qr, _channel_view(p.residual_multiplier.to(dev), nd, channel_axis)))
    return rule.requantize(terms, _channel_view(p.shift.to(dev), nd, channel_axis), p.output.dtype,
                           p.clamp_min, p.clamp_max)


class _WeightedQAT(CalledAsAdd, QATModule, abc.ABC):
    """Shared logic; subclasses define the float op and the channel axis of the output."""

    channel_axis: int = 1
    activation: Optional[str] = None
    has_add: bool = False

    def _init_weighted(self, qconfig: Any, march: str, activation: Optional[str], has_add: bool) -> None:
        self._init_qat(march)
        if qconfig is None or qconfig.weight is None:
            raise ValueError(f"{type(self).__name__} needs a qconfig with a weight fake-quantize")
        self.activation = activation
        self.has_add = has_add
        self.weight_fake_quant = make_fake_quant(qconfig.weight, "weight", type(self).__name__)
        self.activation_post_process = make_fake_quant(qconfig.activation, "activation", type(self).__name__)
        if self.activation_post_process is None and activation == "relu6":
            raise ValueError(f"{type(self).__name__}: ReLU6 cannot be fused into a high-precision (int32) output")

    @staticmethod
    def _unfuse(mod: nn.Module) -> tuple[nn.Module, Optional[str], bool]:
        """``(float conv/linear, fused activation, fused add)`` of a plain or fused float module."""
        if isinstance(mod, (FusedConv2d, FusedLinear)):
            return mod.inner, mod.activation, mod.has_add
        return mod, None, False

    def _adopt(self, mod: nn.Module, qconfig: Any, march: str, activation: Optional[str], has_add: bool) -> Any:
        """Finish ``from_float``: fake-quantizes, then the float parameters (every parameter is copied,
        so ``from_float`` builds the module with ``skip_init``: no random initialisation to overwrite)."""
        self._init_weighted(qconfig, march, activation, has_add)
        with torch.no_grad():
            self.weight.copy_(mod.weight)
            if mod.bias is not None:
                self.bias.copy_(mod.bias)
        return self

    def _fusion_repr(self) -> str:
        return f", activation={self.activation}, has_add={self.has_add}, march={self.march}"

    # -- weight layout: quantized per output channel, in conv2d's [O, I/groups, ...] layout ----------
    def _oc_major(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` in the layout its fake-quantize and integer form use (output channels first)."""
        return w

    def _from_oc_major(self, w: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_oc_major`: the layout the float op takes."""
        return w

    # -- float paths --------------------------------------------------------------
    @abc.abstractmethod
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        """The float op (conv2d / linear) on the given weight and bias."""

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.has_add and other is None:
            raise ValueError(f"{self.qframe_name}: this fused op adds a residual; pass it as the second argument")
        if self.simulating():
            return self._simulate(x, other)
        out = self._op(x, self._from_oc_major(self.weight_fake_quant(self._oc_major(self.weight))), self.bias)
        if self.has_add:
            out = out + other
        out = apply_activation(out, self.activation)
        if self.activation_post_process is not None:
            out = self.activation_post_process(out)
        return out

    # -- integer semantics ------------------------------------------------------------
    def weight_params(self) -> QuantParams:
        if not bool(self.weight_fake_quant.calibrated):
            # weights are data we have: observe them rather than fail
            self.weight_fake_quant.observe(self._oc_major(self.weight))
        return self.weight_fake_quant.quant_params()

    def output_params(self) -> QuantParams:
        if self.activation_post_process is not None:
            return self.activation_post_process.quant_params()
        acc = accumulator_scale(self.input_params(0).scale, self.weight_params().scale)
        return QuantParams(int32_output_scale(acc), qint32, self.channel_axis)

    def integer_params(self) -> WeightedIntParams:
        inp = self.input_params(0)
        wp = self.weight_params()
        acc_scale = accumulator_scale(inp.scale, wp.scale)
        weight = weight_to_int(self._oc_major(self.weight), wp)
        bias = bias_to_int(self.bias, acc_scale)
        residual = self.input_params(1) if self.has_add else None
        if self.activation_post_process is None:
            if self.has_add:
                raise ValueError(f"{self.qframe_name}: a fused add needs an int8/int16 output qconfig, "
                                 f"not a high-precision (int32) one")
            lo, hi = activation_bounds(self.activation, None)
            out = QuantParams(int32_output_scale(acc_scale), qint32, self.channel_axis)
            return WeightedIntParams(inp, weight, bias, out, None, None, None, None, lo, hi)
        out = self.activation_post_process.quant_params()
        terms = [acc_scale] + ([residual.scale] if residual is not None else [])
        m, shift = requant_multipliers(self.requant_rule, terms, out.scale, what=f"{self.qframe_name} ({self.march})")
        lo, hi = activation_bounds(self.activation, out.scale)
        return WeightedIntParams(inp, weight, bias, out, m[:, 0], shift, residual,
                                 m[:, 1] if residual is not None else None, lo, hi)

    def _simulate(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> torch.Tensor:
        p = self.integer_params()
        qx = quantize_to_int(x, p.input.scale, p.input.dtype)
        qr = quantize_to_int(other, p.residual.scale, p.residual.dtype) if p.residual is not None else None
        q = integer_weighted(lambda a, w, b: self._op(a, self._from_oc_major(w), b), qx, p, qr,
                             self.requant_rule, self.channel_axis)
        return integer_tensor_to_float(q, p.output)


class Conv2d(nn.Conv2d, _WeightedQAT):
    """QAT Conv2d; ``activation``/``has_add`` say what was fused into it."""

    channel_axis = 1
    forward = _WeightedQAT.forward  # nn.Conv2d comes first in the MRO

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Conv2d:
        mod, activation, has_add = cls._unfuse(mod)
        if mod.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={mod.padding_mode!r} cannot be quantized: only zero padding "
                             f"is computed by the integer kernels (pad explicitly with a supported op instead)")
        qat = skip_init(cls, mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                        mod.dilation, mod.groups, mod.bias is not None, device=mod.weight.device)
        return qat._adopt(mod, qconfig, march, activation, has_add)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fusion_repr()


class ConvTranspose2d(nn.ConvTranspose2d, _WeightedQAT):
    """QAT ConvTranspose2d.  Its weight ``[I, O/groups, kh, kw]`` is fake-quantized per output channel
    in conv2d's layout ``[O, I/groups, kh, kw]`` (:meth:`_oc_major`), so the qconfig's ``ch_axis=0`` and
    the per-output-channel requantization apply as for Conv2d."""

    channel_axis = 1
    forward = _WeightedQAT.forward

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> ConvTranspose2d:
        mod, activation, has_add = cls._unfuse(mod)
        if mod.padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d with padding_mode={mod.padding_mode!r} cannot be quantized")
        qat = skip_init(cls, mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                        mod.output_padding, mod.groups, mod.bias is not None, mod.dilation, device=mod.weight.device)
        return qat._adopt(mod, qconfig, march, activation, has_add)

    def _oc_major(self, w: torch.Tensor) -> torch.Tensor:
        return swap_transposed_layout(w, self.groups)

    def _from_oc_major(self, w: torch.Tensor) -> torch.Tensor:
        return swap_transposed_layout(w, self.groups)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fusion_repr()


class Conv3d(nn.Conv3d, _WeightedQAT):
    """QAT Conv3d (``[N, C, D, H, W]``)."""

    channel_axis = 1
    forward = _WeightedQAT.forward

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Conv3d:
        mod, activation, has_add = cls._unfuse(mod)
        if mod.padding_mode != "zeros":
            raise ValueError(f"Conv3d with padding_mode={mod.padding_mode!r} cannot be quantized")
        qat = skip_init(cls, mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                        mod.dilation, mod.groups, mod.bias is not None, device=mod.weight.device)
        return qat._adopt(mod, qconfig, march, activation, has_add)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv3d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fusion_repr()


class Linear(nn.Linear, _WeightedQAT):
    """QAT Linear; the output channel is the last axis."""

    channel_axis = -1
    forward = _WeightedQAT.forward  # nn.Linear comes first in the MRO

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Linear:
        mod, activation, has_add = cls._unfuse(mod)
        qat = skip_init(cls, mod.in_features, mod.out_features, mod.bias is not None, device=mod.weight.device)
        return qat._adopt(mod, qconfig, march, activation, has_add)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fusion_repr()


class BatchNorm:
    """A standalone BatchNorm2d/3d (not fused into a conv): the seeds lower it as a convolution
    ("独立使用的 BatchNorm2d 底层调用 BpuConvolution 实现").  ``from_float`` builds the QAT depthwise
    1x1 Conv2d (Conv3d for 5-D BatchNorm) computing ``gamma * (x - mean) / std + beta`` with the
    running statistics, which the QAT model then trains as conv weights."""

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> _WeightedQAT:
        c = mod.num_features
        conv_cls, float_cls = (Conv3d, nn.Conv3d) if isinstance(mod, nn.BatchNorm3d) else (Conv2d, nn.Conv2d)
        dev = mod.running_mean.device
        std = torch.sqrt(mod.running_var + mod.eps)
        gamma = mod.weight if mod.weight is not None else torch.ones_like(std)
        beta = mod.bias if mod.bias is not None else torch.zeros_like(std)
        conv = float_cls(c, c, 1, groups=c, bias=True, device=dev)
        with torch.no_grad():
            conv.weight.copy_((gamma / std).reshape(c, *[1] * (conv.weight.dim() - 1)))
            conv.bias.copy_(beta - mod.running_mean * gamma / std)
        return conv_cls.from_float(conv, qconfig, march)
