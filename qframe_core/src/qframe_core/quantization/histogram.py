"""Online histograms of ``|x|`` for calibration observers, and the vectorized searches on them.

:class:`HistogramObserverBase` is the part of the observer contract that
histogram-based observers share (``percentile``, ``mse``, ``kl``, ``mix`` and
any third-party one).  It keeps, per tensor (``C = 1``) or per channel
(``C`` = size of ``ch_axis``):

* ``hist`` — ``[C, bins]`` float64 counts of ``|x|``; bin ``j`` holds ``j*w < |x| <= (j+1)*w``
  (bin 0 also the zeros), ``w = hist_max / bins``;
* ``hist_max`` — ``[C]`` upper edge of the histogram range;
* ``amax`` — ``[C]`` exact running maximum of ``|x|``;
* ``zeros`` — ``[C]`` how many of the counts in bin 0 are exact zeros (a post-ReLU spike);
* ``steps`` — number of ``forward`` calls that saw data.

Symmetric quantization only depends on ``|x|``, so one-sided histograms spend
every bin on the magnitudes the threshold is chosen from.

Range growth never loses a count: when a batch exceeds ``hist_max`` the range
is multiplied by ``2**k`` (the smallest ``k`` that covers it) and every old
bin ``j`` is added into new bin ``j >> k`` — an exact merge, because each old
bin lies entirely inside one new bin.  Memory is ``C * bins`` float64 whatever
the amount of data; one ``forward`` is a handful of passes over ``x`` (abs,
max, one integer index, one ``bincount``, which also counts exact zeros), on CPU or CUDA alike.

Every observed finite element has the same weight (the histogram *is* the
statistic), so ``averaging_constant`` does not apply to these observers; it is
accepted for the contract.  Start again with :meth:`HistogramObserverBase.reset`.

The helpers :func:`histogram_percentile` and :func:`histogram_quantization_error`
are vectorized over channels and candidates (no Python loop over bins or
candidates); subclasses pick a threshold with them in
:meth:`HistogramObserverBase.compute_threshold`.
"""

from __future__ import annotations

import abc
from typing import Any, Optional

import torch

from ..dtype import DTypeLike
from .observer import ObserverBase

#: element budget of one [channels, candidates, bins] block in the searches (bounds memory)
SEARCH_BLOCK_ELEMENTS = 1 << 22


