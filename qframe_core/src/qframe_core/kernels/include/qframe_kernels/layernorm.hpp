// qframe_kernels/layernorm.hpp -- integer layer normalization over the last axis, the steps of
// qframe_core.nn.integer_layernorm (see there for the derivation), per row of N codes:
//
//   A = sum x, B = sum x*x                       exact, int64
//   V = max(N*B - A*A + eps, 1)                  N**2 * (var + eps) on the input grid
//   V = M * 2**k                                 k = bit_length(V) - 15 rounded up to even, M = round_shift(V, k)
//                                                (V << -k when k < 0); M >= 2**15 becomes M >> 2 with k + 2
//   R = rsqrt_table[M]                           the march's rsqrt table on every M in [0, 2**15)
//   n[j] = wide(c[j] * R, norm, extra = norm_extra + k / 2),  c[j] = N*x[j] - A     (clamped to norm's dtype)
//   y[j] = wide(n[j] * g[j] + b[j], affine)      with affine parameters, else y = n
//
// wide(v, w, extra) = clamp(round_shift(round_shift(v, w.pre_shift) * w.multiplier, clamp(w.shift + extra, 0, 62)))
// with the march's rounding (requant_one: exact).  The table holds the rule's values on every index.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu_features.hpp"
#include "requant.hpp"

namespace qframe_kernels {

// round_shift(round_shift(v, pre_shift) * multiplier, shift) of qframe_core.nn.integer_composite.WideRequant.
struct WideRequantArgs {
    int pre_shift = 0;
    int64_t multiplier = 0;
    int shift = 0;
};

// A right shift with its rounding terms, for the branch-free FastRound (a row's shifts are fixed: a
// data-dependent branch on the remainder would mispredict half the time).
struct RoundingShift {
    int s;
    int64_t half, mask;
    explicit RoundingShift(int shift)
        : s(shift), half((int64_t(1) << shift) >> 1), mask((int64_t(1) << shift) - 1) {}
};

template <class Rounding>
inline int64_t wide_requant_one(int64_t v, const RoundingShift& pre, int64_t multiplier, const RoundingShift& post,
                                int64_t lo, int64_t hi) {
    v = FastRound<Rounding>::apply(v, pre.s, pre.half, pre.mask);
    int64_t p;
    if (__builtin_expect(!__builtin_mul_overflow(v, multiplier, &p), 1))  // by pre_shift's choice |v * m| < 2**61
        return clamp_i64(FastRound<Rounding>::apply(p, post.s, post.half, post.mask), lo, hi);
    return requant_one<Rounding>(v, multiplier, 0, 0, post.s, lo, hi);
}

constexpr int kLayerNormMantissaBits = 15;

template <class Rounding, class TIn, class TOut>
void layernorm_rows(const TIn* x, int64_t rows, int64_t N, int64_t eps, const int32_t* rsqrt_table,
                    const WideRequantArgs& norm, int norm_extra, int64_t norm_lo, int64_t norm_hi,
                    const int64_t* weight, const int64_t* bias, const WideRequantArgs* affine, int64_t lo, int64_t hi,
                    TOut* out) {
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, rows / (4 * max_threads()))) \
    num_threads(max_threads()) if (rows * N > 16384)
    for (int64_t r = 0; r < rows; ++r) {
        const TIn* xr = x + r * N;
        TOut* yr = out + r * N;
        int64_t A = 0, B = 0;
        for (int64_t j = 0; j < N; ++j) {
            A += xr[j];
            B += static_cast<int64_t>(xr[j]) * xr[j];
        }
        const int64_t V = std::max<int64_t>(N * B - A * A + eps, 1);
        int k = 64 - __builtin_clzll(static_cast<uint64_t>(V)) - kLayerNormMantissaBits;
        k += ((k % 2) + 2) % 2;  // up to even (python's k + k % 2)
        int64_t M = k >= 0 ? Rounding::template round_shift<int64_t>(V, k) : (V << -k);
        if (M >= (int64_t(1) << kLayerNormMantissaBits)) {
            M >>= 2;
            k += 2;
        }
        const int64_t R = rsqrt_table[M];
        const RoundingShift npre(norm.pre_shift), npost(std::clamp(norm.shift + norm_extra + k / 2, 0, kMaxShift));
        if (affine) {
            const RoundingShift apre(affine->pre_shift), apost(affine->shift);
            for (int64_t j = 0; j < N; ++j) {
                const int64_t n = wide_requant_one<Rounding>((N * xr[j] - A) * R, npre, norm.multiplier, npost, norm_lo,
                                                             norm_hi);
                yr[j] = static_cast<TOut>(
                    wide_requant_one<Rounding>(n * weight[j] + bias[j], apre, affine->multiplier, apost, lo, hi));
            }
        } else {
            for (int64_t j = 0; j < N; ++j)
                yr[j] = static_cast<TOut>(std::clamp(
                    wide_requant_one<Rounding>((N * xr[j] - A) * R, npre, norm.multiplier, npost, norm_lo, norm_hi), lo,
                    hi));
        }
    }
}

}  // namespace qframe_kernels
