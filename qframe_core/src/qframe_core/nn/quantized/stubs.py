"""Quantize (model input: float -> integer) and DeQuantize (integer -> float)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import QuantParams
from ..qat.base import integer_tensor_to_float
from .kernels import as_layout_array, dtype_name, from_layout_array, is_channels_last, march_kernels


class Quantize(nn.Module):
    """``clamp(round(x / scale))`` into the integer dtype — the same rule as fake quantization.

    Integer input (a previous stage's output in a segmented deployment) is already at
    this scale and passes through.  float32 input on the CPU is quantized in one pass by the
    march's ``quantize`` kernel (bit-identical to :func:`~qframe_core.numerics.quantize_to_int`),
    straight into NHWC when ``channels_last_output`` is set (convert's layout pass sets it when the
    consumers are channels-last convs).
    """

    _qframe_leaf = True
    channels_last_output = False

    def __init__(self, params: QuantParams, march: Optional[str] = None) -> None:
        super().__init__()
        self.register_buffer("scale", params.scale.detach().clone().float())
        self.dtype = params.dtype
        self.march = march

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Quantize:
        return cls(qat.output_params(), getattr(qat, "march", None))

    def output_params(self) -> QuantParams:
        return QuantParams(self.scale, self.dtype, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # integer tensors leave the stub NCHW-contiguous whatever the input's memory format (torch's
        # channels-last kernels for integer dtypes are not all correct, e.g. max_pool2d on int8)
        if not x.is_floating_point():
            # integer data from a previous stage, already at this (recorded) scale
            return x.to(self.dtype.torch_dtype).contiguous()
        march = self.__dict__.get("march")
        if (march is not None and x.dtype == torch.float32 and x.is_cpu and self.dtype.bits <= 16
                and self.scale.numel() == 1 and not torch.jit.is_tracing()):
            layout = "nhwc" if self.channels_last_output and x.dim() == 4 else "nchw"
            out = march_kernels(march).quantize(x.detach().contiguous().numpy(), float(self.scale),
                                                dtype_name(self.dtype.bits), self.dtype.quant_min,
                                                self.dtype.quant_max, layout)
            return from_layout_array(out, layout)
        # clamped values are exact in float32/64: straight to the dtype, no int64 pass
        if self.dtype.bits <= 16 and x.dtype in (torch.float32, torch.float64):
            return quantize_to_int(x, self.scale, self.dtype, out_dtype=self.dtype.torch_dtype).contiguous()
        return quantize_to_int(x, self.scale, self.dtype).to(self.dtype.torch_dtype).contiguous()

    def extra_repr(self) -> str:
        return f"scale={self.scale.tolist()}, dtype={self.dtype}"


class DeQuantize(nn.Module):
    """``q * scale`` in float32 (per channel for a high-precision int32 input)."""

    _qframe_leaf = True
    accepts_channels_last = True  # its output is made NCHW-contiguous

    def __init__(self, params: QuantParams) -> None:
        super().__init__()
        self.register_buffer("scale", params.scale.detach().clone().float())
        self.dtype = params.dtype
        self.ch_axis = params.ch_axis

    @classmethod
    def from_qat(cls, qat: nn.Module) -> DeQuantize:
        mod = cls(qat.input_params(0))
        mod.march = getattr(qat, "march", None)  # runs the march's dequantize kernel
        return mod

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        # integer activations may be channels-last between convs; the model's float outputs are NCHW
        # (contiguous) so that the caller's post-processing (``view``…) sees ordinary tensors.  The
        # per-tensor case is integer_tensor_to_float's rule (float(q) * scale in float32) in three ops.
        scale = self._buffers["scale"]
        if torch.jit.is_tracing():  # the same recorded ops on every call
            return integer_tensor_to_float(q, QuantParams(scale, self.dtype, self.ch_axis)).contiguous()
        cached = self.__dict__.get("_scalar")
        if cached is None or cached[0] is not scale or cached[1] != scale._version:
            # a float32 scale multiplies exactly like the same value as a python float
            cached = self._scalar = (scale, scale._version, float(scale) if scale.numel() == 1 else None)
        if cached[2] is not None and q.is_cpu:
            march = self.__dict__.get("march")
            if march is not None and q.dtype in (torch.int8, torch.int16, torch.int32):
                layout = "nhwc" if is_channels_last(q) else "nchw"  # one pass, written NCHW
                return torch.from_numpy(march_kernels(march).dequantize(as_layout_array(q, layout, "input",
                                                                                        "DeQuantize"),
                                                                        cached[2], layout))
            return q.contiguous().float().mul_(cached[2])
        return integer_tensor_to_float(q, QuantParams(scale, self.dtype, self.ch_axis)).contiguous()

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, ch_axis={self.ch_axis}"
