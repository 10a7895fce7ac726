// qframe_kernels/conv2d.hpp -- integer 2-D convolution (NCHW, OIHW weights).
//
// out[n,o,h,w] = clamp(round_shift((acc + bias[o]) * multiplier[o]
//                                  + residual[n,o,h,w] * residual_multiplier[o], shift[o]))
// acc: exact sum of input * weight (int32 for int8 input, int64 for int16).
// Raw mode (no multiplier/shift, int32 output): clamp(saturate_int32(acc + bias)).
// Paths: im2col panels + packed GEMM (gemm_s8.hpp); a direct loop for groups
// with few output channels (depthwise).
#pragma once

#include <algorithm>
#include <cstdint>
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

namespace detail {

template <class Policy, class TOut, class TRes>
inline TOut finish_one(int64_t acc, int64_t o, const TRes* res, int64_t ridx, const RequantArgs& q) {
    const int64_t v = acc + (q.bias ? q.bias[o] : 0);
    if (q.multiplier == nullptr) {
        const int64_t sat = clamp_i64(v, dtype_min(DType::Int32), dtype_max(DType::Int32));
        return static_cast<TOut>(clamp_i64(sat, q.range.lo, q.range.hi));
    }
    const int64_t r = res ? static_cast<int64_t>(res[ridx]) : 0;
    const int64_t rm = res ? q.res_multiplier[o] : 0;
    return static_cast<TOut>(
        requant_one<typename Policy::Rounding>(v, q.multiplier[o], r, rm, q.shift[o], q.range.lo, q.range.hi));
}

template <class Policy, class TAcc, class TRes, class TOut>
inline void finish_row(const TAcc* acc, int64_t n, int64_t o, const TRes* res, const RequantArgs& q, TOut* out) {
    const int64_t bias = q.bias ? q.bias[o] : 0;
    if (q.multiplier == nullptr) {
        raw_row(acc, n, bias, q.range.lo, q.range.hi, out);
    } else {
        requant_row<typename Policy::Rounding>(acc, n, bias, q.multiplier[o], q.shift[o], res,
                                               res ? static_cast<int64_t>(q.res_multiplier[o]) : 0, q.range.lo,
                                               q.range.hi, out);
    }
}

// im2col of one panel of output pixels [p0, p0+np) for image n, group g.
template <class TIn>
inline void im2col_panel(const Conv2dShape& s, const TIn* in, int64_t n, int64_t g, int64_t p0, int64_t np, int nr,
                         int16_t* B) {
    const int64_t Cg = s.C / s.groups;
    const int64_t K = Cg * s.KH * s.KW;
    const int64_t Kp = kpairs(K);
    const int64_t HW = s.H * s.W;
    const TIn* base = in + (n * s.C + g * Cg) * HW;
    for (int64_t k = 0; k < 2 * Kp; ++k) {
        int16_t* dst = B + (k >> 1) * nr * 2 + (k & 1);
        if (k >= K) {
            for (int j = 0; j < nr; ++j) dst[2 * j] = 0;
            continue;
        }
        const int64_t c = k / (s.KH * s.KW);
        const int64_t kh = (k / s.KW) % s.KH;
        const int64_t kw = k % s.KW;
        const TIn* plane = base + c * HW;
        int64_t oh = p0 / s.Wo, ow = p0 % s.Wo;
        int64_t j = 0;
        while (j < np) {
            const int64_t seg = std::min(np - j, s.Wo - ow);
            const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
            int16_t* d = dst + 2 * j;
            if (ih < 0 || ih >= s.H) {
                for (int64_t q = 0; q < seg; ++q) d[2 * q] = 0;
            } else {
                const TIn* row = plane + ih * s.W;
                const int64_t iw0 = ow * s.sw - s.pw + kw * s.dw;  // iw = iw0 + q * sw
                // valid q: 0 <= iw0 + q*sw < W
                int64_t qlo = iw0 >= 0 ? 0 : (-iw0 + s.sw - 1) / s.sw;
                int64_t qhi = iw0 >= s.W ? 0 : (s.W - 1 - iw0) / s.sw + 1;
                qlo = std::min(qlo, seg);
                qhi = std::max(qlo, std::min(qhi, seg));
                int64_t q = 0;
                for (; q < qlo; ++q) d[2 * q] = 0;
                const TIn* src = row + iw0;
                if (s.sw == 1) {
                    for (; q < qhi; ++q) d[2 * q] = src[q];
                } else {
                    for (; q < qhi; ++q) d[2 * q] = src[q * s.sw];
                }
                for (; q < seg; ++q) d[2 * q] = 0;
            }
            j += seg;
            ++oh;
            ow = 0;
        }
        for (int64_t jj = np; jj < nr; ++jj) dst[2 * jj] = 0;
    }
}

// Direct convolution for one (n, o) output plane; used when a group has
// few output channels (depthwise), where GEMM tiles would be mostly padding.
template <class Policy, class TIn, class TOut, class TRes, class Acc>
inline void conv_direct_plane(const Conv2dShape& s, const TIn* in, const int8_t* w, int64_t n, int64_t o,
                              const TRes* res, const RequantArgs& q, TOut* out, Acc* acc) {
    const int64_t Cg = s.C / s.groups, Og = s.O / s.groups;
    const int64_t g = o / Og;
    const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
    std::fill(acc, acc + P, Acc(0));
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
                    const TIn* src = plane + ih * s.W + iw0;
                    Acc* a = acc + oh * s.Wo;
                    if (s.sw == 1) {
                        for (int64_t ow = qlo; ow < qhi; ++ow) a[ow] += wv * static_cast<Acc>(src[ow]);
                    } else {
                        for (int64_t ow = qlo; ow < qhi; ++ow) a[ow] += wv * static_cast<Acc>(src[ow * s.sw]);
                    }
                }
            }
        }
    }
    const int64_t obase = (n * s.O + o) * P;
    finish_row<Policy>(acc, P, o, res ? res + obase : res, q, out + obase);
}

