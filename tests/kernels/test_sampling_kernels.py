"""The sampling kernels (separable_sum, gather_taps), the GLU kernel and attention's matmul_requant against
Python-int references.

The modules that use them (bilinear resize, RoIAlign, MultiScaleRoIAlign, grid_sample, GLU) are checked bit for
bit against references of the march rules in tests/quantization; here each kernel alone, on random arguments that
reach every path: the double and the int64 sums, the narrow and the 128-bit products, the AVX-512 gathers and the
scalar loop (tails of 16 outputs, ties of the march's rounding), and their argument checks.  The GEMM-path test in
test_kernel_reference.py runs ``check_all`` again under each forced ISA.
"""

from __future__ import annotations

import numpy as np
import pytest

import qframe_march_bayes._kernels as bayes_kernels
import qframe_march_bernoulli2._kernels as bernoulli2_kernels

from . import reference as ref

MODULES = {"bernoulli2": bernoulli2_kernels, "bayes": bayes_kernels}
MARCHES = list(MODULES)


def _rounding(march):
    return ref.MARCH_RULES[march][1]


def _ints(rng, dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if lo is None else lo, info.max if hi is None else hi, size=shape,
                        endpoint=True).astype(dtype)


# -- references -------------------------------------------------------------------------------------------------
def separable_sum_ref(x, batch, wy, wx, mult, shift, rounding, lo, hi):
    B, PH, _ = wy.shape
    PW = wx.shape[1]
    C = x.shape[1]
    out = np.zeros((B, C, PH, PW), dtype=np.int64)
    xo = x.astype(object)
    for b in range(B):
        for c in range(C):
            acc = wy[b].astype(object) @ xo[batch[b], c] @ wx[b].astype(object).T
            for i in range(PH):
                for j in range(PW):
                    out[b, c, i, j] = min(max(ref.round_shift(int(acc[i, j]) * int(mult[b]), shift, rounding), lo), hi)
    return out


def gather_taps_ref(x, idx, w, shift, rounding, lo, hi):
    N, C, _ = x.shape
    G, K, P = idx.shape
    out = np.zeros((N, C, P), dtype=np.int64)
    for n in range(N):
        g = 0 if G == 1 else n
        for c in range(C):
            acc = (w[g].astype(np.int64) * x[n, c][idx[g]].astype(np.int64)).sum(0)
            out[n, c] = [min(max(ref.round_shift(int(a), shift, rounding), lo), hi) for a in acc]
    return out


def glu_ref(x, table, req, out_dtype, rounding):
    pre, m, s = req
    lo, hi = ref.INT_RANGES[out_dtype]
    a = x[:, 0].astype(np.int64)
    g = table[x[:, 1].astype(np.int64) - np.iinfo(x.dtype).min].astype(np.int64)
    v = (a * g).reshape(-1)
    y = [min(max(ref.round_shift(ref.round_shift(int(t), pre, rounding) * m, s, rounding), lo), hi) for t in v]
    return np.array(y, dtype=np.int64).reshape(a.shape)


