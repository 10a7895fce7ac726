"""Integer ``GridSample`` (see :mod:`qframe_core.grid_sample`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...grid_sample import grid_axis_registers
from ...quantization.fake_quantize import QuantParams
from ..qat.grid_sample import check_grid_sample_at_run, grid_sample_codes
from ..qat.resize import bilinear_format
from .kernels import march_kernels, runs_on_kernels


class GridSample(nn.Module):
    """Samples integer input codes at integer grid codes; the output keeps the input's scale and dtype.

    int8/int16 CPU codes run on the march kernels ``grid_taps`` (the taps of each output position) and
    ``gather_taps`` (their sums over the channels); other inputs and traced models run the rule in torch.
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
        if runs_on_kernels(q, g) and g.shape[-1] == 2:
            return self._kernel_grid_sample(q, g)
        out = grid_sample_codes(self.float_module, q, g, self.params, self.grid_params, self.march, self.qframe_name)
        return out.to(q.dtype)

    def _kernel_grid_sample(self, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The rule on the march kernels: ``grid_taps`` (the taps of every output position, from the registers of
        :func:`~qframe_core.grid_sample.grid_axis_registers`), then ``gather_taps`` over the channels."""
        m = self.float_module
        n, c, h, w = q.shape
        fmt = bilinear_format(self.march, self.qframe_name)
        scale, align = float(self.grid_params.scale.reshape(-1)[0]), bool(m.align_corners)
        ax, ay = (grid_axis_registers(size, scale, align, fmt) + (size,) for size in (w, h))
        k = march_kernels(self.march)
        index, weight = k.grid_taps(g.contiguous().reshape(n, -1, 2).numpy(), ax, ay,
                                    fmt.grid_mult_frac_bits - fmt.coord_frac_bits, fmt.coord_frac_bits,
                                    fmt.weight_frac_bits, m.mode, m.padding_mode == "border")
        d = self.params.dtype
        out = k.gather_taps(q.contiguous().reshape(n, c, -1).numpy(), index, weight,
                            2 * fmt.weight_frac_bits if m.mode == "bilinear" else 0, d.quant_min, d.quant_max)
        return torch.from_numpy(out).reshape(n, c, *g.shape[1:3])
