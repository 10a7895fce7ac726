"""PercentileObserver: the clipping threshold below which ``percentile`` % of ``|x|`` lies."""

from __future__ import annotations

from typing import Any

import torch

from qframe_core.quantization.histogram import HistogramObserverBase, histogram_percentile


class PercentileObserver(HistogramObserverBase):
    """Percentile of the magnitudes, read from an online histogram.

    The threshold is the ``percentile``-th percentile of ``|x|`` over every
    element observed so far (linear interpolation inside a bin, so ``bins``
    sets its resolution: ``hist_max / bins``).  ``percentile=100`` is the
    maximum.  Per tensor or per channel.

    Args:
        percentile: in ``(0, 100]``; default 99.99 (the seeds').
        bins: histogram bins; default 2048.
        other arguments: those of :class:`~qframe_core.quantization.observer.ObserverBase`
            (``averaging_constant`` is accepted but unused: every element counts once).
    """

    def __init__(self, percentile: float = 99.99, bins: int = 2048, averaging_constant: float = 0.01,
                 ch_axis: int = -1, dtype: Any = "qint8", qscheme: torch.qscheme = torch.per_tensor_symmetric,
                 quant_min: Any = None, quant_max: Any = None, is_sync_quantize: bool = False,
                 factory_kwargs: Any = None) -> None:
        super().__init__(bins, averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max,
                         is_sync_quantize, factory_kwargs)
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"{type(self).__name__}: percentile must lie in (0, 100], got {percentile} "
                             f"(99.99 is the usual start; see the tuning advice in qframe_observers' README)")
        self.percentile = float(percentile)

    def compute_threshold(self, hist: torch.Tensor, hist_max: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        q = torch.tensor([self.percentile], dtype=torch.float64, device=hist.device)
        return histogram_percentile(hist, hist_max, q)[:, 0]

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, " + super().extra_repr()
