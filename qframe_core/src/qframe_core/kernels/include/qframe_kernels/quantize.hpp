// qframe_kernels/quantize.hpp -- float32 -> integer quantization of a model's input (QuantStub).
//
//   q = clamp(round_half_even(x / scale), qmin, qmax),  NaN -> 0,  +-inf -> qmax / qmin
//
// bit-identical to qframe_core.numerics.quantize_to_int on float32 input (the one rule of qframe:
// x / scale is the IEEE float32 quotient, rounded to nearest even), in one pass instead of five torch
// ops.  Optionally writes NHWC ([N, H, W, C] from an [N, C, H, W] input), so a channels-last conv
// reads the model input without a transposing copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu_features.hpp"
#include "gemm_s8.hpp"

namespace qframe_kernels {

namespace detail {

template <class TOut>
inline TOut quantize_one(float x, float scale, float lo, float hi) {
    float q = std::nearbyint(x / scale);  // default rounding mode: to nearest, ties to even
    if (std::isnan(q)) return TOut(0);
    return static_cast<TOut>(std::min(std::max(q, lo), hi));
}

#ifdef QFRAME_KERNELS_X86
// 16 lanes: the same operations, vectorized (division and rounding are exact IEEE operations).
template <class TOut>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void quantize_row_avx512(const float* x, int64_t n,
                                                                                    float scale, float lo, float hi,
                                                                                    TOut* out) {
    const __m512 vs = _mm512_set1_ps(scale), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + i), vs),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q, q, _CMP_ORD_Q), q);  // NaN -> 0
        const __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, vlo), vhi));
        if constexpr (sizeof(TOut) == 1) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(v));
        else _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(v));
    }
    for (; i < n; ++i) out[i] = quantize_one<TOut>(x[i], scale, lo, hi);
}
#endif

template <class TOut>
inline void quantize_row(const float* x, int64_t n, float scale, float lo, float hi, TOut* out) {
#ifdef QFRAME_KERNELS_X86
    if (gemm_kernel_for<int8_t>().isa == Isa::Avx512) {
        quantize_row_avx512<TOut>(x, n, scale, lo, hi, out);
        return;
    }
#endif
    for (int64_t i = 0; i < n; ++i) out[i] = quantize_one<TOut>(x[i], scale, lo, hi);
}

}  // namespace detail

// x: `outer` planes of C x HW floats ([N, C, H, W] with outer = N; any tensor with outer = 1, C = 1,
// HW = size).  out: the same layout, or [N, HW, C] when nhwc.
template <class TOut>
void quantize(const float* x, int64_t outer, int64_t C, int64_t HW, float scale, int64_t qmin, int64_t qmax,
              bool nhwc, TOut* out) {
    const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
    const int64_t total = outer * C * HW;
    if (!nhwc || C == 1 || HW == 1) {
        constexpr int64_t kChunk = 16384;
        const int64_t chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
        for (int64_t t = 0; t < chunks; ++t) {
            const int64_t b = t * kChunk, e = std::min(total, b + kChunk);
            detail::quantize_row<TOut>(x + b, e - b, scale, lo, hi, out + b);
        }
        return;
    }
    // NHWC: quantize a block of each channel's plane, then interleave the channels
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (HW + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (total > 32768)
    for (int64_t t = 0; t < outer * blocks; ++t) {
        const int64_t n = t / blocks, p0 = (t % blocks) * kBlock, np = std::min(kBlock, HW - p0);
        TOut buf[kBlock];
        TOut* dst = out + (n * HW + p0) * C;
        for (int64_t c = 0; c < C; ++c) {
            detail::quantize_row<TOut>(x + (n * C + c) * HW + p0, np, scale, lo, hi, buf);
            for (int64_t p = 0; p < np; ++p) dst[p * C + c] = buf[p];
        }
    }
}

// The model output: out = float(q) * scale in float32 (integer_tensor_to_float's rule: the IEEE product of
// the converted integer and the float32 scale), written NCHW; q is [outer, C, HW], or [outer, HW, C] when
// nhwc (a channels-last activation).
template <class TIn>
void dequantize(const TIn* q, int64_t outer, int64_t C, int64_t HW, float scale, bool nhwc, float* out) {
    const int64_t total = outer * C * HW;
    if (!nhwc || C == 1 || HW == 1) {
#pragma omp parallel for schedule(static) if (total > 65536)
        for (int64_t i = 0; i < total; ++i) out[i] = static_cast<float>(q[i]) * scale;
        return;
    }
#pragma omp parallel for schedule(static) if (total > 65536)
    for (int64_t nc = 0; nc < outer * C; ++nc) {
        const int64_t n = nc / C, c = nc % C;
        const TIn* src = q + n * HW * C + c;
        float* dst = out + nc * HW;
        for (int64_t p = 0; p < HW; ++p) dst[p] = static_cast<float>(src[p * C]) * scale;
    }
}

}  // namespace qframe_kernels
