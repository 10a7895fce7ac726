// qframe_kernels/sample.hpp -- weighted sums of integer codes at computed positions: the accumulation of
// bilinear resize, RoIAlign and grid_sample (qframe_core.resize, qframe_core.roi_align, qframe_core.grid_sample).
//
// The march's rule (fixed-point coordinates, interpolation weights, sample counts) is evaluated by the caller,
// once per output position and not per channel; these kernels do the per-channel work, exactly:
//
//   separable_sum:  out[b, c, i, j] = clamp(round_shift(M[b] * sum_{h, w} wy[b, i, h] * wx[b, j, w]
//                                                               * x[batch[b], c, h, w], shift))
//   gather_taps:    out[n, c, p]    = clamp(round_shift(sum_k w[g, k, p] * x[n, c, idx[g, k, p]], shift))
//                   (g = n for a grid per image, 0 for one grid shared by every image)
//
// round_shift is the march's rounding.  Sums are exact: in double where the caller's bound on every partial sum
// is below 2**53 (separable_sum checks it), else in int64; the product with M in 128 bits.  separable_sum skips
// the zero entries at the ends of each row of wy and wx (bilinear rows hold two non-zero weights, RoIAlign bins
// a few), so a resize costs about 2 * (W + OW) multiply-adds an output row.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_features.hpp"
#include "gemm_s8.hpp"  // gemm_kernel_for: the selected ISA
#include "requant.hpp"  // FastRound

namespace qframe_kernels {

// [first, last) of the non-zero entries of each length-n row of w (rows x n); [0, 0) for an all-zero row.
inline void nonzero_spans(const int32_t* w, int64_t rows, int64_t n, std::vector<int64_t>& first,
                          std::vector<int64_t>& last) {
    first.assign(rows, 0);
    last.assign(rows, 0);
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t* wr = w + r * n;
        int64_t a = 0, b = n;
        while (a < n && wr[a] == 0) ++a;
        while (b > a && wr[b - 1] == 0) --b;
        first[r] = a;
        last[r] = b;
    }
}

// Sum over the spans of one (box, channel) plane; Acc is double (exact below 2**53) or int64_t.  Narrow: every
// sum times the multiplier fits in int64 (|.| < 2**62), so the rounding needs no 128-bit arithmetic.
template <class Rounding, class Acc, bool Narrow, class T>
void separable_plane(const T* plane, int64_t W, const int32_t* wy, const int64_t* ry0, const int64_t* ry1, int64_t PH,
                     int64_t H, const int32_t* wx, const int64_t* rx0, const int64_t* rx1, int64_t PW, int64_t c0,
                     int64_t c1, int64_t multiplier, int shift, int64_t lo, int64_t hi, Acc* rows, T* out) {
    const int64_t span = c1 - c0;
    const int64_t half = (int64_t(1) << shift) >> 1, mask = (int64_t(1) << shift) - 1;
    for (int64_t i = 0; i < PH; ++i) {
        Acc* t = rows;  // t[w - c0] = sum_h wy[i, h] * x[h, w]
        std::fill(t, t + span, Acc(0));
        const int32_t* wyi = wy + i * H;
        for (int64_t h = ry0[i]; h < ry1[i]; ++h) {
            const Acc a = static_cast<Acc>(wyi[h]);
            if (a == Acc(0)) continue;
            const T* xr = plane + h * W + c0;
            for (int64_t w = 0; w < span; ++w) t[w] += a * static_cast<Acc>(xr[w]);
        }
        for (int64_t j = 0; j < PW; ++j) {
            const int32_t* wxj = wx + j * W;
            Acc acc = 0;
            for (int64_t w = rx0[j]; w < rx1[j]; ++w) acc += static_cast<Acc>(wxj[w]) * t[w - c0];
            if constexpr (Narrow) {
                const int64_t r = FastRound<Rounding>::apply(static_cast<int64_t>(acc) * multiplier, shift, half, mask);
                out[i * PW + j] = static_cast<T>(clamp_i64(r, lo, hi));
            } else {
                const __int128 v = static_cast<__int128>(static_cast<int64_t>(acc)) * multiplier;
                const __int128 r = Rounding::template round_shift<__int128>(v, shift);
                out[i * PW + j] = static_cast<T>(r < lo ? lo : (r > hi ? hi : static_cast<int64_t>(r)));
            }
        }
    }
}

