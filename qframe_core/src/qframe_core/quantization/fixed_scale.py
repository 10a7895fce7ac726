"""FixedScaleObserver: an observer whose scale is given, not measured.

The seeds fix a module's output scale with it, e.g. a qint16 ``sub`` output::

    get_default_qconfig(activation_qkwargs={"observer": FixedScaleObserver, "scale": 1 / 2 ** 15,
                                            "dtype": qint16})

There ``scale`` reaches :class:`~qframe_core.quantization.fake_quantize.FakeQuantize`,
which then never consults its observer and is calibrated from the start.
Used on its own (or by name, ``"fixed_scale"``, without a ``scale`` for the
fake-quantize) the observer answers its own ``scale`` after the first batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..dtype import DTypeLike
from .observer import ObserverBase


class FixedScaleObserver(ObserverBase):
    """Always proposes ``scale`` (zero point 0); records nothing.

    Args:
        scale: the scale, a positive finite number (default 1.0, as the seeds').
        zero_point: must be 0 (symmetric quantization).
        other arguments: those of :class:`ObserverBase` (``averaging_constant`` and
            ``ch_axis`` have no effect; the scale is per tensor).
    """

    def __init__(self, scale: float = 1.0, zero_point: int = 0, dtype: DTypeLike = "qint8",
                 qscheme: torch.qscheme = torch.per_tensor_symmetric, quant_min: Any = None, quant_max: Any = None,
                 is_sync_quantize: bool = False, factory_kwargs: Any = None, averaging_constant: float = 0.01,
                 ch_axis: int = -1) -> None:
        if qscheme == torch.per_channel_symmetric:
            raise ValueError("FixedScaleObserver has one scale for the whole tensor: use "
                             "qscheme=torch.per_tensor_symmetric")
        super().__init__(averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max, is_sync_quantize,
                         factory_kwargs)
        scale = float(scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"FixedScaleObserver: scale must be a positive finite number, got {scale}")
        if int(zero_point) != 0:
            raise ValueError(f"FixedScaleObserver: zero_point must be 0 (qframe's marches quantize "
                             f"symmetrically), got {zero_point}")
        self.register_buffer("scale", torch.tensor([scale], **self.factory_kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x

    def has_data(self) -> bool:
        return True

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale.clone(), torch.zeros(1, dtype=torch.long, device=self.scale.device)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item()}, dtype={self.dtype}"