template <class Policy, class TIn, class TOut, class TRes, class Acc>
void conv2d_direct(const Conv2dShape& s, const TIn* in, const int8_t* w, const TRes* res, const RequantArgs& q,
                   TOut* out) {
    const int64_t P = s.Ho * s.Wo;
    const int64_t planes = s.N * s.O;
    const int nthreads = max_threads();
    std::vector<Acc> accbuf(static_cast<size_t>(std::max<int64_t>(P, 1)) * nthreads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (planes > 1)
    for (int64_t t = 0; t < planes; ++t) {
        Acc* acc = accbuf.data() + static_cast<int64_t>(thread_id()) * std::max<int64_t>(P, 1);
        conv_direct_plane<Policy, TIn, TOut, TRes, Acc>(s, in, w, t / s.O, t % s.O, res, q, out, acc);
    }
}

}  // namespace detail

// Full conv2d.  Pointers are C-contiguous; res may be null (no residual).
// Shapes/params must already be validated (see bindings.hpp).
template <class Policy, class TIn, class TOut, class TRes>
void conv2d(const Conv2dShape& s, const TIn* in, const int8_t* w, const TRes* res, const RequantArgs& q, TOut* out) {
    const int64_t P = s.Ho * s.Wo;
    if (s.N == 0 || s.O == 0 || P == 0) return;
    const int64_t Cg = s.C / s.groups, Og = s.O / s.groups;
    const int64_t K = Cg * s.KH * s.KW;
    // Largest |acc| for int8 input is K * 2**14; keep int32 while that fits.
    const bool acc32 = sizeof(TIn) == 1 && K <= 131071;
    if (Og <= 2) {
        if (acc32)
            detail::conv2d_direct<Policy, TIn, TOut, TRes, int32_t>(s, in, w, res, q, out);
        else
            detail::conv2d_direct<Policy, TIn, TOut, TRes, int64_t>(s, in, w, res, q, out);
        return;
    }
    const GemmKernel& kern = gemm_kernel();
    const int64_t apg = packed_a_size(Og, K, kern.mr);
    std::vector<int32_t> apack(static_cast<size_t>(std::max<int64_t>(apg * s.groups, 1)));
    for (int64_t g = 0; g < s.groups; ++g) pack_a(w + g * Og * K, Og, K, K, kern.mr, apack.data() + g * apg);
    const int nr = kern.nr;
    gemm_driver(
        kern, s.N * s.groups, Og, K, P, chunk_pairs<TIn>(),
        [&](int64_t b) { return apack.data() + (b % s.groups) * apg; },
        [&](int64_t b, int64_t p0, int64_t np, int16_t* B) {
            detail::im2col_panel<TIn>(s, in, b / s.groups, b % s.groups, p0, np, nr, B);
        },
        [&](int64_t b, int64_t m0, int64_t mrows, int64_t p0, int64_t np, const auto* C) {
            const int64_t n = b / s.groups, g = b % s.groups;
            for (int64_t r = 0; r < mrows; ++r) {
                const int64_t o = g * Og + m0 + r;
                const int64_t obase = (n * s.O + o) * P + p0;
                detail::finish_row<Policy>(C + r * nr, np, o, res ? res + obase : res, q, out + obase);
            }
        });
}

}  // namespace qframe_kernels
