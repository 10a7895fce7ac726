"""The seeds' ``MovingAverageMinMaxObserver`` and ``MovingAveragePerChannelMinMaxObserver``.

Both are :class:`~qframe_observers.min_max.MinMaxObserver` with the seeds'
defaults, each restricted to one scheme.
"""

from __future__ import annotations

from typing import Any

import torch

from .min_max import MinMaxObserver


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Moving-average min/max, per tensor only (``qscheme=torch.per_tensor_symmetric``)."""

    def __init__(self, averaging_constant: float = 0.01, dtype: Any = "qint8",
                 qscheme: torch.qscheme = torch.per_tensor_symmetric, quant_min: Any = None, quant_max: Any = None,
                 is_sync_quantize: bool = False, factory_kwargs: Any = None, ch_axis: int = -1) -> None:
        if qscheme != torch.per_tensor_symmetric:
            raise ValueError(f"MovingAverageMinMaxObserver is per tensor: qscheme must be "
                             f"torch.per_tensor_symmetric, got {qscheme}; use "
                             f"MovingAveragePerChannelMinMaxObserver for per-channel scales")
        super().__init__(averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max, is_sync_quantize,
                         factory_kwargs)


class MovingAveragePerTensorMinMaxObserver(MovingAverageMinMaxObserver):
    """:class:`MovingAverageMinMaxObserver` under the name the seeds' custom-qconfig example uses
    (``FakeQuantize.with_args(observer=MovingAveragePerTensorMinMaxObserver, ...)``); same behaviour."""


class MovingAveragePerChannelMinMaxObserver(MinMaxObserver):
    """Moving-average min/max per channel (``qscheme=torch.per_channel_symmetric``, ``ch_axis=0``)."""

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int = 0, dtype: Any = "qint8",
                 qscheme: torch.qscheme = torch.per_channel_symmetric, quant_min: Any = None, quant_max: Any = None,
                 is_sync_quantize: bool = False, factory_kwargs: Any = None) -> None:
        if qscheme != torch.per_channel_symmetric:
            raise ValueError(f"MovingAveragePerChannelMinMaxObserver is per channel: qscheme must be "
                             f"torch.per_channel_symmetric, got {qscheme}; use MovingAverageMinMaxObserver "
                             f"for a per-tensor scale")
        super().__init__(averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max, is_sync_quantize,
                         factory_kwargs)
