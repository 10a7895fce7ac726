"""Shared test steps: prepare, calibrate on random data shaped like the inputs, and convert."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from qframe_core.quantization import FakeQuantState, convert_fx, prepare_qat_fx, set_fake_quantize
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig


def calibrate_and_convert(model: nn.Module, march: str, inputs: Sequence[torch.Tensor], qconfig: Optional[Any] = None,
                          steps: int = 3, spread: float = 1.0) -> tuple[nn.Module, nn.Module]:
    """``(qat model in VALIDATION state, its converted integer model)``, calibrated on ``steps`` batches of
    ``randn_like(input) * spread``."""
    qat = prepare_qat_fx(model, {"": qconfig or default_qat_8bit_fake_quant_qconfig}, march=march)
    set_fake_quantize(qat, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        for _ in range(steps):
            qat(*[torch.randn_like(t) * spread for t in inputs])
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    return qat, convert_fx(qat)