// The column taps of one box for the vector path: for each of L taps, PWp (PW rounded up to 8) positions relative
// to the box's first column and their weights (0 beyond a column's span).
struct ColumnTaps {
    int64_t L = 0, PWp = 0;
    std::vector<int32_t> index;
    std::vector<double> weight;
};

#ifdef QFRAME_KERNELS_X86
namespace detail {
// v / 2**s rounded to an integer by the march's rule, for exact integer doubles |v| < 2**52 and s <= 52 (scaling
// by a power of two is exact; so is adding 1/2 then).
template <class Rounding> struct RoundShiftPd;
template <> struct RoundShiftPd<RoundHalfEven> {
    __attribute__((target("avx512f"))) static inline __m512d apply(__m512d v, __m512d scale) {
        return _mm512_roundscale_pd(_mm512_mul_pd(v, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
};
template <> struct RoundShiftPd<RoundHalfUp> {
    __attribute__((target("avx512f"))) static inline __m512d apply(__m512d v, __m512d scale) {
        return _mm512_roundscale_pd(_mm512_add_pd(_mm512_mul_pd(v, scale), _mm512_set1_pd(0.5)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    }
};


// separable_plane for double sums on AVX-512: rows 8 columns a step, columns 8 outputs a step by gathers from the
// row sums; the caller checked that every sum times the multiplier is below 2**52 and shift <= 52.
template <class Rounding, class T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void separable_plane_avx512(
    const T* plane, int64_t W, const int32_t* wy, const int64_t* ry0, const int64_t* ry1, int64_t PH, int64_t H,
    const ColumnTaps& taps, int64_t PW, int64_t c0, int64_t c1, int64_t multiplier, int shift, int64_t lo, int64_t hi,
    double* t, T* out) {
    const int64_t span = c1 - c0;
    const __m512d scale = _mm512_set1_pd(1.0 / static_cast<double>(int64_t(1) << shift));
    const __m512d vm = _mm512_set1_pd(static_cast<double>(multiplier));
    const __m512d vlo = _mm512_set1_pd(static_cast<double>(lo)), vhi = _mm512_set1_pd(static_cast<double>(hi));
    for (int64_t i = 0; i < PH; ++i) {
        for (int64_t w = 0; w < span; w += 8) _mm512_storeu_pd(t + w, _mm512_setzero_pd());
        const int32_t* wyi = wy + i * H;
        for (int64_t h = ry0[i]; h < ry1[i]; ++h) {
            if (wyi[h] == 0) continue;
            const __m512d a = _mm512_set1_pd(static_cast<double>(wyi[h]));
            const T* xr = plane + h * W + c0;
            for (int64_t w = 0; w < span; w += 8) {
                const __mmask8 m = span - w >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (span - w)) - 1);
                __m256i x32;
                if constexpr (sizeof(T) == 1) x32 = _mm256_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, xr + w));
                else x32 = _mm256_cvtepi16_epi32(_mm_maskz_loadu_epi16(m, xr + w));
                _mm512_storeu_pd(t + w, _mm512_fmadd_pd(a, _mm512_cvtepi32_pd(x32), _mm512_loadu_pd(t + w)));
            }
        }
        T* o = out + i * PW;
        for (int64_t j = 0; j < PW; j += 8) {
            __m512d acc = _mm512_setzero_pd();
            for (int64_t k = 0; k < taps.L; ++k) {
                const __m256i iv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps.index.data() + k * taps.PWp + j));
                acc = _mm512_fmadd_pd(_mm512_i32gather_pd(iv, t, 8), _mm512_loadu_pd(taps.weight.data() + k * taps.PWp + j),
                                      acc);
            }
            const __m512d r = _mm512_min_pd(_mm512_max_pd(RoundShiftPd<Rounding>::apply(_mm512_mul_pd(acc, vm), scale),
                                                          vlo), vhi);
            const __m256i r32 = _mm512_cvtpd_epi32(r);
            const __mmask8 m = PW - j >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (PW - j)) - 1);
            if constexpr (sizeof(T) == 1) _mm_mask_storeu_epi8(o + j, m, _mm256_cvtepi32_epi8(r32));
            else _mm_mask_storeu_epi16(o + j, m, _mm256_cvtepi32_epi16(r32));
        }
    }
}
}  // namespace detail
#endif

