"""Calibration observers for qframe (the seeds' ``observer_v2``).

Registered names (``get_default_qconfig(activation_observer=...)``): ``min_max``,
``percentile``, ``mse``, ``kl``, ``mix`` and ``fixed_scale``.
"""

from qframe_core.quantization.fixed_scale import FixedScaleObserver

from .kl import KLObserver
from .min_max import MinMaxObserver
from .mix import MixObserver
from .moving_average import (
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MovingAveragePerTensorMinMaxObserver,
)
from .mse import MSEObserver
from .percentile import PercentileObserver

__all__ = [
    "FixedScaleObserver",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MixObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "MovingAveragePerTensorMinMaxObserver",
    "PercentileObserver",
]
