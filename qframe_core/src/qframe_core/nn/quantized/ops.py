"""qframe's integer kernels as torch operators (``torch.ops.qframe.*``).

Registering them with ``torch.library`` makes a traced integer model
(``torch.jit.trace``) record real operator calls instead of constants, so it
can be saved and reloaded (``qframe_core.jit``).  Each operator takes the
march name and forwards to that march's compiled kernel.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernels import as_array, march_kernels


def _np(t: Optional[torch.Tensor]):
    return None if t is None else t.contiguous().numpy()


@torch.library.custom_op("qframe::add", mutates_args=())
def add(march: str, a: torch.Tensor, b: torch.Tensor, multiplier_a: int, multiplier_b: int, shift: int,
        out_dtype: str, clamp_min: int, clamp_max: int, name: str) -> torch.Tensor:
    """``clamp(round_shift(a * ma + b * mb, shift))`` on the march's kernel (a, b broadcast)."""
    x, y = torch.broadcast_tensors(a, b)
    out = march_kernels(march).add(as_array(x, "input 0", name), as_array(y, "input 1", name), multiplier_a,
                                   multiplier_b, shift, out_dtype, clamp_min, clamp_max)
    return torch.from_numpy(out)


@add.register_fake
def _add_shape(march, a, b, multiplier_a, multiplier_b, shift, out_dtype, clamp_min, clamp_max, name):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return a.new_empty(shape, dtype=getattr(torch, out_dtype))
