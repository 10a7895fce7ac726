"""Calling a march's compiled kernels from torch tensors (CPU, zero-copy)."""

from __future__ import annotations

from types import ModuleType
from typing import Optional

import numpy as np
import torch

from ...march import resolve_march

_CACHE: dict[str, ModuleType] = {}


def march_kernels(march: str) -> ModuleType:
    """The kernel extension of ``march`` (imported once)."""
    if march not in _CACHE:
        _CACHE[march] = resolve_march(march).load_kernels()
    return _CACHE[march]


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


def as_array(t: Optional[torch.Tensor], what: str, owner: str) -> Optional[np.ndarray]:
    """A C-contiguous numpy view of an integer CPU tensor."""
    if t is None:
        return None
    if type(t) is torch.Tensor and t.dtype in _INT_DTYPES and t.is_cpu:  # the hot path (no grad on integers)
        return t.contiguous().numpy()
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{owner}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point():
        raise TypeError(f"{owner}: {what} is a float tensor ({t.dtype}); a quantized model passes integer tensors "
                        f"between its ops — feed float data through the QuantStub at the model input")
    if t.device.type != "cpu":
        raise ValueError(f"{owner}: the integer kernels run on the CPU; move {what} there with .cpu() "
                         f"(got {t.device})")
    return t.detach().contiguous().numpy()


def runs_on_kernels(*codes: torch.Tensor) -> bool:
    """True for int8/int16 CPU code tensors outside tracing: what the march kernels take (traced models record
    the torch steps of the same rule instead)."""
    return all(t.dtype in (torch.int8, torch.int16) and t.is_cpu for t in codes) and not torch.jit.is_tracing()


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a 4-D tensor stored NHWC (torch's ``channels_last``) and not also NCHW-contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def nhwc_view(t: torch.Tensor) -> Optional[np.ndarray]:
    """The [N, H, W, C] numpy view of a channels-last integer CPU tensor (see ``is_channels_last``), or None
    for any other tensor.  The hot path of integer inference: numpy's transpose is cheaper than torch's
    permute, and nothing is copied."""
    if (type(t) is torch.Tensor and t.dtype in _INT_DTYPES and t.is_cpu and t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last)):
        a = t.numpy().transpose(0, 2, 3, 1)
        return a if a.flags.c_contiguous else None
    return None


def as_layout_array(t: torch.Tensor, layout: str, what: str, owner: str) -> np.ndarray:
    """``t`` ([N, C, H, W]) as a C-contiguous numpy array in ``layout``: ``"nchw"``, or ``"nhwc"``
    (``[N, H, W, C]``: zero-copy for a channels-last tensor)."""
    if layout == "nhwc":
        a = nhwc_view(t)
        return as_array(t.permute(0, 2, 3, 1), what, owner) if a is None else a
    return as_array(t, what, owner)


def from_layout_array(a: np.ndarray, layout: str) -> torch.Tensor:
    """The [N, C, H, W] tensor of a kernel output in ``layout`` (NHWC outputs become channels-last tensors)."""
    if layout != "nhwc":
        return torch.from_numpy(a)
    _, h, w, c = a.shape
    if c == 1 or h * w == 1:  # the same memory as NCHW: give it NCHW's strides
        return torch.from_numpy(a).as_strided((a.shape[0], c, h, w), (c * h * w, h * w, w, 1))
    return torch.from_numpy(a.transpose(0, 3, 1, 2))


def to_int32(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.to(torch.int32).contiguous().numpy()


def dtype_name(bits: int) -> str:
    return {8: "int8", 16: "int16", 32: "int32"}[bits]