template <class Rounding, class Acc, bool Narrow, class T>
void separable_sum(const T* x, int64_t N, int64_t C, int64_t H, int64_t W, const int64_t* batch, int64_t B,
                   const int32_t* wy, int64_t PH, const int32_t* wx, int64_t PW, const int64_t* multiplier, int shift,
                   int64_t lo, int64_t hi, bool vector, T* out) {
    (void)N;
#ifdef QFRAME_KERNELS_X86
    vector = vector && std::is_same_v<Acc, double> && gemm_kernel_for<int8_t>().isa == Isa::Avx512;
#else
    vector = false;
#endif
    std::vector<int64_t> ry0, ry1, rx0, rx1;
    nonzero_spans(wy, B * PH, H, ry0, ry1);
    nonzero_spans(wx, B * PW, W, rx0, rx1);
    // the columns any output of box b reads: the union of its wx spans
    std::vector<int64_t> col0(B, 0), col1(B, 0);
    for (int64_t b = 0; b < B; ++b) {
        int64_t a = W, e = 0;
        for (int64_t j = 0; j < PW; ++j)
            if (rx1[b * PW + j] > rx0[b * PW + j]) {
                a = std::min(a, rx0[b * PW + j]);
                e = std::max(e, rx1[b * PW + j]);
            }
        col0[b] = a < e ? a : 0;
        col1[b] = a < e ? e : 0;
    }
    std::vector<ColumnTaps> taps(vector ? B : 0);
    for (int64_t b = 0; b < static_cast<int64_t>(taps.size()); ++b) {
        ColumnTaps& ct = taps[b];
        for (int64_t j = 0; j < PW; ++j) ct.L = std::max(ct.L, rx1[b * PW + j] - rx0[b * PW + j]);
        ct.PWp = (PW + 7) / 8 * 8;
        ct.index.assign(ct.L * ct.PWp, 0);
        ct.weight.assign(ct.L * ct.PWp, 0.0);
        for (int64_t j = 0; j < PW; ++j)
            for (int64_t w = rx0[b * PW + j]; w < rx1[b * PW + j]; ++w) {
                const int64_t k = w - rx0[b * PW + j];
                ct.index[k * ct.PWp + j] = static_cast<int32_t>(w - col0[b]);
                ct.weight[k * ct.PWp + j] = static_cast<double>(wx[(b * PW + j) * W + w]);
            }
    }
    const int64_t tasks = B * C;
    const int64_t work = tasks * PH * std::max<int64_t>(W, PW);
#pragma omp parallel num_threads(max_threads()) if (work > 32768)
    {
        std::vector<Acc> rows(static_cast<size_t>(std::max<int64_t>(W, 1) + 8));
#pragma omp for schedule(dynamic, std::max<int64_t>(1, tasks / (8 * max_threads())))
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t b = t / C, c = t % C;
            const T* plane = x + (batch[b] * C + c) * H * W;
#ifdef QFRAME_KERNELS_X86
            if constexpr (std::is_same_v<Acc, double>) {
                if (vector) {
                    detail::separable_plane_avx512<Rounding>(plane, W, wy + b * PH * H, ry0.data() + b * PH,
                                                             ry1.data() + b * PH, PH, H, taps[b], PW, col0[b], col1[b],
                                                             multiplier[b], shift, lo, hi, rows.data(), out + t * PH * PW);
                    continue;
                }
            }
#endif
            separable_plane<Rounding, Acc, Narrow>(plane, W, wy + b * PH * H, ry0.data() + b * PH, ry1.data() + b * PH, PH, H,
                                      wx + b * PW * W, rx0.data() + b * PW, rx1.data() + b * PW, PW, col0[b], col1[b],
                                      multiplier[b], shift, lo, hi, rows.data(), out + t * PH * PW);
        }
    }
}

