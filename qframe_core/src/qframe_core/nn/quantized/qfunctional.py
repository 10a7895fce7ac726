"""Integer FloatFunctional (``QFunctional``)."""

from __future__ import annotations

import torch
from torch import nn

from ...quantization.fake_quantize import QuantParams
from .kernels import as_array, dtype_name, march_kernels


class QFunctional(nn.Module):
    """Integer tensor operations with the rescaling the march's kernels do."""

    _qframe_leaf = True

    def __init__(self, march: str, name: str) -> None:
        super().__init__()
        self.march = march
        self.qframe_name = name

    @classmethod
    def from_qat(cls, qat: nn.Module) -> QFunctional:
        mod = cls(qat.march, qat.qframe_name)
        p = qat.add_params()
        mod.multiplier_a, mod.multiplier_b, mod.shift = p.multiplier_a, p.multiplier_b, p.shift
        mod.register_buffer("out_scale", p.output.scale.detach().clone().float())
        mod.out_dtype = p.output.dtype
        return mod

    def output_params(self) -> QuantParams:
        return QuantParams(self.out_scale, self.out_dtype, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("QFunctional is not called directly: use one of its methods")

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = torch.broadcast_tensors(x, y)
        out = march_kernels(self.march).add(
            as_array(a, "input 0", self.qframe_name), as_array(b, "input 1", self.qframe_name),
            self.multiplier_a, self.multiplier_b, self.shift, dtype_name(self.out_dtype.bits),
            self.out_dtype.quant_min, self.out_dtype.quant_max)
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return f"out_dtype={self.out_dtype}, march={self.march}"
