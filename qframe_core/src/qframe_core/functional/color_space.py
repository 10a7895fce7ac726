"""Colour-space conversion for RGB888 deployment (BT.601, centered YUV444).

The BPU's image pyramid delivers *centered* YUV444 (YUV minus 128) in
[-128, 127].  Train on that format with :func:`rgb2centered_yuv` /
:func:`bgr2centered_yuv` (``swing="full"`` matches the BPU).  A model already
trained on RGB can instead get :func:`centered_yuv2rgb` /
:func:`centered_yuv2bgr` inserted after its QuantStub in the *converted*
model (set the QuantStub's scale to 1): it converts the integer YUV codes to
normalised RGB quantized at the QuantStub's former scale, in integer
arithmetic with the march's rounding::

    out_c = clamp(round_shift(k_cy * (Y + 128) + k_cu * U + k_cv * V + b_c, 16))

with ``k = coef / (std_c * q_scale) * 2**16`` and ``b_c = -mean_c / (std_c * q_scale) * 2**16``
rounded to integers.  On float input the same formula runs in float.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..march import MarchLike, resolve_march

FRAC_BITS = 16

# rows: Y, U, V (centered) from R, G, B in 0..255 — BT.601
_RGB2YUV = {
    "full": (torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                          dtype=torch.float64), torch.tensor([-128.0, 0.0, 0.0], dtype=torch.float64), (-128, 127)),
    "studio": (torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]],
                            dtype=torch.float64) / 255.0,
               torch.tensor([16.0 - 128.0, 0.0, 0.0], dtype=torch.float64), (-112, 112)),
}
# rows: R, G, B from (Y + 128), U, V — the inverses of the above
_YUV2RGB = {
    "full": (torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], dtype=torch.float64),
             torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)),
    "studio": (torch.tensor([[1.164383, 0.0, 1.596027], [1.164383, -0.391762, -0.812968],
                             [1.164383, 2.017232, 0.0]], dtype=torch.float64),
               torch.tensor([-16.0 * 1.164383] * 3, dtype=torch.float64)),
}


def _check(input: Tensor, swing: str, fn: str) -> None:
    if swing not in _RGB2YUV:
        raise ValueError(f"{fn}: swing must be 'full' (what the BPU delivers) or 'studio', got {swing!r}")
    if input.dim() != 4 or input.shape[1] != 3:
        raise ValueError(f"{fn}: expects [N, 3, H, W] images, got shape {tuple(input.shape)}")


def _to_centered_yuv(input: Tensor, swing: str, order: Sequence[int], fn: str) -> Tensor:
    _check(input, swing, fn)
    m, offset, (lo, hi) = _RGB2YUV[swing]
    rgb = input.to(torch.float64)[:, list(order)]
    yuv = torch.einsum("ij,njhw->nihw", m, rgb) + offset.view(1, 3, 1, 1)
    return torch.round(yuv).clamp(lo, hi).to(input.dtype if input.is_floating_point() else torch.float32)


def rgb2centered_yuv(input: Tensor, swing: str = "studio") -> Tensor:
    """RGB images (0..255, ``[N, 3, H, W]``) to centered YUV444 BT.601, rounded to integers.

    ``swing="full"``: Y, U, V in [-128, 127] (the BPU's format); ``"studio"``: Y in
    [-112, 107], U, V in [-112, 112].
    """
    return _to_centered_yuv(input, swing, (0, 1, 2), "rgb2centered_yuv")


def bgr2centered_yuv(input: Tensor, swing: str = "studio") -> Tensor:
    """BGR images (0..255) to centered YUV444 BT.601 (see :func:`rgb2centered_yuv`)."""
    return _to_centered_yuv(input, swing, (2, 1, 0), "bgr2centered_yuv")


def _per_channel(v: Union[Sequence[float], Tensor, float], name: str, fn: str) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        raise ValueError(f"{fn}: {name} takes 1 or 3 values, got {t.numel()}")
    return t


def _from_centered_yuv(input: Tensor, swing: str, mean, std, q_scale, march: Optional[MarchLike], order,
                       fn: str) -> Tensor:
    _check(input, swing, fn)
    mean_t, std_t = _per_channel(mean, "mean", fn), _per_channel(std, "std", fn)
    scale = float(torch.as_tensor(q_scale, dtype=torch.float64).reshape(-1)[0])
    if (std_t == 0).any() or not scale > 0:
        raise ValueError(f"{fn}: std must be non-zero and q_scale positive (got std={std_t.tolist()}, q_scale={scale})")
    coef, offset = _YUV2RGB[swing]
    coef, offset = coef[list(order)], offset[list(order)]
    yuv = input.to(torch.float64)
    yuv = torch.cat([yuv[:, :1] + 128.0, yuv[:, 1:]], dim=1)
    # normalised RGB in units of q_scale: (rgb - mean) / std / q_scale
    k = coef / (std_t * scale).view(3, 1)
    b = (offset - mean_t) / (std_t * scale)
    if input.is_floating_point():
        return torch.einsum("ij,njhw->nihw", k, yuv).add(b.view(1, 3, 1, 1)).to(input.dtype) * scale
    one = float(1 << FRAC_BITS)
    k_int = torch.round(k * one).to(torch.int64)
    b_int = torch.round(b * one).to(torch.int64)
    acc = torch.einsum("ij,njhw->nihw", k_int, yuv.to(torch.int64)) + b_int.view(1, 3, 1, 1)
    rule = resolve_march(march).requant
    out = rule.round_shift(acc, torch.tensor(FRAC_BITS)).clamp(-128, 127)
    return out.to(torch.int8)


def centered_yuv2rgb(input: Tensor, swing: str = "studio", mean: Union[Sequence[float], Tensor] = (128.0,),
                     std: Union[Sequence[float], Tensor] = (128.0,), q_scale: Union[float, Tensor] = 1.0 / 128.0,
                     march: Optional[MarchLike] = None) -> Tensor:
    """Centered YUV444 to normalised RGB quantized at ``q_scale`` (a deployment-only op).

    Integer input (the converted model's QuantStub output at scale 1): returns int8
    codes at ``q_scale``, computed in integer arithmetic with the march's rounding.
    Float input: returns the float normalised RGB (for checking).
    """
    return _from_centered_yuv(input, swing, mean, std, q_scale, march, (0, 1, 2), "centered_yuv2rgb")


def centered_yuv2bgr(input: Tensor, swing: str = "studio", mean: Union[Sequence[float], Tensor] = (128.0,),
                     std: Union[Sequence[float], Tensor] = (128.0,), q_scale: Union[float, Tensor] = 1.0 / 128.0,
                     march: Optional[MarchLike] = None) -> Tensor:
    """Centered YUV444 to normalised BGR quantized at ``q_scale`` (see :func:`centered_yuv2rgb`)."""
    return _from_centered_yuv(input, swing, mean, std, q_scale, march, (2, 1, 0), "centered_yuv2bgr")
