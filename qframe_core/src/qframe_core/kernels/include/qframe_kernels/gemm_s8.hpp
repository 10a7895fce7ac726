// qframe_kernels/gemm_s8.hpp -- exact int8/int16 x int8 GEMM core.
//
// C[M, P] = A[M, K] * B[K, P] with A int8 (weights, sign-extended to int16)
// and B int8 or int16 (activations).  Products are summed pairwise along K in
// int32 (pmaddwd semantics) and spilled into int64 tiles every `chunk` pairs,
// so the result is exact for any K:
//   int8  x int8 : |pair| <= 2**15, 65535 pairs per chunk  < 2**31
//   int16 x int8 : |pair| <= 2**23,   255 pairs per chunk  < 2**31
//
// Packed layouts (k-pair kp covers k = 2kp, 2kp+1; odd K is zero padded):
//   A: [ceil(M/MR)][Kp][MR] int32, each int32 = (a[2kp] & 0xffff) | a[2kp+1] << 16
//   B: one panel of NR columns: [Kp][NR][2] int16
// A micro-kernel computes an MR x NR int32 tile over a range of k-pairs.
// Paths: avx512vnni (vpdpwssd), avx512bw (vpmaddwd zmm), avx2 (vpmaddwd ymm),
// scalar; selected once at run time (see cpu_features.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_features.hpp"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QFRAME_KERNELS_X86 1
#include <immintrin.h>
#endif

namespace qframe_kernels {

using MicroKernel = void (*)(const int32_t* A, const int16_t* B, int64_t kp, int32_t* C);

struct GemmKernel {
    const char* name;
    int mr;
    int nr;
    MicroKernel ukr;
};

// ---------------------------------------------------------------- scalar
namespace detail {

constexpr int kScalarMR = 4;
constexpr int kScalarNR = 16;

inline void ukr_scalar(const int32_t* A, const int16_t* B, int64_t kp, int32_t* C) {
    int32_t acc[kScalarMR][kScalarNR] = {};
    for (int64_t k = 0; k < kp; ++k) {
        const int32_t* a = A + k * kScalarMR;
        const int16_t* b = B + k * kScalarNR * 2;
        for (int r = 0; r < kScalarMR; ++r) {
            const int32_t a0 = static_cast<int16_t>(a[r] & 0xffff);
            const int32_t a1 = static_cast<int16_t>(static_cast<uint32_t>(a[r]) >> 16);
            for (int j = 0; j < kScalarNR; ++j)
                acc[r][j] += a0 * b[2 * j] + a1 * b[2 * j + 1];
        }
    }
    std::memcpy(C, acc, sizeof(acc));
}

#ifdef QFRAME_KERNELS_X86
// ---------------------------------------------------------------- AVX2
constexpr int kAvx2MR = 6;
constexpr int kAvx2NR = 16;  // 2 ymm of 8 columns x 2 k

__attribute__((target("avx2"))) inline void ukr_avx2(const int32_t* A, const int16_t* B, int64_t kp, int32_t* C) {
    __m256i c[kAvx2MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < kAvx2MR; ++r) c[r][0] = c[r][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < kp; ++k) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + 16));
#pragma GCC unroll 8
        for (int r = 0; r < kAvx2MR; ++r) {
            const __m256i a = _mm256_set1_epi32(A[r]);
            c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(a, b0));
            c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(a, b1));
        }
        A += kAvx2MR;
        B += kAvx2NR * 2;
    }
#pragma GCC unroll 8
    for (int r = 0; r < kAvx2MR; ++r) {
        // Lane j of c[r][h] is column 8h + j.
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + r * kAvx2NR), c[r][0]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + r * kAvx2NR + 8), c[r][1]);
    }
}

// ---------------------------------------------------------------- AVX-512BW
constexpr int kAvx512MR = 12;
constexpr int kAvx512NR = 32;  // 2 zmm of 16 columns x 2 k

