"""QAT forms of QuantStub and DeQuantStub."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...dtype import as_quant_dtype
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from .base import QATModule, make_fake_quant


class QuantStub(QATModule):
    """Fake-quantizes the model input; a fixed ``scale`` bypasses calibration.

    A QuantStub placed inside the quantized region (where one stage of a segmented
    deployment ends) records the scale of the value it receives instead of
    calibrating its own, and passes the value through.
    """

    def __init__(self, activation_post_process: FakeQuantize, march: str) -> None:
        super().__init__()
        self._init_qat(march)
        self.activation_post_process = activation_post_process

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> QuantStub:
        scale = getattr(mod, "scale", None)
        if qconfig is None or qconfig.activation is None:
            raise ValueError(f"QuantStub needs an activation qconfig (got {qconfig!r})")
        fq = make_fake_quant(qconfig.activation, "activation", "QuantStub")
        if scale is not None:
            obs = fq.activation_post_process
            fq = FakeQuantize(observer=type(obs), scale=scale, dtype=as_quant_dtype(obs.dtype))
        return cls(fq, march)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._input_producers:
            # inside the quantized region (segmented deployment): keep and record the incoming scale, so the
            # next stage's input scale is the previous stage's output scale and the stages chain exactly
            self._record_incoming()
            return x
        return self.activation_post_process(x)

    def _record_incoming(self) -> None:
        incoming = self.input_params(0)
        fq = self.activation_post_process
        if fq.scale.shape != incoming.scale.shape:
            fq.scale = incoming.scale.detach().clone().to(fq.scale.device)
        else:
            fq.scale.copy_(incoming.scale.detach())
        fq.calibrated.fill_(True)

    def output_params(self) -> QuantParams:
        if self._input_producers:
            self._record_incoming()
        return self.activation_post_process.quant_params()


class DeQuantStub(QATModule):
    """Identity in QAT; remembers its input's quantization for convert."""

    def __init__(self, march: str) -> None:
        super().__init__()
        self._init_qat(march)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> DeQuantStub:
        return cls(march)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
