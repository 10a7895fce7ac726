// qframe_kernels/conv2d.hpp -- integer 2-D convolution (NCHW, OIHW weights).
//
// out[n,o,h,w] = clamp(round_shift((acc + bias[o]) * multiplier[o]
//                                  + residual[n,o,h,w] * residual_multiplier[o], shift[o]))
// acc: exact sum of input * weight (int32 for int8 input, int64 for int16).
// Raw mode (no multiplier/shift, int32 output): clamp(saturate_int32(acc + bias)).
// Paths: im2col panels + packed GEMM (gemm_s8.hpp) with weights packed once
// (PackedGemmWeight, see packed.hpp); a direct loop for groups with few
// output channels (depthwise), compiled for AVX-512 / AVX2 / baseline.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gemm_s8.hpp"
#include "requant.hpp"

namespace qframe_kernels {

struct Conv2dShape {
    int64_t N, C, H, W;     // input
    int64_t O, KH, KW;      // weight [O, C/groups, KH, KW]
    int64_t sh, sw, ph, pw, dh, dw, groups;
    int64_t Ho, Wo;         // output (see conv2d_out_size)
};

// Output size of one spatial dim; <= 0 means the kernel does not fit.
inline int64_t conv2d_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    const int64_t span = d * (k - 1) + 1;
    const int64_t padded = in + 2 * p;
    if (padded < span) return 0;
    return (padded - span) / s + 1;
}

// Epilogue parameters shared by conv2d and linear.
struct RequantArgs {
    const int32_t* bias = nullptr;           // [O] or null
    const int32_t* multiplier = nullptr;     // [O]; null => raw int32 mode
    const int32_t* shift = nullptr;          // [O]
    const int32_t* res_multiplier = nullptr; // [O] when a residual is given
    ClampRange range{0, 0};
};

// GEMM-packed weights of one layer for one kernel: [groups] x packed A of
// the group's rows, plus comp = 128 * row sums for u8-quad kernels.
struct PackedGemmWeight {
    const GemmKernel* kern = nullptr;
    int64_t groups = 0, rows = 0, K = 0;  // rows = output channels per group
    int64_t group_stride = 0;
    std::vector<int32_t> a;
    std::vector<int64_t> comp;  // [groups * rows], empty unless kern->kgroup == 4
    bool run = false;           // conv weights in the ConvGemmLayout "runs" order

    const int32_t* group(int64_t g) const { return a.data() + g * group_stride; }
    int64_t comp_of(int64_t o) const { return comp.empty() ? 0 : comp[o]; }
    size_t nbytes() const { return a.size() * sizeof(int32_t) + comp.size() * sizeof(int64_t); }
};

// Packs W [groups * rows, K] (row-major) for `kern`.
inline void pack_gemm_weight(PackedGemmWeight& pw, const GemmKernel& kern, const int8_t* w, int64_t groups,
                             int64_t rows, int64_t K) {
    pw.kern = &kern;
    pw.groups = groups;
    pw.rows = rows;
    pw.K = K;
    pw.group_stride = packed_a_size(rows, K, kern);
    pw.a.assign(static_cast<size_t>(std::max<int64_t>(pw.group_stride * groups, 1)), 0);
    if (kern.kgroup == 4) pw.comp.assign(static_cast<size_t>(groups * rows), 0);
    else pw.comp.clear();
    for (int64_t g = 0; g < groups; ++g)
        pack_a(w + g * rows * K, rows, K, K, kern, pw.a.data() + g * pw.group_stride,
               pw.comp.empty() ? nullptr : pw.comp.data() + g * rows);
}

// How the GEMM reduction of a conv is laid out over the channels-last copy
// of the input (see detail::prepare_channels_last / panel_channels_last):
//  * taps (default): one segment per kernel tap (kh, kw) holding the group's
//    channels padded to CgP = a multiple of the k-group (zero weights);
//  * runs (groups == 1, unit width dilation, C not a multiple of the
//    k-group, e.g. a 3-channel stem): one segment per kernel row kh holding
//    the contiguous (kw, c) run of KW * C values, padded at its end; the
//    padding k-groups read the next values of the copy against zero weights.
struct ConvGemmLayout {
    bool run = false;
    int64_t CgP = 0;   // channels per group in the channels-last copy
    int64_t segs = 0;  // KH (runs) or KH * KW (taps)
    int64_t Q = 0;     // k-groups per segment
    int kg = 2;
    int64_t K() const { return segs * Q * kg; }
};