__attribute__((target("avx512f,avx512bw"))) inline void ukr_avx512bw(const int32_t* A, const int16_t* B, int64_t kp,
                                                                    int32_t* C) {
    __m512i c[kAvx512MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; ++k) {
        const __m512i b0 = _mm512_loadu_si512(B);
        const __m512i b1 = _mm512_loadu_si512(B + 32);
#pragma GCC unroll 16
        for (int r = 0; r < kAvx512MR; ++r) {
            const __m512i a = _mm512_set1_epi32(A[r]);
            c[r][0] = _mm512_add_epi32(c[r][0], _mm512_madd_epi16(a, b0));
            c[r][1] = _mm512_add_epi32(c[r][1], _mm512_madd_epi16(a, b1));
        }
        A += kAvx512MR;
        B += kAvx512NR * 2;
    }
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) {
        _mm512_storeu_si512(C + r * kAvx512NR, c[r][0]);
        _mm512_storeu_si512(C + r * kAvx512NR + 16, c[r][1]);
    }
}

// AVX-512 VNNI: vpdpwssd = signed int16 pairs, summed into int32 without
// saturation -- the same arithmetic as madd + add, in one instruction.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void ukr_avx512vnni(const int32_t* A,
                                                                                 const int16_t* B, int64_t kp,
                                                                                 int32_t* C) {
    __m512i c[kAvx512MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; ++k) {
        const __m512i b0 = _mm512_loadu_si512(B);
        const __m512i b1 = _mm512_loadu_si512(B + 32);
#pragma GCC unroll 16
        for (int r = 0; r < kAvx512MR; ++r) {
            const __m512i a = _mm512_set1_epi32(A[r]);
            c[r][0] = _mm512_dpwssd_epi32(c[r][0], a, b0);
            c[r][1] = _mm512_dpwssd_epi32(c[r][1], a, b1);
        }
        A += kAvx512MR;
        B += kAvx512NR * 2;
    }
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) {
        _mm512_storeu_si512(C + r * kAvx512NR, c[r][0]);
        _mm512_storeu_si512(C + r * kAvx512NR + 16, c[r][1]);
    }
}
#endif  // QFRAME_KERNELS_X86

inline GemmKernel choose_gemm_kernel() {
    const GemmKernel scalar{"scalar", kScalarMR, kScalarNR, &ukr_scalar};
#ifdef QFRAME_KERNELS_X86
    const GemmKernel avx2{"avx2", kAvx2MR, kAvx2NR, &ukr_avx2};
    const GemmKernel avx512bw{"avx512bw", kAvx512MR, kAvx512NR, &ukr_avx512bw};
    const GemmKernel avx512vnni{"avx512vnni", kAvx512MR, kAvx512NR, &ukr_avx512vnni};
    const CpuFeatures& f = cpu_features();
    const char* want = std::getenv("QFRAME_KERNEL");
    if (want != nullptr && want[0] != '\0') {
        if (std::strcmp(want, "scalar") == 0) return scalar;
        if (std::strcmp(want, "avx2") == 0 && f.avx2) return avx2;
        if (std::strcmp(want, "avx512bw") == 0 && f.avx512bw) return avx512bw;
        if (std::strcmp(want, "avx512vnni") == 0 && f.avx512vnni) return avx512vnni;
    }
    if (f.avx512vnni) return avx512vnni;
    if (f.avx512bw) return avx512bw;
    if (f.avx2) return avx2;
#endif
    return scalar;
}

}  // namespace detail

// The GEMM path for this process, chosen on first use.
inline const GemmKernel& gemm_kernel() {
    static const GemmKernel k = detail::choose_gemm_kernel();
    return k;
}

inline int64_t kpairs(int64_t K) { return (K + 1) / 2; }

inline int64_t packed_a_size(int64_t M, int64_t K, int mr) { return (M + mr - 1) / mr * mr * kpairs(K); }

// Pack int8 rows W[M][K] (row stride ldw) into the A layout.
inline void pack_a(const int8_t* W, int64_t M, int64_t K, int64_t ldw, int mr, int32_t* out) {
    const int64_t Kp = kpairs(K);
    const int64_t blocks = (M + mr - 1) / mr;
    for (int64_t mb = 0; mb < blocks; ++mb) {
        int32_t* dst = out + mb * Kp * mr;
        for (int r = 0; r < mr; ++r) {
            const int64_t m = mb * mr + r;
            const int8_t* w = m < M ? W + m * ldw : nullptr;
            for (int64_t kp = 0; kp < Kp; ++kp) {
                int32_t lo = 0, hi = 0;
                if (w) {
                    lo = w[2 * kp];
                    hi = (2 * kp + 1 < K) ? w[2 * kp + 1] : 0;
                }
                dst[kp * mr + r] = static_cast<int32_t>((static_cast<uint32_t>(lo) & 0xffffu) |
                                                        (static_cast<uint32_t>(hi) << 16));
            }
        }
    }
}