namespace detail {
template <class Rounding, class T>
inline void gather_taps_plane(const T* plane, const int32_t* ig, const int32_t* wg, int64_t K, int64_t P, int shift,
                              int64_t lo, int64_t hi, T* o) {
    const int64_t half = (int64_t(1) << shift) >> 1, mask = (int64_t(1) << shift) - 1;
    for (int64_t p = 0; p < P; ++p) {
        int64_t acc = 0;
        for (int64_t k = 0; k < K; ++k)
            acc += static_cast<int64_t>(wg[k * P + p]) * static_cast<int64_t>(plane[ig[k * P + p]]);
        o[p] = static_cast<T>(clamp_i64(FastRound<Rounding>::apply(acc, shift, half, mask), lo, hi));
    }
}

#ifdef QFRAME_KERNELS_X86
// 16 outputs a step: per tap one 16-lane gather of 32-bit words at the codes' addresses (the code in the low
// bytes, sign-extended by a shift pair), products and sums in double, exact below 2**53.  Reads up to 3 bytes past
// a code: the caller keeps the plane that far inside its buffer.
template <class Rounding, class T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void gather_taps_plane_avx512(const T* plane, const int32_t* ig,
                                                                          const int32_t* wg, int64_t K, int64_t P,
                                                                          int shift, int64_t lo, int64_t hi, T* o) {
    constexpr int kScale = sizeof(T), kExtend = 32 - 8 * sizeof(T);
    const __m512d scale = _mm512_set1_pd(1.0 / static_cast<double>(int64_t(1) << shift));
    const __m512d vlo = _mm512_set1_pd(static_cast<double>(lo)), vhi = _mm512_set1_pd(static_cast<double>(hi));
    for (int64_t p = 0; p < P; p += 16) {
        const __mmask16 m = P - p >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (P - p)) - 1);
        __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
        for (int64_t k = 0; k < K; ++k) {
            const __m512i idx = _mm512_maskz_loadu_epi32(m, ig + k * P + p);
            const __m512i w = _mm512_maskz_loadu_epi32(m, wg + k * P + p);
            __m512i x = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, plane, kScale);
            x = _mm512_srai_epi32(_mm512_slli_epi32(x, kExtend), kExtend);
            a0 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(x)),
                                 _mm512_cvtepi32_pd(_mm512_castsi512_si256(w)), a0);
            a1 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(x, 1)),
                                 _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(w, 1)), a1);
        }
        a0 = _mm512_min_pd(_mm512_max_pd(RoundShiftPd<Rounding>::apply(a0, scale), vlo), vhi);
        a1 = _mm512_min_pd(_mm512_max_pd(RoundShiftPd<Rounding>::apply(a1, scale), vlo), vhi);
        const __m512i r = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtpd_epi32(a0)), _mm512_cvtpd_epi32(a1), 1);
        if constexpr (sizeof(T) == 1) _mm_mask_storeu_epi8(o + p, m, _mm512_cvtepi32_epi8(r));
        else _mm256_mask_storeu_epi16(o + p, m, _mm512_cvtepi32_epi16(r));
    }
}
#endif
}  // namespace detail

// vector: the caller checked that every sum is below 2**52 and shift <= 52 (the double path is exact).
template <class Rounding, class T>
void gather_taps(const T* x, int64_t N, int64_t C, int64_t S, const int32_t* idx, const int32_t* w, int64_t G,
                 int64_t K, int64_t P, int shift, int64_t lo, int64_t hi, bool vector, T* out) {
    const int64_t tasks = N * C;
#ifdef QFRAME_KERNELS_X86
    vector = vector && gemm_kernel_for<int8_t>().isa == Isa::Avx512;
#else
    vector = false;
#endif
    // the vector path reads 4 bytes at each code: the last plane runs from a padded copy
    std::vector<T> last;
    if (vector) {
        last.assign(x + (tasks - 1) * S, x + tasks * S);
        last.resize(S + 4, T(0));
    }
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, tasks / (8 * max_threads()))) \
    num_threads(max_threads()) if (tasks * P * K > 32768)
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t g = G == 1 ? 0 : t / C;
        const T* plane = vector && t == tasks - 1 ? last.data() : x + t * S;
