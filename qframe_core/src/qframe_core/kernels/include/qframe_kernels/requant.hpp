// qframe_kernels/requant.hpp -- integer requantization.
//
//   y = clamp(round_shift(x1 * m1 + x2 * m2, s), lo, hi)
//
// The sum is computed exactly: in int64 when it provably cannot overflow,
// otherwise in 128-bit (so the result equals the int64 definition whenever
// int64 does not overflow, and is the exact value otherwise).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "rounding.hpp"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

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
    const bool params_small = m < lim && m >= -lim && (res == nullptr || (rm < lim && rm >= -lim));
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

// ---------------------------------------------------------------- vector epilogues
// requant_row for int32 accumulators with AVX-512F / AVX2, lane-exact with the
// scalar definition: v = acc + bias in int64; when every lane of a vector has
// v in [-2**31, 2**31) (always, for real layers), p = v*m + r*rm is formed
// with 32x32->64 signed multiplies (|p| < 2**62 + 2**46), rounded with the
// march rule by 64-bit arithmetic shifts, clamped and narrowed.  Vectors
// with an out-of-range lane, and the tail, take the scalar path.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
namespace detail {

template <class Rounding>
struct VecRound512;
template <>
struct VecRound512<RoundHalfUp> {
    __attribute__((target("avx512f"))) static inline __m512i apply(__m512i p, __m128i cnt, __m512i half, __m512i) {
        return _mm512_sra_epi64(_mm512_add_epi64(p, half), cnt);
    }
};
// Half to even without compares: with q = p >> s (floor),
//   (p + 2**(s-1) - 1 + (q & 1)) >> s
// is q + 1 when the remainder r > 2**(s-1), q when r < 2**(s-1), and q + (q & 1)
// on a tie -- round half to even.  `half` holds 2**(s-1) - 1 here (s >= 1).
template <>
struct VecRound512<RoundHalfEven> {
    __attribute__((target("avx512f"))) static inline __m512i apply(__m512i p, __m128i cnt, __m512i half_m1,
                                                                   __m512i) {
        const __m512i odd = _mm512_and_si512(_mm512_srl_epi64(p, cnt), _mm512_set1_epi64(1));
        return _mm512_sra_epi64(_mm512_add_epi64(_mm512_add_epi64(p, half_m1), odd), cnt);
    }
};

template <class TRes>
__attribute__((target("avx512f,avx512bw"))) inline __m512i load_res8_512(const TRes* r) {
    if constexpr (sizeof(TRes) == 1)
        return _mm512_cvtepi8_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r)));
    else
        return _mm512_cvtepi16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r)));
}

template <class TOut>
__attribute__((target("avx512f,avx512bw"))) inline void store8_512(TOut* out, __m512i y) {
    if constexpr (sizeof(TOut) == 1)
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm512_cvtepi64_epi8(y));
    else if constexpr (sizeof(TOut) == 2)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi64_epi16(y));
    else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(y));
}

template <class Rounding, class TRes, class TOut>
__attribute__((target("avx512f,avx512bw"))) void requant_row_avx512(const int32_t* acc, int64_t n, int64_t bias,
                                                                    int64_t m, int s, const TRes* res, int64_t rm,
                                                                    int64_t lo, int64_t hi, TOut* out) {
    constexpr int64_t lim = static_cast<int64_t>(1) << 31;
    int64_t j = 0;
    if (m < lim && m >= -lim && (res == nullptr || (rm < lim && rm >= -lim))) {
        const __m512i vb = _mm512_set1_epi64(bias), vm = _mm512_set1_epi64(m), vrm = _mm512_set1_epi64(rm);
        const __m512i vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);
        const __m512i vmin = _mm512_set1_epi64(-lim), vmax = _mm512_set1_epi64(lim - 1);
        const int64_t h = (static_cast<int64_t>(1) << s) >> 1;
        const __m512i half = _mm512_set1_epi64(std::is_same_v<Rounding, RoundHalfEven> ? h - 1 : h);
        const __m512i mask = _mm512_set1_epi64((static_cast<int64_t>(1) << s) - 1);
        const __m128i cnt = _mm_cvtsi32_si128(s);
        const __m512i two31 = _mm512_set1_epi64(lim), two32 = _mm512_set1_epi64(2 * lim);
        (void)vmin;
        (void)vmax;
        for (; j + 8 <= n; j += 8) {
            const __m512i v =
                _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j))), vb);
            // v in [-2**31, 2**31)  <=>  (unsigned)(v + 2**31) < 2**32
            if (_mm512_cmpge_epu64_mask(_mm512_add_epi64(v, two31), two32)) {
                requant_row<Rounding>(acc + j, 8, bias, m, s, res ? res + j : res, rm, lo, hi, out + j);
                continue;
            }
            __m512i p = _mm512_mul_epi32(v, vm);
            if (res) p = _mm512_add_epi64(p, _mm512_mul_epi32(load_res8_512(res + j), vrm));
            __m512i y = s == 0 ? p : VecRound512<Rounding>::apply(p, cnt, half, mask);
            y = _mm512_min_epi64(_mm512_max_epi64(y, vlo), vhi);
            store8_512(out + j, y);
        }
    }
    if (j < n) requant_row<Rounding>(acc + j, n - j, bias, m, s, res ? res + j : res, rm, lo, hi, out + j);
}