inline ConvGemmLayout conv_gemm_layout(int64_t Cg, int64_t KH, int64_t KW, int64_t groups, int64_t dw, int kg) {
    ConvGemmLayout l;
    l.kg = kg;
    if (groups == 1 && dw == 1 && KW > 1 && Cg % kg != 0) {
        l.run = true;
        l.CgP = Cg;
        l.segs = KH;
        l.Q = (KW * Cg + kg - 1) / kg;
    } else {
        l.CgP = (Cg + kg - 1) / kg * kg;
        l.segs = KH * KW;
        l.Q = l.CgP / kg;
    }
    return l;
}

// Conv weights [O, Cg, KH, KW] packed for `kern` in the reduction order of
// conv_gemm_layout(..., dw, kern.kgroup), zero weights in the padding.
inline void pack_conv2d_gemm_weight(PackedGemmWeight& pw, const GemmKernel& kern, const int8_t* w, int64_t O,
                                    int64_t Cg, int64_t KH, int64_t KW, int64_t groups, int64_t dw) {
    const ConvGemmLayout l = conv_gemm_layout(Cg, KH, KW, groups, dw, kern.kgroup);
    const int64_t K = l.K();
    std::vector<int8_t> re(static_cast<size_t>(std::max<int64_t>(O * K, 1)), 0);
    for (int64_t o = 0; o < O; ++o)
        for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
                for (int64_t kw = 0; kw < KW; ++kw) {
                    const int64_t k = l.run ? kh * l.Q * l.kg + kw * Cg + c : (kh * KW + kw) * l.CgP + c;
                    re[o * K + k] = w[((o * Cg + c) * KH + kh) * KW + kw];
                }
    pack_gemm_weight(pw, kern, re.data(), groups, O / groups, K);
    pw.run = l.run;
}

