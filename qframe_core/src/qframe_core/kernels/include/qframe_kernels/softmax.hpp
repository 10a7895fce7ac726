// qframe_kernels/softmax.hpp -- integer softmax along the last axis, the steps of
// qframe_core.nn.integer_softmax (see there for the derivation), per row of n codes:
//
//   d[j] = x[j] - max(x)                         in [-span, 0], span = qmax - qmin of the input dtype
//   e[j] = exp_table[d[j] + span]                the march's exp table on every d (built by the caller)
//   S    = sum e[j]                              exact, int64
//   S    = M * 2**k                              k = bit_length(S) - 15, M = round_shift(S, k) (S << -k when
//                                                k < 0); M == 2**15 becomes 2**14 with k + 1
//   R    = reciprocal_table[M]                   the march's table of 1 / (M * 2**-15) on every M in [0, 2**15]
//   y[j] = clamp(round_shift(round_shift(e[j] * R, pre_shift) * multiplier, min(shift + k, 62)))
//
// With a mask (one int8 a code, non-zero = masked), max(x) and S run over the unmasked codes and a masked code's
// e is 0, so its output is 0 (a row with every code masked gives zeros).
//
// round_shift is the march's rounding; the last step is requant_one (exact: int64, or 128-bit when the
// product could overflow).  The tables hold the rule's values on every index, so the kernel is exact by
// construction.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cpu_features.hpp"
#include "layernorm.hpp"  // wide_requant_one
#include "requant.hpp"

namespace qframe_kernels {

constexpr int kSoftmaxMantissaBits = 15;

template <class Rounding, class TIn, class TOut>
void softmax_rows(const TIn* x, int64_t rows, int64_t n, const int32_t* exp_table, int64_t span,
                  const int32_t* reciprocal_table, int pre_shift, int64_t multiplier, int shift, int64_t lo,
                  int64_t hi, const int8_t* mask, TOut* out) {
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, rows / (4 * max_threads()))) \
    num_threads(max_threads()) if (rows * n > 16384)
    for (int64_t r = 0; r < rows; ++r) {
        const TIn* xr = x + r * n;
        TOut* yr = out + r * n;
        const int8_t* mr = mask ? mask + r * n : nullptr;
        int64_t mx = std::numeric_limits<TIn>::min();
        if (mr) {
            for (int64_t j = 0; j < n; ++j)
                if (!mr[j]) mx = std::max<int64_t>(mx, xr[j]);
        } else {
            for (int64_t j = 0; j < n; ++j) mx = std::max<int64_t>(mx, xr[j]);
        }
        const int32_t* et = exp_table + span - mx;  // et[x] = exp_table[x - mx + span]
        int64_t S = 0;
        if (mr) {
            for (int64_t j = 0; j < n; ++j) S += mr[j] ? 0 : et[xr[j]];
        } else {
            for (int64_t j = 0; j < n; ++j) S += et[xr[j]];
        }
        int k = (S > 0 ? 64 - __builtin_clzll(static_cast<uint64_t>(S)) : 0) - kSoftmaxMantissaBits;
        int64_t M = k >= 0 ? Rounding::template round_shift<int64_t>(S, k) : (S << -k);
        if (M >= (int64_t(1) << kSoftmaxMantissaBits)) {
            M >>= 1;
            k += 1;
        }
        const int64_t R = reciprocal_table[M];
        const RoundingShift pre(pre_shift), post(std::clamp(shift + k, 0, kMaxShift));
        for (int64_t j = 0; j < n; ++j)
            yr[j] = static_cast<TOut>(
                wide_requant_one<Rounding>(static_cast<int64_t>(mr && mr[j] ? 0 : et[xr[j]]) * R, pre, multiplier, post, lo, hi));
    }
}

}  // namespace qframe_kernels
