"""A third-party observer: the mean absolute value times a factor (a toy, but it follows the contract)."""

from __future__ import annotations

from typing import Any

import torch

from qframe_core.quantization.observer import ObserverBase


class MeanAbsObserver(ObserverBase):
    """Threshold = ``factor * mean(|x|)`` over every element seen (per tensor or per channel)."""

    def __init__(self, factor: float = 4.0, averaging_constant: float = 0.01, ch_axis: int = -1,
                 dtype: Any = "qint8", qscheme: torch.qscheme = torch.per_tensor_symmetric, quant_min: Any = None,
                 quant_max: Any = None, is_sync_quantize: bool = False, factory_kwargs: Any = None) -> None:
        super().__init__(averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max, is_sync_quantize,
                         factory_kwargs)
        self.factor = float(factor)
        n = 0 if self.per_channel else 1
        self.register_buffer("abs_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.numel() == 0:
            return x
        v, mask = self.finite_view(x.detach())
        a = torch.where(mask, v, torch.zeros_like(v)).abs() if mask is not None else v.abs()
        ones = mask.double() if mask is not None else torch.ones_like(a, dtype=torch.float64)
        if self.per_channel:
            a = a.transpose(0, self.ch_axis).flatten(1)
            ones = ones.transpose(0, self.ch_axis).flatten(1)
            s, c = a.double().sum(1), ones.sum(1)
        else:
            s, c = a.double().sum().reshape(1), ones.sum().reshape(1)
        if self.abs_sum.numel() != s.numel():
            self.abs_sum, self.count = torch.zeros_like(s), torch.zeros_like(c)
        self.abs_sum += self.sync(s, "sum")
        self.count += self.sync(c, "sum")
        return x

    def has_data(self) -> bool:
        return self.count.numel() > 0 and bool((self.count > 0).any())

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_data():
            raise self.no_data_error()
        amax = self.factor * self.abs_sum / self.count.clamp(min=1)
        scale = self.scale_from_amax(amax)
        return scale, torch.zeros_like(scale, dtype=torch.long)