namespace detail {

// out row = requant(acc + bias) for output channel o; `bias` already holds
// bias[o] (and -comp[o] for u8-quad accumulators).  int32 accumulators use
// the vector epilogue of the path's ISA.
template <class Policy, class TAcc, class TRes, class TOut>
inline void finish_row(Isa isa, const TAcc* acc, int64_t n, int64_t o, int64_t bias, const TRes* res,
                       const RequantArgs& q, TOut* out) {
    using R = typename Policy::Rounding;
    if (q.multiplier == nullptr) {
        raw_row(acc, n, bias, q.range.lo, q.range.hi, out);
        return;
    }
    const int64_t m = q.multiplier[o];
    const int s = q.shift[o];
    const int64_t rm = res ? static_cast<int64_t>(q.res_multiplier[o]) : 0;
#ifdef QFRAME_KERNELS_X86
    if constexpr (std::is_same_v<TAcc, int32_t>) {
        if (isa == Isa::Avx512) {
            requant_row_avx512<R>(acc, n, bias, m, s, res, rm, q.range.lo, q.range.hi, out);
            return;
        }
        if (isa == Isa::Avx2) {
            requant_row_avx2<R>(acc, n, bias, m, s, res, rm, q.range.lo, q.range.hi, out);
            return;
        }
    }
#endif
    (void)isa;
    requant_row<R>(acc, n, bias, m, s, res, rm, q.range.lo, q.range.hi, out);
}

// `rows` consecutive output channels o0.. of a GEMM tile: acc row r at
// acc + r*lda, output (and residual) row r at out + r*ldo; bias[r] already
// includes -comp.  AVX-512 runs the 16-lane tile epilogue.
template <class Policy, class TAcc, class TRes, class TOut>
inline void finish_tile(Isa isa, const TAcc* acc, int64_t lda, int64_t rows, int64_t n, int64_t o0,
                        const int64_t* bias, const TRes* res, int64_t ldo, const RequantArgs& q, TOut* out) {
#ifdef QFRAME_KERNELS_X86
    if constexpr (std::is_same_v<TAcc, int32_t>) {
        if (isa == Isa::Avx512 && q.multiplier != nullptr) {
            requant_tile_avx512<typename Policy::Rounding>(acc, lda, rows, n, bias, q.multiplier + o0, q.shift + o0,
                                                           res, res ? q.res_multiplier + o0 : nullptr, q.range.lo,
                                                           q.range.hi, out, ldo);
            return;
        }
    }
#endif
    for (int64_t r = 0; r < rows; ++r)
        finish_row<Policy>(isa, acc + r * lda, n, o0 + r, bias[r], res ? res + r * ldo : res, q, out + r * ldo);
}

constexpr int kMaxNR = 64;

#ifdef QFRAME_KERNELS_X86
// 16x16 byte transpose (SSE2): out[j][i] = in[i][j] ^ flip.
inline void transpose16x16_u8(const uint8_t* const* rows, uint8_t* const* outs, uint8_t flip) {
    __m128i a[16], b[16], c[16], d[16];
    for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i]));
    for (int k = 0; k < 8; ++k) {
        b[k] = _mm_unpacklo_epi8(a[2 * k], a[2 * k + 1]);
        b[k + 8] = _mm_unpackhi_epi8(a[2 * k], a[2 * k + 1]);
    }
    for (int k = 0; k < 4; ++k) {
        c[k] = _mm_unpacklo_epi16(b[2 * k], b[2 * k + 1]);
        c[k + 4] = _mm_unpackhi_epi16(b[2 * k], b[2 * k + 1]);
        c[k + 8] = _mm_unpacklo_epi16(b[8 + 2 * k], b[9 + 2 * k]);
        c[k + 12] = _mm_unpackhi_epi16(b[8 + 2 * k], b[9 + 2 * k]);
    }
    for (int G = 0; G < 4; ++G) {
        d[4 * G + 0] = _mm_unpacklo_epi32(c[4 * G], c[4 * G + 1]);
        d[4 * G + 1] = _mm_unpacklo_epi32(c[4 * G + 2], c[4 * G + 3]);
        d[4 * G + 2] = _mm_unpackhi_epi32(c[4 * G], c[4 * G + 1]);
        d[4 * G + 3] = _mm_unpackhi_epi32(c[4 * G + 2], c[4 * G + 3]);
    }
    const __m128i f = _mm_set1_epi8(static_cast<char>(flip));
    for (int G = 0; G < 4; ++G) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(outs[4 * G + 0]),
                         _mm_xor_si128(_mm_unpacklo_epi64(d[4 * G], d[4 * G + 1]), f));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(outs[4 * G + 1]),
                         _mm_xor_si128(_mm_unpackhi_epi64(d[4 * G], d[4 * G + 1]), f));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(outs[4 * G + 2]),
                         _mm_xor_si128(_mm_unpacklo_epi64(d[4 * G + 2], d[4 * G + 3]), f));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(outs[4 * G + 3]),
                         _mm_xor_si128(_mm_unpackhi_epi64(d[4 * G + 2], d[4 * G + 3]), f));
    }
}

// 4x4 int32 transpose (SSE2): dst[q * ld + j] = src_j[q] for 4 sources of 4 int32.
inline void transpose4x4_i32(const void* s0, const void* s1, const void* s2, const void* s3, int32_t* dst,
                             int64_t ld) {
    const __m128i a = _mm_loadu_si128(static_cast<const __m128i*>(s0));
    const __m128i b = _mm_loadu_si128(static_cast<const __m128i*>(s1));
    const __m128i c = _mm_loadu_si128(static_cast<const __m128i*>(s2));
    const __m128i d = _mm_loadu_si128(static_cast<const __m128i*>(s3));
    const __m128i ab0 = _mm_unpacklo_epi32(a, b), ab1 = _mm_unpackhi_epi32(a, b);
    const __m128i cd0 = _mm_unpacklo_epi32(c, d), cd1 = _mm_unpackhi_epi32(c, d);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi64(ab0, cd0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + ld), _mm_unpackhi_epi64(ab0, cd0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * ld), _mm_unpacklo_epi64(ab1, cd1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 3 * ld), _mm_unpackhi_epi64(ab1, cd1));
}
#endif