// Pairs per int32 chunk before spilling to int64 (see header comment).
template <class TIn>
constexpr int64_t chunk_pairs() {
    return sizeof(TIn) == 1 ? 65535 : 255;
}

// Runs the tiled GEMM over `batch` independent problems of the same shape.
//   a_for(b)                     -> packed A for problem b
//   pack_b(b, p0, np, int16_t*)  -> writes one packed B panel (Kp x NR x 2,
//                                   zero for columns >= np and k >= K)
//   epi(b, m0, mrows, p0, np, const TC* C)  C is [MR][NR] row-major; TC is
//                                   int32 (single chunk) or int64 (generic lambda)
// Parallel (OpenMP) over (problem, column panel, row chunk) tasks.
template <class AFor, class PackB, class Epi>
void gemm_driver(const GemmKernel& kern, int64_t batch, int64_t M, int64_t K, int64_t P, int64_t chunk,
                 AFor a_for, PackB pack_b, Epi epi) {
    if (batch <= 0 || M <= 0 || P <= 0) return;
    const int mr = kern.mr, nr = kern.nr;
    const int64_t Kp = kpairs(K);
    const int64_t panels = (P + nr - 1) / nr;
    const int64_t rblocks = (M + mr - 1) / mr;
    const int nthreads = max_threads();
    int64_t rchunks = 1;
    const int64_t base_tasks = batch * panels;
    if (base_tasks < 4 * static_cast<int64_t>(nthreads))
        rchunks = std::min<int64_t>(rblocks, (4 * nthreads + base_tasks - 1) / base_tasks);
    const int64_t rper = (rblocks + rchunks - 1) / rchunks;
    rchunks = (rblocks + rper - 1) / rper;
    const int64_t tasks = base_tasks * rchunks;

    const int64_t bsize = std::max<int64_t>(Kp, 1) * nr * 2;
    const int64_t csize = static_cast<int64_t>(mr) * nr;
    std::vector<int16_t> bbuf(static_cast<size_t>(bsize) * nthreads);
    std::vector<int32_t> c32(static_cast<size_t>(csize) * nthreads);
    std::vector<int64_t> c64(static_cast<size_t>(csize) * nthreads);

#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (tasks > 1)
    for (int64_t t = 0; t < tasks; ++t) {
        const int tid = thread_id();
        int16_t* B = bbuf.data() + static_cast<int64_t>(tid) * bsize;
        int32_t* C32 = c32.data() + static_cast<int64_t>(tid) * csize;
        int64_t* C64 = c64.data() + static_cast<int64_t>(tid) * csize;
        const int64_t rc = t % rchunks;
        const int64_t bp = t / rchunks;
        const int64_t b = bp / panels;
        const int64_t panel = bp % panels;
        const int64_t p0 = panel * nr;
        const int64_t np = std::min<int64_t>(nr, P - p0);
        pack_b(b, p0, np, B);
        const int32_t* A = a_for(b);
        const int64_t rb_end = std::min(rblocks, (rc + 1) * rper);
        for (int64_t rb = rc * rper; rb < rb_end; ++rb) {
            const int32_t* Ab = A + rb * Kp * mr;
            const int64_t m0 = rb * mr;
            const int64_t mrows = std::min<int64_t>(mr, M - m0);
            if (Kp <= chunk) {
                kern.ukr(Ab, B, Kp, C32);
                epi(b, m0, mrows, p0, np, static_cast<const int32_t*>(C32));
            } else {
                std::fill(C64, C64 + csize, 0);
                for (int64_t k0 = 0; k0 < Kp; k0 += chunk) {
                    const int64_t kn = std::min(chunk, Kp - k0);
                    kern.ukr(Ab + k0 * mr, B + k0 * nr * 2, kn, C32);
                    for (int64_t i = 0; i < csize; ++i) C64[i] += C32[i];
                }
                epi(b, m0, mrows, p0, np, static_cast<const int64_t*>(C64));
            }
        }
    }
}

}  // namespace qframe_kernels
