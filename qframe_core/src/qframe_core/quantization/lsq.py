"""LSQ: fake quantization with a learned step size (Esser et al., "Learned Step Size Quantization", 2019).

:class:`LSQFakeQuantize` is a :class:`~qframe_core.quantization.fake_quantize.FakeQuantize`
whose ``scale`` is an ``nn.Parameter`` trained with the model:

* forward: ``clamp(round(x / s), quant_min, quant_max) * s`` — the same
  float->integer rule (round half to even, saturate) as every other qframe
  fake-quantize, so VALIDATION and convert see no difference;
* gradient to ``x``: straight-through where ``quant_min <= x / s <= quant_max``, 0 outside;
* gradient to ``s`` (the paper's eq. 3): ``round(x/s) - x/s`` inside the range,
  ``quant_min`` / ``quant_max`` below / above it, multiplied by the gradient
  scale ``g = 1 / sqrt(N * quant_max)`` with ``N`` the number of elements per
  scale (per tensor: ``x.numel()``; per channel: ``x.numel() / C``).

The scale starts from the observer (a calibration loaded with
``load_observer_params``, or the first QAT batch); once it has a value, QAT
training moves it by gradient only (the observer is no longer consulted).
CALIBRATION state observes and sets it like a plain ``FakeQuantize``.
The effective scale is ``max(|s|, eps)``, so it never becomes 0 or negative.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import nn

from .fake_quantize import FakeQuantize, FakeQuantState, QuantParams, fake_quantize

_EPS = torch.finfo(torch.float32).eps


class _LSQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, grad_scale: float,
                reduce_dims: tuple[int, ...]) -> torch.Tensor:
        v = x / scale
        q = torch.round(v)
        ctx.save_for_backward(v, q)
        ctx.qmin, ctx.qmax, ctx.grad_scale, ctx.reduce_dims = qmin, qmax, grad_scale, reduce_dims
        ctx.scale_shape = scale.shape
        return q.clamp(qmin, qmax) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        v, q = ctx.saved_tensors
        below, above = v < ctx.qmin, v > ctx.qmax
        inside = ~(below | above)
        grad_x = grad * inside
        dq_ds = torch.where(below, torch.full_like(v, ctx.qmin),
                            torch.where(above, torch.full_like(v, ctx.qmax), q - v))
        grad_s = grad * dq_ds * ctx.grad_scale
        if ctx.reduce_dims:
            grad_s = grad_s.sum(dim=ctx.reduce_dims, keepdim=True)
        grad_s = grad_s.reshape(ctx.scale_shape)
        return grad_x, grad_s, None, None, None, None


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int,
                      ch_axis: Optional[int] = None) -> torch.Tensor:
    """LSQ fake quantization of ``x`` with a learnable ``scale`` (``[1]`` or ``[C]`` along ``ch_axis``)."""
    s = scale.abs().clamp(min=_EPS)
    if ch_axis is not None and s.numel() > 1:
        shape = [1] * x.dim()
        shape[ch_axis] = -1
        s = s.reshape(shape)
        reduce_dims = tuple(d for d in range(x.dim()) if d != ch_axis % x.dim())
    else:
        s = s.reshape([1] * x.dim()) if x.dim() else s.reshape(())
        reduce_dims = tuple(range(x.dim()))
    per_scale = max(1, x.numel() // max(1, scale.numel()))
    grad_scale = 1.0 / math.sqrt(per_scale * max(1, quant_max))
    return _LSQFunction.apply(x, s.to(x.dtype), quant_min, quant_max, grad_scale, reduce_dims)


class LSQFakeQuantize(FakeQuantize):
    """FakeQuantize with a learned step size (see the module docstring).

    Args: those of :class:`FakeQuantize`. A fixed ``scale`` is not learned.
    """

    label = "LSQ fake-quantize"

    def __init__(self, observer: Union[str, type] = "min_max", scale: Optional[float] = None,
                 **observer_kwargs: Any) -> None:
        super().__init__(observer, scale, **observer_kwargs)
        initial = self._buffers.pop("scale")
        self.scale = nn.Parameter(initial.clone(), requires_grad=not self.fixed_scale)

    def effective_scale(self) -> torch.Tensor:
        """``max(|scale|, eps)``, detached: what quantization uses."""
        return self.scale.detach().abs().clamp(min=_EPS)

    def observe(self, x: torch.Tensor) -> None:
        """Record ``x`` and set the scale from the observer (CALIBRATION, or QAT before it has a value)."""
        if self.fixed_scale:
            return
        if self.state is FakeQuantState.QAT and bool(self.calibrated):
            return  # learned from here on
        self.activation_post_process(x.detach())
        if self.activation_post_process.has_data():
            scale, _ = self.activation_post_process.calculate_qparams()
            with torch.no_grad():
                self.scale.data = scale.detach().clone().to(self.scale.device)
            self.calibrated.fill_(True)

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.state is FakeQuantState.VALIDATION or self.fixed_scale:
            return fake_quantize(x, self.effective_scale(), self.quant_min, self.quant_max, self.ch_axis)
        return lsq_fake_quantize(x, self.scale, self.quant_min, self.quant_max, self.ch_axis)

    def quant_params(self) -> QuantParams:
        params = super().quant_params()
        return QuantParams(self.effective_scale().clone(), params.dtype, params.ch_axis)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "scale"
        if key in state_dict and state_dict[key].shape != self.scale.shape:
            self.scale.data = torch.empty_like(state_dict[key], device=self.scale.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