def channel_blocks(channels: int, per_channel_elements: int) -> list[slice]:
    """Slices of ``range(channels)`` whose blocks hold at most :data:`SEARCH_BLOCK_ELEMENTS` elements."""
    step = max(1, SEARCH_BLOCK_ELEMENTS // max(1, per_channel_elements))
    return [slice(c, min(c + step, channels)) for c in range(0, channels, step)]


def histogram_percentile(hist: torch.Tensor, hist_max: torch.Tensor, percentiles: torch.Tensor) -> torch.Tensor:
    """Values below which ``percentiles`` % of the counts lie, interpolated linearly inside a bin.

    Args:
        hist: ``[C, B]`` counts over ``[0, hist_max)``.
        hist_max: ``[C]`` upper edges.
        percentiles: ``[K]`` in ``[0, 100]``.

    Returns:
        ``[C, K]`` float64 thresholds (0 for a channel without counts).
    """
    hist = hist.double()
    c, b = hist.shape
    cum = hist.cumsum(dim=1)
    total = cum[:, -1:]
    target = (percentiles.to(hist).reshape(1, -1) / 100.0) * total  # [C, K]
    idx = torch.searchsorted(cum, target.contiguous()).clamp(max=b - 1)  # first bin whose cum >= target
    below = torch.where(idx > 0, cum.gather(1, (idx - 1).clamp(min=0)), torch.zeros_like(target))
    in_bin = hist.gather(1, idx)
    frac = torch.where(in_bin > 0, (target - below) / in_bin.clamp(min=1e-300), torch.ones_like(target))
    width = hist_max.double().reshape(-1, 1) / b
    out = (idx.double() + frac.clamp(0.0, 1.0)) * width
    return torch.where(total > 0, out, torch.zeros_like(out))


def _error_primitive(x: torch.Tensor, s: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """``H(x) = ∫ (t - q(t))^2 dt`` from ``-s/2`` to ``x`` for ``q(t) = s * min(round(t / s), clip / s)``.

    Below the clip level the error is the sawtooth ``t - s*round(t/s)`` (period
    ``s``, ``s^3/12`` per period); above it the value saturates at ``clip``.
    """
    xc = torch.minimum(x, clip)
    u = xc / s + 0.5
    k = torch.floor(u)
    r = u - k
    saw = s ** 3 * (k / 12.0 + ((r - 0.5) ** 3 + 0.125) / 3.0)
    return saw + torch.clamp(x - clip, min=0.0) ** 3 / 3.0


def histogram_quantization_error(hist: torch.Tensor, hist_max: torch.Tensor, thresholds: torch.Tensor,
                                 quant_min: int, quant_max: int) -> torch.Tensor:
    """Sum of squared quantize-dequantize errors of the histogrammed ``|x|`` for each candidate threshold.

    The candidate threshold ``T`` gives the scale ``s = T / ((quant_max - quant_min) / 2)``
    (qframe's symmetric rule); a magnitude ``v`` dequantizes to ``s * round(v / s)``
    saturated at ``T`` — the mean of the positive (``quant_max * s``) and negative
    (``|quant_min| * s``) clip levels, since the histogram does not keep signs.  Counts are taken as uniformly spread
    inside their bin and the error is integrated exactly over each bin (closed
    form), so the figure stays accurate when the step is smaller than a bin.

    Args:
        hist: ``[C, B]`` counts over ``[0, hist_max)``.
        hist_max: ``[C]`` upper edges.
        thresholds: ``[C, M]`` candidate thresholds (> 0).

    Returns:
        ``[C, M]`` float64 summed squared errors (in the data's units squared).
    """
    hist = hist.double()
    c, b = hist.shape
    out = torch.zeros(thresholds.shape, dtype=torch.float64, device=hist.device)
    m = thresholds.shape[1]
    half_range = (quant_max - quant_min) / 2.0
    for blk in channel_blocks(c, m * (b + 1)):
        h = hist[blk]
        width = hist_max[blk].double().reshape(-1, 1, 1) / b  # [c,1,1]
        edges = torch.arange(b + 1, dtype=torch.float64, device=hist.device).reshape(1, 1, -1) * width
        s = (thresholds[blk].double() / half_range).clamp(min=1e-30).unsqueeze(-1)  # [c,M,1]
        prim = _error_primitive(edges, s, half_range * s)  # [c,M,B+1]; clip at the mean of |qmin|, qmax
        per_bin = prim[..., 1:] - prim[..., :-1]
        density = torch.where(width > 0, h.unsqueeze(1) / width.clamp(min=1e-300), torch.zeros_like(width))
        out[blk] = (per_bin * density).sum(-1)
    return out


class HistogramObserverBase(ObserverBase):
    """Observer base keeping an online histogram of ``|x|`` (see the module docstring).

    Subclasses implement :meth:`compute_threshold`; ``calculate_qparams``
    turns its answer (clamped to the observed ``amax``) into the symmetric
    scale and caches it until new data arrives.

    Args:
        bins: number of histogram bins (``>= 2``).
        other arguments: those of :class:`ObserverBase`.
    """

    def __init__(self, bins: int = 2048, averaging_constant: float = 0.01, ch_axis: int = -1,
                 dtype: DTypeLike = "qint8", qscheme: torch.qscheme = torch.per_tensor_symmetric,
                 quant_min: Optional[int] = None, quant_max: Optional[int] = None, is_sync_quantize: bool = False,
                 factory_kwargs: Optional[dict] = None) -> None:
        super().__init__(averaging_constant, ch_axis, dtype, qscheme, quant_min, quant_max, is_sync_quantize,
                         factory_kwargs)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"{type(self).__name__}: bins must be an integer >= 2, got {bins!r}")
        self.bins = bins
        device = self.factory_kwargs.get("device")
        n = 0 if self.per_channel else 1
        self.register_buffer("hist", torch.zeros(n, bins, dtype=torch.float64, device=device))
        self.register_buffer("hist_max", torch.zeros(n, device=device))
        self.register_buffer("amax", torch.zeros(n, device=device))
        self.register_buffer("zeros", torch.zeros(n, dtype=torch.float64, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))
        self._version = 0
        self._cached: Optional[tuple[int, torch.Tensor]] = None

    # -- recording ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every observation."""
        n = 0 if self.per_channel else 1
        dev = self.hist.device
        self.hist = torch.zeros(n, self.bins, dtype=torch.float64, device=dev)
        self.hist_max = torch.zeros(n, device=dev)
        self.amax = torch.zeros(n, device=dev)
        self.zeros = torch.zeros(n, dtype=torch.float64, device=dev)
        self.steps.zero_()
        self._version += 1

    def _scratch(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A reusable work buffer: calibration sees same-sized batches, and fresh multi-megabyte
        allocations (page faults on every step) would cost as much as the histogram itself."""
        buf = self.__dict__.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self.__dict__[name] = buf
        return buf

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_scratch_mags", None)
        state.pop("_scratch_idx", None)
        return state

    def _magnitudes(self, x: torch.Tensor) -> torch.Tensor:
        """``|x|`` as ``[C, N]`` (one row per channel, or one row), in a reused buffer."""
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        rows = x.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1) if self.per_channel \
            else x.reshape(1, -1)
        return torch.abs(rows, out=self._scratch("_scratch_mags", rows.shape, rows.dtype, rows.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.numel() == 0:
            return x
        mags = self._magnitudes(x)
        c = mags.shape[0]
        if self.hist.shape[0] not in (0, c):
            raise ValueError(f"{self.qframe_name}: got {c} channels along ch_axis={self.ch_axis} (shape "
                             f"{tuple(x.shape)}) but earlier batches had {self.hist.shape[0]}; per-channel "
                             f"observers need a fixed channel count — check ch_axis, or reset() the observer")
        row_max = mags.amax(dim=1).float()  # NaN/Inf propagate: one cheap finiteness test
        finite: Optional[torch.Tensor] = None
        if not bool(torch.isfinite(row_max).all()):
            self.finite_view(x)  # warns, naming the module
            finite = torch.isfinite(mags)
            row_max = torch.where(finite, mags, torch.zeros_like(mags)).amax(dim=1).float()
        row_max = self.sync(row_max, "max")
        if self.hist.shape[0] == 0:
            dev = self.hist.device
            self.hist = torch.zeros(c, self.bins, dtype=torch.float64, device=dev)
            self.hist_max = torch.zeros(c, device=dev)
            self.amax = torch.zeros(c, device=dev)
            self.zeros = torch.zeros(c, dtype=torch.float64, device=dev)
        row_max = row_max.to(self.hist_max.device)
        if self.steps.item() == 0:
            self.hist_max = row_max.clone()
        elif bool((row_max > self.hist_max).any()):
            self._grow(row_max)
        self.amax = torch.maximum(self.amax, row_max)
        if finite is not None:
            mags = torch.where(finite, mags, torch.ones_like(mags))  # binned into the dump column
        self._accumulate(mags.to(self.hist.device), finite)
        self.steps += 1
        self._version += 1
        return x

    def _grow(self, needed: torch.Tensor) -> None:
        """Widen ``hist_max`` by powers of two to cover ``needed``, merging bins exactly."""
        old = self.hist_max
        target = torch.maximum(old, needed)
        pos = old > 0
        ratio = torch.where(pos, target / torch.where(pos, old, torch.ones_like(old)), torch.ones_like(old))
        k = torch.ceil(torch.log2(ratio)).clamp(min=0, max=62)
        new = old * torch.exp2(k)
        k = torch.where(new < target, k + 1, k)
        new = torch.where(pos, old * torch.exp2(k), target)
        k = torch.where(pos, k, torch.full_like(k, 62)).long()  # an empty/zero range collapses into bin 0
        src = torch.arange(self.bins, device=self.hist.device).reshape(1, -1) >> k.reshape(-1, 1)
        self.hist = torch.zeros_like(self.hist).scatter_add_(1, src, self.hist)
        self.hist_max = new

    def _accumulate(self, mags: torch.Tensor, finite: Optional[torch.Tensor]) -> None:
        c, b = mags.shape[0], self.bins
        hm = self.hist_max.reshape(-1, 1)
        factor = torch.where(hm > 0, b / hm.clamp(min=1e-38), torch.zeros_like(hm))
        # ceil(|x| * bins / hist_max): column 0 holds the exact zeros, column j >= 1 the bin (j-1)*w < |x| <= j*w
        idx = self._scratch("_scratch_idx", mags.shape, torch.int32, mags.device)
        idx.copy_(mags.mul_(factor).ceil_())
        cols = b + 1
        if finite is not None:
            idx = torch.where(finite, idx, torch.full_like(idx, b + 1))  # non-finite -> a dump column
            cols = b + 2
        if c > 1:
            idx = idx + torch.arange(c, device=idx.device, dtype=idx.dtype).reshape(-1, 1) * cols
        counts = torch.bincount(idx.reshape(-1), minlength=c * cols).reshape(c, cols).to(self.hist.dtype)
        self.zeros += counts[:, 0]
        counts[:, 1] += counts[:, 0]  # zeros belong to bin 0 (kept apart in `zeros` as well)
        self.hist += counts[:, 1:b + 1]

    # -- results ---------------------------------------------------------------------
    def has_data(self) -> bool:
        return self.hist.shape[0] > 0 and bool((self.hist.sum() > 0).item())

    def synced_zeros(self) -> torch.Tensor:
        """``[C]`` exact-zero counts (inside bin 0), summed across processes when ``is_sync_quantize``."""
        return self.sync(self.zeros, "sum")

    def synced_histogram(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(hist, hist_max, amax)``, summed/maxed across processes when ``is_sync_quantize``.

        Ranks keep identical ranges because every ``forward`` all-reduces the
        batch maximum before growing, so summing the counts is exact.
        """
        return self.sync(self.hist, "sum"), self.hist_max, self.sync(self.amax, "max")

    @abc.abstractmethod
    def compute_threshold(self, hist: torch.Tensor, hist_max: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        """``[C]`` clipping thresholds (magnitudes) from the ``[C, bins]`` histogram."""

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_data():
            raise self.no_data_error()
        if self._cached is not None and self._cached[0] == self._version:
            scale = self._cached[1]
        else:
            hist, hist_max, amax = self.synced_histogram()
            thr = self.compute_threshold(hist, hist_max, amax).to(amax.device)
            thr = torch.minimum(thr.float(), amax).clamp(min=0)
            thr = torch.where(torch.isfinite(thr), thr, amax)
            scale = self.scale_from_amax(thr)
            self._cached = (self._version, scale)
        return scale.clone(), torch.zeros_like(scale, dtype=torch.long)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._version += 1

    def extra_repr(self) -> str:
        return f"bins={self.bins}, steps={int(self.steps)}, " + super().extra_repr()
