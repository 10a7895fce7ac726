"""qframe's integer kernels as torch operators (``torch.ops.qframe.*``).

Registering them with ``torch.library`` makes a traced integer model
(``torch.jit.trace``) record real operator calls instead of constants, so it
can be saved and reloaded (``qframe_core.jit``).  Each operator takes the
march name and forwards to that march's compiled kernel.  The integer modules
call the kernels directly when not tracing (no dispatcher overhead) and these
operators while tracing; both run the same kernel.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np
import torch

from .kernels import as_array, as_layout_array, from_layout_array, is_channels_last, march_kernels, nhwc_view


def _np(t: Optional[torch.Tensor]):
    return None if t is None else t.contiguous().numpy()


def _eltwise(kernel: str, march: str, a: torch.Tensor, b: torch.Tensor, args: tuple, name: str) -> torch.Tensor:
    x, y = torch.broadcast_tensors(a, b)
    # element-wise: two channels-last operands are combined in their NHWC order (no copies)
    layout = "nhwc" if is_channels_last(x) and is_channels_last(y) else "nchw"
    out = getattr(march_kernels(march), kernel)(as_layout_array(x, layout, "input 0", name),
                                                as_layout_array(y, layout, "input 1", name), *args)
    return from_layout_array(out, layout)


def add_direct(march: str, a: torch.Tensor, b: torch.Tensor, multiplier_a: int, multiplier_b: int, shift: int,
            out_dtype: str, clamp_min: int, clamp_max: int, name: str) -> torch.Tensor:
    """``clamp(round_shift(a * ma + b * mb, shift))`` on the march's kernel (a, b broadcast): :func:`add` without
    the operator dispatch (about 20 us a call), for integer modules outside tracing."""
    return _eltwise("add", march, a, b, (multiplier_a, multiplier_b, shift, out_dtype, clamp_min, clamp_max), name)


@torch.library.custom_op("qframe::add", mutates_args=())
def add(march: str, a: torch.Tensor, b: torch.Tensor, multiplier_a: int, multiplier_b: int, shift: int,
        out_dtype: str, clamp_min: int, clamp_max: int, name: str) -> torch.Tensor:
    """``clamp(round_shift(a * ma + b * mb, shift))`` on the march's kernel (a, b broadcast)."""
    return add_direct(march, a, b, multiplier_a, multiplier_b, shift, out_dtype, clamp_min, clamp_max, name)


@add.register_fake
def _add_shape(march, a, b, multiplier_a, multiplier_b, shift, out_dtype, clamp_min, clamp_max, name):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return a.new_empty(shape, dtype=getattr(torch, out_dtype))


def mul_direct(march: str, a: torch.Tensor, b: torch.Tensor, multiplier: int, shift: int, out_dtype: str,
            clamp_min: int, clamp_max: int, name: str) -> torch.Tensor:
    """:func:`mul` without the operator dispatch."""
    return _eltwise("mul", march, a, b, (multiplier, shift, out_dtype, clamp_min, clamp_max), name)


@torch.library.custom_op("qframe::mul", mutates_args=())
def mul(march: str, a: torch.Tensor, b: torch.Tensor, multiplier: int, shift: int, out_dtype: str, clamp_min: int,
        clamp_max: int, name: str) -> torch.Tensor:
    """``clamp(round_shift(a * b * multiplier, shift))`` on the march's kernel (a, b broadcast)."""
    return mul_direct(march, a, b, multiplier, shift, out_dtype, clamp_min, clamp_max, name)


@mul.register_fake
def _mul_shape(march, a, b, multiplier, shift, out_dtype, clamp_min, clamp_max, name):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return a.new_empty(shape, dtype=getattr(torch, out_dtype))


def requantize(march: str, x: torch.Tensor, multiplier: Any, shift: Any, axis: Optional[int], out_dtype: str,
               clamp_min: int, clamp_max: int, name: str) -> torch.Tensor:
    """``clamp(round_shift(x * multiplier, shift))`` of an int8/int16/int32/int64 CPU tensor on the march's kernel
    (``multiplier``/``shift``: ints, or int sequences along ``axis``), shaped as ``x``; a channels-last ``x``
    requantized per tensor stays channels-last (no copy)."""
    m = np.asarray(multiplier, dtype=np.int32).reshape(-1)
    s = np.asarray(shift, dtype=np.int32).reshape(-1)
    k = march_kernels(march)
    xa = nhwc_view(x) if axis is None else None
    if xa is not None:
        return from_layout_array(k.requantize(xa, m, s, None, out_dtype, clamp_min, clamp_max), "nhwc")
    out = k.requantize(as_array(x, "input", name), m, s, axis, out_dtype, clamp_min, clamp_max)
    return torch.from_numpy(out).reshape(x.shape)


# -- conv2d / linear -------------------------------------------------------------------------------
# Traced models call these with the integer weight tensor; the packed form is cached per weight tensor
# (checked by identity and version, so a freed and reused address can never serve a stale pack).
_PACKS: dict[int, tuple[Any, int, Any]] = {}


