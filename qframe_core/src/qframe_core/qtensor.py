"""QTensor: an integer payload with its scale and quantized dtype."""

from __future__ import annotations

from typing import Optional

import torch

from .dtype import DTypeLike, QuantDType, as_quant_dtype
from .numerics import quantize_to_int


class QTensor:
    """A quantized tensor: ``value ≈ int_repr * scale`` (symmetric, zero point 0).

    Args:
        int_repr: integer tensor (int8/int16/int32 storage of ``dtype``).
        scale: float tensor, ``[1]`` per tensor or ``[C]`` per channel along ``ch_axis``.
        dtype: the quantized dtype.
        ch_axis: channel axis of a per-channel scale, else None.
    """

    def __init__(self, int_repr: torch.Tensor, scale: torch.Tensor, dtype: DTypeLike,
                 ch_axis: Optional[int] = None) -> None:
        self.dtype: QuantDType = as_quant_dtype(dtype)
        if int_repr.is_floating_point():
            raise TypeError(f"QTensor: int_repr must be an integer tensor, got {int_repr.dtype}")
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise ValueError(f"QTensor: scales must be positive and finite, got {scale.tolist()[:8]}")
        if scale.numel() > 1:
            if ch_axis is None or int_repr.shape[ch_axis] != scale.numel():
                raise ValueError(f"QTensor: {scale.numel()} scales need ch_axis with that many channels "
                                 f"(shape {tuple(int_repr.shape)}, ch_axis {ch_axis})")
        lo, hi = int(int_repr.min()) if int_repr.numel() else 0, int(int_repr.max()) if int_repr.numel() else 0
        if lo < self.dtype.quant_min or hi > self.dtype.quant_max:
            raise ValueError(f"QTensor: values [{lo}, {hi}] exceed {self.dtype} [{self.dtype.quant_min}, "
                             f"{self.dtype.quant_max}]")
        self._int = int_repr.to(self.dtype.torch_dtype)
        self._scale = scale
        self.ch_axis = ch_axis if scale.numel() > 1 else None

    @classmethod
    def quantize(cls, x: torch.Tensor, scale: torch.Tensor, dtype: DTypeLike = "qint8",
                 ch_axis: Optional[int] = None) -> QTensor:
        """Quantize float ``x`` with qframe's one float->integer rule."""
        d = as_quant_dtype(dtype)
        s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        return cls(quantize_to_int(x, s, d, ch_axis), s, d, ch_axis)

    def int_repr(self) -> torch.Tensor:
        return self._int

    def q_scale(self) -> torch.Tensor:
        return self._scale

    def dequantize(self) -> torch.Tensor:
        s = self._scale
        if self.ch_axis is not None:
            shape = [1] * self._int.dim()
            shape[self.ch_axis] = -1
            s = s.reshape(shape)
        else:
            s = s.reshape(())
        return self._int.float() * s

    @property
    def shape(self) -> torch.Size:
        return self._int.shape

    def __repr__(self) -> str:
        return (f"QTensor(shape={tuple(self.shape)}, dtype={self.dtype}, scale={self._scale.tolist()[:4]}"
                f"{'...' if self._scale.numel() > 4 else ''}, ch_axis={self.ch_axis})")