// Tile epilogue, 16 int32 lanes per step, for `rows` rows of accumulators
// (row r at acc + r*lda, its output at out + r*ldo, residual at res + r*ldo)
// with per-row bias (int64, must fit int32 for the fast path), multiplier,
// shift and residual multiplier.  v = acc + bias is formed in int32 with an
// overflow test (lanes that overflow send the 16-lane step to the scalar
// path); v*m is formed for even and odd lanes with two 32x32->64 multiplies,
// rounded and clamped in int64, then recombined into int32 lanes and
// narrowed with masked stores (no tail loop).
template <class Rounding, class TRes, class TOut>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void requant_tile_avx512(
    const int32_t* acc, int64_t lda, int64_t rows, int64_t n, const int64_t* bias, const int32_t* mult,
    const int32_t* shift, const TRes* res, const int32_t* res_mult, int64_t lo, int64_t hi, TOut* out, int64_t ldo) {
    constexpr bool even = std::is_same_v<Rounding, RoundHalfEven>;
    const __m512i vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);
    const __m512i one = _mm512_set1_epi64(1);
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * lda;
        TOut* o = out + r * ldo;
        const TRes* rr = res ? res + r * ldo : nullptr;
        const int64_t b = bias[r], m = mult[r];
        const int s = shift[r];
        const int64_t rm = res ? static_cast<int64_t>(res_mult[r]) : 0;
        if (b < INT32_MIN || b > INT32_MAX) {
            requant_row<Rounding>(a, n, b, m, s, rr, rm, lo, hi, o);
            continue;
        }
        const __m512i vb32 = _mm512_set1_epi32(static_cast<int32_t>(b));
        const __m512i vm = _mm512_set1_epi64(m), vrm = _mm512_set1_epi64(rm);
        const int64_t h = (static_cast<int64_t>(1) << s) >> 1;
        const __m512i half = _mm512_set1_epi64(even ? h - 1 : h);
        const __m128i cnt = _mm_cvtsi32_si128(s);
        for (int64_t j = 0; j < n; j += 16) {
            const int64_t left = n - j;
            const __mmask16 k = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
            const __m512i x = _mm512_maskz_loadu_epi32(k, a + j);
            const __m512i v = _mm512_add_epi32(x, vb32);
            // signed overflow of x + b: x and b have the same sign and v the other
            if (_mm512_mask_cmplt_epi32_mask(k, _mm512_and_si512(_mm512_xor_si512(x, v), _mm512_xor_si512(vb32, v)),
                                             _mm512_setzero_si512())) {
                requant_row<Rounding>(a + j, std::min<int64_t>(left, 16), b, m, s, rr ? rr + j : rr, rm, lo, hi, o + j);
                continue;
            }
            __m512i pe = _mm512_mul_epi32(v, vm);
            __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(v, 32), vm);
            if (rr) {
                __m512i r32;
                if constexpr (sizeof(TRes) == 1) r32 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, rr + j));
                else r32 = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, rr + j));
                pe = _mm512_add_epi64(pe, _mm512_mul_epi32(r32, vrm));
                po = _mm512_add_epi64(po, _mm512_mul_epi32(_mm512_srli_epi64(r32, 32), vrm));
            }
            if (s != 0) {
                if constexpr (even) {
                    pe = _mm512_sra_epi64(
                        _mm512_add_epi64(_mm512_add_epi64(pe, half), _mm512_and_si512(_mm512_srl_epi64(pe, cnt), one)),
                        cnt);
                    po = _mm512_sra_epi64(
                        _mm512_add_epi64(_mm512_add_epi64(po, half), _mm512_and_si512(_mm512_srl_epi64(po, cnt), one)),
                        cnt);
                } else {
                    pe = _mm512_sra_epi64(_mm512_add_epi64(pe, half), cnt);
                    po = _mm512_sra_epi64(_mm512_add_epi64(po, half), cnt);
                }
            }
            pe = _mm512_min_epi64(_mm512_max_epi64(pe, vlo), vhi);
            po = _mm512_min_epi64(_mm512_max_epi64(po, vlo), vhi);
            const __m512i y = _mm512_mask_blend_epi32(static_cast<__mmask16>(0xAAAA), pe, _mm512_slli_epi64(po, 32));
            if constexpr (sizeof(TOut) == 1) _mm512_mask_cvtepi32_storeu_epi8(o + j, k, y);
            else if constexpr (sizeof(TOut) == 2) _mm512_mask_cvtepi32_storeu_epi16(o + j, k, y);
            else _mm512_mask_storeu_epi32(o + j, k, y);
        }
    }
}

