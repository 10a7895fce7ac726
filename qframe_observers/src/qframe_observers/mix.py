"""MixObserver: tries several percentile settings and keeps the one with the least L2 error."""

from __future__ import annotations

from typing import Any

import torch

from qframe_core.quantization.histogram import (
    HistogramObserverBase,
    histogram_percentile,
    histogram_quantization_error,
)


class MixObserver(HistogramObserverBase):
    """Mixed calibration: percentile thresholds at :attr:`PERCENTILES`, the best by squared error.

    Each candidate (the 100th percentile is the min/max answer) is scored by
    the exact squared quantize-dequantize error over the online histogram of
    ``|x|``; the lowest wins.  Nothing to tune.  Per tensor or per channel.

    Args:
        those of :class:`~qframe_core.quantization.observer.ObserverBase`
        (``averaging_constant`` is accepted but unused: every element counts once);
        ``bins`` (default 2048) sets the histogram resolution.
    """

    #: percentiles tried, in percent
    PERCENTILES = (99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 99.9999, 100.0)

    def __init__(self, averaging_constant: float = 0.01, ch_axis: int = -1, dtype: Any = "qint8",
                 qscheme: torch.qscheme = torch.per_tensor_symmetric, quant_min: Any = None, quant_max: Any = None,
                 is_sync_quantize: bool = False, factory_kwargs: Any = None, bins: int = 2048) -> None:
        super().__init__(bins, averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max,
                         is_sync_quantize, factory_kwargs)

    def compute_threshold(self, hist: torch.Tensor, hist_max: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        q = torch.tensor(self.PERCENTILES, dtype=torch.float64, device=hist.device)
        cand = histogram_percentile(hist, hist_max, q)  # [C, K]
        cand = torch.minimum(cand, amax.double().to(hist.device).reshape(-1, 1))
        err = histogram_quantization_error(hist, hist_max, cand.clamp(min=1e-30), self.quant_min, self.quant_max)
        # ties (e.g. several percentiles in one bin) go to the largest threshold: less clipping
        best = (err.shape[1] - 1) - err.flip(1).argmin(dim=1, keepdim=True)
        return cand.gather(1, best)[:, 0]
