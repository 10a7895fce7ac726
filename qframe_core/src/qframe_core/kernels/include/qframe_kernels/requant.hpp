// qframe_kernels/requant.hpp -- integer requantization.
//
//   y = clamp(round_shift(x1 * m1 + x2 * m2, s), lo, hi)
//
// The sum is computed exactly: in int64 when it provably cannot overflow,
// otherwise in 128-bit (so the result equals the int64 definition whenever
// int64 does not overflow, and is the exact value otherwise).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "rounding.hpp"

namespace qframe_kernels {

enum class DType { Int8 = 0, Int16 = 1, Int32 = 2, Int64 = 3 };

template <class T> struct dtype_of;
template <> struct dtype_of<int8_t>  { static constexpr DType value = DType::Int8; };
template <> struct dtype_of<int16_t> { static constexpr DType value = DType::Int16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::Int32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };

inline int64_t dtype_min(DType d) {
    switch (d) {
        case DType::Int8: return -128;
        case DType::Int16: return -32768;
        case DType::Int32: return std::numeric_limits<int32_t>::min();
        default: return std::numeric_limits<int64_t>::min();
    }
}
inline int64_t dtype_max(DType d) {
    switch (d) {
        case DType::Int8: return 127;
        case DType::Int16: return 32767;
        case DType::Int32: return std::numeric_limits<int32_t>::max();
        default: return std::numeric_limits<int64_t>::max();
    }
}

// Output bounds: intersection of the output dtype range and [clamp_min, clamp_max].
struct ClampRange {
    int64_t lo, hi;
};

inline int64_t clamp_i64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

constexpr int kMaxShift = 62;

// Largest multiplier a policy accepts: 2**(multiplier_bits-1) - 1.
template <class Policy>
constexpr int64_t max_multiplier() {
    return (static_cast<int64_t>(1) << (Policy::multiplier_bits - 1)) - 1;
}

template <class Rounding>
inline int64_t requant_one(int64_t x1, int64_t m1, int64_t x2, int64_t m2, int s, int64_t lo, int64_t hi) {
    constexpr int64_t lim = static_cast<int64_t>(1) << 31;
    // |x| < 2**31 and 0 <= m < 2**31 for both terms => |sum| < 2**63.
    if (x1 > -lim && x1 < lim && x2 > -lim && x2 < lim && m1 < lim && m2 < lim) {
        int64_t y = Rounding::template round_shift<int64_t>(x1 * m1 + x2 * m2, s);
        return clamp_i64(y, lo, hi);
    }
    int128_t v = static_cast<int128_t>(x1) * m1 + static_cast<int128_t>(x2) * m2;
    int128_t y = Rounding::template round_shift<int128_t>(v, s);
    if (y < lo) return lo;
    if (y > hi) return hi;
    return static_cast<int64_t>(y);
}

// Branch-free int64 round_shift for the hot loops (valid for s in [0, 62]
// when the sum cannot overflow; see requant_one for the general case).
template <class Rounding> struct FastRound;
template <> struct FastRound<RoundHalfUp> {
    static inline int64_t apply(int64_t v, int s, int64_t half, int64_t /*mask*/) { return (v + half) >> s; }
};
template <> struct FastRound<RoundHalfEven> {
    static inline int64_t apply(int64_t v, int s, int64_t half, int64_t mask) {
        const int64_t q = v >> s;
        const int64_t r = v & mask;
        return q + static_cast<int64_t>((r > half) | ((r == half) & (s != 0) & static_cast<bool>(q & 1)));
    }
};

// One output row sharing multiplier/shift/bias:
//   out[j] = clamp(round_shift((acc[j] + bias) * m + res[j] * rm, s), lo, hi)
// res may be null (then rm is ignored).
template <class Rounding, class TAcc, class TRes, class TOut>
inline void requant_row(const TAcc* acc, int64_t n, int64_t bias, int64_t m, int s, const TRes* res, int64_t rm,
                        int64_t lo, int64_t hi, TOut* out) {
    constexpr int64_t lim = static_cast<int64_t>(1) << 31;
    const int64_t half = (static_cast<int64_t>(1) << s) >> 1;
    const int64_t mask = (static_cast<int64_t>(1) << s) - 1;
    const bool params_small = m < lim && (res == nullptr || rm < lim);
    for (int64_t j = 0; j < n; ++j) {
        const int64_t v = static_cast<int64_t>(acc[j]) + bias;
        const int64_t r = res ? static_cast<int64_t>(res[j]) : 0;
        int64_t y;
        if (__builtin_expect(params_small && v > -lim && v < lim, 1)) {
            // |v*m| < 2**62 and |r*rm| < 2**46 (r is int8/int16): no overflow.
            y = clamp_i64(FastRound<Rounding>::apply(v * m + r * (res ? rm : 0), s, half, mask), lo, hi);
        } else {
            y = requant_one<Rounding>(v, m, r, res ? rm : 0, s, lo, hi);
        }
        out[j] = static_cast<TOut>(y);
    }
}

// Raw mode: clamp(saturate_int32(acc + bias), lo, hi).
template <class TAcc, class TOut>
inline void raw_row(const TAcc* acc, int64_t n, int64_t bias, int64_t lo, int64_t hi, TOut* out) {
    lo = std::max<int64_t>(lo, std::numeric_limits<int32_t>::min());
    hi = std::min<int64_t>(hi, std::numeric_limits<int32_t>::max());
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<TOut>(clamp_i64(static_cast<int64_t>(acc[j]) + bias, lo, hi));
}

// Per-tensor or per-channel requantization of an int32/int64 tensor viewed
// as [outer, channels, inner]; multiplier/shift have `channels` entries, or
// one entry when per_tensor is true.
template <class Policy, class TIn, class TOut>
void requantize(const TIn* x, TOut* y, int64_t outer, int64_t channels, int64_t inner,
                const int32_t* multiplier, const int32_t* shift, bool per_tensor, ClampRange cr) {
    using R = typename Policy::Rounding;
    const int64_t rows = outer * channels;
#pragma omp parallel for schedule(static) if (rows * inner > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t c = per_tensor ? 0 : r % channels;
        const int64_t m = multiplier[c];
        const int s = shift[c];
        const TIn* xr = x + r * inner;
        TOut* yr = y + r * inner;
        for (int64_t i = 0; i < inner; ++i)
            yr[i] = static_cast<TOut>(requant_one<R>(static_cast<int64_t>(xr[i]), m, 0, 0, s, cr.lo, cr.hi));
    }
}

}  // namespace qframe_kernels
