"""Integer resize (nearest copies codes; bilinear is the march's fixed-point rule)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from ...resize import bilinear_axis_weights, output_size_and_steps
from ..qat.resize import bilinear_codes, bilinear_format, check_resize_at_run
from .kernels import march_kernels, runs_on_kernels
from .pooling import ScalePreserving

_ZERO, _ONE = np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)


class Upsample(ScalePreserving):
    """Integer ``nn.Upsample`` & co. at the input's scale (see :mod:`qframe_core.resize`).

    Bilinear on int8/int16 CPU codes runs the march kernel ``separable_sum`` with the rule's per-axis weight
    matrices (built once per input/output size); other inputs and traced models run the rule in torch.
    """

    def __init__(self, float_module: nn.Module, params: QuantParams, name: str, march: str,
                 limits: Sequence[Any] = ()) -> None:
        super().__init__(float_module, params, name)
        self.march = march
        self.limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> Upsample:
        return cls(qat.float_module, qat.input_params(0), qat.qframe_name, qat.march, qat.limits)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects an integer tensor, got {q.dtype}")
        m = self.float_module
        out_hw, steps = output_size_and_steps(m, q.shape[-2:])
        check_resize_at_run(self.limits, m, q.shape, out_hw, self.qframe_name, self.march)
        if m.mode in ("nearest", "nearest-exact") and q.dtype in (torch.int8, torch.int16):
            # a copy of input codes: torch's op on the same bits (int8 read as uint8) or exact float32 values
            if q.dtype == torch.int8:
                return m(q.view(torch.uint8)).view(torch.int8)
            return m(q.to(torch.float32)).to(torch.int16)
        if m.mode != "bilinear":
            return super().forward(q)
        d = self.params.dtype
        if runs_on_kernels(q) and q.dim() == 4:
            return self._kernel_bilinear(q, out_hw, steps, d.quant_min, d.quant_max)
        out = bilinear_codes(m, q, out_hw, steps, self.march, self.qframe_name, d.quant_min, d.quant_max)
        return out.to(q.dtype)

    def _kernel_bilinear(self, q: torch.Tensor, out_hw: Sequence[int], steps: Sequence[float], qmin: int,
                         qmax: int) -> torch.Tensor:
        n, c, h, w = q.shape
        cache = self.__dict__.setdefault("_weights", {})
        key = (h, w, tuple(out_hw), tuple(steps))
        if key not in cache:
            fmt, align = bilinear_format(self.march, self.qframe_name), bool(self.float_module.align_corners)
            cache[key] = tuple(bilinear_axis_weights(i, o, s, align, fmt).to(torch.int32).unsqueeze(0).numpy()
                               for i, o, s in zip((h, w), out_hw, steps))
        wy, wx = cache[key]
        shift = 2 * bilinear_format(self.march, self.qframe_name).weight_frac_bits
        out = march_kernels(self.march).separable_sum(q.contiguous().reshape(1, n * c, h, w).numpy(), _ZERO, wy, wx,
                                                      _ONE, shift, qmin, qmax)
        return torch.from_numpy(out).reshape(n, c, *out_hw)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_weights", None)
        return state
