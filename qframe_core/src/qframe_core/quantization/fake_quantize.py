"""FakeQuantize, its three states, and ``set_fake_quantize``.

States (the seeds' semantics):

* ``CALIBRATION``: observe only; the output is the input, untouched.
* ``QAT``: observe, update the scale, and fake-quantize (straight-through
  gradient inside the representable range).
* ``VALIDATION``: fake-quantize with the frozen scale; no observation.

The float->integer rule is :func:`qframe_core.numerics.quantize_to_int`,
shared with QuantStub and convert, so a VALIDATION output equals the
quantized model's dequantized value bit for bit.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, Callable, Optional, Union

import attrs
import torch
from torch import nn

from ..dtype import QuantDType, qint32
from ..errors import QuantizationStateError
from ..registry import registry
from .observer import ObserverBase


class FakeQuantState(enum.Enum):
    QAT = "qat"
    CALIBRATION = "calibration"
    VALIDATION = "validation"


@attrs.frozen
class QuantParams:
    """How a tensor is quantized: its scale(s), dtype and channel axis (None = per tensor)."""

    scale: torch.Tensor
    dtype: QuantDType
    ch_axis: Optional[int] = None


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        # round(x / scale), clamped, times scale; ``inside`` is where clamping left q unchanged
        # (qmin <= q <= qmax; False for NaN).  One comparison and in-place steps: 5 passes over x, not 7.
        q = x / scale
        q.round_()
        out = q.clamp(qmin, qmax)
        ctx.save_for_backward(out == q)
        return out.mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int,
                  ch_axis: Optional[int] = None) -> torch.Tensor:
    """``clamp(round(x / scale)) * scale`` with a straight-through gradient inside the range."""
    s = scale
    if ch_axis is not None and s.numel() > 1:
        shape = [1] * x.dim()
        shape[ch_axis] = -1
        s = s.reshape(shape)
    else:
        s = s.reshape(())
    return _FakeQuantSTE.apply(x, s.to(x.dtype), quant_min, quant_max)


class _Factory:
    """``FakeQuantize.with_args(...)``: a picklable, printable constructor with bound arguments."""

    def __init__(self, cls: type, kwargs: dict) -> None:
        self.cls = cls
        self.kwargs = kwargs

    def __call__(self, **more: Any) -> nn.Module:
        return self.cls(**{**self.kwargs, **more})

    def with_args(self, **kwargs: Any) -> _Factory:
        return _Factory(self.cls, {**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls.__name__}.with_args({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Factory) and self.cls is other.cls and self.kwargs == other.kwargs

    def __hash__(self) -> int:
        return hash((self.cls, tuple(sorted((k, repr(v)) for k, v in self.kwargs.items()))))


class FakeQuantize(nn.Module):
    """Observe and/or fake-quantize a tensor.

    Args:
        observer: observer name (resolved through the registry, e.g. ``"min_max"``)
            or observer class.
        scale: a fixed scale; the observer is then never consulted (QuantStub(scale=1/128)).
        **observer_kwargs: passed to the observer (``dtype``, ``qscheme``, ``ch_axis``,
            ``averaging_constant``, ``quant_min``, ``quant_max``, …).
    """

    #: how messages call it
    label = "fake-quantize"

    def __init__(self, observer: Union[str, type] = "min_max", scale: Optional[float] = None,
                 **observer_kwargs: Any) -> None:
        super().__init__()
        obs_cls = registry.observer(observer) if isinstance(observer, str) else observer
        if not (isinstance(obs_cls, type) and issubclass(obs_cls, ObserverBase)):
            raise TypeError(f"FakeQuantize: observer must subclass qframe_core.quantization.observer.ObserverBase, "
                            f"got {obs_cls!r}")
        if scale is not None and "scale" in inspect.signature(obs_cls.__init__).parameters:
            observer_kwargs.setdefault("scale", scale)  # e.g. FixedScaleObserver: both report the same scale
        self.activation_post_process: ObserverBase = obs_cls(**observer_kwargs)
        obs = self.activation_post_process
        self.dtype: QuantDType = obs.dtype
        self.quant_min, self.quant_max = obs.quant_min, obs.quant_max
        self.ch_axis = obs.ch_axis if obs.per_channel else None
        self.state = FakeQuantState.QAT
        self.fixed_scale = scale is not None
        if scale is not None and not (float(scale) > 0 and torch.isfinite(torch.tensor(float(scale)))):
            raise ValueError(f"FakeQuantize: a fixed scale must be a positive finite number, got {scale}")
        self.register_buffer("scale", torch.tensor([float(scale) if scale is not None else 1.0]))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.long))
        self.register_buffer("calibrated", torch.tensor(scale is not None))
        self.qframe_name = "FakeQuantize"

    @classmethod
    def with_args(cls, **kwargs: Any) -> _Factory:
        return _Factory(cls, kwargs)

    def set_name(self, name: str) -> None:
        """Name used in warnings and errors (set by prepare to the module's qualified name)."""
        self.qframe_name = name
        self.activation_post_process.qframe_name = name

    def set_state(self, state: FakeQuantState) -> None:
        self.state = FakeQuantState(state)

    def observe(self, x: torch.Tensor) -> None:
        """Record ``x`` and refresh the scale."""
        if self.fixed_scale:
            return
        self.activation_post_process(x.detach())
        if self.activation_post_process.has_data():
            scale, _ = self.activation_post_process.calculate_qparams()
            if self.scale.shape != scale.shape:
                self.scale = scale.detach().clone().to(self.scale.device)
            else:
                self.scale.copy_(scale.detach())
            self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state is not FakeQuantState.VALIDATION:
            self.observe(x)
            if self.state is FakeQuantState.CALIBRATION:
                return x
        if not bool(self.calibrated):
            if self.state is FakeQuantState.QAT and x.numel() == 0:
                return x
            raise QuantizationStateError(
                f"{self.qframe_name}: this {self.label} has no scale yet (state {self.state.name}). "
                f"Calibrate first (FakeQuantState.CALIBRATION), train in QAT state, or load_observer_params"
            )
        return self._fake_quantize(x)

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The QAT/VALIDATION output once a scale exists (LSQ overrides it)."""
        return fake_quantize(x, self.scale, self.quant_min, self.quant_max, self.ch_axis)

    def quant_params(self) -> QuantParams:
        """The current scale(s) and dtype; raises if never calibrated."""
        if not bool(self.calibrated):
            raise QuantizationStateError(
                f"{self.qframe_name}: no scale has been calibrated yet; run calibration or QAT before "
                f"validation or convert"
            )
        return QuantParams(self.scale.detach().clone(), self.dtype, self.ch_axis)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "scale"
        if key in state_dict and state_dict[key].shape != self.scale.shape:
            self.scale = torch.empty_like(state_dict[key], device=self.scale.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, state={self.state.name}, fixed_scale={self.fixed_scale}, scale={self.scale.tolist()[:4]}"


def set_fake_quantize(model: nn.Module, state: FakeQuantState) -> None:
    """Put every FakeQuantize of ``model`` in ``state``.

    Use ``CALIBRATION`` (with ``model.eval()``) to calibrate, ``QAT`` (with
    ``model.train()``) to train, and ``VALIDATION`` (with ``model.eval()``) to
    evaluate with frozen scales.
    """
    state = FakeQuantState(state)
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            m.set_state(state)


def load_observer_params(calib_model: nn.Module, qat_model: nn.Module, verbose: bool = False) -> None:
    """Copy observer statistics and scales from a calibrated model into a QAT model.

    Only observer/fake-quantize state is copied (float weights are left alone).
    Modules are matched by qualified name; missing ones are reported.
    """
    src = {n: m for n, m in calib_model.named_modules() if isinstance(m, FakeQuantize)}
    missing = []
    for name, m in qat_model.named_modules():
        if not isinstance(m, FakeQuantize):
            continue
        if name not in src:
            missing.append(name)
            continue
        m.load_state_dict(src[name].state_dict())
    if missing and verbose:
        print(f"load_observer_params: no calibrated parameters for {len(missing)} fake-quantize(s): {missing}")


def int32_params(scale: torch.Tensor, ch_axis: Optional[int]) -> QuantParams:
    """QuantParams of a high-precision int32 output (accumulator scale)."""
    return QuantParams(scale, qint32, ch_axis)


FactoryLike = Optional[Callable[..., nn.Module]]
