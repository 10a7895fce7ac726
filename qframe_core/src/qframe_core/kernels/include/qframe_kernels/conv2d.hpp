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

// Values of input tap (c's plane, kh, kw) at output pixels [p0, p0+np): dst[j], 0 in the padding.
template <class TIn>
inline void gather_row(const Conv2dShape& s, const TIn* plane, int64_t kh, int64_t kw, int64_t p0, int64_t np,
                       TIn* dst) {
    int64_t oh = p0 / s.Wo, ow = p0 % s.Wo;
    int64_t j = 0;
    while (j < np) {
        const int64_t seg = std::min(np - j, s.Wo - ow);
        const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
        TIn* d = dst + j;
        if (ih < 0 || ih >= s.H) {
            std::fill(d, d + seg, TIn(0));
        } else {
            const TIn* row = plane + ih * s.W;
            const int64_t iw0 = ow * s.sw - s.pw + kw * s.dw;  // iw = iw0 + q * sw
            int64_t qlo = iw0 >= 0 ? 0 : (-iw0 + s.sw - 1) / s.sw;
            int64_t qhi = iw0 >= s.W ? 0 : (s.W - 1 - iw0) / s.sw + 1;
            qlo = std::min(qlo, seg);
            qhi = std::max(qlo, std::min(qhi, seg));
            std::fill(d, d + qlo, TIn(0));
            const TIn* src = row + iw0;
            if (s.sw == 1) {
                std::memcpy(d + qlo, src + qlo, static_cast<size_t>(qhi - qlo) * sizeof(TIn));
            } else {
                for (int64_t q = qlo; q < qhi; ++q) d[q] = src[q * s.sw];
            }
            std::fill(d + qhi, d + seg, TIn(0));
        }
        j += seg;
        ++oh;
        ow = 0;
    }
}

constexpr int kMaxNR = 64;

// im2col of one panel of output pixels [p0, p0+np) for image n, group g, in
// the B layout of `kern` (int16 pairs, or u8 quads x + 128).
template <class TIn>
inline void im2col_panel(const Conv2dShape& s, const TIn* in, int64_t n, int64_t g, int64_t p0, int64_t np,
                         const GemmKernel& kern, int32_t* B) {
    static const TIn zeros[kMaxNR] = {};
    const int nr = kern.nr, kg = kern.kgroup;
    const int64_t Cg = s.C / s.groups;
    const int64_t KK = s.KH * s.KW;
    const int64_t K = Cg * KK;
    const int64_t Kg = kgroups(K, kg);
    const int64_t HW = s.H * s.W;
    const TIn* base = in + (n * s.C + g * Cg) * HW;
    // 1x1, stride 1, no padding: output pixel p reads input pixel p.
    const bool direct = KK == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.Ho == s.H && s.Wo == s.W;
    TIn rows[4][kMaxNR];
    for (int64_t gi = 0; gi < Kg; ++gi) {
        const TIn* rp[4];
        for (int i = 0; i < kg; ++i) {
            const int64_t k = gi * kg + i;
            if (k >= K) {
                rp[i] = zeros;
                continue;
            }
            const int64_t c = k / KK;
            const TIn* plane = base + c * HW;
            if (direct) {
                rp[i] = plane + p0;
            } else {
                const int64_t kh = (k / s.KW) % s.KH, kw = k % s.KW;
                gather_row<TIn>(s, plane, kh, kw, p0, np, rows[i]);
                rp[i] = rows[i];
            }
        }
        int32_t* dst = B + gi * nr;
        if (kg == 4) {
            const TIn *r0 = rp[0], *r1 = rp[1], *r2 = rp[2], *r3 = rp[3];
            for (int64_t j = 0; j < np; ++j)
                dst[j] = static_cast<int32_t>(
                    ((static_cast<uint32_t>(static_cast<uint8_t>(r0[j]))) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(r1[j])) << 8) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(r2[j])) << 16) |
                     (static_cast<uint32_t>(static_cast<uint8_t>(r3[j])) << 24)) ^ 0x80808080u);
        } else {
            const TIn *r0 = rp[0], *r1 = rp[1];
            for (int64_t j = 0; j < np; ++j)
                dst[j] = static_cast<int32_t>((static_cast<uint32_t>(static_cast<uint16_t>(r0[j]))) |
                                              (static_cast<uint32_t>(static_cast<uint16_t>(r1[j])) << 16));
        }
        for (int64_t j = np; j < nr; ++j) dst[j] = 0;
    }
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
#ifdef QFRAME_KERNELS_X86
        if (isa == Isa::Avx512) direct_accumulate_avx512<TIn, Acc>(s, in, w, n, o, acc);
        else if (isa == Isa::Avx2) direct_accumulate_avx2<TIn, Acc>(s, in, w, n, o, acc);
        else direct_accumulate_base<TIn, Acc>(s, in, w, n, o, acc);
#else
        direct_accumulate_base<TIn, Acc>(s, in, w, n, o, acc);
#endif
        const int64_t obase = (n * s.O + o) * P;
        finish_row<Policy>(isa, static_cast<const Acc*>(acc), P, o, q.bias ? q.bias[o] : 0,
                           res ? res + obase : res, q, out + obase);
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
    PackedGemmWeight local;
    if (packed == nullptr || packed->kern != &kern) {
        pack_gemm_weight(local, kern, w, s.groups, Og, K);
        packed = &local;
    }
    const PackedGemmWeight& pw = *packed;
    const int nr = kern.nr;
    const Isa isa = kern.isa;
    gemm_driver(
        kern, s.N * s.groups, Og, K, P, chunk_groups<TIn>(kern),
        [&](int64_t b) { return pw.group(b % s.groups); },
        [&](int64_t b, int64_t p0, int64_t np, int32_t* B) {
            detail::im2col_panel<TIn>(s, in, b / s.groups, b % s.groups, p0, np, kern, B);
        },
        [&](int64_t b, int64_t m0, int64_t mrows, int64_t p0, int64_t np, const auto* C) {
            const int64_t n = b / s.groups, g = b % s.groups;
            for (int64_t r = 0; r < mrows; ++r) {
                const int64_t o = g * Og + m0 + r;
                const int64_t obase = (n * s.O + o) * P + p0;
                const int64_t bias = (q.bias ? q.bias[o] : 0) - pw.comp_of(o);
                detail::finish_row<Policy>(isa, C + r * nr, np, o, bias, res ? res + obase : res, q, out + obase);
            }
        });
}

}  // namespace qframe_kernels
