"""QAT forms of QuantStub and DeQuantStub."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...dtype import as_quant_dtype
from ...quantization.fake_quantize import FakeQuantize, QuantParams
from .base import QATModule, make_fake_quant


class QuantStub(QATModule):
    """Fake-quantizes the model input; a fixed ``scale`` bypasses calibration."""

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
        return self.activation_post_process(x)

    def output_params(self) -> QuantParams:
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
