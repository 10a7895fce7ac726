"""QAT resize: ``nn.Upsample``, ``nn.UpsamplingNearest2d``, ``nn.UpsamplingBilinear2d``, ``qframe_core.nn.Interpolate``."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ...errors import UnsupportedOpError
from ...lowering import op_display_name
from ...march import resolve_march
from ...numerics import quantize_to_int
from ...registry import registry
from ...resize import BilinearFormat, int_bilinear, output_size_and_steps, violations_at_run
from .base import integer_tensor_to_float
from .pooling import ScalePreserving


def resize_key(module: nn.Module) -> Any:
    """The op-table key of a resize module (``Interpolate`` lowers as ``nn.Upsample``)."""
    return getattr(module, "lowering_key", None) or type(module)


def check_resize_at_run(limits: Sequence[Any], module: nn.Module, in_shape: Sequence[int], out_hw: Sequence[int],
                        name: str, march: str) -> None:
    """Raise :class:`UnsupportedOpError` for the op-table rules only the actual shapes can check."""
    broken = violations_at_run(limits, module, in_shape, out_hw)
    if broken:
        raise UnsupportedOpError(
            f"march {march!r} cannot run {name!r} ({op_display_name(resize_key(module))}): "
            + "; ".join(f"{b} (march {march!r} op table)" for b in broken)
            + ". Way out: resize to sizes the table allows, split the resize in steps, or keep it outside the "
              "QuantStub/DeQuantStub region (float)")


def bilinear_format(march: str, name: str) -> BilinearFormat:
    fmt = resolve_march(march).bilinear
    if fmt is None:
        raise UnsupportedOpError(f"{name!r}: march {march!r} declares no bilinear format (MarchSpec.bilinear), so "
                                 f"bilinear resize cannot be computed in integers on it")
    return fmt


def bilinear_codes(module: nn.Module, q: torch.Tensor, out_hw: Sequence[int], steps: Sequence[float],
                   march: str, name: str, qmin: int, qmax: int) -> torch.Tensor:
    """The integer bilinear resize of ``q`` on ``march`` (int64): QAT simulation and the integer model."""
    return int_bilinear(q, out_hw, steps, bool(module.align_corners), bilinear_format(march, name),
                        resolve_march(march).requant, qmin, qmax)


class Upsample(ScalePreserving):
    """Nearest or bilinear resize; the output keeps the input's scale and dtype.

    Nearest copies input elements (as :class:`ScalePreserving`). Bilinear computes in float in
    QAT / CALIBRATION state and, in VALIDATION state, the march's fixed-point rule
    (:func:`qframe_core.resize.int_bilinear`), exactly as the integer model does.
    """

    def __init__(self, float_module: nn.Module, march: str, limits: Sequence[Any] = ()) -> None:
        super().__init__(float_module, march)
        self.limits = tuple(limits)  # the op table's rules, some checked on the actual shapes

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any, march: str) -> Upsample:
        lowering: Optional[Any] = registry.lowering(march, resize_key(mod))
        return cls(mod, march, lowering.limits if lowering is not None else ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.float_module
        out_hw, steps = output_size_and_steps(m, x.shape[-2:])
        check_resize_at_run(self.limits, m, x.shape, out_hw, self.qframe_name, self.march)
        if m.mode != "bilinear":
            return super().forward(x)
        if not self.simulating():
            return m(x)
        p = self.input_params(0)
        q = quantize_to_int(x, p.scale, p.dtype, p.ch_axis)
        out = bilinear_codes(m, q, out_hw, steps, self.march, self.qframe_name, p.dtype.quant_min, p.dtype.quant_max)
        return integer_tensor_to_float(out, p)
