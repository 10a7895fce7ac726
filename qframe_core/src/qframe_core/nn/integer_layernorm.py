"""Integer layer normalization: exact moments, a normalized rsqrt table, an affine step like a conv's.

Shared by QAT simulation (VALIDATION state) and the integer module.  Input ``q`` (codes at ``s_x``),
normalized over its last ``k`` dims (``N`` elements):

1. ``A = sum(q)``, ``B = sum(q * q)`` — exact int64;
2. ``c = N * q - A`` (``= N * (q - mean)`` at ``s_x / N``) and ``V = N * B - A * A + E``
   (``= N**2 * (var + eps)`` at ``s_x**2 / N**2``, the biased variance as torch's LayerNorm uses it;
   ``E = round(eps * N**2 / s_x**2)``), exact;
3. ``V = M * 2**k`` — normalized with an even exponent (:func:`~.integer_composite.normalize`):
   ``M`` in ``[2**13, 2**15)``; ``R = rsqrt_table(M)`` — the march's table of ``1 / sqrt(m)`` for
   ``m = M * 2**-14`` in ``[0.5, 2)``, output at ``2**-14`` (``R ≈ 2**21 / sqrt(M)``);
4. ``n = round_shift(round_shift(c * R, p) * m_n, s_n + 7 + k / 2)`` with ``m_n / 2**s_n ≈ 2**(p - 14) / s_norm``
   — since ``(q - mean) / sqrt(var + eps) = c / sqrt(V) = c * R * 2**(-21 - k/2)``; ``p`` drops low bits
   of ``c * R`` when ``N`` is large.  ``s_norm`` is the normalized value's calibrated grid
   (``norm_post_process``), or the output's when there are no affine parameters;
5. with affine parameters: ``y = requant(n * g + b, s_norm * s_g / s_y)`` where ``g`` is the weight in
   qint16 at ``s_g = max|weight| / 32767.5`` (per tensor) and ``b`` the bias in qint32 at ``s_norm * s_g``
   (a conv's weight and bias rule).

The scale ``s_x`` cancels out of step 4.  A calibrated grid for the variance would lose relative
precision on rows whose variance is small next to the largest calibrated one, and the rsqrt table
would be steep there; the normalized mantissa keeps 14 bits on every row and the table's input
spans a factor of 4 only.  ``rsqrt_kwargs`` narrows the table (in mantissa units: ``m`` in ``[0.5, 2]``;
see :mod:`~.integer_composite`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs
import torch

from ..dtype import qint16
from ..numerics import RequantRule, quantize_to_int
from ..quantization.fake_quantize import QuantParams
from .integer_composite import (
    MANTISSA_BITS,
    WideRequant,
    mantissa_table,
    normalize,
    scale_of,
    wide_requant,
    wide_requant_params,
)
from .requant_params import bias_to_int

#: the dtype of the quantized weight (gamma)
WEIGHT_DTYPE = qint16

#: the rsqrt table's input mantissa grid is ``2**-RSQRT_FRAC_BITS`` (``m`` in ``[0.5, 2)``), its output grid too
RSQRT_FRAC_BITS = MANTISSA_BITS - 1
#: ``1 / sqrt(M) = R * 2**-RSQRT_SHIFT``: ``rsqrt(m) = R * 2**-14`` and ``M = m * 2**14``
RSQRT_SHIFT = RSQRT_FRAC_BITS + RSQRT_FRAC_BITS // 2


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """The per-tensor symmetric qint16 scale of the weight: ``max|weight| / 32767.5`` (never 0)."""
    amax = weight.detach().abs().amax().float()
    scale = amax / ((WEIGHT_DTYPE.quant_max - WEIGHT_DTYPE.quant_min) / 2)
    eps = torch.finfo(torch.float32).eps
    return torch.where(torch.isfinite(scale) & (scale > eps), scale, torch.full_like(scale, eps)).reshape(1)


@attrs.frozen
class LayerNormIntParams:
    input: QuantParams
    norm: QuantParams  # the output's params when there is no affine step
    output: QuantParams
    rsqrt_input: QuantParams  # the mantissa grid 2**-14
    rsqrt: QuantParams  # 2**-14
    normalized_ndim: int
    count: int  # N
    eps: int  # E = round(eps * N**2 / s_x**2)
    rsqrt_table: Any
    norm_requant: WideRequant
    weight: Optional[torch.Tensor]  # int64 codes at weight_scale, shaped like normalized_shape
    weight_scale: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]  # int64 (qint32 range) at s_norm * s_g
    affine_requant: Optional[WideRequant]


def rsqrt_table(lookup: Any, kwargs: Mapping[str, Any], what: str) -> tuple:
    """The mantissa rsqrt table: ``m = M * 2**-14`` in ``[0.5, 2]``, output at ``2**-14``."""
    return mantissa_table(lookup, torch.rsqrt, 2.0 ** -RSQRT_FRAC_BITS, (0.5, 2.0), kwargs, f"{what} rsqrt table")


def layernorm_params(rule: RequantRule, table: tuple, normalized_shape: tuple[int, ...], eps: float,
                     inp: QuantParams, norm: Optional[QuantParams], out: QuantParams, weight: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor], what: str) -> LayerNormIntParams:
    count = 1
    for d in normalized_shape:
        count *= int(d)
    span = inp.dtype.quant_max - inp.dtype.quant_min
    s_x = scale_of(inp)
    eps_int = int(min(round(eps * count * count / (s_x * s_x)), 2 ** 50))
    rsqrt_in, rsqrt_out, rsqrt = table
    affine = weight is not None or bias is not None
    norm = norm if affine else out
    if norm is None:
        raise ValueError(f"{what}: an affine layernorm needs the normalized value's quantization (norm_post_process)")
    norm_req = wide_requant_params(rule, scale_of(rsqrt_out) / scale_of(norm), count * span * rsqrt_out.dtype.quant_max,
                                   what)
    if not affine:
        return LayerNormIntParams(inp, norm, out, rsqrt_in, rsqrt_out, len(normalized_shape), count, eps_int, rsqrt,
                                  norm_req, None, None, None, None)
    w = weight.detach() if weight is not None else torch.ones(normalized_shape)
    w_scale = weight_scale(w)
    w_int = quantize_to_int(w.reshape(normalized_shape).float(), w_scale, WEIGHT_DTYPE)
    acc_scale = norm.scale.double().reshape(-1)[:1] * w_scale.double()
    b = bias.detach().reshape(-1) if bias is not None else torch.zeros(count)
    b_int = bias_to_int(b, acc_scale.expand(count)).reshape(normalized_shape)
    bound = norm.dtype.quant_max * (WEIGHT_DTYPE.quant_max + 1) + (1 << 31)
    affine_req = wide_requant_params(rule, float(acc_scale) / scale_of(out), bound, what)
    return LayerNormIntParams(inp, norm, out, rsqrt_in, rsqrt_out, len(normalized_shape), count, eps_int, rsqrt,
                              norm_req, w_int, w_scale, b_int, affine_req)


def int_layernorm(q: torch.Tensor, p: LayerNormIntParams, rule: RequantRule, lookup: Any) -> torch.Tensor:
    """Integer layer normalization of codes ``q`` over the last ``normalized_ndim`` dims (int64 result)."""
    dims = tuple(range(q.dim() - p.normalized_ndim, q.dim()))
    q64 = q.to(torch.int64)
    a = q64.sum(dim=dims, keepdim=True)
    b = (q64 * q64).sum(dim=dims, keepdim=True)
    c = p.count * q64 - a
    v = (p.count * b - a * a + p.eps).clamp(min=1)  # a constant row with eps rounding to 0: c = 0 anyway
    mantissa, k = normalize(v, rule, even=True)
    r = lookup.apply(mantissa, p.rsqrt_table, rule, p.rsqrt)
    n = wide_requant(c * r, p.norm_requant, rule, p.norm.dtype, extra_shift=RSQRT_SHIFT - RSQRT_FRAC_BITS + k // 2)
    if p.affine_requant is None:
        return n
    acc = n * p.weight.to(q.device) + p.bias.to(q.device)
    return wide_requant(acc, p.affine_requant, rule, p.output.dtype)