// The padding pixels (spatial border) of a padded channels-last copy X[N][H + 2ph][W + 2pw][pix] set to
// `v`, the encoding of 0.  Channel padding inside real pixels is left as it is: it only ever meets zero
// weights (every packing zero-fills past the real channels), so whatever it holds adds nothing.
template <class E>
inline void fill_padding_border(E* X, int64_t N, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t pix, E v) {
    if (ph == 0 && pw == 0) return;
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, rl = Wp * pix;
#pragma omp parallel for schedule(static) if (N * Hp * rl > 262144)
    for (int64_t r = 0; r < N * Hp; ++r) {
        E* row = X + r * rl;
        const int64_t hp = r % Hp;
        if (hp < ph || hp >= ph + H) {
            std::fill(row, row + rl, v);
        } else {
            std::fill(row, row + pw * pix, v);
            std::fill(row + (pw + W) * pix, row + rl, v);
        }
    }
}

// Channels-last, padded copy of the input for the GEMM path:
//   X[n][ih + ph][iw + pw][g][c]   (Hp x Wp pixels, groups x CgP channels)
// holding the k-group encoding of each value (E = uint8_t: x + 128 for u8
// quads; E = int16_t: x for int16 pairs); padding pixels and padding channels
// hold the encoding of 0.  One k-group of B is then one 4-byte load.
template <class TIn, class E>
inline void prepare_channels_last(const Conv2dShape& s, const TIn* in, int64_t CgP, E* X) {
    const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
    const int64_t Cg = s.C / s.groups;
    const int64_t pix = s.groups * CgP;  // elements per pixel
    const int64_t HW = s.H * s.W;
    const E zero = sizeof(E) == 1 ? E(128) : E(0);
    const int64_t total = s.N * Hp * Wp * pix;
    // padding pixels hold the encoding of 0; real pixels are overwritten below (their channel padding
    // meets zero weights: see fill_padding_border)
    fill_padding_border<E>(X, s.N, s.H, s.W, s.ph, s.pw, pix, zero);
    constexpr int64_t kChunk = 64;  // input pixels per task
    const int64_t nch = (HW + kChunk - 1) / kChunk;
    const int64_t tasks = s.N * nch;
#pragma omp parallel for schedule(static) if (total > 65536)
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t n = t / nch;
        const int64_t pb = (t % nch) * kChunk, pe = std::min(HW, pb + kChunk);
        E* dst[kChunk];
        for (int64_t p = pb; p < pe; ++p)
            dst[p - pb] = X + ((n * Hp + p / s.W + s.ph) * Wp + p % s.W + s.pw) * pix;
        for (int64_t g = 0; g < s.groups; ++g) {
            const TIn* src = in + (n * s.C + g * Cg) * HW;
            int64_t cdone = 0;
#ifdef QFRAME_KERNELS_X86
            if constexpr (sizeof(E) == 1 && sizeof(TIn) == 1) {
                cdone = Cg / 16 * 16;
                const int64_t p16 = pb + (pe - pb) / 16 * 16;
                for (int64_t c0 = 0; c0 < cdone; c0 += 16) {
                    const uint8_t* rin[16];
                    uint8_t* rout[16];
                    for (int64_t p = pb; p < p16; p += 16) {
                        for (int i = 0; i < 16; ++i) {
                            rin[i] = reinterpret_cast<const uint8_t*>(src + (c0 + i) * HW + p);
                            rout[i] = reinterpret_cast<uint8_t*>(dst[p - pb + i] + g * CgP + c0);
                        }
                        transpose16x16_u8(rin, rout, 0x80);
                    }
                    for (int64_t c = c0; c < c0 + 16; ++c)
                        for (int64_t p = p16; p < pe; ++p)
                            dst[p - pb][g * CgP + c] = static_cast<E>(static_cast<uint8_t>(src[c * HW + p]) ^ 0x80u);
                }
            }
#endif
            for (int64_t c = cdone; c < Cg; ++c) {
                const TIn* sc = src + c * HW;
                for (int64_t p = pb; p < pe; ++p) {
                    if constexpr (sizeof(E) == 1)
                        dst[p - pb][g * CgP + c] = static_cast<E>(static_cast<uint8_t>(sc[p]) ^ 0x80u);
                    else
                        dst[p - pb][g * CgP + c] = static_cast<E>(sc[p]);
                }
            }
        }
    }
}