#ifdef QFRAME_KERNELS_X86
        if (vector) {
            detail::gather_taps_plane_avx512<Rounding>(plane, idx + g * K * P, w + g * K * P, K, P, shift, lo, hi,
                                                       out + t * P);
            continue;
        }
#endif
        detail::gather_taps_plane<Rounding>(plane, idx + g * K * P, w + g * K * P, K, P, shift, lo, hi, out + t * P);
    }
}

// grid_sample's taps (qframe_core.grid_sample.grid_sample_taps) from grid codes g [N, P, 2] ((x, y) pairs), per
// axis of size n with registers (A, B):
//   src = round_shift(g * A, mult_shift) + B                  (clamped to [0, (n-1) << F] with border padding)
//   nearest:  i = round_shift(src, F);                         one tap, weight 1
//   bilinear: i0 = src >> F, lam = ((src & (2**F-1)) + 2**(F-W-1)) >> (F-W); taps i0, i0+1 weighted 2**W - lam, lam
// taps of the two axes multiply (y outer, x inner); a tap outside the input has weight 0 and index 0.
struct GridAxis {
    int64_t A, B, n;
};

template <class Rounding, class TG>
void grid_taps(const TG* g, int64_t N, int64_t P, GridAxis ax, GridAxis ay, int mult_shift, int F, int W,
               bool bilinear, bool border, int32_t* index, int32_t* weight) {
    const int64_t K = bilinear ? 4 : 1;
    const int64_t total = N * P;
#pragma omp parallel for schedule(static) num_threads(max_threads()) if (total > 16384)
    for (int64_t t = 0; t < total; ++t) {
        const int64_t nimg = t / P, p = t % P;
        int64_t pos[2][2], wt[2][2];  // [axis][tap]: axis 0 = x, 1 = y
        const GridAxis axes[2] = {ax, ay};
        for (int d = 0; d < 2; ++d) {
            const GridAxis& a = axes[d];
            int64_t src = Rounding::template round_shift<int64_t>(static_cast<int64_t>(g[2 * t + d]) * a.A, mult_shift) + a.B;
            if (border) src = std::clamp<int64_t>(src, 0, (a.n - 1) << F);
            if (bilinear) {
                const int64_t i0 = src >> F, frac = src & ((int64_t(1) << F) - 1);
                const int64_t lam = F > W ? (frac + ((int64_t(1) << (F - W)) >> 1)) >> (F - W) : frac;
                pos[d][0] = i0;
                pos[d][1] = i0 + 1;
                wt[d][0] = (int64_t(1) << W) - lam;
                wt[d][1] = lam;
            } else {
                pos[d][0] = Rounding::template round_shift<int64_t>(src, F);
                wt[d][0] = 1;
            }
            for (int k = 0; k < (bilinear ? 2 : 1); ++k) {
                const bool inside = pos[d][k] >= 0 && pos[d][k] < a.n;
                wt[d][k] = inside ? wt[d][k] : 0;
                pos[d][k] = std::clamp<int64_t>(pos[d][k], 0, a.n - 1);
            }
        }
        int64_t k = 0;
        for (int ky = 0; ky < (bilinear ? 2 : 1); ++ky)
            for (int kx = 0; kx < (bilinear ? 2 : 1); ++kx, ++k) {
                const int64_t o = (nimg * K + k) * P + p;
                index[o] = static_cast<int32_t>(pos[1][ky] * ax.n + pos[0][kx]);
                weight[o] = static_cast<int32_t>(wt[1][ky] * wt[0][kx]);
            }
    }
}

}  // namespace qframe_kernels
