// qframe_kernels/lookup.hpp -- table lookup of integer codes through a dense table.
//
//   out[i] = table[x[i] - min(TIn)]
//
// `table` has one entry per code of the input dtype (256 for int8, 65536 for int16): the caller fills
// it by evaluating the march's lookup rule (direct or segment table) on every code, so the kernel is
// exact by construction and knows nothing of the rule.  int8 -> int8 on AVX-512 VBMI: 64 lookups per
// two vpermi2b and a blend; every other case a scalar loop (about one lookup a cycle).
#pragma once

#include <cstdint>
#include <limits>

#include "cpu_features.hpp"
#include "gemm_s8.hpp"

namespace qframe_kernels {

// AVX-512 VBMI (vpermi2b), where the selected kernel path allows AVX-512.
inline bool lookup_vbmi_available() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static const bool ok = gemm_kernel_for<int8_t>().isa == Isa::Avx512 && __builtin_cpu_supports("avx512vbmi");
    return ok;
#else
    return false;
#endif
}

namespace detail {
#ifdef QFRAME_KERNELS_X86
// 64 int8 codes per step: index = x ^ 0x80 (the code's position in the table); vpermi2b looks up 7 index
// bits in a 128-entry half of the table, the index's top bit picks the half.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline void lookup_s8_vbmi(const int8_t* x, int64_t n,
                                                                                  const int8_t* table, int8_t* out) {
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int64_t i = 0; i < n; i += 64) {
        const __mmask64 k = n - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - i)) - 1;
        const __m512i idx = _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, x + i), sign);
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1);
        const __m512i hi = _mm512_permutex2var_epi8(t2, idx, t3);
        _mm512_mask_storeu_epi8(out + i, k, _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
    }
}
#endif
}  // namespace detail

template <class TIn, class TOut>
void lookup_dense(const TIn* x, int64_t n, const TOut* table, TOut* out) {
    constexpr int64_t offset = -static_cast<int64_t>(std::numeric_limits<TIn>::min());
    constexpr int64_t kBlock = 1 << 16;  // elements a task
    const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(max_threads()) if (blocks > 1)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t i0 = b * kBlock, m = std::min<int64_t>(kBlock, n - i0);
#ifdef QFRAME_KERNELS_X86
        if constexpr (std::is_same_v<TIn, int8_t> && std::is_same_v<TOut, int8_t>) {
            if (lookup_vbmi_available()) {
                detail::lookup_s8_vbmi(x + i0, m, table, out + i0);
                continue;
            }
        }
#endif
        for (int64_t i = i0; i < i0 + m; ++i) out[i] = table[static_cast<int64_t>(x[i]) + offset];
    }
}

}  // namespace qframe_kernels
