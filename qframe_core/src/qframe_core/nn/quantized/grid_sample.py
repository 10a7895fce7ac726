"""Integer ``GridSample`` (see :mod:`qframe_core.grid_sample`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from ..qat.grid_sample import check_grid_sample_at_run, grid_sample_codes
from .kernels import march_kernels, runs_on_kernels


class GridSample(nn.Module):
    """Samples integer input codes at integer grid codes; the output keeps the input's scale and dtype.

    int8/int16 CPU codes accumulate the taps on the march kernel ``gather_taps`` (the taps themselves, one
    set per output position, come from the rule in torch); other inputs and traced models run it all in torch.
    """

    _qframe_leaf = True

    def __init__(self, float_module: nn.Module, params: QuantParams, grid_params: QuantParams, name: str, march: str,
                 limits: Sequence[Any] = ()) -> None:
        super().__init__()
        self.float_module = float_module
        self.params = params
        self.grid_params = grid_params
        self.qframe_name = name
        self.march = march
        self.limits = tuple(limits)

    @classmethod
    def from_qat(cls, qat: nn.Module) -> GridSample:
        return cls(qat.float_module, qat.input_params(0), qat.input_params(1), qat.qframe_name, qat.march, qat.limits)

    def output_params(self) -> QuantParams:
        return self.params

    def forward(self, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if q.is_floating_point() or g.is_floating_point():
            raise TypeError(f"{self.qframe_name}: expects integer input and grid tensors, got {q.dtype}, {g.dtype}")
        check_grid_sample_at_run(self.limits, self.float_module, q.shape, [self.params.dtype, self.grid_params.dtype],
                                 self.qframe_name, self.march)
        apply = self._kernel_taps if runs_on_kernels(q) else None
        out = grid_sample_codes(self.float_module, q, g, self.params, self.grid_params, self.march, self.qframe_name,
                                apply)
        return out.to(q.dtype)

    def _kernel_taps(self, q: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, shift: int, qmin: int,
                     qmax: int) -> torch.Tensor:
        n, c = q.shape[:2]
        out = march_kernels(self.march).gather_taps(q.contiguous().reshape(n, c, -1).numpy(),
                                                    index.to(torch.int32).numpy(), weight.to(torch.int32).numpy(),
                                                    shift, qmin, qmax)
        return torch.from_numpy(out)
