"""MinMaxObserver: the (moving-average) minimum and maximum of what it sees."""

from __future__ import annotations

from typing import Any

import torch

from qframe_core.quantization.observer import ObserverBase


class MinMaxObserver(ObserverBase):
    """Min/max observer, per tensor or per channel.

    The first batch sets ``min_val``/``max_val``; later batches move them by
    ``averaging_constant`` (see the observer contract).  NaN/Inf elements are
    ignored with a warning naming the module.  The scale is
    ``max(|min_val|, |max_val|) / ((quant_max - quant_min) / 2)``.
    """

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int = -1, dtype: Any = "qint8",
                 qscheme: torch.qscheme = torch.per_tensor_symmetric, quant_min: Any = None, quant_max: Any = None,
                 is_sync_quantize: bool = False, factory_kwargs: Any = None) -> None:
        super().__init__(averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max, is_sync_quantize,
                         factory_kwargs)
        fk = self.factory_kwargs
        n = 0 if self.per_channel else 1
        self.register_buffer("min_val", torch.full((n,), float("inf"), **fk))
        self.register_buffer("max_val", torch.full((n,), float("-inf"), **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        lo, hi = self.channel_min_max(x)
        lo, hi = self.sync(lo, "min"), self.sync(hi, "max")
        self.min_val = self.moving_average(self.min_val, lo.to(self.min_val.device))
        self.max_val = self.moving_average(self.max_val, hi.to(self.max_val.device))
        return x

    def has_data(self) -> bool:
        return self.min_val.numel() > 0 and bool(torch.isfinite(self.min_val).any())

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_data():
            raise self.no_data_error()
        lo = torch.where(torch.isfinite(self.min_val), self.min_val, torch.zeros_like(self.min_val))
        hi = torch.where(torch.isfinite(self.max_val), self.max_val, torch.zeros_like(self.max_val))
        amax = torch.maximum(-lo, hi).clamp(min=0)
        scale = self.scale_from_amax(amax)
        return scale, torch.zeros_like(scale, dtype=torch.long)