// B panel of output pixels [p0, p0+np) of group g from the channels-last
// copy X (see prepare_channels_last); pixels are numbered over the whole
// batch (p = n * Ho * Wo + oh * Wo + ow), so a panel may span images.
// Reduction order (kh, kw, c).
template <class E>
inline void panel_channels_last(const Conv2dShape& s, const E* X, const ConvGemmLayout& l, int64_t g, int64_t p0,
                                int64_t np, int nr, int32_t* B) {
    const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
    const int kg = l.kg;
    const int64_t pix = s.groups * l.CgP;
    const int64_t CgQ = l.Q;  // k-groups per segment
    const E* Xn = X + g * l.CgP;
    int64_t off[kMaxNR];
    {
        const int64_t P = s.Ho * s.Wo;
        int64_t n = p0 / P, rem = p0 % P;
        int64_t oh = rem / s.Wo, ow = rem % s.Wo;
        for (int64_t j = 0; j < np; ++j) {
            off[j] = n * Hp * Wp * pix + (oh * s.sh * Wp + ow * s.sw) * pix;
            if (++ow == s.Wo) {
                ow = 0;
                if (++oh == s.Ho) {
                    oh = 0;
                    ++n;
                }
            }
        }
    }
    const int64_t Kg = l.segs * CgQ;
    for (int64_t seg = 0; seg < l.segs; ++seg) {
        {
            const int64_t kh = l.run ? seg : seg / s.KW, kw = l.run ? 0 : seg % s.KW;
            const E* Xt = Xn + (kh * s.dh * Wp + kw * s.dw) * pix;
            int32_t* Bt = B + seg * CgQ * nr;
            int64_t j0 = 0;
#ifdef QFRAME_KERNELS_X86
            // 4 pixels x 4 k-groups per transpose; k-groups past the last multiple of 4
            // (e.g. the 6 per kernel row of a 3-channel 7x7 stem) one by one
            const int64_t q4 = CgQ / 4 * 4;
            if (q4 > 0) {
                for (; j0 + 4 <= np; j0 += 4) {
                    for (int64_t q = 0; q < q4; q += 4)
                        transpose4x4_i32(Xt + off[j0] + q * kg, Xt + off[j0 + 1] + q * kg, Xt + off[j0 + 2] + q * kg,
                                         Xt + off[j0 + 3] + q * kg, Bt + q * nr + j0, nr);
                    for (int64_t j = j0; j < j0 + 4; ++j)
                        for (int64_t q = q4; q < CgQ; ++q) std::memcpy(Bt + q * nr + j, Xt + off[j] + q * kg, 4);
                }
            }
#endif
            for (int64_t j = j0; j < np; ++j) {
                const E* src = Xt + off[j];
                int32_t* d = Bt + j;
                for (int64_t q = 0; q < CgQ; ++q) std::memcpy(d + q * nr, src + q * kg, 4);
            }
        }
    }
    if (np < nr)
        for (int64_t gi = 0; gi < Kg; ++gi)
            for (int64_t j = np; j < nr; ++j) B[gi * nr + j] = 0;
}