def _packed(march: str, weight: torch.Tensor, groups: Optional[int]):
    entry = _PACKS.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == weight._version:
        return entry[2]
    k = march_kernels(march)
    w = weight.detach().contiguous().numpy()
    pack = k.pack_linear_weight(w) if groups is None else k.pack_conv2d_weight(w, groups)
    if len(_PACKS) > 1024:
        _PACKS.clear()
    _PACKS[id(weight)] = (weakref.ref(weight), weight._version, pack)
    return pack


def conv2d_direct(march: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: list[int],
                  padding: list[int], dilation: list[int], groups: int, multiplier: Optional[torch.Tensor],
                  shift: Optional[torch.Tensor], out_dtype: str, clamp_min: int, clamp_max: int,
                  residual: Optional[torch.Tensor], residual_multiplier: Optional[torch.Tensor], name: str,
                  channels_last_output: bool) -> torch.Tensor:
    """:func:`conv2d` without the operator dispatch (a plan built per call)."""
    packed = _packed(march, weight, groups)
    native = packed.native_layout("int8" if x.dtype == torch.int8 else "int16") \
        if x.dtype in (torch.int8, torch.int16) else "nchw"
    plan = march_kernels(march).conv2d_plan(packed, _np(bias.to(torch.int32)), tuple(stride), tuple(padding),
                                            tuple(dilation), groups, _np(multiplier), _np(shift), out_dtype,
                                            clamp_min, clamp_max, _np(residual_multiplier))
    return run_conv2d(plan, x, residual, native, channels_last_output, name)


@torch.library.custom_op("qframe::conv2d", mutates_args=())
def conv2d(march: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: list[int],
           padding: list[int], dilation: list[int], groups: int, multiplier: Optional[torch.Tensor],
           shift: Optional[torch.Tensor], out_dtype: str, clamp_min: int, clamp_max: int,
           residual: Optional[torch.Tensor], residual_multiplier: Optional[torch.Tensor], name: str,
           channels_last_output: bool) -> torch.Tensor:
    """The integer conv of march ``march`` (see the kernels README for the arithmetic)."""
    return conv2d_direct(march, x, weight, bias, stride, padding, dilation, groups, multiplier, shift, out_dtype,
                         clamp_min, clamp_max, residual, residual_multiplier, name, channels_last_output)


def run_conv2d(plan: Any, x: torch.Tensor, residual: Optional[torch.Tensor], native: str,
               channels_last_output: bool, name: str) -> torch.Tensor:
    """Run a march ``Conv2dPlan`` in the kernel's native layouts (``native``: ``PackedWeight.native_layout`` of
    the input dtype; see the kernels README): the channels-last kernels read an NCHW or a channels-last input
    and write NHWC; the others read and write NCHW.  With ``channels_last_output`` an NHWC result is returned
    as a channels-last tensor (convert_fx allows it where every consumer accepts one), else as an
    NCHW-contiguous tensor."""
    xa = nhwc_view(x) if native == "nhwc" else None
    in_layout = "nchw" if xa is None else "nhwc"
    out = plan(as_array(x, "input", name) if xa is None else xa,
               None if residual is None else as_layout_array(residual, native, "residual", name), in_layout, native)
    out = from_layout_array(out, native)
    return out if channels_last_output else out.contiguous()


@conv2d.register_fake
def _conv2d_shape(march, x, weight, bias, stride, padding, dilation, groups, multiplier, shift, out_dtype,
                  clamp_min, clamp_max, residual, residual_multiplier, name, channels_last_output):
    n, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((n, weight.shape[0], oh, ow), dtype=getattr(torch, out_dtype))


def linear_direct(march: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               multiplier: Optional[torch.Tensor], shift: Optional[torch.Tensor], out_dtype: str, clamp_min: int,
               clamp_max: int, name: str) -> torch.Tensor:
    """:func:`linear` without the operator dispatch."""
    out = march_kernels(march).linear(as_array(x, "input", name), _packed(march, weight, None),
                                      _np(bias.to(torch.int32)), _np(multiplier), _np(shift), out_dtype, clamp_min,
                                      clamp_max)
    return torch.from_numpy(out)


@torch.library.custom_op("qframe::linear", mutates_args=())
def linear(march: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, multiplier: Optional[torch.Tensor],
           shift: Optional[torch.Tensor], out_dtype: str, clamp_min: int, clamp_max: int, name: str) -> torch.Tensor:
    """The integer linear of march ``march`` over the last axis of a 2-D input."""
    return linear_direct(march, x, weight, bias, multiplier, shift, out_dtype, clamp_min, clamp_max, name)


@linear.register_fake
def _linear_shape(march, x, weight, bias, multiplier, shift, out_dtype, clamp_min, clamp_max, name):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=getattr(torch, out_dtype))
