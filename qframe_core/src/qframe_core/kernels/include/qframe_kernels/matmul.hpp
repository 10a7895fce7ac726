// qframe_kernels/matmul.hpp -- batched integer matmul with a wide requantization, the step of attention
// (qframe_core.nn.integer_mha: scores = wide(q k^T), context = wide(p v)):
//
//   out[b, m, n] = wide(sum_k a[b, m, k] * bt[b, n, k])      a, bt int8/int16 (bt: the right operand transposed)
//   wide(v) = clamp(round_shift(round_shift(v, pre_shift) * multiplier, shift))   (wide_requant_one)
//
// The sums are exact: in double on AVX-512 (products of int16 codes are below 2**30 and the binding limits K so
// every partial sum stays below 2**53), else in int64.  Rows of a and bt are contiguous along k.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_features.hpp"
#include "gemm_s8.hpp"    // gemm_kernel_for: the selected ISA
#include "layernorm.hpp"  // WideRequantArgs, RoundingShift, wide_requant_one

namespace qframe_kernels {

namespace detail {
template <class TA, class TB>
inline int64_t dot_i64(const TA* a, const TB* b, int64_t K) {
    int64_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += static_cast<int64_t>(a[k]) * static_cast<int64_t>(b[k]);
    return s;
}

#ifdef QFRAME_KERNELS_X86
template <class T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512d load8_pd(const T* p, __mmask8 m) {
    if constexpr (sizeof(T) == 1) return _mm512_cvtepi32_pd(_mm256_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
    else return _mm512_cvtepi32_pd(_mm256_cvtepi16_epi32(_mm_maskz_loadu_epi16(m, p)));
}

// One row of a against four rows of bt at a time, 8 k a step, in double (exact: see the header).
template <class TA, class TB>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void row_dots_avx512(const TA* a, const TB* bt, int64_t N,
                                                                         int64_t K, int64_t* out) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
        __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t k = 0; k < K; k += 8) {
            const __mmask8 m = K - k >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (K - k)) - 1);
            const __m512d x = load8_pd(a + k, m);
            s0 = _mm512_fmadd_pd(x, load8_pd(bt + (n + 0) * K + k, m), s0);
            s1 = _mm512_fmadd_pd(x, load8_pd(bt + (n + 1) * K + k, m), s1);
            s2 = _mm512_fmadd_pd(x, load8_pd(bt + (n + 2) * K + k, m), s2);
            s3 = _mm512_fmadd_pd(x, load8_pd(bt + (n + 3) * K + k, m), s3);
        }
        out[n + 0] = static_cast<int64_t>(_mm512_reduce_add_pd(s0));
        out[n + 1] = static_cast<int64_t>(_mm512_reduce_add_pd(s1));
        out[n + 2] = static_cast<int64_t>(_mm512_reduce_add_pd(s2));
        out[n + 3] = static_cast<int64_t>(_mm512_reduce_add_pd(s3));
    }
    for (; n < N; ++n) out[n] = dot_i64(a, bt + n * K, K);
}
#endif
}  // namespace detail

template <class Rounding, class TA, class TB, class TOut>
void matmul_requant(const TA* a, const TB* bt, int64_t B, int64_t M, int64_t N, int64_t K, const WideRequantArgs& req,
                    int64_t lo, int64_t hi, TOut* out) {
    const RoundingShift pre(req.pre_shift), post(req.shift);
#ifdef QFRAME_KERNELS_X86
    const bool vector = gemm_kernel_for<int8_t>().isa == Isa::Avx512;
#else
    const bool vector = false;
#endif
    const int64_t rows = B * M;
#pragma omp parallel num_threads(max_threads()) if (rows * N * K > 65536)
    {
        std::vector<int64_t> sums(static_cast<size_t>(N));
#pragma omp for schedule(dynamic, std::max<int64_t>(1, rows / (8 * max_threads())))
        for (int64_t r = 0; r < rows; ++r) {
            const TA* ar = a + r * K;
            const TB* bb = bt + (r / M) * N * K;
#ifdef QFRAME_KERNELS_X86
            if (vector) detail::row_dots_avx512(ar, bb, N, K, sums.data());
            else
#endif
                for (int64_t n = 0; n < N; ++n) sums[n] = detail::dot_i64(ar, bb + n * K, K);
            TOut* o = out + r * N;
            for (int64_t n = 0; n < N; ++n)
                o[n] = static_cast<TOut>(wide_requant_one<Rounding>(sums[n], pre, req.multiplier, post, lo, hi));
        }
    }
}

}  // namespace qframe_kernels
