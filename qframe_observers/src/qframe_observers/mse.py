"""MSEObserver: the clipping threshold with the least quantize-dequantize L2 error."""

from __future__ import annotations

from typing import Any

import torch

from qframe_core.quantization.histogram import HistogramObserverBase, histogram_quantization_error


class MSEObserver(HistogramObserverBase):
    """Searches the threshold ``T = amax * k / 100`` minimizing the squared quantization error.

    As in the seeds, the coarse grid is ``k = 100, 100 - stride, 100 - 2*stride, …``
    (``stride=1``: the 100 fractions of the maximum), scored on the histogram
    merged to at most 512 bins; a second pass scores 11 candidates spread over
    ``k ± stride`` (steps of ``stride / 5`` %) and ``amax`` itself on the full
    histogram.  The error of every
    candidate is integrated exactly over the online histogram of ``|x|``
    (:func:`~qframe_core.quantization.histogram.histogram_quantization_error`),
    all candidates at once.  ``T = amax`` is always a final candidate, so the
    result is never worse than min/max on the histogram.  Per tensor or per channel.

    Args:
        stride: grid step in percent of ``amax``, ``1 <= stride <= 50``; default 1.
        bins: histogram bins; default 2048.
        other arguments: those of :class:`~qframe_core.quantization.observer.ObserverBase`
            (``averaging_constant`` is accepted but unused: every element counts once).
    """

    #: bins of the merged histogram the coarse pass reads
    COARSE_BINS = 512
    #: candidates of the fine pass, spread over k ± stride (on the full histogram)
    FINE_CANDIDATES = 11

    def __init__(self, stride: int = 1, averaging_constant: float = 0.01, ch_axis: int = -1, dtype: Any = "qint8",
                 qscheme: torch.qscheme = torch.per_tensor_symmetric, quant_min: Any = None, quant_max: Any = None,
                 is_sync_quantize: bool = False, factory_kwargs: Any = None, bins: int = 2048) -> None:
        super().__init__(bins, averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max,
                         is_sync_quantize, factory_kwargs)
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 50:
            raise ValueError(f"{type(self).__name__}: stride must be an integer in [1, 50] (percent of the "
                             f"maximum between candidates; the seeds suggest <= 20), got {stride!r}")
        self.stride = stride

    def compute_threshold(self, hist: torch.Tensor, hist_max: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        dev = hist.device
        amax = amax.double().to(dev).reshape(-1, 1)
        ks = torch.arange(100, 0, -self.stride, dtype=torch.float64, device=dev).flip(0)  # ..., 100
        coarse = amax * ks / 100.0  # [C, M]
        # the coarse pass reads a histogram merged to <= COARSE_BINS bins (4x less work at the default)
        merge = max(1, -(-self.bins // self.COARSE_BINS))
        pad = (-self.bins) % merge
        small = torch.nn.functional.pad(hist, (0, pad)).reshape(hist.shape[0], -1, merge).sum(-1)
        small_max = hist_max.double() * (self.bins + pad) / self.bins
        err = histogram_quantization_error(small, small_max, coarse.clamp(min=1e-30), self.quant_min, self.quant_max)
        best = err.argmin(dim=1, keepdim=True)  # first minimum
        k_best = ks[best]  # [C, 1]
        n_fine = self.FINE_CANDIDATES
        offs = torch.linspace(-1.0, 1.0, n_fine, dtype=torch.float64, device=dev).reshape(1, -1) * self.stride
        fine_k = (k_best + offs).clamp(min=1e-3, max=100.0)
        fine = amax * fine_k / 100.0
        cand = torch.cat([coarse.gather(1, best), fine, amax], dim=1)  # amax: never worse than min/max
        err2 = histogram_quantization_error(hist, hist_max, cand.clamp(min=1e-30), self.quant_min, self.quant_max)
        return cand.gather(1, err2.argmin(dim=1, keepdim=True))[:, 0]

    def extra_repr(self) -> str:
        return f"stride={self.stride}, " + super().extra_repr()
