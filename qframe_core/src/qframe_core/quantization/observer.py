"""The observer contract every calibration observer follows.

An observer is an ``nn.Module`` that watches tensors and proposes a scale.
The core only talks to observers through this interface, so a third-party
observer registered with ``qframe_register_observers`` works everywhere a
built-in one does.

Contract:

* ``__init__`` accepts (at least) the keyword arguments of
  :class:`ObserverBase` — ``averaging_constant``, ``ch_axis``, ``dtype``,
  ``qscheme``, ``quant_min``, ``quant_max``, ``is_sync_quantize``,
  ``factory_kwargs`` — and passes them to ``ObserverBase.__init__``.
* ``forward(x)`` records statistics of ``x`` and returns ``x`` unchanged.
  It must ignore NaN/Inf elements (use :meth:`ObserverBase.finite_view`,
  which also warns once, naming the module).
* ``calculate_qparams()`` returns ``(scale, zero_point)``: float32 and int64
  tensors, shape ``[1]`` per tensor or ``[C]`` per channel (``C`` = size of
  ``ch_axis``).  Symmetric schemes only: zero_point is 0 and the scale is
  ``amax / ((quant_max - quant_min) / 2)``, never zero, NaN or infinite
  (:meth:`ObserverBase.scale_from_amax`).  Before any data it raises
  :class:`~qframe_core.errors.QuantizationStateError`.
* ``has_data()`` tells whether any finite value was observed.
* State lives in buffers, so ``state_dict``/``load_state_dict`` and
  :func:`~qframe_core.quantization.load_observer_params` carry it; buffers
  whose size depends on the data (per-channel) are resized on load.
* ``averaging_constant`` c: the first observation sets the statistic, later
  ones move it by ``stat += c * (new - stat)`` (c = 1 keeps the latest only,
  c = 0 freezes it after the first batch) — for observers whose statistic is
  a running min/max (:meth:`ObserverBase.moving_average`).  Histogram
  observers (:class:`~qframe_core.quantization.histogram.HistogramObserverBase`)
  weight every element equally instead; they accept the argument and say so.
* With ``is_sync_quantize=True`` and ``torch.distributed`` initialised,
  statistics are all-reduced (:meth:`ObserverBase.sync`) before use, so all
  ranks compute the same scale.
* It may be called after every batch: ``FakeQuantize.observe`` runs
  ``forward`` then ``calculate_qparams`` each step of CALIBRATION and QAT, so
  both must be cheap (vectorized, bounded memory) and work on CPU and CUDA.

Building blocks for observers:

* :class:`ObserverBase` (this module): argument checks, ``finite_view``,
  ``channel_min_max``, ``moving_average``, ``sync``, ``scale_from_amax``,
  ``no_data_error``;
* :mod:`qframe_core.quantization.histogram`: ``HistogramObserverBase`` (an
  online ``|x|`` histogram per tensor or per channel, exact range growth;
  implement ``compute_threshold``), ``histogram_percentile`` and
  ``histogram_quantization_error`` (exact L2 error of candidate thresholds);
* :class:`FixedScaleObserver` (re-exported here, as in the seeds): a given scale.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, Optional

import torch
from torch import nn

from ..dtype import DTypeLike, as_quant_dtype
from ..errors import QuantizationStateError

_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


class ObserverBase(nn.Module, abc.ABC):
    """Base class of observers: argument checking, NaN handling, the scale rule, sync.

    Args:
        averaging_constant: weight of a new observation (see module docstring).
        ch_axis: channel axis for per-channel schemes; ``-1`` with a per-tensor scheme.
        dtype: quantized dtype (``qint8``, ``qint16`` or their names).
        qscheme: ``torch.per_tensor_symmetric`` or ``torch.per_channel_symmetric``.
        quant_min, quant_max: integer range; default to the dtype's.
        is_sync_quantize: all-reduce statistics across processes.
        factory_kwargs: ``device``/``dtype`` for the statistic buffers.
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        ch_axis: int = -1,
        dtype: DTypeLike = "qint8",
        qscheme: torch.qscheme = torch.per_tensor_symmetric,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        is_sync_quantize: bool = False,
        factory_kwargs: Optional[dict] = None,
    ) -> None:
        super().__init__()
        if qscheme not in _SYMMETRIC:
            raise ValueError(f"{type(self).__name__}: qscheme {qscheme} is not supported; qframe's marches are "
                             f"symmetric: use torch.per_tensor_symmetric or torch.per_channel_symmetric")
        if qscheme == torch.per_channel_symmetric and ch_axis < 0:
            raise ValueError(f"{type(self).__name__}: per-channel quantization needs ch_axis >= 0 "
                             f"(e.g. 0 for conv weights), got {ch_axis}")
        if not 0.0 <= float(averaging_constant) <= 1.0:
            raise ValueError(f"{type(self).__name__}: averaging_constant must lie in [0, 1], got {averaging_constant}")
        self.dtype = as_quant_dtype(dtype)
        self.quant_min = self.dtype.quant_min if quant_min is None else int(quant_min)
        self.quant_max = self.dtype.quant_max if quant_max is None else int(quant_max)
        if not self.dtype.quant_min <= self.quant_min < self.quant_max <= self.dtype.quant_max:
            raise ValueError(f"{type(self).__name__}: [{self.quant_min}, {self.quant_max}] is not a valid range "
                             f"inside {self.dtype} [{self.dtype.quant_min}, {self.dtype.quant_max}]")
        self.qscheme = qscheme
        self.ch_axis = ch_axis if qscheme == torch.per_channel_symmetric else -1
        self.averaging_constant = float(averaging_constant)
        self.is_sync_quantize = is_sync_quantize
        self.factory_kwargs = dict(factory_kwargs or {})
        #: set by prepare to the qualified module name, for messages
        self.qframe_name: str = type(self).__name__
        self._warned_nonfinite = False

    # -- helpers for subclasses ------------------------------------------------------
    @property
    def per_channel(self) -> bool:
        return self.qscheme == torch.per_channel_symmetric

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.qframe_name}: observers take floating-point tensors, got "
                            f"{getattr(x, 'dtype', type(x))}")
        if self.per_channel and not -x.dim() <= self.ch_axis < x.dim():
            raise ValueError(f"{self.qframe_name}: ch_axis={self.ch_axis} is out of range for a "
                             f"{x.dim()}-d tensor of shape {tuple(x.shape)}")

    def finite_view(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(x, mask)``: mask is None when every element is finite, else the finite mask.

        Warns once per observer, naming the module, when non-finite values appear.
        """
        finite = torch.isfinite(x)
        if bool(finite.all()):
            return x, None
        if not self._warned_nonfinite:
            bad = int((~finite).sum())
            warnings.warn(f"{self.qframe_name}: {bad} NaN/Inf value(s) in observed data were ignored "
                          f"(they do not affect the scale); check the float model's inputs and outputs",
                          RuntimeWarning, stacklevel=3)
            self._warned_nonfinite = True
        return x, finite

    def channel_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor ``[1]`` or per-channel ``[C]`` min and max of the finite values of ``x``.

        Entries with no finite value come out as ``+inf``/``-inf``.
        """
        x = x.detach()
        if x.numel() == 0:
            n = x.shape[self.ch_axis] if self.per_channel else 1
            return (torch.full((n,), float("inf"), device=x.device), torch.full((n,), float("-inf"), device=x.device))
        # min and max propagate NaN and show +-inf, so finite extremes mean finite data: two reductions
        # decide it, without an elementwise isfinite pass over x (which costs ~20x more per step)
        lo, hi = self._reduce_min_max(x, x)
        if bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all()):
            return lo, hi
        x, mask = self.finite_view(x)
        if mask is None:
            return lo, hi
        return self._reduce_min_max(torch.where(mask, x, torch.full_like(x, float("inf"))),
                                    torch.where(mask, x, torch.full_like(x, float("-inf"))))

    def _reduce_min_max(self, lo_src: torch.Tensor, hi_src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[1]`` (or per-channel ``[C]``) float32 min of ``lo_src`` and max of ``hi_src``; NaN propagates."""
        if self.per_channel:
            if lo_src is hi_src:
                lo_src = hi_src = lo_src.transpose(0, self.ch_axis).flatten(1)
            else:
                lo_src = lo_src.transpose(0, self.ch_axis).flatten(1)
                hi_src = hi_src.transpose(0, self.ch_axis).flatten(1)
            return lo_src.amin(dim=1).float(), hi_src.amax(dim=1).float()
        return lo_src.amin().reshape(1).float(), hi_src.amax().reshape(1).float()

    def moving_average(self, stat: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Apply ``averaging_constant``; a statistic that is still ±inf (or new) takes ``new``."""
        if stat.numel() != new.numel():
            return new.clone()
        fresh = ~torch.isfinite(stat)
        moved = stat + self.averaging_constant * (new - stat)
        out = torch.where(fresh, new, moved)
        return torch.where(torch.isfinite(new), out, stat)

    def sync(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """All-reduce ``tensor`` with ``op`` ("min", "max" or "sum") when syncing is on."""
        if not self.is_sync_quantize:
            return tensor
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return tensor
        reduce_op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op]
        out = tensor.clone()
        dist.all_reduce(out, op=reduce_op)
        return out

    def scale_from_amax(self, amax: torch.Tensor) -> torch.Tensor:
        """The symmetric scale rule, floored so it is never 0, NaN or inf."""
        eps = torch.finfo(torch.float32).eps
        scale = amax.float() / ((self.quant_max - self.quant_min) / 2)
        return torch.where(torch.isfinite(scale) & (scale > eps), scale, torch.full_like(scale, eps))

    def no_data_error(self) -> QuantizationStateError:
        return QuantizationStateError(
            f"{self.qframe_name}: no data has been observed, so there is no scale to compute. Run calibration "
            f"(set_fake_quantize(model, FakeQuantState.CALIBRATION) and forward some batches), train in QAT "
            f"state, or load calibrated parameters with load_observer_params"
        )

    # -- the contract ----------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record statistics of ``x`` (ignoring NaN/Inf) and return ``x`` unchanged."""

    @abc.abstractmethod
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``; raises :meth:`no_data_error` before any data."""

    @abc.abstractmethod
    def has_data(self) -> bool:
        """Whether any finite value was observed."""

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # per-channel statistics are sized by the first batch: follow the incoming shape
        for name, buf in self._buffers.items():
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"dtype={self.dtype}, qscheme={self.qscheme}, ch_axis={self.ch_axis}, "
                f"averaging_constant={self.averaging_constant}")


# the seeds import FixedScaleObserver from ``quantization.observer``
from .fixed_scale import FixedScaleObserver  # noqa: E402

__all__ = ["FixedScaleObserver", "ObserverBase"]