// Direct convolution accumulation for one (n, o) output plane; used when a
// group has few output channels (depthwise), where GEMM tiles would be mostly
// padding.  Inlined into ISA-specific wrappers so the row loops vectorize.
template <class TIn, class Acc>
__attribute__((always_inline)) inline void direct_accumulate(const Conv2dShape& s, const TIn* in, const int8_t* w,
                                                             int64_t n, int64_t o, Acc* acc) {
    const int64_t Cg = s.C / s.groups, Og = s.O / s.groups;
    const int64_t g = o / Og;
    const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
    for (int64_t i = 0; i < P; ++i) acc[i] = 0;
    for (int64_t c = 0; c < Cg; ++c) {
        const TIn* plane = in + (n * s.C + g * Cg + c) * HW;
        for (int64_t kh = 0; kh < s.KH; ++kh) {
            for (int64_t kw = 0; kw < s.KW; ++kw) {
                const Acc wv = w[((o * Cg + c) * s.KH + kh) * s.KW + kw];
                if (wv == 0) continue;
                const int64_t iw0 = -s.pw + kw * s.dw;
                int64_t qlo = iw0 >= 0 ? 0 : (-iw0 + s.sw - 1) / s.sw;
                int64_t qhi = iw0 >= s.W ? 0 : (s.W - 1 - iw0) / s.sw + 1;
                qlo = std::min(qlo, s.Wo);
                qhi = std::max(qlo, std::min(qhi, s.Wo));
                for (int64_t oh = 0; oh < s.Ho; ++oh) {
                    const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
                    if (ih < 0 || ih >= s.H) continue;
                    const TIn* __restrict src = plane + ih * s.W + iw0;
                    Acc* __restrict a = acc + oh * s.Wo;
                    if (s.sw == 1) {
                        for (int64_t ow = qlo; ow < qhi; ++ow) a[ow] += wv * static_cast<Acc>(src[ow]);
                    } else {
                        for (int64_t ow = qlo; ow < qhi; ++ow) a[ow] += wv * static_cast<Acc>(src[ow * s.sw]);
                    }
                }
            }
        }
    }
}

template <class TIn, class Acc>
void direct_accumulate_base(const Conv2dShape& s, const TIn* in, const int8_t* w, int64_t n, int64_t o, Acc* acc) {
    direct_accumulate<TIn, Acc>(s, in, w, n, o, acc);
}
#ifdef QFRAME_KERNELS_X86
template <class TIn, class Acc>
__attribute__((target("avx2"))) void direct_accumulate_avx2(const Conv2dShape& s, const TIn* in, const int8_t* w,
                                                            int64_t n, int64_t o, Acc* acc) {
    direct_accumulate<TIn, Acc>(s, in, w, n, o, acc);
}
template <class TIn, class Acc>
__attribute__((target("avx512f,avx512bw"))) void direct_accumulate_avx512(const Conv2dShape& s, const TIn* in,
                                                                         const int8_t* w, int64_t n, int64_t o,
                                                                         Acc* acc) {
    direct_accumulate<TIn, Acc>(s, in, w, n, o, acc);
}
#endif

