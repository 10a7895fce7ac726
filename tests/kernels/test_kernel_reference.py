"""Bit-exact tests of the march kernel extensions against tests/kernels/reference.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qframe_march_bayes._kernels as bayes_kernels
import qframe_march_bernoulli2._kernels as bernoulli2_kernels

from . import reference as ref

MODULES = {"bernoulli2": bernoulli2_kernels, "bayes": bayes_kernels}
MARCHES = list(MODULES)
HERE = os.path.dirname(os.path.abspath(__file__))


def max_mult(march):
    return 2 ** (ref.MARCH_RULES[march][0] - 1) - 1


def rand_int(rng, dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


# (N, C, H, W, O, KH, KW, stride, padding, dilation, groups, in_dtype, out_dtype, bias, residual)
CONV_CASES = [
    (1, 3, 1, 1, 5, 1, 1, (1, 1), (0, 0), (1, 1), 1, "int8", "int8", True, None),
    (2, 4, 7, 9, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int8", "int8", True, None),
    (1, 5, 11, 13, 7, 3, 3, (2, 2), (1, 1), (1, 1), 1, "int8", "int16", True, None),
    (1, 6, 10, 10, 12, 3, 3, (1, 1), (2, 2), (2, 2), 1, "int8", "int8", False, None),
    (2, 8, 9, 7, 8, 3, 3, (1, 2), (1, 0), (1, 1), 2, "int8", "int8", True, None),
    (1, 8, 9, 9, 8, 3, 3, (1, 1), (1, 1), (1, 1), 8, "int8", "int8", True, None),  # depthwise
    (1, 8, 9, 9, 16, 3, 3, (2, 2), (1, 1), (1, 1), 8, "int8", "int8", True, None),  # depthwise x2
    (1, 4, 8, 8, 24, 5, 3, (1, 1), (2, 1), (1, 2), 4, "int8", "int16", True, None),
    (1, 3, 6, 5, 13, 2, 2, (1, 1), (0, 0), (1, 1), 1, "int16", "int16", True, None),
    (2, 6, 8, 8, 14, 3, 3, (2, 1), (1, 1), (1, 1), 1, "int16", "int8", True, None),
    (1, 64, 12, 12, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int16", "int16", True, None),  # K > 510 pairs chunking
    (1, 16, 7, 7, 16, 1, 1, (1, 1), (0, 0), (1, 1), 1, "int8", "int8", True, "int8"),
    (2, 5, 9, 9, 6, 3, 3, (2, 2), (1, 1), (1, 1), 1, "int8", "int16", True, "int16"),
    (1, 8, 6, 6, 8, 3, 3, (1, 1), (1, 1), (1, 1), 8, "int16", "int16", True, "int8"),
    (1, 3, 5, 5, 7, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int8", "int32", True, None),
    (1, 40, 17, 19, 37, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int8", "int8", True, None),
    (3, 12, 4, 4, 12, 4, 4, (3, 3), (3, 3), (1, 1), 3, "int8", "int8", True, None),
    # larger shapes: several GEMM panels / row blocks, vector-epilogue tails, K not a multiple of 4
    (1, 24, 9, 11, 40, 1, 1, (1, 1), (0, 0), (1, 1), 1, "int8", "int8", True, "int8"),  # 1x1 direct im2col
    (2, 16, 9, 11, 40, 1, 1, (2, 2), (0, 0), (1, 1), 1, "int8", "int8", True, "int8"),  # strided 1x1: sampled
    (1, 7, 8, 13, 33, 1, 1, (1, 3), (0, 0), (1, 1), 1, "int8", "int16", True, None),
    (2, 16, 13, 13, 72, 3, 3, (2, 2), (1, 1), (1, 1), 1, "int8", "int16", True, None),
    (1, 9, 20, 19, 20, 5, 5, (1, 1), (2, 2), (1, 1), 1, "int8", "int8", True, "int16"),  # K = 225
    (1, 32, 17, 23, 32, 3, 3, (1, 1), (1, 1), (1, 1), 32, "int8", "int8", True, "int8"),  # depthwise, residual
    (1, 32, 15, 15, 32, 3, 3, (2, 2), (1, 1), (1, 1), 32, "int16", "int8", True, None),  # depthwise int16
    (1, 20, 12, 12, 36, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int16", "int16", True, "int16"),
    (1, 8, 11, 13, 8, 3, 3, (2, 1), (2, 1), (2, 1), 4, "int8", "int8", True, None),  # 2 in / 2 out per group
    (2, 6, 9, 40, 6, 5, 5, (1, 1), (2, 2), (1, 1), 6, "int8", "int16", False, "int16"),  # wide rows, 5x5
    (1, 4, 7, 37, 4, 1, 3, (1, 1), (0, 3), (1, 3), 4, "int8", "int8", True, None),  # wide padding + dilation
    (1, 32, 9, 35, 24, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int8", "int8", True, "int8"),  # 16x16 / 4x4 transposes
    (1, 64, 5, 16, 16, 3, 3, (2, 2), (1, 1), (1, 1), 2, "int8", "int16", True, None),  # transposes per group
    (5, 16, 4, 4, 10, 4, 4, (1, 1), (0, 0), (1, 1), 1, "int8", "int32", True, None),  # 1 pixel per image
    (3, 16, 5, 5, 24, 3, 3, (2, 2), (1, 1), (1, 1), 1, "int8", "int8", True, "int8"),  # panels span images
    (4, 6, 3, 5, 9, 2, 2, (1, 1), (0, 1), (1, 1), 3, "int16", "int16", True, "int16"),
    # C not a multiple of the k-group: (kw, c) runs per kernel row (and the dilated fallback)
    (1, 3, 23, 21, 16, 7, 7, (2, 2), (3, 3), (1, 1), 1, "int8", "int8", True, None),  # stem-like
    (3, 1, 8, 8, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1, "int8", "int8", True, "int8"),
    (1, 5, 9, 10, 12, 3, 3, (1, 1), (2, 2), (2, 2), 1, "int8", "int16", True, None),
    (2, 3, 9, 9, 10, 3, 5, (1, 2), (1, 2), (1, 1), 1, "int16", "int8", True, None),
    (1, 7, 6, 31, 9, 2, 4, (1, 1), (0, 0), (2, 1), 1, "int8", "int8", False, "int16"),
]


def _conv_case_args(rng, march, case):
    n, c, h, w, o, kh, kw, stride, padding, dilation, groups, idt, odt, use_bias, res = case
    x = rand_int(rng, idt, (n, c, h, w))
    wt = rand_int(rng, np.int8, (o, c // groups, kh, kw))
    bias = rand_int(rng, np.int32, (o,), -(2**20), 2**20) if use_bias else None
    mult = rng.integers(0, max_mult(march), size=o, endpoint=True).astype(np.int32)
    shift = rng.integers(10, 40, size=o).astype(np.int32)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    kwargs = {}
    if res is not None:
        kwargs["residual"] = rand_int(rng, res, (n, o, ho, wo))
        kwargs["residual_multiplier"] = rng.integers(0, max_mult(march), size=o, endpoint=True).astype(np.int32)
    return (x, wt, bias, stride, padding, dilation, groups, mult, shift, odt), kwargs


def _with_packed(mod, args):
    """conv2d args with the weight replaced by its PackedWeight (same groups)."""
    args = list(args)
    args[1] = mod.pack_conv2d_weight(args[1], args[6])
    return tuple(args)


def to_nhwc(a):
    return None if a is None else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def conv2d_in_layouts(mod, args, kwargs, cmin, cmax, input_layout, output_layout):
    """conv2d with the input (and residual / output) in the given layouts; the result back in NCHW."""
    args = list(args)
    kwargs = dict(kwargs)
    if input_layout == "nhwc":
        args[0] = to_nhwc(args[0])
    if output_layout == "nhwc" and "residual" in kwargs:
        kwargs["residual"] = to_nhwc(kwargs["residual"])
    got = mod.conv2d(*args, cmin, cmax, input_layout=input_layout, output_layout=output_layout, **kwargs)
    return np.ascontiguousarray(got.transpose(0, 3, 1, 2)) if output_layout == "nhwc" else got


LAYOUTS = [("nchw", "nchw"), ("nhwc", "nhwc"), ("nchw", "nhwc"), ("nhwc", "nchw")]


def check_all_conv_cases(seed=0, packed=True):
    """Used in-process and from subprocesses that force a GEMM path; with packed=True
    every case also runs with weights from pack_conv2d_weight, in every input/output layout."""
    rng = np.random.default_rng(seed)
    for march, mod in MODULES.items():
        for case in CONV_CASES:
            args, kwargs = _conv_case_args(rng, march, case)
            variants = [("array", args)] + ([("packed", _with_packed(mod, args))] if packed else [])
            for cmin, cmax in ((None, None), (0, None), (0, 6)):
                want = ref.conv2d(march, *args, cmin, cmax, **kwargs)
                for kind, a in variants:
                    got = mod.conv2d(*a, cmin, cmax, **kwargs)
                    assert got.dtype == want.dtype and got.shape == want.shape, (march, case)
                    np.testing.assert_array_equal(got, want, err_msg=f"{march} {case} {kind} clamp=({cmin},{cmax})")
                    if kind == "packed":
                        for layouts in LAYOUTS[1:]:
                            got = conv2d_in_layouts(mod, a, kwargs, cmin, cmax, *layouts)
                            np.testing.assert_array_equal(got, want, err_msg=f"{march} {case} {layouts}")


@pytest.mark.parametrize("march", MARCHES)
def test_module_attributes(march):
    mod = MODULES[march]
    assert mod.MARCH == march
    assert mod.MULTIPLIER_BITS == ref.MARCH_RULES[march][0]
    feats = mod.cpu_features()
    assert set(feats) == {"avx2", "avx512bw", "avx512vnni", "openmp_threads", "kernel", "kernel_int8"}
    assert feats["kernel"] in {"scalar", "avx2", "avx512bw", "avx512vnni"}
    want8 = "avx512vnni_u8s8" if feats["kernel"] == "avx512vnni" else feats["kernel"]
    assert feats["kernel_int8"] == want8
    assert feats["openmp_threads"] >= 1


@pytest.mark.parametrize("march", MARCHES)
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_conv2d_matches_reference(march, case):
    mod = MODULES[march]
    rng = np.random.default_rng(hash((march, str(case))) % 2**32)
    args, kwargs = _conv_case_args(rng, march, case)
    packed_args = _with_packed(mod, args)
    for cmin, cmax in ((None, None), (0, None), (0, 6), (-5, 100)):
        want = ref.conv2d(march, *args, cmin, cmax, **kwargs)
        for a in (args, packed_args):
            for layouts in LAYOUTS:
                got = conv2d_in_layouts(mod, a, kwargs, cmin, cmax, *layouts)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want, err_msg=str(layouts))


@pytest.mark.parametrize("march", MARCHES)
def test_conv2d_native_layout(march):
    """With int8 activations, groups=1 convs write NHWC natively on AVX-512 VNNI (the channels-last kernel)
    and depthwise convs on AVX-512BW (the channels-last depthwise kernel: row quads on VNNI, tap pairs
    otherwise); everything else writes NCHW; both layouts are always available."""
    mod = MODULES[march]
    feats = mod.cpu_features()
    vnni = feats["kernel_int8"] == "avx512vnni_u8s8"
    avx512 = feats["kernel"] in ("avx512bw", "avx512vnni")
    rng = np.random.default_rng(5)
    dense = mod.pack_conv2d_weight(rand_int(rng, np.int8, (16, 8, 3, 3)), 1)
    depthwise = mod.pack_conv2d_weight(rand_int(rng, np.int8, (8, 1, 3, 3)), 8)
    grouped = mod.pack_conv2d_weight(rand_int(rng, np.int8, (8, 2, 3, 3)), 4)  # 2 in / 2 out per group
    assert dense.native_layout("int8") == ("nhwc" if vnni else "nchw")
    assert dense.kernel == ("channels_last_avx512vnni_u8s8" if vnni else feats["kernel_int8"])
    assert dense.native_layout("int16") == "nchw"
    assert depthwise.native_layout("int8") == ("nhwc" if avx512 else "nchw")
    dw_kernel = "channels_last_depthwise_avx512vnni" if vnni else "channels_last_depthwise_avx512bw"
    assert depthwise.kernel == (dw_kernel if avx512 else "direct")
    assert depthwise.native_layout("int16") == "nchw"
    assert grouped.native_layout("int8") == "nchw" and grouped.kernel == "direct"
    with pytest.raises(ValueError, match="native_layout.*'int8' or 'int16'"):
        dense.native_layout("int32")
    x = rand_int(rng, np.int8, (1, 8, 5, 5))
    with pytest.raises(ValueError, match="input_layout.*'nchw' or 'nhwc'"):
        mod.conv2d(x, dense, None, (1, 1), (1, 1), (1, 1), 1, None, None, "int32", input_layout="NHWC")
    with pytest.raises(ValueError, match=r"input.*\[N, H, W, C\]"):
        mod.conv2d(x[0], dense, None, (1, 1), (1, 1), (1, 1), 1, None, None, "int32", input_layout="nhwc")


@pytest.mark.parametrize("kernel", ["scalar", "avx2", "avx512bw", "avx512vnni"])
def test_every_gemm_path_is_exact(kernel):
    """Each runtime-dispatched GEMM path (forced by QFRAME_KERNEL) matches the reference; so do the sampling and
    GLU kernels, whose vector paths follow the same selection."""
    feats = bayes_kernels.cpu_features()
    if kernel != "scalar" and not feats[kernel]:
        pytest.skip(f"CPU lacks {kernel}")
    env = dict(os.environ, QFRAME_KERNEL=kernel, OMP_NUM_THREADS="1" if kernel == "avx2" else "2")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(HERE))] + sys.path)
    code = (
        "import tests.kernels.test_kernel_reference as t;"
        "import qframe_march_bayes._kernels as k;"
        f"assert k.cpu_features()['kernel'] == {kernel!r}, k.cpu_features();"
        "t.check_all_conv_cases(1, packed=False); t.check_linear_cases(1, packed=False);"
        "t.check_packed_weights(); t.check_overflow_lanes('bayes'); t.check_overflow_lanes('bernoulli2');"
        "t.check_all_conv_cases(1); t.check_linear_cases(1);"
        "import tests.kernels.test_sampling_kernels as s; s.check_all('bayes'); s.check_all('bernoulli2')"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("march", MARCHES)
def test_conv2d_raw_int32_output_saturates(march):
    mod = MODULES[march]
    # int16 * int8 accumulate in int64: 4 * 16 * 9 products of 2**22 overflow int32.
    x = np.full((1, 64, 4, 4), -32768, dtype=np.int16)
    w = np.full((2, 64, 3, 3), -128, dtype=np.int8)
    w[1] = 127
    bias = np.array([5, -7], dtype=np.int32)
    got = mod.conv2d(x, w, bias, (1, 1), (1, 1), (1, 1), 1, None, None, "int32", None, None)
    want = ref.conv2d(march, x, w, bias, (1, 1), (1, 1), (1, 1), 1, None, None, "int32")
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32
    assert got[0, 0].max() == 2**31 - 1 and got[0, 1].min() == -(2**31)
    # requantized from the exact int64 accumulator
    mult = np.array([max_mult(march)] * 2, dtype=np.int32)
    shift = np.array([40, 40], dtype=np.int32)
    got = mod.conv2d(x, w, bias, (1, 1), (1, 1), (1, 1), 1, mult, shift, "int32", None, None)
    want = ref.conv2d(march, x, w, bias, (1, 1), (1, 1), (1, 1), 1, mult, shift, "int32")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("march", MARCHES)
def test_conv2d_extreme_values(march):
    mod = MODULES[march]
    x = np.full((1, 8, 5, 5), -128, dtype=np.int8)
    w = np.full((16, 8, 3, 3), -128, dtype=np.int8)
    w[8:] = 127
    bias = np.full((16,), 2**31 - 1, dtype=np.int32)
    bias[8:] = -(2**31)
    for m, s in ((max_mult(march), 62), (max_mult(march), 0), (0, 5), (1, 1), (max_mult(march), 31)):
        mult = np.full((16,), m, dtype=np.int32)
        shift = np.full((16,), s, dtype=np.int32)
        for odt in ("int8", "int16", "int32"):
            got = mod.conv2d(x, w, bias, (1, 1), (1, 1), (1, 1), 1, mult, shift, odt, None, None)
            want = ref.conv2d(march, x, w, bias, (1, 1), (1, 1), (1, 1), 1, mult, shift, odt)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("march", MARCHES)
def test_conv2d_zero_batch(march):
    mod = MODULES[march]
    x = np.zeros((0, 4, 6, 6), dtype=np.int8)
    w = np.ones((8, 4, 3, 3), dtype=np.int8)
    ones = np.ones(8, dtype=np.int32)
    out = mod.conv2d(x, w, None, (2, 2), (1, 1), (1, 1), 1, ones, ones, "int8", None, None)
    assert out.shape == (0, 8, 3, 3) and out.dtype == np.int8
    out = mod.linear(np.zeros((0, 5), np.int16), np.ones((3, 5), np.int8), None, None, None, "int32", None, None)
    assert out.shape == (0, 3) and out.dtype == np.int32


def check_linear_cases(seed=0, packed=True):
    rng = np.random.default_rng(seed)
    for march, mod in MODULES.items():
        for m, k, n, idt, odt in ((1, 1, 1, "int8", "int8"), (3, 17, 5, "int8", "int16"), (64, 129, 33, "int8", "int8"),
                                  (70, 64, 20, "int8", "int8"), (33, 38, 17, "int16", "int8"),
                                  (7, 600, 13, "int16", "int16"), (5, 31, 40, "int16", "int32"), (2, 3, 2, "int8", "int32")):
            x = rand_int(rng, idt, (m, k))
            w = rand_int(rng, np.int8, (n, k))
            bias = rand_int(rng, np.int32, (n,), -(2**24), 2**24)
            mult = rng.integers(0, max_mult(march), size=n, endpoint=True).astype(np.int32)
            shift = rng.integers(8, 40, size=n).astype(np.int32)
            weights = [w] + ([mod.pack_linear_weight(w)] if packed else [])
            for cmin, cmax in ((None, None), (0, None)):
                want = ref.linear(march, x, w, bias, mult, shift, odt, cmin, cmax)
                for wt in weights:
                    got = mod.linear(x, wt, bias, mult, shift, odt, cmin, cmax)
                    np.testing.assert_array_equal(got, want, err_msg=f"{march} {(m, k, n, idt, odt)} {type(wt)}")
            if odt == "int32":
                want = ref.linear(march, x, w, None, None, None, "int32")
                for wt in weights:
                    np.testing.assert_array_equal(mod.linear(x, wt, None, None, None, "int32", None, None), want)


@pytest.mark.parametrize("march", MARCHES)
def test_linear_matches_reference(march):
    check_linear_cases(seed=MARCHES.index(march) + 10)


@pytest.mark.parametrize("march", MARCHES)
def test_linear_int8_long_reduction_is_exact(march):
    """K large enough that an int32 accumulator would overflow is still exact."""
    mod = MODULES[march]
    k = 140_000
    x = np.full((2, k), -128, dtype=np.int8)
    x[1, ::2] = 127
    w = np.full((3, k), -128, dtype=np.int8)
    mult = np.array([1, 3, max_mult(march)], dtype=np.int32)
    shift = np.array([16, 17, 45], dtype=np.int32)
    got = mod.linear(x, w, None, mult, shift, "int32", None, None)
    np.testing.assert_array_equal(got, ref.linear(march, x, w, None, mult, shift, "int32"))
    raw = mod.linear(x, w, None, None, None, "int32", None, None)
    assert raw[0, 0] == 2**31 - 1  # 140000 * 16384 saturates


@pytest.mark.parametrize("march", MARCHES)
def test_add_matches_reference(march):
    mod = MODULES[march]
    rng = np.random.default_rng(5)
    for shape, ta, tb in (((2, 3, 4, 5), np.int8, np.int8), ((17,), np.int16, np.int8), ((3, 1, 7), np.int16, np.int16),
                          ((), np.int8, np.int8), ((0, 4), np.int8, np.int8), ((70001,), np.int16, np.int16)):
        a = rand_int(rng, ta, shape)
        b = rand_int(rng, tb, shape)
        # (negative multiplier_b: subtraction)
        for ma, mb, s in ((1, 1, 0), (max_mult(march), max_mult(march), 30), (12345, 0, 13), (3, 7, 1),
                          (max_mult(march), -max_mult(march), 29), (5, -3, 2)):
            for odt in ("int8", "int16", "int32"):
                got = mod.add(a, b, ma, mb, s, odt, None, None)
                np.testing.assert_array_equal(got, ref.add(march, a, b, ma, mb, s, odt))
                got = mod.add(a, b, ma, mb, s, odt, 0, 6)
                np.testing.assert_array_equal(got, ref.add(march, a, b, ma, mb, s, odt, 0, 6))


@pytest.mark.parametrize("march", MARCHES)
def test_mul_matches_reference(march):
    """mul(a, b, m, s) = clamp(round_shift(a*b*m, s)): int8/int16 operands, tails and several blocks, ties."""
    mod = MODULES[march]
    rng = np.random.default_rng(6)
    rounding = ref.MARCH_RULES[march][1]
    for shape, ta, tb in (((2, 3, 4, 5), np.int8, np.int8), ((19,), np.int16, np.int8), ((70001,), np.int16, np.int16),
                          ((0,), np.int8, np.int8)):
        a, b = rand_int(rng, ta, shape), rand_int(rng, tb, shape)
        a.reshape(-1)[:2] = np.iinfo(ta).min
        b.reshape(-1)[:2] = np.iinfo(tb).min
        for m, s in ((1, 0), (max_mult(march), 40), (3, 1), (12345, 20)):
            for odt, clamp in (("int8", (None, None)), ("int16", (None, None)), ("int8", (-5, 9))):
                lo, hi = ref.clamp_bounds(odt, *clamp)
                want = ref.requant_values(a.astype(np.int64) * b.astype(np.int64), m, 0, 0, s, rounding, lo, hi)
                np.testing.assert_array_equal(mod.mul(a, b, m, s, odt, *clamp), want.astype(odt))
    with pytest.raises(ValueError, match="same shape"):
        mod.mul(np.zeros(3, np.int8), np.zeros(4, np.int8), 1, 0, "int8")
    with pytest.raises(ValueError, match="multiplier"):
        mod.mul(np.zeros(3, np.int8), np.zeros(3, np.int8), -(2 ** 40), 0, "int8")
    # a negative multiplier negates the product (the sign of mul_scalar's constant rides on it)
    a = np.array([3, -5, 7], np.int8)
    np.testing.assert_array_equal(mod.mul(a, np.ones(3, np.int8), -1, 0, "int8"), -a)


def test_rounding_ties_differ_between_marches():
    """x.5 ties: bernoulli2 rounds half up, bayes half to even."""
    a = np.array([5, -5, 7, -7, 3, -3, 1, -1, 4, -4], dtype=np.int16)  # /2 -> exact .5 ties except +-4
    b = np.zeros_like(a)
    up = bernoulli2_kernels.add(a, b, 1, 0, 1, "int16", None, None)
    even = bayes_kernels.add(a, b, 1, 0, 1, "int16", None, None)
    np.testing.assert_array_equal(up, [3, -2, 4, -3, 2, -1, 1, 0, 2, -2])
    np.testing.assert_array_equal(even, [2, -2, 4, -4, 2, -2, 0, 0, 2, -2])
    assert (up != even).sum() == 4
    # same through requantize and conv: 20/8 = 2.5, -28/8 = -3.5, ...
    x = np.array([20, -28, -20, 28], dtype=np.int32)
    one = np.array([1], np.int32)
    three = np.array([1], np.int32) * 3
    np.testing.assert_array_equal(bernoulli2_kernels.requantize(x, one, three, None, "int8"), [3, -3, -2, 4])
    np.testing.assert_array_equal(bayes_kernels.requantize(x, one, three, None, "int8"), [2, -4, -2, 4])
    xi = np.array([[[[5]]], [[[-7]]]], dtype=np.int8)  # 1x1 conv, weight 1, shift 1
    w = np.ones((1, 1, 1, 1), np.int8)
    m1 = np.ones(1, np.int32)
    up = bernoulli2_kernels.conv2d(xi, w, None, (1, 1), (0, 0), (1, 1), 1, m1, m1, "int8", None, None)
    even = bayes_kernels.conv2d(xi, w, None, (1, 1), (0, 0), (1, 1), 1, m1, m1, "int8", None, None)
    assert up.ravel().tolist() == [3, -3] and even.ravel().tolist() == [2, -4]


@pytest.mark.parametrize("march", MARCHES)
def test_requantize_matches_reference(march):
    mod = MODULES[march]
    rng = np.random.default_rng(11)
    x32 = rand_int(rng, np.int32, (3, 4, 5))
    x64 = rng.integers(-(2**62), 2**62, size=(2, 6), dtype=np.int64)
    x8, x16 = rand_int(rng, np.int8, (2, 3, 5000)), rand_int(rng, np.int16, (3, 9000))  # several blocks a row
    for x, axis in ((x32, 1), (x32, -1), (x32, 0), (x64, 1), (x64, 0), (x8, 1), (x8, 2), (x16, 0), (x16, 1)):
        n = x.shape[axis]
        mult = rng.integers(0, max_mult(march), size=n, endpoint=True).astype(np.int32)
        shift = rng.integers(0, 62, size=n, endpoint=True).astype(np.int32)
        for odt in ("int8", "int16", "int32"):
            got = mod.requantize(x, mult, shift, axis, odt, None, None)
            np.testing.assert_array_equal(got, ref.requantize(march, x, mult, shift, axis, odt))
            got = mod.requantize(x, mult[:1], shift[:1], None, odt, 0, None)
            np.testing.assert_array_equal(got, ref.requantize(march, x, mult[:1], shift[:1], None, odt, 0, None))


def test_multiplier_range_depends_on_march():
    a = np.ones((4,), np.int8)
    with pytest.raises(ValueError, match=r"add.*multiplier_a.*bernoulli2.*32767"):
        bernoulli2_kernels.add(a, a, 40000, 1, 0, "int8", None, None)
    assert bayes_kernels.add(a, a, 40000, 1, 16, "int8", None, None).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"add.*bayes.*2147483647"):
        bayes_kernels.add(a, a, 2**31, 1, 0, "int8", None, None)
    x = np.ones((1, 2, 3, 3), np.int8)
    w = np.ones((2, 2, 1, 1), np.int8)
    m = np.array([1, 40000], np.int32)
    s = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match=r"conv2d.*multiplier.*\[1\].*40000.*bernoulli2"):
        bernoulli2_kernels.conv2d(x, w, None, (1, 1), (0, 0), (1, 1), 1, m, s, "int8", None, None)
    bayes_kernels.conv2d(x, w, None, (1, 1), (0, 0), (1, 1), 1, m, s, "int32", None, None)


def _conv_ok_args():
    x = np.ones((1, 4, 5, 5), np.int8)
    w = np.ones((6, 2, 3, 3), np.int8)
    ones = np.ones(6, np.int32)
    return dict(input=x, weight=w, bias=np.zeros(6, np.int32), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                groups=2, multiplier=ones, shift=ones, out_dtype="int8", clamp_min=None, clamp_max=None)


BAD_CONV = [
    ("float input", dict(input=np.ones((1, 4, 5, 5), np.float32)), TypeError, "input"),
    ("list input", dict(input=[[[[1]]]]), TypeError, "input"),
    ("int32 input", dict(input=np.ones((1, 4, 5, 5), np.int32)), TypeError, "input"),
    ("big-endian bias", dict(bias=np.zeros(6, ">i4")), TypeError, "bias"),
    ("rank 3 input", dict(input=np.ones((4, 5, 5), np.int8)), ValueError, "input"),
    ("transposed input", dict(input=np.ones((1, 4, 5, 5), np.int8).transpose(0, 1, 3, 2)[:, :, :, :]), None, None),
    ("non-contiguous input", dict(input=np.ones((1, 4, 5, 10), np.int8)[..., ::2]), ValueError, "C-contiguous"),
    ("float weight", dict(weight=np.ones((6, 2, 3, 3), np.float64)), TypeError, "weight"),
    ("mismatched channels", dict(weight=np.ones((6, 3, 3, 3), np.int8)), ValueError, "weight"),
    ("groups not dividing", dict(groups=3), ValueError, "groups"),
    ("groups zero", dict(groups=0), ValueError, "groups"),
    ("groups float", dict(groups=2.0), TypeError, "groups"),
    ("bias length", dict(bias=np.zeros(5, np.int32)), ValueError, "bias"),
    ("multiplier int64", dict(multiplier=np.ones(6, np.int64)), TypeError, "multiplier"),
    ("multiplier length", dict(multiplier=np.ones(3, np.int32)), ValueError, "multiplier"),
    ("negative multiplier", dict(multiplier=-np.ones(6, np.int32)), ValueError, "multiplier"),
    ("negative shift", dict(shift=-np.ones(6, np.int32)), ValueError, "shift"),
    ("shift 63", dict(shift=np.full(6, 63, np.int32)), ValueError, "shift"),
    ("bad out_dtype", dict(out_dtype="int4"), ValueError, "out_dtype"),
    ("out_dtype not str", dict(out_dtype=np.int8), TypeError, "out_dtype"),
    ("raw needs int32", dict(multiplier=None, shift=None), ValueError, "int32"),
    ("only shift None", dict(shift=None), ValueError, "shift"),
    ("stride 0", dict(stride=(0, 1)), ValueError, "stride"),
    ("stride triple", dict(stride=(1, 1, 1)), ValueError, "stride"),
    ("stride str", dict(stride="1"), TypeError, "stride"),
    ("negative padding", dict(padding=(-1, 0)), ValueError, "padding"),
    ("kernel too big", dict(padding=(0, 0), dilation=(3, 3)), ValueError, "fit"),
    ("empty clamp", dict(clamp_min=10, clamp_max=5), ValueError, "clamp"),
    ("clamp outside dtype", dict(clamp_min=200), ValueError, "clamp"),
    ("residual shape", dict(residual=np.ones((1, 6, 4, 5), np.int8), residual_multiplier=np.ones(6, np.int32)),
     ValueError, "residual"),
    ("residual without multiplier", dict(residual=np.ones((1, 6, 5, 5), np.int8)), ValueError, "residual"),
    ("residual float", dict(residual=np.ones((1, 6, 5, 5), np.float32), residual_multiplier=np.ones(6, np.int32)),
     TypeError, "residual"),
    ("residual with raw", dict(multiplier=None, shift=None, out_dtype="int32", residual=np.ones((1, 6, 5, 5), np.int8),
                               residual_multiplier=np.ones(6, np.int32)), ValueError, "residual"),
]


@pytest.mark.parametrize("march", MARCHES)
@pytest.mark.parametrize("name,override,exc,needle", BAD_CONV, ids=[c[0] for c in BAD_CONV])
def test_conv2d_bad_inputs(march, name, override, exc, needle):
    mod = MODULES[march]
    kwargs = _conv_ok_args()
    kwargs.update(override)
    if name == "transposed input":
        kwargs["input"] = np.ones((1, 4, 5, 5), np.int8).transpose(0, 1, 3, 2)
        if kwargs["input"].flags.c_contiguous:  # square spatial views are still not C-contiguous in numpy
            pytest.skip("view unexpectedly contiguous")
        exc, needle = ValueError, "C-contiguous"
    with pytest.raises(exc) as info:
        mod.conv2d(**kwargs)
    msg = str(info.value)
    assert msg.startswith("conv2d:"), msg
    assert needle in msg, msg


@pytest.mark.parametrize("march", MARCHES)
def test_other_functions_bad_inputs(march):
    mod = MODULES[march]
    a = np.ones((2, 3), np.int8)
    one = np.ones(1, np.int32)
    cases = [
        (lambda: mod.linear(a.astype(np.float32), a, None, None, None, "int32", None, None), TypeError, "linear"),
        (lambda: mod.linear(a, np.ones((4, 2), np.int8), None, None, None, "int32", None, None), ValueError, "linear"),
        (lambda: mod.linear(a.T, a.T.copy(), None, None, None, "int32", None, None), ValueError, "linear"),
        (lambda: mod.linear(a, a, None, np.ones(2, np.int32), np.full(2, -1, np.int32), "int8", None, None),
         ValueError, "linear"),
        (lambda: mod.linear(a[0], a, None, None, None, "int32", None, None), ValueError, "linear"),
        (lambda: mod.add(a, np.ones((3, 2), np.int8), 1, 1, 0, "int8", None, None), ValueError, "add"),
        (lambda: mod.add(a, a.astype(np.int32), 1, 1, 0, "int8", None, None), TypeError, "add"),
        (lambda: mod.add(a, a, 1, 1, -1, "int8", None, None), ValueError, "add"),
        (lambda: mod.add(a, a, -(2 ** 40), 1, 0, "int8", None, None), ValueError, "add"),
        (lambda: mod.add(a, a, 1.5, 1, 0, "int8", None, None), TypeError, "add"),
        (lambda: mod.add(a, a, 1, 1, 0, "uint8", None, None), ValueError, "add"),
        (lambda: mod.requantize(a.astype(np.float32), one, one, None, "int8", None, None), TypeError, "requantize"),
        (lambda: mod.requantize(a.astype(np.int32), np.ones(2, np.int32), np.ones(2, np.int32), 1, "int8", None, None),
         ValueError, "requantize"),
        (lambda: mod.requantize(a.astype(np.int32), one, one, 5, "int8", None, None), ValueError, "requantize"),
        (lambda: mod.requantize(a.astype(np.int32), [1], one, None, "int8", None, None), TypeError, "requantize"),
        (lambda: mod.requantize(a.astype(np.int32), np.ones(3, np.int32), np.ones(3, np.int32), None, "int8", None,
                                None), ValueError, "requantize"),
    ]
    for fn, exc, needle in cases:
        with pytest.raises(exc) as info:
            fn()
        assert str(info.value).startswith(needle + ":"), str(info.value)


_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.float32, np.uint8])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    march=st.sampled_from(MARCHES),
    xdt=_dtypes,
    wdt=st.sampled_from([np.int8, np.int8, np.int16]),
    n=st.integers(0, 2), c=st.integers(0, 6), h=st.integers(0, 7), w=st.integers(0, 7),
    o=st.integers(0, 6), kh=st.integers(0, 4), kw=st.integers(0, 4), cw=st.integers(0, 6),
    stride=st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
    padding=st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
    dilation=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    groups=st.integers(-1, 4),
    mlen=st.integers(0, 7),
    shift=st.integers(-2, 64),
    mult=st.integers(-2, 2**32),
    out_dtype=st.sampled_from(["int8", "int16", "int32", "int64", "float"]),
    transpose=st.booleans(),
    raw=st.booleans(),
    layouts=st.sampled_from(LAYOUTS + [("NHWC", "nchw"), ("nchw", None)]),
    packed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_conv2d_never_crashes(march, xdt, wdt, n, c, h, w, o, kh, kw, cw, stride, padding, dilation, groups,
                                   mlen, shift, mult, out_dtype, transpose, raw, layouts, packed, seed):
    mod = MODULES[march]
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(n, c, h, w)).astype(xdt)
    if transpose:
        x = x.transpose(0, 1, 3, 2)
    wt = rng.integers(-128, 128, size=(o, cw, kh, kw)).astype(wdt)
    mult_a = None if raw else np.full(mlen, mult % 2**32, np.int64).astype(np.int32)
    shift_a = None if raw else np.full(mlen, shift, np.int32)
    in_layout, out_layout = layouts
    try:
        w_arg = mod.pack_conv2d_weight(wt, groups) if packed else wt
        xi = x
        if in_layout == "nhwc":  # a C-contiguous NHWC array, or (transpose) a non-contiguous view: refused
            xi = x.transpose(0, 2, 3, 1) if transpose else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        got = mod.conv2d(xi, w_arg, None, stride, padding,
                         dilation, groups, mult_a, shift_a, out_dtype, None, None, input_layout=in_layout,
                         output_layout=out_layout)
    except (TypeError, ValueError) as e:
        assert str(e).startswith(("conv2d:", "pack_conv2d_weight:")), str(e)
        return
    want = ref.conv2d(march, x, wt, None, stride, padding, dilation, groups, mult_a, shift_a, out_dtype)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2) if out_layout == "nhwc" else got, want)


# ---------------------------------------------------------------------------------------------- packed weights

def check_packed_weights(seed=3):
    """PackedWeight: reusable across calls and input dtypes, picklable, equal to the array path."""
    import copy
    import pickle

    rng = np.random.default_rng(seed)
    for march, mod in MODULES.items():
        wt = rand_int(rng, np.int8, (24, 8, 3, 3))
        pw = mod.pack_conv2d_weight(wt, 2)
        assert pw.op == "conv2d" and pw.march == march and pw.shape == (24, 8, 3, 3) and pw.groups == 2
        assert pw.nbytes >= wt.size and march in repr(pw)
        np.testing.assert_array_equal(pw.weight(), wt)
        mult = rng.integers(0, max_mult(march), size=24, endpoint=True).astype(np.int32)
        shift = rng.integers(10, 30, size=24).astype(np.int32)
        for idt in ("int8", "int16", "int8"):  # int16 packs its layout on first use; int8 again after
            x = rand_int(rng, idt, (2, 16, 7, 6))
            want = ref.conv2d(march, x, wt, None, (1, 1), (1, 1), (1, 1), 2, mult, shift, "int8")
            for p in (pw, pickle.loads(pickle.dumps(pw)), copy.deepcopy(pw)):
                got = mod.conv2d(x, p, None, (1, 1), (1, 1), (1, 1), 2, mult, shift, "int8", None, None)
                np.testing.assert_array_equal(got, want)
        lw = rand_int(rng, np.int8, (9, 13))
        pl = mod.pack_linear_weight(lw)
        x = rand_int(rng, np.int8, (5, 13))
        np.testing.assert_array_equal(mod.linear(x, pickle.loads(pickle.dumps(pl)), None, None, None, "int32"),
                                      ref.linear(march, x, lw, None, None, None, "int32"))
        # the pack holds a copy: changing the array afterwards does not change it
        lw2 = lw.copy()
        pl2 = mod.pack_linear_weight(lw2)
        lw2[:] = 0
        np.testing.assert_array_equal(mod.linear(x, pl2, None, None, None, "int32"),
                                      ref.linear(march, x, lw, None, None, None, "int32"))


def test_packed_weights():
    check_packed_weights()


@pytest.mark.parametrize("march", MARCHES)
def test_packed_weight_bad_inputs(march):
    mod = MODULES[march]
    other = MODULES["bayes" if march == "bernoulli2" else "bernoulli2"]
    w4 = np.ones((6, 2, 3, 3), np.int8)
    x = np.ones((1, 4, 5, 5), np.int8)
    ones = np.ones(6, np.int32)
    conv = dict(bias=None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), multiplier=ones, shift=ones,
                out_dtype="int8")
    cases = [
        (lambda: mod.pack_conv2d_weight(w4.astype(np.float32), 2), TypeError, "pack_conv2d_weight", "weight"),
        (lambda: mod.pack_conv2d_weight(w4[0], 2), ValueError, "pack_conv2d_weight", "weight"),
        (lambda: mod.pack_conv2d_weight(w4.transpose(0, 1, 3, 2)[:, :, ::2], 2), ValueError, "pack_conv2d_weight",
         "C-contiguous"),
        (lambda: mod.pack_conv2d_weight(w4, 4), ValueError, "pack_conv2d_weight", "groups"),
        (lambda: mod.pack_conv2d_weight(w4, 0), ValueError, "pack_conv2d_weight", "groups"),
        (lambda: mod.pack_conv2d_weight(w4, 2.0), TypeError, "pack_conv2d_weight", "groups"),
        (lambda: mod.pack_conv2d_weight(np.ones((6, 2, 0, 3), np.int8), 2), ValueError, "pack_conv2d_weight",
         "kernel"),
        (lambda: mod.pack_conv2d_weight([[1]], 1), TypeError, "pack_conv2d_weight", "weight"),
        (lambda: mod.pack_linear_weight(np.ones((3, 4), np.int16)), TypeError, "pack_linear_weight", "weight"),
        (lambda: mod.pack_linear_weight(np.ones((3, 4, 1), np.int8)), ValueError, "pack_linear_weight", "weight"),
        (lambda: mod.conv2d(x, mod.pack_conv2d_weight(w4, 2), groups=1, **conv), ValueError, "conv2d", "groups"),
        (lambda: mod.conv2d(x, mod.pack_conv2d_weight(w4, 1), groups=1, **conv), ValueError, "conv2d", "weight"),
        (lambda: mod.conv2d(x, mod.pack_linear_weight(np.ones((6, 18), np.int8)), groups=2, **conv), ValueError,
         "conv2d", "pack_conv2d_weight"),
        (lambda: mod.conv2d(x, other.pack_conv2d_weight(w4, 2), groups=2, **conv), TypeError, "conv2d", "weight"),
        (lambda: mod.linear(np.ones((2, 5), np.int8), mod.pack_linear_weight(np.ones((3, 4), np.int8)), None, None,
                            None, "int32"), ValueError, "linear", "weight"),
        (lambda: mod.linear(np.ones((2, 4), np.int8), mod.pack_conv2d_weight(w4, 2), None, None, None, "int32"),
         ValueError, "linear", "pack_linear_weight"),
    ]
    for fn, exc, owner, needle in cases:
        with pytest.raises(exc) as info:
            fn()
        msg = str(info.value)
        assert msg.startswith(owner + ":"), msg
        assert needle in msg, msg
    import pickle

    state = mod.pack_conv2d_weight(w4, 2).__getstate__()
    bad = mod.PackedWeight.__new__(mod.PackedWeight)
    with pytest.raises(ValueError, match="PackedWeight.__setstate__"):
        bad.__setstate__((state[0], "nomarch", state[2], state[3]))
    with pytest.raises(ValueError, match="PackedWeight.__setstate__.*op"):
        bad.__setstate__(("matmul", march, state[2], state[3]))
    with pytest.raises(ValueError, match="PackedWeight.__setstate__"):
        bad.__setstate__(state[:3])
    with pytest.raises(TypeError, match="PackedWeight.__setstate__.*weight"):
        bad.__setstate__((state[0], march, state[2].astype(np.float32), state[3]))
    # a pickled PackedWeight of one march loads only into that march
    assert pickle.loads(pickle.dumps(other.pack_linear_weight(np.ones((2, 2), np.int8)))).march == other.MARCH


@pytest.mark.parametrize("march", MARCHES)
def test_requant_epilogue_int32_overflow_lanes(march):
    check_overflow_lanes(march)


def check_overflow_lanes(march):
    """acc + bias leaves int32 for some lanes only: the vector epilogue must hand exactly those
    steps to the exact path (weights sum to 0, so the u8 offset does not move the bias)."""
    mod = MODULES[march]
    rng = np.random.default_rng(21)
    x = rand_int(rng, np.int8, (2, 16, 7, 9))
    w = np.empty((12, 16, 3, 3), np.int8)
    w.reshape(12, -1)[:, 0::2] = 127
    w.reshape(12, -1)[:, 1::2] = -127
    bias = np.full(12, 2**31 - 1 - 3000, np.int32)
    bias[6:] = -(2**31) + 3000
    w[6:] *= -1
    mult = rng.integers(1, max_mult(march), size=12, endpoint=True).astype(np.int32)
    shift = rng.integers(20, 40, size=12).astype(np.int32)
    res = rand_int(rng, np.int16, (2, 12, 7, 9))
    rmult = rng.integers(0, max_mult(march), size=12, endpoint=True).astype(np.int32)
    for wt in (w, mod.pack_conv2d_weight(w, 1)):
        for odt in ("int8", "int16", "int32"):
            got = mod.conv2d(x, wt, bias, (1, 1), (1, 1), (1, 1), 1, mult, shift, odt, None, None, res, rmult)
            want = ref.conv2d(march, x, w, bias, (1, 1), (1, 1), (1, 1), 1, mult, shift, odt, residual=res,
                              residual_multiplier=rmult)
            np.testing.assert_array_equal(got, want)
    xl = rand_int(rng, np.int8, (40, 144))
    wl = w.reshape(12, -1).copy()
    for wt in (wl, mod.pack_linear_weight(wl)):
        got = mod.linear(xl, wt, bias, mult, shift, "int16", None, None)
        np.testing.assert_array_equal(got, ref.linear(march, xl, wl, bias, mult, shift, "int16"))


def check_random_convs(march, seed, draw_channels, kernel_sizes, spatial, pad_max, stride_max, draw_epilogue):
    """40 random convs of `march` against the reference in every input/output layout.  draw_channels(rng)
    -> (n, c, o, groups); draw_epilogue(rng, i, o) -> (mult, shift, out_dtype, with_residual); kernel
    heights/widths from kernel_sizes, input sides below `spatial`, padding up to pad_max, stride and
    dilation draws as given."""
    mod = MODULES[march]
    rng = np.random.default_rng(seed)
    checked = 0
    while checked < 40:
        n, c, o, groups = draw_channels(rng)
        kh, kw = int(rng.choice(kernel_sizes[0])), int(rng.choice(kernel_sizes[1]))
        h, w = int(rng.integers(1, spatial[0])), int(rng.integers(1, spatial[1]))
        stride = (int(rng.integers(1, stride_max + 1)), int(rng.integers(1, stride_max + 1)))
        padding = (int(rng.integers(0, pad_max + 1)), int(rng.integers(0, pad_max + 1)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        if h + 2 * padding[0] < dilation[0] * (kh - 1) + 1 or w + 2 * padding[1] < dilation[1] * (kw - 1) + 1:
            continue
        x = rand_int(rng, np.int8, (n, c, h, w))
        wt = rand_int(rng, np.int8, (o, c // groups, kh, kw))
        bias = rand_int(rng, np.int32, (o,), -(2**20), 2**20)
        mult, shift, odt, with_residual = draw_epilogue(rng, checked, o)
        ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        kwargs = {}
        if with_residual:
            kwargs = {"residual": rand_int(rng, (np.int8, np.int16)[checked % 4 // 2], (n, o, ho, wo)),
                      "residual_multiplier": rng.integers(0, max_mult(march), size=o, endpoint=True).astype(np.int32)}
        args = (x, mod.pack_conv2d_weight(wt, groups), bias, stride, padding, dilation, groups, mult, shift, odt)
        cmin = 0 if checked % 3 == 1 else None
        want = ref.conv2d(march, x, wt, *args[2:], cmin, None, **kwargs)
        for layouts in LAYOUTS:
            np.testing.assert_array_equal(conv2d_in_layouts(mod, args, kwargs, cmin, None, *layouts), want,
                                          err_msg=f"{x.shape} {wt.shape} {stride} {padding} {dilation} {layouts}")
        checked += 1


@pytest.mark.parametrize("march", MARCHES)
def test_depthwise_random_shapes_in_every_layout(march):
    """Depthwise convs (the channels-last depthwise kernel where the CPU has AVX-512BW): random shapes,
    strides, padding, dilation, channel counts that are not multiples of 16, residuals and raw output."""
    def channels(rng):
        n, c = int(rng.integers(1, 3)), int(rng.choice([1, 3, 16, 17, 40]))
        return n, c, c, c

    def epilogue(rng, i, o):
        if i % 7 == 0:  # raw int32 accumulators
            return None, None, "int32", False
        return (rng.integers(0, max_mult(march), size=o, endpoint=True).astype(np.int32),
                rng.integers(0, 40, size=o).astype(np.int32), ("int8", "int16", "int32")[i % 3], i % 2 == 0)

    check_random_convs(march, 17, channels, ([1, 3, 5], [1, 2, 3]), (10, 12), 2, 2, epilogue)


@pytest.mark.parametrize("march", MARCHES)
def test_dense_random_shapes_in_every_layout(march):
    """Dense convs with channel counts that are multiples of 4: an NHWC input runs the channels-last
    kernel's direct path (no padded copy; tiles at the border read a zero pixel for each tap outside the
    input), an NCHW input the copy path.  Random shapes, strides, padding larger than the kernel reach,
    dilation, residuals, int8/int16 outputs; every tile kind (inside, at the border, tail rows)."""
    def channels(rng):
        return int(rng.integers(1, 3)), int(rng.choice([4, 8, 12, 64])), int(rng.choice([16, 24, 40, 64])), 1

    def epilogue(rng, i, o):
        return (rng.integers(0, max_mult(march), size=o, endpoint=True).astype(np.int32),
                rng.integers(0, 45, size=o).astype(np.int32), ("int8", "int16")[i % 2], i % 3 == 0)

    ks = [1, 2, 3, 4, 5]
    check_random_convs(march, 23, channels, (ks, ks), (16, 16), 3, 3, epilogue)


@pytest.mark.parametrize("march", MARCHES)
def test_quantize_matches_quantize_to_int(march):
    """The QuantStub kernel is bit-identical to qframe's float->integer rule (numerics.quantize_to_int):
    ties to even, NaN -> 0, +-inf -> the bounds, tiny and huge values, NCHW and NHWC outputs."""
    import torch

    from qframe_core.dtype import qint8, qint16
    from qframe_core.numerics import quantize_to_int

    mod = MODULES[march]
    rng = np.random.default_rng(23)
    for i, shape in enumerate([(1, 3, 20, 23), (2, 5, 7, 9), (37,), (3, 1, 4, 4), (1, 16, 1, 1), (4, 33)]):
        scale = np.float32([0.05, 1 / 128, 0.0123457, 3.7e-5, 1.5, 2.0**-20][i])
        x = (rng.standard_normal(shape) * [1, 10, 1000][i % 3]).astype(np.float32)
        flat = x.reshape(-1)
        flat[:10] = ((rng.integers(-300, 300, 10) + 0.5) * scale).astype(np.float32)  # exact ties
        flat[10:15] = [np.nan, np.inf, -np.inf, 1e-45, -0.0]
        for dt in (qint8, qint16):
            want = quantize_to_int(torch.from_numpy(x), torch.tensor(scale), dt, out_dtype=dt.torch_dtype).numpy()
            name = "int8" if dt is qint8 else "int16"
            np.testing.assert_array_equal(mod.quantize(x, float(scale), name, dt.quant_min, dt.quant_max), want)
            if len(shape) == 4:
                got = mod.quantize(x, float(scale), name, dt.quant_min, dt.quant_max, "nhwc")
                np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="quantize: argument 'input' must be a C-contiguous float32"):
        mod.quantize(x.astype(np.float64), 0.1, "int8", -128, 127)
    with pytest.raises(ValueError, match="scale.*finite and > 0"):
        mod.quantize(x, 0.0, "int8", -128, 127)
    with pytest.raises(ValueError, match="'int8' or 'int16'"):
        mod.quantize(x, 0.1, "int32", -128, 127)
    with pytest.raises(ValueError, match="qmin <= qmax"):
        mod.quantize(x, 0.1, "int8", -300, 127)
    with pytest.raises(ValueError, match="4-D"):
        mod.quantize(x[0], 0.1, "int8", -128, 127, "nhwc")
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.quantize(x.transpose(0, 2, 3, 1), 0.1, "int8", -128, 127)


@pytest.mark.parametrize("march", MARCHES)
def test_dequantize_matches_integer_tensor_to_float(march):
    """The DeQuantStub kernel: float32(q) * scale, bit-identical to integer_tensor_to_float, NHWC in -> NCHW."""
    import torch

    from qframe_core.dtype import qint8, qint16, qint32
    from qframe_core.nn.qat.base import integer_tensor_to_float
    from qframe_core.quantization.fake_quantize import QuantParams

    mod = MODULES[march]
    rng = np.random.default_rng(29)
    for dt, npdt in ((qint8, np.int8), (qint16, np.int16), (qint32, np.int32)):
        q = rand_int(rng, npdt, (2, 5, 3, 7))
        for scale in (np.float32(0.0123457), np.float32(3.1e-9), np.float32(7.5)):
            want = integer_tensor_to_float(torch.from_numpy(q), QuantParams(torch.tensor(scale), dt, None)).numpy()
            np.testing.assert_array_equal(mod.dequantize(q, float(scale)), want)
            np.testing.assert_array_equal(mod.dequantize(to_nhwc(q), float(scale), "nhwc"), want)
    with pytest.raises(TypeError, match="dequantize: argument 'input'"):
        mod.dequantize(q.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        mod.dequantize(q[0], 0.5, "nhwc")


@pytest.mark.parametrize("march", MARCHES)
def test_conv2d_plan_equals_conv2d(march):
    """conv2d_plan validates everything but the input once; calling it computes what conv2d computes."""
    mod = MODULES[march]
    rng = np.random.default_rng(31)
    for case in CONV_CASES:
        args, kwargs = _conv_case_args(rng, march, case)
        x, wt, bias, stride, padding, dilation, groups, mult, shift, odt = args
        for weight in (wt, mod.pack_conv2d_weight(wt, groups)):
            plan = mod.conv2d_plan(weight, bias, stride, padding, dilation, groups, mult, shift, odt, 0, None,
                                   kwargs.get("residual_multiplier"))
            want = ref.conv2d(march, *args, 0, None, **kwargs)
            for layouts in LAYOUTS:
                xi = to_nhwc(x) if layouts[0] == "nhwc" else x
                res = kwargs.get("residual")
                res = to_nhwc(res) if res is not None and layouts[1] == "nhwc" else res
                got = plan(xi, res, *layouts)
                got = got.transpose(0, 3, 1, 2) if layouts[1] == "nhwc" else got
                np.testing.assert_array_equal(got, want, err_msg=f"{case} {layouts}")
    x = rand_int(rng, np.int8, (1, 4, 5, 5))
    plan = mod.conv2d_plan(rand_int(rng, np.int8, (8, 4, 3, 3)), None, (1, 1), (1, 1), (1, 1), 1,
                           np.full(8, 3, np.int32), np.full(8, 4, np.int32), "int8")
    with pytest.raises(ValueError, match="Conv2dPlan: residual and residual_multiplier must both be given"):
        plan(x, rand_int(rng, np.int8, (1, 8, 5, 5)))
    with pytest.raises(ValueError, match="Conv2dPlan: argument 'weight' has shape"):
        plan(rand_int(rng, np.int8, (1, 3, 5, 5)))
    with pytest.raises(ValueError, match="conv2d_plan: argument 'groups' = 3 must divide the output channels"):
        mod.conv2d_plan(rand_int(rng, np.int8, (8, 4, 3, 3)), None, (1, 1), (1, 1), (1, 1), 3, None, None, "int32")


@pytest.mark.parametrize("march", MARCHES)
def test_lookup_kernel(march):
    """lookup(input, table) = table[input - min] for int8 (256 entries) and int16 (65536) inputs, any shape
    and length (the AVX-512 VBMI int8 path works in blocks of 64), int8/int16/int32 entries; bad tables
    and inputs raise clear errors."""
    mod = MODULES[march]
    rng = np.random.default_rng(31)
    for in_dt, n_codes in ((np.int8, 256), (np.int16, 65536)):
        for out_dt in (np.int8, np.int16, np.int32):
            table = rand_int(rng, out_dt, (n_codes,))
            for shape in ((0,), (1,), (63,), (64,), (65,), (3, 130), (2, 5, 7, 9), (70000,)):
                x = rand_int(rng, in_dt, shape)
                got = mod.lookup(x, table)
                assert got.dtype == out_dt and got.shape == x.shape
                np.testing.assert_array_equal(got, table[x.astype(np.int64) - np.iinfo(in_dt).min])
    x8 = rand_int(rng, np.int8, (10,))
    with pytest.raises(ValueError, match="one entry per code of the int8 input.*256"):
        mod.lookup(x8, np.zeros(255, np.int8))
    with pytest.raises(TypeError, match="input"):
        mod.lookup(x8.astype(np.float32), np.zeros(256, np.int8))
    with pytest.raises(TypeError, match="table"):
        mod.lookup(x8, np.zeros(256, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.lookup(rand_int(rng, np.int8, (4, 6))[:, ::2], np.zeros(256, np.int8))


@pytest.mark.parametrize("march", MARCHES)
def test_softmax_kernel_rejects_bad_arguments(march):
    """The softmax kernel's numbers are tested through the integer Softmax module
    (tests/quantization/test_softmax_layernorm_glu.py); here its argument checks."""
    mod = MODULES[march]
    x = np.zeros((2, 3), np.int8)
    e, r = np.zeros(256, np.int32), np.zeros(1 << 15, np.int32)
    assert mod.softmax(x, e, r, 0, 1, 0, "int8").shape == (2, 3)
    assert mod.softmax(np.zeros((2, 0), np.int8), e, r, 0, 1, 0, "int16").dtype == np.int16
    with pytest.raises(ValueError, match="exp_table.*256 entries"):
        mod.softmax(x, np.zeros(255, np.int32), r, 0, 1, 0, "int8")
    with pytest.raises(ValueError, match="exp_table.*65536 entries"):
        mod.softmax(x.astype(np.int16), e, r, 0, 1, 0, "int8")
    with pytest.raises(ValueError, match="reciprocal_table"):
        mod.softmax(x, e, r[:-1], 0, 1, 0, "int8")
    with pytest.raises(ValueError, match="shift"):
        mod.softmax(x, e, r, 0, 1, 63, "int8")
    with pytest.raises(ValueError, match="multiplier"):
        mod.softmax(x, e, r, 0, -1, 0, "int8")
    with pytest.raises(ValueError, match="out_dtype"):
        mod.softmax(x, e, r, 0, 1, 0, "int32")
    with pytest.raises(ValueError, match=r"\[rows, n\]"):
        mod.softmax(np.zeros(3, np.int8), e, r, 0, 1, 0, "int8")


@pytest.mark.parametrize("march", MARCHES)
def test_layernorm_kernel_rejects_bad_arguments(march):
    """The layernorm kernel's numbers are tested through the integer LayerNorm module
    (tests/quantization/test_softmax_layernorm_glu.py); here its argument checks."""
    mod = MODULES[march]
    x = np.zeros((2, 4), np.int8)
    r = np.zeros(1 << 15, np.int32)
    norm = (0, 1, 0)
    assert mod.layernorm(x, 1, r, norm, 7, "int8").shape == (2, 4)
    w, b = np.ones(4, np.int64), np.zeros(4, np.int64)
    assert mod.layernorm(x, 1, r, norm, 7, "int16", w, b, (0, 1, 0), "int16").dtype == np.int16
    with pytest.raises(ValueError, match="rsqrt_table"):
        mod.layernorm(x, 1, r[:-1], norm, 7, "int8")
    with pytest.raises(TypeError, match="norm.*tuple"):
        mod.layernorm(x, 1, r, [0, 1, 0], 7, "int8")
    with pytest.raises(ValueError, match="shift"):
        mod.layernorm(x, 1, r, (0, 1, 63), 7, "int8")
    with pytest.raises(ValueError, match="eps"):
        mod.layernorm(x, -1, r, norm, 7, "int8")
    with pytest.raises(ValueError, match="affine"):
        mod.layernorm(x, 1, r, norm, 7, "int8", w, b)
    with pytest.raises(ValueError, match="N = 4 entries"):
        mod.layernorm(x, 1, r, norm, 7, "int8", w[:3], b, (0, 1, 0))
    with pytest.raises(ValueError, match="out_dtype"):
        mod.layernorm(x, 1, r, norm, 7, "int8", out_dtype="int32")
