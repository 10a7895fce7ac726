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
