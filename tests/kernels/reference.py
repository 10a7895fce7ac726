"""Independent reference for the integer kernels (numpy int64 + Python ints).

Written without the extension: convolution is a sum over kernel offsets of
strided slices of a zero-padded input (numpy int64), and rounding is done on
Python integers with ``fractions.Fraction`` so it is exact for any size.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

INT_RANGES = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}
MARCH_RULES = {
    # march: (multiplier_bits, rounding)
    "bernoulli2": (16, "half_up"),
    "bayes": (32, "half_even"),
}


def round_shift(v: int, s: int, rounding: str) -> int:
    """v / 2**s rounded to an integer (Python ints, exact)."""
    v, s = int(v), int(s)
    if s == 0:
        return v
    q = Fraction(v, 2**s)
    if rounding == "half_up":
        # ties toward +inf: floor(q + 1/2)
        return (q + Fraction(1, 2)).__floor__()
    if rounding == "half_even":
        return round(q)  # Fraction.__round__ rounds half to even
    raise ValueError(rounding)


def clamp_bounds(out_dtype: str, clamp_min=None, clamp_max=None) -> tuple[int, int]:
    lo, hi = INT_RANGES[out_dtype]
    if clamp_min is not None:
        lo = max(lo, int(clamp_min))
    if clamp_max is not None:
        hi = min(hi, int(clamp_max))
    return lo, hi


def requant_values(x1, m1, x2, m2, s, rounding, lo, hi):
    """Elementwise clamp(round_shift(x1*m1 + x2*m2, s)); arrays broadcast, object math."""
    x1, m1, x2, m2, s = np.broadcast_arrays(*(np.asarray(a, dtype=object) for a in (x1, m1, x2, m2, s)))
    out = np.empty(x1.shape, dtype=np.int64)
    flat = out.reshape(-1)
    for i, (a, ma, b, mb, sh) in enumerate(zip(x1.flat, m1.flat, x2.flat, m2.flat, s.flat)):
        y = round_shift(int(a) * int(ma) + int(b) * int(mb), int(sh), rounding)
        flat[i] = min(max(y, lo), hi)
    return out


def conv_accumulate(x, w, stride, padding, dilation, groups):
    """Exact conv2d accumulator (int64) [N, O, Ho, Wo]."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    og = o // groups
    acc = np.zeros((n, o, ho, wo), dtype=np.int64)
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
                acc[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return acc


def finish(acc, bias, multiplier, shift, out_dtype, clamp_min, clamp_max, rounding, channel_axis,
           residual=None, residual_multiplier=None):
    """Bias add + requantization (or raw int32 saturation) of an accumulator."""
    acc = np.asarray(acc, dtype=np.int64)
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64).reshape(shape)
    lo, hi = clamp_bounds(out_dtype, clamp_min, clamp_max)
    if multiplier is None:
        sat = np.clip(acc, -(2**31), 2**31 - 1)
        return np.clip(sat, lo, hi).astype(np.int32)
    m = np.asarray(multiplier, dtype=np.int64).reshape(shape)
    s = np.asarray(shift, dtype=np.int64).reshape(shape)
    if residual is None:
        r, rm = 0, 0
    else:
        r = np.asarray(residual, dtype=np.int64)
        rm = np.asarray(residual_multiplier, dtype=np.int64).reshape(shape)
    return requant_values(acc, m, r, rm, s, rounding, lo, hi).astype(out_dtype)


def conv2d(march, x, w, bias, stride, padding, dilation, groups, multiplier, shift, out_dtype,
           clamp_min=None, clamp_max=None, residual=None, residual_multiplier=None):
    acc = conv_accumulate(x, w, stride, padding, dilation, groups)
    return finish(acc, bias, multiplier, shift, out_dtype, clamp_min, clamp_max, MARCH_RULES[march][1], 1,
                  residual, residual_multiplier)


def linear(march, x, w, bias, multiplier, shift, out_dtype, clamp_min=None, clamp_max=None):
    acc = np.asarray(x, dtype=np.int64) @ np.asarray(w, dtype=np.int64).T
    return finish(acc, bias, multiplier, shift, out_dtype, clamp_min, clamp_max, MARCH_RULES[march][1], 1)


def add(march, a, b, ma, mb, s, out_dtype, clamp_min=None, clamp_max=None):
    lo, hi = clamp_bounds(out_dtype, clamp_min, clamp_max)
    return requant_values(a, ma, b, mb, s, MARCH_RULES[march][1], lo, hi).astype(out_dtype)


def requantize(march, x, multiplier, shift, axis, out_dtype, clamp_min=None, clamp_max=None):
    x = np.asarray(x)
    lo, hi = clamp_bounds(out_dtype, clamp_min, clamp_max)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if m.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        m, s = m.reshape(shape), s.reshape(shape)
    else:
        m, s = m.reshape(()), s.reshape(())
    return requant_values(x, m, 0, 0, s, MARCH_RULES[march][1], lo, hi).astype(out_dtype)