// AVX2 helpers: 4 int64 lanes.
__attribute__((target("avx2"))) inline __m256i sra64_avx2(__m256i x, __m128i cnt) {
    const __m256i sign = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
    return _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(x, sign), cnt), sign);
}

template <class Rounding>
struct VecRound256;
template <>
struct VecRound256<RoundHalfUp> {
    __attribute__((target("avx2"))) static inline __m256i apply(__m256i p, __m128i cnt, __m256i half, __m256i) {
        return sra64_avx2(_mm256_add_epi64(p, half), cnt);
    }
};
template <>
struct VecRound256<RoundHalfEven> {  // same identity as VecRound512<RoundHalfEven>; half = 2**(s-1) - 1
    __attribute__((target("avx2"))) static inline __m256i apply(__m256i p, __m128i cnt, __m256i half_m1, __m256i) {
        const __m256i odd = _mm256_and_si256(_mm256_srl_epi64(p, cnt), _mm256_set1_epi64x(1));
        return sra64_avx2(_mm256_add_epi64(_mm256_add_epi64(p, half_m1), odd), cnt);
    }
};

template <class TRes>
__attribute__((target("avx2"))) inline __m256i load_res4_256(const TRes* r) {
    if constexpr (sizeof(TRes) == 1) {
        int32_t v;
        std::memcpy(&v, r, 4);
        return _mm256_cvtepi8_epi64(_mm_cvtsi32_si128(v));
    } else {
        return _mm256_cvtepi16_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r)));
    }
}

template <class TOut>
__attribute__((target("avx2"))) inline void store4_256(TOut* out, __m256i y) {
    // y is clamped to TOut's range: take the low 32 bits of each lane, then narrow.
    const __m128i d = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
    if constexpr (sizeof(TOut) == 4) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), d);
    } else if constexpr (sizeof(TOut) == 2) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packs_epi32(d, d));
    } else {
        const __m128i w = _mm_packs_epi32(d, d);
        const int32_t b = _mm_cvtsi128_si32(_mm_packs_epi16(w, w));
        std::memcpy(out, &b, 4);
    }
}

__attribute__((target("avx2"))) inline __m256i clamp64_avx2(__m256i y, __m256i lo, __m256i hi) {
    y = _mm256_blendv_epi8(y, lo, _mm256_cmpgt_epi64(lo, y));
    return _mm256_blendv_epi8(y, hi, _mm256_cmpgt_epi64(y, hi));
}