# -- cases ------------------------------------------------------------------------------------------------------
def _sparse_rows(rng, rows, n, wmax, density=0.4):
    """Rows with zero runs at both ends (the kernel skips them), some all-zero rows, a few negative weights."""
    w = np.zeros((rows, n), dtype=np.int32)
    for r in range(rows):
        if rng.random() < 0.1:
            continue
        a = int(rng.integers(0, n))
        e = int(rng.integers(a + 1, n + 1))
        vals = rng.integers(-wmax // 8, wmax, size=e - a, endpoint=True)
        vals[rng.random(e - a) > density + 0.3] = 0
        w[r, a:e] = vals
    return w


def check_separable_sum(march, seed=0):
    mod, rounding = MODULES[march], _rounding(march)
    rng = np.random.default_rng(seed)
    # (dtype, N, C, H, W, B, PH, PW, weight max, multiplier max, shift): double in vectors (AVX-512: sums times
    # the multiplier below 2**52; tails of 8 columns), double + narrow, double + wide, int64 + narrow, int64 + wide
    for dt, N, C, H, W, B, PH, PW, wmax, mmax, shift in (
            (np.int8, 2, 3, 11, 21, 3, 4, 19, 1 << 12, 1 << 8, 20),
            (np.int16, 1, 2, 7, 10, 2, 3, 9, 1 << 8, 1 << 10, 17),
            (np.int8, 2, 3, 7, 9, 4, 3, 5, 1 << 12, 1 << 20, 44),
            (np.int16, 1, 2, 6, 5, 3, 4, 2, 1 << 12, 1 << 40, 60),
            (np.int16, 2, 2, 5, 6, 2, 2, 3, 1 << 17, 1, 13),
            (np.int8, 1, 3, 9, 4, 2, 5, 4, 1 << 21, 1 << 20, 62),
            (np.int8, 1, 1, 1, 1, 1, 1, 1, 1 << 8, 1, 0)):
        x = _ints(rng, dt, (N, C, H, W))
        batch = rng.integers(0, N, size=B).astype(np.int64)
        wy, wx = _sparse_rows(rng, B * PH, H, wmax).reshape(B, PH, H), _sparse_rows(rng, B * PW, W, wmax).reshape(B, PW, W)
        mult = rng.integers(0, mmax, size=B, endpoint=True).astype(np.int64)
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        for clamp in ((None, None), (lo // 3, hi // 5)):
            got = mod.separable_sum(x, batch, wy, wx, mult, shift, *clamp)
            want = separable_sum_ref(x, batch, wy, wx, mult, shift, rounding, clamp[0] if clamp[0] is not None else lo,
                                     clamp[1] if clamp[1] is not None else hi)
            assert got.dtype == dt and got.shape == (B, C, PH, PW)
            np.testing.assert_array_equal(got.astype(np.int64), want)


def check_gather_taps(march, seed=0):
    mod, rounding = MODULES[march], _rounding(march)
    rng = np.random.default_rng(seed)
    # (dtype, N, C, S, G, K, P, weight range, shift): bilinear-like (vector path), negative weights, ties at
    # small shifts, huge weights (the int64 path), a shift above 52 (the int64 path), tails of 16 outputs
    for dt, N, C, S, G, K, P, (wlo, whi), shift in (
            (np.int8, 2, 3, 50, 2, 4, 37, (0, 1 << 24), 24),
            (np.int16, 2, 2, 30, 1, 4, 16, (0, 1 << 24), 24),
            (np.int8, 1, 5, 7, 1, 3, 33, (-9, 9), 1),
            (np.int16, 3, 1, 64, 3, 1, 15, (-1, 1), 0),
            (np.int16, 1, 2, 12, 1, 7, 21, (-(1 << 31), (1 << 31) - 1), 40),
            (np.int8, 1, 2, 12, 1, 2, 18, (0, 1 << 10), 56),
            (np.int8, 1, 1, 1, 1, 1, 1, (0, 4), 2)):
        x = _ints(rng, dt, (N, C, S))
        idx = rng.integers(0, S, size=(G, K, P)).astype(np.int32)
        idx[..., 0] = S - 1  # the last code of the last plane: the padded copy
        w = rng.integers(wlo, whi, size=(G, K, P), endpoint=True).astype(np.int32)
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        for clamp in ((None, None), (lo // 2, hi // 3)):
            got = mod.gather_taps(x, idx, w, shift, *clamp)
            want = gather_taps_ref(x, idx, w, shift, rounding, clamp[0] if clamp[0] is not None else lo,
                                   clamp[1] if clamp[1] is not None else hi)
            assert got.dtype == dt and got.shape == (N, C, P)
            np.testing.assert_array_equal(got.astype(np.int64), want)


def check_glu(march, seed=0):
    mod, rounding = MODULES[march], _rounding(march)
    rng = np.random.default_rng(seed)
    mmax = 2 ** (ref.MARCH_RULES[march][0] - 1) - 1
    for dt, tdt, outer, inner, req, out_dtype in (
            (np.int8, np.int16, 3, 37, (0, int(rng.integers(1, mmax)), 21), "int8"),  # vector epilogue
            (np.int16, np.int16, 2, 70000, (0, int(rng.integers(1, mmax)), 30), "int16"),  # several blocks
            (np.int8, np.int32, 2, 19, (3, int(rng.integers(1, mmax)), 20), "int16"),  # the scalar wide path
            (np.int16, np.int16, 1, 5, (2, 1, 0), "int8")):
        x = _ints(rng, dt, (outer, 2, inner))
        table = _ints(rng, tdt, (256 if dt == np.int8 else 65536,), 0 if tdt == np.int16 else -(1 << 20),
                      32767 if tdt == np.int16 else 1 << 20)
        got = mod.glu(x, table, req, out_dtype)
        assert got.dtype == np.dtype(out_dtype) and got.shape == (outer, inner)
        np.testing.assert_array_equal(got.astype(np.int64), glu_ref(x, table, req, out_dtype, rounding))


def matmul_requant_ref(a, bt, req, out_dtype, rounding):
    pre, m, s = req
    lo, hi = ref.INT_RANGES[out_dtype]
    acc = np.einsum("bmk,bnk->bmn", a.astype(object), bt.astype(object))
    y = [min(max(ref.round_shift(ref.round_shift(int(v), pre, rounding) * m, s, rounding), lo), hi)
         for v in acc.reshape(-1)]
    return np.array(y, dtype=np.int64).reshape(acc.shape)


def check_matmul_requant(march, seed=0):
    mod, rounding = MODULES[march], _rounding(march)
    rng = np.random.default_rng(seed)
    mmax = 2 ** (ref.MARCH_RULES[march][0] - 1) - 1
    # full-range int16 x int16 (the (-32768)**2 products too), int8 x int16, K not a multiple of 8, N not a
    # multiple of 4, a one-element case
    for adt, bdt, B, M, N, K, req, out_dtype in (
            (np.int16, np.int16, 3, 5, 7, 32, (4, int(rng.integers(1, mmax)), 30), "int8"),
            (np.int16, np.int16, 2, 3, 9, 13, (0, int(rng.integers(1, mmax)), 40), "int16"),
            (np.int8, np.int16, 2, 4, 4, 129, (2, int(rng.integers(1, mmax)), 28), "int16"),
            (np.int8, np.int8, 1, 1, 1, 1, (0, 1, 0), "int8")):
        a = _ints(rng, adt, (B, M, K))
        bt = _ints(rng, bdt, (B, N, K))
        a[0, 0, :] = np.iinfo(adt).min
        bt[0, 0, :] = np.iinfo(bdt).min
        got = mod.matmul_requant(a, bt, req, out_dtype)
        assert got.dtype == np.dtype(out_dtype) and got.shape == (B, M, N)
        np.testing.assert_array_equal(got.astype(np.int64), matmul_requant_ref(a, bt, req, out_dtype, rounding))


def check_all(march):
    check_separable_sum(march)
    check_gather_taps(march)
    check_glu(march)
    check_matmul_requant(march)


CHECKS = [(check_separable_sum, 1), (check_gather_taps, 2), (check_glu, 3), (check_matmul_requant, 4)]


@pytest.mark.parametrize("check,seed", CHECKS, ids=[c.__name__.removeprefix("check_") for c, _ in CHECKS])
@pytest.mark.parametrize("march", MARCHES)
def test_kernel_matches_reference(march, check, seed):
    check(march, seed)


@pytest.mark.parametrize("march", MARCHES)
def test_sampling_kernels_reject_bad_arguments(march):
    mod = MODULES[march]
    x = np.zeros((1, 2, 4, 5), np.int8)
    b, m = np.zeros(1, np.int64), np.ones(1, np.int64)
    wy, wx = np.ones((1, 3, 4), np.int32), np.ones((1, 2, 5), np.int32)
    assert mod.separable_sum(x, b, wy, wx, m, 4).shape == (1, 2, 3, 2)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        mod.separable_sum(x[0], b, wy, wx, m, 4)
    with pytest.raises(ValueError, match=r"must be \[B, PH, H\] and \[B, PW, W\]"):
        mod.separable_sum(x, b, wy[:, :, :3].copy(), wx, m, 4)
    with pytest.raises(TypeError, match="wx"):
        mod.separable_sum(x, b, wy, wx.astype(np.int64), m, 4)
    with pytest.raises(ValueError, match=r"batch\[0\] = 1 is not an image"):
        mod.separable_sum(x, b + 1, wy, wx, m, 4)
    with pytest.raises(ValueError, match="one entry per output"):
        mod.separable_sum(x, np.zeros(2, np.int64), wy, wx, m, 4)
    with pytest.raises(ValueError, match=r"multiplier\[0\] = -1"):
        mod.separable_sum(x, b, wy, wx, -m, 4)
    with pytest.raises(ValueError, match="shift"):
        mod.separable_sum(x, b, wy, wx, m, 63)
    with pytest.raises(ValueError, match="2\\*\\*62"):
        mod.separable_sum(x.astype(np.int16), b, np.full((1, 3, 4), 1 << 30, np.int32),
                          np.full((1, 2, 5), 1 << 30, np.int32), m, 4)
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.separable_sum(np.zeros((1, 2, 4, 10), np.int8)[..., ::2], b, wy, wx, m, 4)

    xs = np.zeros((2, 3, 6), np.int16)
    idx, w = np.zeros((1, 4, 5), np.int32), np.ones((1, 4, 5), np.int32)
    assert mod.gather_taps(xs, idx, w, 2).shape == (2, 3, 5)
    assert mod.gather_taps(np.zeros((0, 3, 6), np.int16), idx, w, 2).shape == (0, 3, 5)
    with pytest.raises(ValueError, match=r"index value 6 is outside the 6 positions"):
        mod.gather_taps(xs, idx + 6, w, 2)
    with pytest.raises(ValueError, match=r"index value -1"):
        mod.gather_taps(xs, idx - 1, w, 2)
    with pytest.raises(ValueError, match="must have index's shape"):
        mod.gather_taps(xs, idx, w[:, :3].copy(), 2)
    with pytest.raises(ValueError, match=r"one grid \(G = 1\) or one per image"):
        mod.gather_taps(xs, np.zeros((3, 4, 5), np.int32), np.ones((3, 4, 5), np.int32), 2)
    with pytest.raises(TypeError, match="input"):
        mod.gather_taps(xs.astype(np.float32), idx, w, 2)
    with pytest.raises(ValueError, match="shift"):
        mod.gather_taps(xs, idx, w, -1)
    with pytest.raises(ValueError, match="clamp range"):
        mod.gather_taps(xs, idx, w, 2, 5, 4)

    xg = np.zeros((2, 2, 3), np.int8)
    t16 = np.zeros(256, np.int16)
    assert mod.glu(xg, t16, (0, 1, 0), "int8").shape == (2, 3)
    with pytest.raises(ValueError, match=r"\[outer, 2, inner\]"):
        mod.glu(np.zeros((2, 3, 3), np.int8), t16, (0, 1, 0), "int8")
    with pytest.raises(ValueError, match="every int8 code.*256"):
        mod.glu(xg, np.zeros(255, np.int16), (0, 1, 0), "int8")
    with pytest.raises(TypeError, match="table"):
        mod.glu(xg, np.zeros(256, np.int8), (0, 1, 0), "int8")
    with pytest.raises(TypeError, match="requant.*tuple"):
        mod.glu(xg, t16, [0, 1, 0], "int8")
    with pytest.raises(ValueError, match="out_dtype"):
        mod.glu(xg, t16, (0, 1, 0), "int32")

    a, bt = np.zeros((2, 3, 4), np.int16), np.zeros((2, 5, 4), np.int8)
    assert mod.matmul_requant(a, bt, (0, 1, 0), "int16").shape == (2, 3, 5)
    assert mod.matmul_requant(a[:, :0], bt, (0, 1, 0), "int8").shape == (2, 0, 5)
    with pytest.raises(ValueError, match=r"same B and K"):
        mod.matmul_requant(a, bt[:, :, :3].copy(), (0, 1, 0), "int8")
    with pytest.raises(ValueError, match=r"\[B, M, K\]"):
        mod.matmul_requant(a[0], bt, (0, 1, 0), "int8")
    with pytest.raises(TypeError, match="bt"):
        mod.matmul_requant(a, bt.astype(np.int32), (0, 1, 0), "int8")
    with pytest.raises(ValueError, match="out_dtype"):
        mod.matmul_requant(a, bt, (0, 1, 0), "int32")
    with pytest.raises(ValueError, match="shift"):
        mod.matmul_requant(a, bt, (0, 1, 63), "int8")


@pytest.mark.parametrize("march", MARCHES)
def test_grid_taps_equal_the_torch_rule(march):
    """grid_taps (the C++ taps of grid_sample) equals qframe_core.grid_sample.grid_sample_taps (the rule in torch,
    which QAT runs) on random and extreme grid codes: both modes and paddings, align_corners, int8/int16 grids,
    grids far outside [-1, 1], odd sizes."""
    import torch

    from qframe_core.grid_sample import grid_axis_registers, grid_sample_taps
    from qframe_core.march import resolve_march

    spec = resolve_march(march)
    fmt, mod = spec.bilinear, MODULES[march]
    rng = np.random.default_rng(6)
    for gdt, scale in ((np.int8, 1 / 127), (np.int16, 1 / 32767), (np.int8, 1 / 40), (np.int16, 1 / 9000)):
        for h, w in ((1, 1), (5, 9), (17, 4)):
            g = _ints(rng, gdt, (2, 3 * 7, 2))
            g[0, :4] = [[np.iinfo(gdt).min] * 2, [np.iinfo(gdt).max] * 2, [0, 0], [np.iinfo(gdt).min, np.iinfo(gdt).max]]
            for mode in ("bilinear", "nearest"):
                for padding in ("zeros", "border"):
                    for align in (False, True):
                        ti, tw, shift = grid_sample_taps(torch.from_numpy(g).reshape(2, 3, 7, 2), h, w, scale, mode,
                                                         padding, align, fmt, spec.requant)
                        ax = grid_axis_registers(w, scale, align, fmt) + (w,)
                        ay = grid_axis_registers(h, scale, align, fmt) + (h,)
                        ki, kw = mod.grid_taps(g, ax, ay, fmt.grid_mult_frac_bits - fmt.coord_frac_bits,
                                               fmt.coord_frac_bits, fmt.weight_frac_bits, mode, padding == "border")
                        np.testing.assert_array_equal(kw, tw.numpy())
                        np.testing.assert_array_equal(ki, ti.numpy())
                        assert shift == (2 * fmt.weight_frac_bits if mode == "bilinear" else 0)
    g = np.zeros((1, 4, 2), np.int8)
    with pytest.raises(ValueError, match=r"\[N, P, 2\]"):
        mod.grid_taps(np.zeros((1, 4, 3), np.int8), (1, 0, 4), (1, 0, 4), 16, 16, 8, "bilinear", False)
    with pytest.raises(ValueError, match="mode"):
        mod.grid_taps(g, (1, 0, 4), (1, 0, 4), 16, 16, 8, "bicubic", False)
    with pytest.raises(ValueError, match="size"):
        mod.grid_taps(g, (1, 0, 0), (1, 0, 4), 16, 16, 8, "bilinear", False)
    with pytest.raises(ValueError, match="weight_frac_bits"):
        mod.grid_taps(g, (1, 0, 4), (1, 0, 4), 16, 8, 12, "bilinear", False)
    with pytest.raises(TypeError, match="x_axis"):
        mod.grid_taps(g, [1, 0, 4], (1, 0, 4), 16, 16, 8, "bilinear", False)


# -- fuzzing the C++ boundary: any dtype, shape, layout or value gives a result or a clean Python error ----------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_DTYPES = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.float32, np.uint8])
_SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


def _array(dt, shape, seed, transpose):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dt, np.floating):
        a = rng.standard_normal(shape).astype(dt)
    else:
        info = np.iinfo(dt)
        a = rng.integers(max(info.min, -40000), min(info.max, 40000), size=shape, endpoint=True).astype(dt)
    return a.T if transpose and a.ndim >= 2 else a


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(march=st.sampled_from(MARCHES), kernel=st.sampled_from(["separable_sum", "gather_taps", "grid_taps", "glu",
                                                                "matmul_requant", "mul", "add", "requantize"]),
       dts=st.lists(_DTYPES, min_size=5, max_size=5), shapes=st.lists(_SHAPES, min_size=5, max_size=5),
       ints=st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1) | st.integers(-70, 70), min_size=4, max_size=4),
       transpose=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_fuzz_new_kernels_never_crash(march, kernel, dts, shapes, ints, transpose, seed):
    """Random dtypes (including float, uint8, int64), ranks, zero sizes, non-contiguous arrays, huge or negative
    ints: every call returns or raises TypeError/ValueError naming the kernel, never crashes or hangs."""
    mod = MODULES[march]
    arrs = [_array(dt, sh, seed + i, transpose and i == 0) for i, (dt, sh) in enumerate(zip(dts, shapes))]
    i0, i1, i2, i3 = ints
    calls = {
        "separable_sum": lambda: mod.separable_sum(arrs[0], arrs[1], arrs[2], arrs[3], arrs[4], i0 % 70),
        "gather_taps": lambda: mod.gather_taps(arrs[0], arrs[1], arrs[2], i0, i1 if i1 % 3 else None, None),
        "grid_taps": lambda: mod.grid_taps(arrs[0], (i0, i1, i2), (i1, i2 % 99, i3), i0 % 70, i1 % 40, i2 % 20,
                                           "bilinear" if i3 % 2 else "nearest", bool(i0 % 2)),
        "glu": lambda: mod.glu(arrs[0], arrs[1], (i0 % 70, i1, i2 % 70), "int8" if i3 % 2 else "int16"),
        "matmul_requant": lambda: mod.matmul_requant(arrs[0], arrs[1], (i0 % 70, i1, i2 % 70), "int16"),
        "mul": lambda: mod.mul(arrs[0], arrs[1], i0, i1 % 70, "int8"),
        "add": lambda: mod.add(arrs[0], arrs[1], i0, i1, i2 % 70, "int16"),
        "requantize": lambda: mod.requantize(arrs[0], arrs[1], arrs[2], i0 % 5 - 2, "int8"),
    }
    try:
        calls[kernel]()
    except (TypeError, ValueError) as e:
        assert str(e).startswith(kernel + ":") or "incompatible function arguments" in str(e), str(e)
