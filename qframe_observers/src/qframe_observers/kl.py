"""KLObserver: TensorRT entropy calibration over an online histogram of ``|x|``."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from qframe_core.quantization.histogram import HistogramObserverBase, channel_blocks, histogram_quantization_error


def kl_divergences(hist: torch.Tensor, levels: int) -> torch.Tensor:
    """KL(P || Q) of the TensorRT entropy calibration for every candidate bin count ``i``.

    For ``i`` in ``levels .. B`` (``B`` = number of bins):

    * P = the first ``i`` bins, the counts of bins ``>= i`` (outliers) added to bin ``i - 1``;
    * Q = the first ``i`` bins (without the outliers) merged into ``levels`` groups of
      ``i // levels`` bins (the remainder joins the last group), each group's sum
      spread evenly over the group's bins where P is non-zero;
    * divergence = ``sum p log(p / q)`` over ``p > 0`` of the normalized P and Q,
      ``+inf`` where ``q = 0 < p``.

    Vectorized without a loop over bins or candidates: Q is constant over a
    group, so ``sum P log Q`` reduces to group sums, read from prefix sums —
    ``[C, B - levels + 1, levels]`` work instead of the textbook ``B^2 * levels``.

    Args:
        hist: ``[C, B]`` counts.
        levels: number of quantization levels of one sign (128 for qint8).

    Returns:
        ``[C, B - levels + 1]`` float64 divergences; column ``m`` is ``i = levels + m``.
    """
    hist = hist.double()
    c, b = hist.shape
    dev = hist.device
    zero = torch.zeros(c, 1, dtype=torch.float64, device=dev)
    total = hist.sum(1, keepdim=True)
    cs = torch.cat([zero, hist.cumsum(1)], 1)
    ncs = torch.cat([zero, (hist > 0).double().cumsum(1)], 1)
    hlogh = torch.where(hist > 0, hist * torch.log(hist.clamp(min=1e-300)), torch.zeros_like(hist))
    hl = torch.cat([zero, hlogh.cumsum(1)], 1)

    i = torch.arange(levels, b + 1, device=dev)  # [M]
    merged = (i // levels).reshape(-1, 1)
    g = torch.arange(levels, device=dev).reshape(1, -1)
    start = g * merged  # [M, L]
    end = torch.where(g == levels - 1, i.reshape(-1, 1), (g + 1) * merged)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    out = torch.empty(c, i.numel(), dtype=torch.float64, device=dev)
    for blk in channel_blocks(c, i.numel() * levels):
        t = total[blk]
        gsum = cs[blk][:, end] - cs[blk][:, start]  # [c, M, L]
        gcnt = ncs[blk][:, end] - ncs[blk][:, start]
        s = cs[blk][:, i]  # [c, M]: sum of the first i bins = sum of Q
        suf = t - s
        h_last = hist[blk][:, i - 1]
        p_last = h_last + suf
        # the last bin is non-zero in P when it holds outliers even if its own count is 0
        cnt_last = gcnt[..., -1] + ((h_last == 0) & (suf > 0)).double()
        q_val = gsum / gcnt.clamp(min=1)
        q_last = gsum[..., -1] / cnt_last.clamp(min=1)
        sum_p_log_q = torch.where(gsum[..., :-1] > 0, gsum[..., :-1] * torch.log(q_val[..., :-1].clamp(min=1e-300)),
                                  torch.zeros_like(q_val[..., :-1])).sum(-1)
        p_group_last = gsum[..., -1] + suf
        sum_p_log_q = sum_p_log_q + torch.where(p_group_last > 0, p_group_last * torch.log(q_last.clamp(min=1e-300)),
                                                torch.zeros_like(q_last))
        sum_p_log_p = hl[blk][:, i - 1] + torch.where(p_last > 0, p_last * torch.log(p_last.clamp(min=1e-300)),
                                                      torch.zeros_like(p_last))
        kl = (sum_p_log_p - sum_p_log_q) / t + torch.log(s.clamp(min=1e-300) / t)
        impossible = (s <= 0) | ((p_group_last > 0) & (q_last <= 0))
        out[blk] = torch.where(impossible, inf, kl)
    return out


class KLObserver(HistogramObserverBase):
    """Entropy (KL-divergence) calibration as TensorRT does it, on an online histogram of ``|x|``.

    Every ``forward`` adds the batch to the histogram; the divergence search
    (:func:`kl_divergences`) runs on the first step and then every
    ``update_interval`` steps, on all data seen so far.  The threshold is the
    upper edge of the best candidate's last bin, ``i * hist_max / bins``
    (first minimum), capped at the observed maximum.  Exact zeros are left out of
    the divergence: they quantize exactly at any scale, and a post-ReLU spike in
    bin 0 would otherwise push the search to the smallest candidates (NVIDIA's
    implementation copies bin 1 into bin 0 for the same reason).

    ``update_interval`` larger than the number of calibration steps does not
    leave the observer without parameters (the first step's answer stands), but
    the later steps are then unused: this is reported by a ``RuntimeWarning``
    naming the module when the state is saved (``state_dict``,
    ``load_observer_params``, ``torch.save``) and by :attr:`unused_steps`.

    The divergence minimum is kept only if its quantization error (integrated over
    the histogram) is no larger than the full range's: TensorRT's answer can clip
    rare values that dominate the squared error (outliers, layernorm-like spikes),
    and then the full range is used, so kl is never worse than min_max there.
    The unguarded answer stays available as :attr:`divergence_threshold`.

    When ``quant_max + 1 >= bins`` (qint16 with the default bins) the histogram
    cannot resolve the quantization grid; the observer then keeps the full
    range (min/max) and warns once.

    Args:
        bins: histogram bins (default 512, as in the seeds).
        update_interval: steps between two divergence searches (default 1).
        other arguments: those of :class:`~qframe_core.quantization.observer.ObserverBase`
            (``averaging_constant`` is accepted but unused: every element counts once).
    """

    def __init__(self, bins: int = 512, update_interval: int = 1, averaging_constant: float = 0.01,
                 ch_axis: int = -1, dtype: Any = "qint8", qscheme: torch.qscheme = torch.per_tensor_symmetric,
                 quant_min: Any = None, quant_max: Any = None, is_sync_quantize: bool = False,
                 factory_kwargs: Any = None) -> None:
        super().__init__(bins, averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max,
                         is_sync_quantize, factory_kwargs)
        if isinstance(update_interval, bool) or not isinstance(update_interval, int) or update_interval < 1:
            raise ValueError(f"{type(self).__name__}: update_interval must be an integer >= 1 (and no more than "
                             f"the number of calibration steps), got {update_interval!r}")
        self.update_interval = update_interval
        self.levels = self.quant_max + 1
        self.register_buffer("threshold", torch.zeros(0, device=self.hist.device))
        self.register_buffer("threshold_step", torch.zeros((), dtype=torch.long, device=self.hist.device))
        self._warned_levels = False
        self.divergence_threshold = torch.zeros(0)

    @property
    def unused_steps(self) -> int:
        """Steps observed after the last divergence search (their data are not in the scale yet)."""
        return int(self.steps) - int(self.threshold_step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = int(self.steps)
        super().forward(x)
        steps = int(self.steps)
        if steps != before and (before == 0 or self.threshold.numel() == 0 or steps % self.update_interval == 0):
            self.update_threshold()
        return x

    def update_threshold(self) -> None:
        """Run the divergence search now on everything observed (also callable by hand)."""
        if not self.has_data():
            return
        hist, hist_max, amax = self.synced_histogram()
        self.threshold = torch.minimum(self.compute_threshold(hist, hist_max, amax).float().to(amax.device), amax)
        self.threshold_step.fill_(int(self.steps))
        self._version += 1

    def compute_threshold(self, hist: torch.Tensor, hist_max: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        if self.levels >= self.bins:
            if not self._warned_levels:
                warnings.warn(f"{self.qframe_name}: KLObserver with bins={self.bins} cannot resolve {self.levels} "
                              f"quantization levels ({self.dtype}); keeping the full range (min/max). Use the "
                              f"'mse' or 'percentile' observer for this dtype", RuntimeWarning, stacklevel=2)
                self._warned_levels = True
            return amax.double()
        # exact zeros (a post-ReLU spike) quantize exactly at any scale: leave them out of P and Q
        hist = hist.clone()
        hist[:, 0] = (hist[:, 0] - self.synced_zeros().to(hist)).clamp(min=0)
        div = kl_divergences(hist, self.levels)
        best = div.argmin(dim=1) + self.levels  # bins kept
        kl_threshold = best.double() * hist_max.double().to(hist.device) / self.bins
        #: the TensorRT answer before the guard below (kept for inspection and tests)
        self.divergence_threshold = torch.minimum(kl_threshold, amax.double().to(hist.device))
        # guard: a divergence minimum can clip rare values that matter (outliers, layernorm-like spikes); never
        # keep a threshold whose quantization error is larger than the full range's (what min_max would pick)
        full = amax.double().to(hist.device).reshape(-1)
        candidates = torch.stack([kl_threshold, torch.maximum(full, kl_threshold)], dim=1)
        errors = histogram_quantization_error(hist, hist_max, candidates, self.quant_min, self.quant_max)
        return torch.where(errors[:, 0] <= errors[:, 1], kl_threshold, candidates[:, 1])

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_data():
            raise self.no_data_error()
        if self.threshold.numel() != self.hist.shape[0]:
            self.update_threshold()
        scale = self.scale_from_amax(self.threshold)
        return scale, torch.zeros_like(scale, dtype=torch.long)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        if 0 < int(self.steps) < self.update_interval and self.unused_steps > 0:
            warnings.warn(f"{self.qframe_name}: KLObserver update_interval={self.update_interval} is larger than "
                          f"the {int(self.steps)} step(s) observed, so its scale comes from the divergence search "
                          f"of step {int(self.threshold_step)} and the last {self.unused_steps} step(s) are unused. "
                          f"Set update_interval to at most the number of calibration steps, or call "
                          f"update_threshold() before saving", RuntimeWarning, stacklevel=3)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def extra_repr(self) -> str:
        return f"update_interval={self.update_interval}, " + super().extra_repr()