template <class Rounding, class TRes, class TOut>
__attribute__((target("avx2"))) void requant_row_avx2(const int32_t* acc, int64_t n, int64_t bias, int64_t m, int s,
                                                      const TRes* res, int64_t rm, int64_t lo, int64_t hi, TOut* out) {
    constexpr int64_t lim = static_cast<int64_t>(1) << 31;
    int64_t j = 0;
    if (m < lim && m >= -lim && (res == nullptr || (rm < lim && rm >= -lim))) {
        const __m256i vb = _mm256_set1_epi64x(bias), vm = _mm256_set1_epi64x(m), vrm = _mm256_set1_epi64x(rm);
        const __m256i vlo = _mm256_set1_epi64x(lo), vhi = _mm256_set1_epi64x(hi);
        const __m256i vmin = _mm256_set1_epi64x(-lim), vmax = _mm256_set1_epi64x(lim - 1);
        const int64_t h = (static_cast<int64_t>(1) << s) >> 1;
        const __m256i half = _mm256_set1_epi64x(std::is_same_v<Rounding, RoundHalfEven> ? h - 1 : h);
        const __m256i mask = _mm256_set1_epi64x((static_cast<int64_t>(1) << s) - 1);
        const __m128i cnt = _mm_cvtsi32_si128(s);
        for (; j + 4 <= n; j += 4) {
            const __m256i v = _mm256_add_epi64(
                _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(acc + j))), vb);
            if (!_mm256_testz_si256(_mm256_or_si256(_mm256_cmpgt_epi64(v, vmax), _mm256_cmpgt_epi64(vmin, v)),
                                    _mm256_set1_epi64x(-1))) {
                // a lane with v outside [-2**31, 2**31): the scalar path is exact
                requant_row<Rounding>(acc + j, 4, bias, m, s, res ? res + j : res, rm, lo, hi, out + j);
                continue;
            }
            __m256i p = _mm256_mul_epi32(v, vm);
            if (res) p = _mm256_add_epi64(p, _mm256_mul_epi32(load_res4_256(res + j), vrm));
            __m256i y = s == 0 ? p : VecRound256<Rounding>::apply(p, cnt, half, mask);
            store4_256(out + j, clamp64_avx2(y, vlo, vhi));
        }
    }
    if (j < n) requant_row<Rounding>(acc + j, n - j, bias, m, s, res ? res + j : res, rm, lo, hi, out + j);
}

}  // namespace detail
#endif

// requant_row with the vector epilogue of `isa` (AVX-512 / AVX2 for int32 accumulators), else scalar.
template <class Rounding, class TRes, class TOut>
inline void requant_row_isa(bool avx512, bool avx2, const int32_t* acc, int64_t n, int64_t bias, int64_t m, int s,
                            const TRes* res, int64_t rm, int64_t lo, int64_t hi, TOut* out) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if (avx512 && m >= INT32_MIN && m <= INT32_MAX && rm >= INT32_MIN && rm <= INT32_MAX) {
        // the 16-lane tile epilogue with one row
        const int64_t b[1] = {bias};
        const int32_t m32[1] = {static_cast<int32_t>(m)}, s32[1] = {s}, rm32[1] = {static_cast<int32_t>(rm)};
        return detail::requant_tile_avx512<Rounding>(acc, n, 1, n, b, m32, s32, res, rm32, lo, hi, out, n);
    }
    if (avx512) return detail::requant_row_avx512<Rounding>(acc, n, bias, m, s, res, rm, lo, hi, out);
    if (avx2) return detail::requant_row_avx2<Rounding>(acc, n, bias, m, s, res, rm, lo, hi, out);
#endif
    (void)avx512;
    (void)avx2;
    requant_row<Rounding>(acc, n, bias, m, s, res, rm, lo, hi, out);
}

// Raw mode: clamp(saturate_int32(acc + bias), lo, hi).
template <class TAcc, class TOut>
inline void raw_row(const TAcc* acc, int64_t n, int64_t bias, int64_t lo, int64_t hi, TOut* out) {
    lo = std::max<int64_t>(lo, std::numeric_limits<int32_t>::min());
    hi = std::min<int64_t>(hi, std::numeric_limits<int32_t>::max());
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<TOut>(clamp_i64(static_cast<int64_t>(acc[j]) + bias, lo, hi));
}

}  // namespace qframe_kernels
