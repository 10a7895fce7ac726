"""QAT ``GridSample``: float in QAT / CALIBRATION state, the march's integer rule in VALIDATION state."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ...errors import UnsupportedOpError
from ...grid_sample import int_grid_sample, run_violations
from ...lowering import op_display_name
from ...march import resolve_march
from ...numerics import quantize_to_int
from ...quantization.fake_quantize import QuantParams
from ...registry import registry
from .base import QATModule, integer_tensor_to_float
from .resize import bilinear_format


def check_grid_sample_at_run(limits: Sequence[Any], module: nn.Module, in_shape: Sequence[int],
                             dtypes: Sequence[Any], name: str, march: str) -> None:
    """Raise :class:`UnsupportedOpError` for the op-table rules only a run can check (shapes, input dtypes)."""
    broken = run_violations(limits, module, in_shape, dtypes)
    if broken:
        key = getattr(module, "lowering_key", None) or type(module)
        raise UnsupportedOpError(
            f"march {march!r} cannot run {name!r} ({op_display_name(key)}): "
            + "; ".join(f"{b} (march {march!r} op table)" for b in broken)
            + ". Way out: sample from an input the table allows (qint8, H, W <= 1024, H * W <= 720 * 1024: "
              "resize or split it first), or keep grid_sample outside the QuantStub/DeQuantStub region (float)")


def grid_sample_codes(module: nn.Module, q: torch.Tensor, g: torch.Tensor, inp: QuantParams, grid: QuantParams,
                      march: str, name: str) -> torch.Tensor:
    """The integer grid sample on ``march`` (int64 codes at the input's scale) in torch: QAT simulation, and the
    integer model where the march kernels do not apply."""
    return int_grid_sample(q, g, float(grid.scale.reshape(-1)[0]), module.mode, module.padding_mode,
                           bool(module.align_corners), bilinear_format(march, name), resolve_march(march).requant,
                           inp.dtype.quant_min, inp.dtype.quant_max)


class GridSample(QATModule):
    """``grid_sample(x, grid)``: no fake-quantize of its own, the output keeps ``x``'s scale."""

    def __init__(self, float_module: nn.Module, march: str, limits: Sequence[Any] = ()) -> None:
        super().__init__()
        self._init_qat(march)
        self.float_module = float_module
        self.limits = tuple(limits)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> GridSample:
        lowering: Optional[Any] = registry.lowering(march, mod.lowering_key)
        return cls(mod, march, lowering.limits if lowering is not None else ())

    def output_params(self) -> QuantParams:
        return self.input_params(0)


    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if len(self._input_producers) >= 2:
            dtypes = [self.input_params(i).dtype for i in range(2)]
            check_grid_sample_at_run(self.limits, self.float_module, x.shape, dtypes, self.qframe_name, self.march)
        if not self.simulating():
            return self.float_module(x, grid)
        p, pg = self.input_params(0), self.input_params(1)
        q = quantize_to_int(x, p.scale, p.dtype, p.ch_axis)
        g = quantize_to_int(grid, pg.scale, pg.dtype, pg.ch_axis)
        out = grid_sample_codes(self.float_module, q, g, p, pg, self.march, self.qframe_name)
        return integer_tensor_to_float(out, p)