#ifdef QFRAME_KERNELS_X86
// int8 input, int32 accumulators, unit width stride: one (n, o) plane with
// all kernel taps accumulated in registers, 32 output pixels per step.  The
// group's input channels are first copied into zero-padded rows (width
// W + 2*pw + 32, so loads past the right edge read zeros).  Taps go in pairs:
// the two taps' pixels are interleaved as int16 pairs and vpmaddwd sums
// x1*w1 + x2*w2 exactly in int32 (|.| <= 2**15); the interleave permutes
// pixels within 128-bit lanes, undone once per step.
__attribute__((target("avx512f,avx512bw"))) inline void direct_plane_s8_avx512(const Conv2dShape& s, const int8_t* in,
                                                                             const int8_t* w, int64_t n, int64_t o,
                                                                             int32_t* acc) {
    const int64_t Cg = s.C / s.groups, Og = s.O / s.groups;
    const int64_t g = o / Og;
    const int64_t Wb = s.W + 2 * s.pw + 32;
    int8_t* pad = thread_scratch<int8_t, 5>(std::max<int64_t>(Cg * s.H * Wb, 1));
    for (int64_t c = 0; c < Cg; ++c) {
        const int8_t* plane = in + (n * s.C + g * Cg + c) * s.H * s.W;
        for (int64_t ih = 0; ih < s.H; ++ih) {
            int8_t* d = pad + (c * s.H + ih) * Wb;
            std::memset(d, 0, static_cast<size_t>(s.pw));
            std::memcpy(d + s.pw, plane + ih * s.W, static_cast<size_t>(s.W));
            std::memset(d + s.pw + s.W, 0, static_cast<size_t>(s.pw + 32));
        }
    }
    const int64_t taps = Cg * s.KH * s.KW;
    const int8_t* wo = w + o * taps;
    const int8_t** ptr = thread_scratch<const int8_t*, 6>(taps + 2);
    int32_t* wt = thread_scratch<int32_t, 7>(taps + 2);
    const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int64_t oh = 0; oh < s.Ho; ++oh) {
        int64_t nt = 0;
        for (int64_t c = 0; c < Cg; ++c) {
            for (int64_t kh = 0; kh < s.KH; ++kh) {
                const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
                if (ih < 0 || ih >= s.H) continue;
                const int8_t* row = pad + (c * s.H + ih) * Wb;
                for (int64_t kw = 0; kw < s.KW; ++kw) {
                    ptr[nt] = row + kw * s.dw;
                    wt[nt] = wo[(c * s.KH + kh) * s.KW + kw];
                    ++nt;
                }
            }
        }
        if (nt & 1) {  // pad to pairs with a zero-weight tap
            ptr[nt] = nt ? ptr[0] : pad;
            wt[nt] = 0;
            ++nt;
        }
        int32_t* arow = acc + oh * s.Wo;
        for (int64_t ow0 = 0; ow0 < s.Wo; ow0 += 32) {
            __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
            for (int64_t t = 0; t < nt; t += 2) {
                const __m512i x1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ptr[t] + ow0)));
                const __m512i x2 =
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ptr[t + 1] + ow0)));
                const __m512i wp = _mm512_set1_epi32(static_cast<int32_t>(
                    (static_cast<uint32_t>(wt[t]) & 0xffffu) | (static_cast<uint32_t>(wt[t + 1]) << 16)));
                lo = _mm512_add_epi32(lo, _mm512_madd_epi16(_mm512_unpacklo_epi16(x1, x2), wp));
                hi = _mm512_add_epi32(hi, _mm512_madd_epi16(_mm512_unpackhi_epi16(x1, x2), wp));
            }
            const int64_t left = s.Wo - ow0;
            const __mmask16 m0 = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
            const __mmask16 m1 = left >= 32 ? static_cast<__mmask16>(0xffff)
                                 : left > 16 ? static_cast<__mmask16>((1u << (left - 16)) - 1u)
                                             : static_cast<__mmask16>(0);
            _mm512_mask_storeu_epi32(arow + ow0, m0, _mm512_permutex2var_epi32(lo, idx0, hi));
            if (m1) _mm512_mask_storeu_epi32(arow + ow0 + 16, m1, _mm512_permutex2var_epi32(lo, idx1, hi));
        }
    }
}
#endif

template <class Policy, class TIn, class TOut, class TRes, class Acc>
void conv2d_direct(Isa isa, const Conv2dShape& s, const TIn* in, const int8_t* w, const TRes* res,
                   const RequantArgs& q, TOut* out) {
    const int64_t P = s.Ho * s.Wo;
    const int64_t planes = s.N * s.O;
    const int nthreads = max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (planes > 1)
    for (int64_t t = 0; t < planes; ++t) {
        Acc* acc = thread_scratch<Acc, 3>(std::max<int64_t>(P, 1));
        const int64_t n = t / s.O, o = t % s.O;
        bool done = false;
#ifdef QFRAME_KERNELS_X86
        if constexpr (std::is_same_v<TIn, int8_t> && std::is_same_v<Acc, int32_t>) {
            // |acc| <= taps * 2**14 < 2**31 (callers use int32 only for K <= 131071)
            if (isa == Isa::Avx512 && s.sw == 1 && s.pw < (int64_t(1) << 20)) {
                direct_plane_s8_avx512(s, in, w, n, o, acc);
                done = true;
            }
        }
        if (!done) {
            if (isa == Isa::Avx512) direct_accumulate_avx512<TIn, Acc>(s, in, w, n, o, acc);
            else if (isa == Isa::Avx2) direct_accumulate_avx2<TIn, Acc>(s, in, w, n, o, acc);
            else direct_accumulate_base<TIn, Acc>(s, in, w, n, o, acc);
        }
#else
        direct_accumulate_base<TIn, Acc>(s, in, w, n, o, acc);
#endif
        (void)done;
        const int64_t obase = (n * s.O + o) * P;
        const int64_t bias = q.bias ? q.bias[o] : 0;
        finish_tile<Policy>(isa, static_cast<const Acc*>(acc), 0, 1, P, o, &bias, res ? res + obase : res, 0, q,
                            out + obase);
    }
}

}  // namespace detail

