"""Quantize (model input: float -> integer) and DeQuantize (integer -> float)."""

from __future__ import annotations

import torch
from torch import nn

from ...numerics import quantize_to_int
from ...quantization.fake_quantize import QuantParams
from ..qat.base import integer_tensor_to_float


class Quantize(nn.Module):
    """``clamp(round(x / scale))`` into the integer dtype — the same rule as fake quantization.

    Integer input (a previous stage's output in a segmented deployment) is already at
    this scale and passes through.
    """

    _qframe_leaf = True

    def __init__(self, params: QuantParams) -> None:
        super().__init__()
        self.register_buffer("scale", params.scale.detach().clone().float())
        self.dtype = params.dtype

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Quantize:
        return cls(qat.output_params())

    def output_params(self) -> QuantParams:
        return QuantParams(self.scale, self.dtype, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # integer tensors leave the stub NCHW-contiguous whatever the input's memory format (torch's
        # channels-last kernels for integer dtypes are not all correct, e.g. max_pool2d on int8)
        if not x.is_floating_point():
            # integer data from a previous stage, already at this (recorded) scale
            return x.to(self.dtype.torch_dtype).contiguous()
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
        return cls(qat.input_params(0))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        # integer activations may be channels-last between convs; the model's float outputs are NCHW
        # (contiguous) so that the caller's post-processing (``view``…) sees ordinary tensors
        return integer_tensor_to_float(q, QuantParams(self.scale, self.dtype, self.ch_axis)).contiguous()

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, ch_axis={self.ch_axis}"
