"""Independent, straightforward references for the observer tests (numpy, loops, no shared code)."""

from __future__ import annotations

import numpy as np


def trt_entropy_threshold(hist: np.ndarray, bin_width: float, levels: int = 128) -> float:
    """TensorRT entropy calibration, written as the algorithm reads (one candidate and one bin at a time).

    For each i in [levels, len(hist)]: P = hist[:i] with the outliers (hist[i:]) added
    to P[i-1]; Q = hist[:i] merged into ``levels`` groups of i // levels bins (the
    remainder in the last group), each group's sum spread evenly over the bins where
    P is non-zero; KL(P/|P| || Q/|Q|) with 0 log 0 = 0 and +inf where Q = 0 < P.
    The threshold is i * bin_width for the first minimal divergence.
    """
    hist = np.asarray(hist, dtype=np.float64)
    best_i, best_kl = None, np.inf
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        sliced = hist[:i]
        merged = i // levels
        q = np.zeros(i)
        for g in range(levels):
            start = g * merged
            stop = i if g == levels - 1 else start + merged
            total = sliced[start:stop].sum()
            nonzero = [j for j in range(start, stop) if p[j] != 0]
            for j in nonzero:
                q[j] = total / len(nonzero)
        p_n = p / p.sum()
        q_sum = q.sum()
        kl = 0.0
        for j in range(i):
            if p_n[j] == 0:
                continue
            if q[j] == 0:
                kl = np.inf
                break
            kl += p_n[j] * np.log(p_n[j] / (q[j] / q_sum))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * bin_width


def fake_quant_mse(x: np.ndarray, scale: float, qmin: int = -128, qmax: int = 127) -> float:
    """Mean squared error of symmetric quantize-dequantize (round half to even, saturate)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.clip(np.round(x / scale), qmin, qmax)
    return float(np.mean((q * scale - x) ** 2))