// True when conv2d uses the direct loop (no GEMM packing) for these groups.
inline bool conv2d_uses_direct(int64_t O, int64_t groups) { return O / groups <= 2; }

// Full conv2d.  Pointers are C-contiguous; res may be null (no residual).
// `packed` (may be null) holds the weights packed for gemm_kernel_for<TIn>();
// without it they are packed here.  Shapes/params must already be validated
// (see bindings.hpp).
template <class Policy, class TIn, class TOut, class TRes>
void conv2d(const Conv2dShape& s, const TIn* in, const int8_t* w, const TRes* res, const RequantArgs& q, TOut* out,
            const PackedGemmWeight* packed = nullptr) {
    const int64_t P = s.Ho * s.Wo;
    if (s.N == 0 || s.O == 0 || P == 0) return;
    const int64_t Cg = s.C / s.groups, Og = s.O / s.groups;
    const int64_t K = Cg * s.KH * s.KW;
    const GemmKernel& kern = gemm_kernel_for<TIn>();
    if (conv2d_uses_direct(s.O, s.groups)) {
        // Largest |acc| for int8 input is K * 2**14; keep int32 while that fits.
        const bool acc32 = sizeof(TIn) == 1 && K <= 131071;
        if (acc32)
            detail::conv2d_direct<Policy, TIn, TOut, TRes, int32_t>(kern.isa, s, in, w, res, q, out);
        else
            detail::conv2d_direct<Policy, TIn, TOut, TRes, int64_t>(kern.isa, s, in, w, res, q, out);
        return;
    }
    const ConvGemmLayout lay = conv_gemm_layout(Cg, s.KH, s.KW, s.groups, s.dw, kern.kgroup);
    PackedGemmWeight local;
    if (packed == nullptr || packed->kern != &kern || packed->run != lay.run) {
        pack_conv2d_gemm_weight(local, kern, w, s.O, Cg, s.KH, s.KW, s.groups, s.dw);
        packed = &local;
    }
    const PackedGemmWeight& pw = *packed;
    const int kg = kern.kgroup;
    const int64_t CgP = lay.CgP;
    const int64_t Kp = lay.K();
    const int64_t xelems = s.N * (s.H + 2 * s.ph) * (s.W + 2 * s.pw) * s.groups * CgP;
    constexpr int64_t kSlack = 16;  // "runs" read up to kg - 1 values past the last pixel
    const int nr = kern.nr;
    const Isa isa = kern.isa;
    auto run = [&](auto e) {
        using E = decltype(e);
        E* X = thread_scratch<E, 4>(xelems + kSlack);
        std::fill(X + xelems, X + xelems + kSlack, E(0));
        detail::prepare_channels_last<TIn, E>(s, in, CgP, X);
        // one GEMM per group; its columns are the output pixels of the whole batch
        gemm_driver(
            kern, s.groups, Og, Kp, s.N * P, chunk_groups<TIn>(kern), [&](int64_t g) { return pw.group(g); },
            [&](int64_t g, int64_t p0, int64_t np, int32_t* B) {
                detail::panel_channels_last<E>(s, X, lay, g, p0, np, nr, B);
            },
            [&](int64_t g, int64_t m0, int64_t mrows, int64_t p0, int64_t np, const auto* C) {
                const int64_t o0 = g * Og + m0;
                int64_t bias[detail::kMaxNR];
                for (int64_t r = 0; r < mrows; ++r)
                    bias[r] = (q.bias ? q.bias[o0 + r] : 0) - pw.comp_of(o0 + r);
                // split the panel's columns at image boundaries
                for (int64_t j = 0; j < np;) {
                    const int64_t p = p0 + j, n = p / P, pi = p % P;
                    const int64_t len = std::min(np - j, P - pi);
                    const int64_t obase = (n * s.O + o0) * P + pi;
                    detail::finish_tile<Policy>(isa, C + j, nr, mrows, len, o0, bias, res ? res + obase : res, P, q,
                                                out + obase);
                    j += len;
                }
            });
    };
    if (kg == 4) run(uint8_t{});
    else run(int16_t{});
}

}  // namespace qframe_kernels
