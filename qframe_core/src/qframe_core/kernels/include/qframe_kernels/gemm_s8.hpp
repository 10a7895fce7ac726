// qframe_kernels/gemm_s8.hpp -- exact int8/int16 x int8 GEMM core.
//
// C[M, P] = A[M, K] * B[K, P] with A int8 (weights) and B int8 or int16
// (activations).  Two exact formulations, both summing into int32 and
// spilling into int64 tiles every `chunk` k-groups, so the result is exact
// for any K:
//   pairs (kgroup 2): A sign-extended to int16, pmaddwd / vpdpwssd
//     int8  x int8 : |pair| <= 2**15, 65535 pairs per chunk  < 2**31
//     int16 x int8 : |pair| <= 2**23,   255 pairs per chunk  < 2**31
//   quads (kgroup 4, int8 activations, AVX-512 VNNI only): vpdpbusd on
//     (x + 128) as u8 times w as s8 -- vpdpbusd sums the four u8*s8 products
//     into int32 without intermediate saturation, so
//       sum x*w = sum (x+128)*w - 128 * sum w      (exactly)
//     the second term is a per-row constant computed at pack time (`comp`).
//     |(x+128)*w| <= 32640, 16448 quads per chunk < 2**31.
//
// Packed layouts (k-group g covers k = kg*g .. kg*g+kg-1; K is zero padded):
//   A: [ceil(M/MR)][Kg][MR] int32, each int32 = the kg consecutive int8
//      weights of one row (pairs: two int16 halves; quads: four bytes)
//   B: one panel of NR columns: [Kg][NR] int32 (pairs: two int16 halves;
//      quads: four bytes x+128)
// A micro-kernel computes an MR x NR int32 tile over a range of k-groups.
// Paths: avx512vnni (vpdpbusd quads for int8 activations, vpdpwssd pairs for
// int16), avx512bw (vpmaddwd zmm), avx2 (vpmaddwd ymm), scalar; selected once
// at run time (see cpu_features.hpp).
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

// B is passed as int32 groups ([Kg][NR]); pair kernels read it as int16 halves.
using MicroKernel = void (*)(const int32_t* A, const int32_t* B, int64_t kg, int32_t* C);

// Instruction set used by the vector epilogues / direct loops of a path.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct GemmKernel {
    const char* name;
    int mr;
    int nr;
    int kgroup;     // 2: int16 pairs, 4: u8 quads (x + 128)
    MicroKernel ukr;
    Isa isa;
};

// ---------------------------------------------------------------- scalar
namespace detail {

constexpr int kScalarMR = 4;
constexpr int kScalarNR = 16;

inline void ukr_scalar(const int32_t* A, const int32_t* B32, int64_t kp, int32_t* C) {
    const int16_t* B = reinterpret_cast<const int16_t*>(B32);
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

__attribute__((target("avx2"))) inline void ukr_avx2(const int32_t* A, const int32_t* B, int64_t kp, int32_t* C) {
    __m256i c[kAvx2MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < kAvx2MR; ++r) c[r][0] = c[r][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < kp; ++k) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + 8));
#pragma GCC unroll 8
        for (int r = 0; r < kAvx2MR; ++r) {
            const __m256i a = _mm256_set1_epi32(A[r]);
            c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(a, b0));
            c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(a, b1));
        }
        A += kAvx2MR;
        B += kAvx2NR;
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

__attribute__((target("avx512f,avx512bw"))) inline void ukr_avx512bw(const int32_t* A, const int32_t* B, int64_t kp,
                                                                    int32_t* C) {
    __m512i c[kAvx512MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; ++k) {
        const __m512i b0 = _mm512_loadu_si512(B);
        const __m512i b1 = _mm512_loadu_si512(B + 16);
#pragma GCC unroll 16
        for (int r = 0; r < kAvx512MR; ++r) {
            const __m512i a = _mm512_set1_epi32(A[r]);
            c[r][0] = _mm512_add_epi32(c[r][0], _mm512_madd_epi16(a, b0));
            c[r][1] = _mm512_add_epi32(c[r][1], _mm512_madd_epi16(a, b1));
        }
        A += kAvx512MR;
        B += kAvx512NR;
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
                                                                                 const int32_t* B, int64_t kp,
                                                                                 int32_t* C) {
    __m512i c[kAvx512MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kp; ++k) {
        const __m512i b0 = _mm512_loadu_si512(B);
        const __m512i b1 = _mm512_loadu_si512(B + 16);
#pragma GCC unroll 16
        for (int r = 0; r < kAvx512MR; ++r) {
            const __m512i a = _mm512_set1_epi32(A[r]);
            c[r][0] = _mm512_dpwssd_epi32(c[r][0], a, b0);
            c[r][1] = _mm512_dpwssd_epi32(c[r][1], a, b1);
        }
        A += kAvx512MR;
        B += kAvx512NR;
    }
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) {
        _mm512_storeu_si512(C + r * kAvx512NR, c[r][0]);
        _mm512_storeu_si512(C + r * kAvx512NR + 16, c[r][1]);
    }
}

// AVX-512 VNNI, int8 activations: vpdpbusd on u8 (x + 128) quads times s8
// weight quads; exact (no int16 saturation step), the 128 * sum(w) offset is
// removed in the epilogue.
constexpr int kVnniU8MR = 8;
constexpr int kVnniU8NR = 32;  // 2 zmm of 16 columns x 4 k

__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void ukr_avx512vnni_u8(const int32_t* A,
                                                                                    const int32_t* B, int64_t kq,
                                                                                    int32_t* C) {
    __m512i c[kVnniU8MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < kVnniU8MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kq; ++k) {
        const __m512i b0 = _mm512_loadu_si512(B);
        const __m512i b1 = _mm512_loadu_si512(B + 16);
#pragma GCC unroll 16
        for (int r = 0; r < kVnniU8MR; ++r) {
            const __m512i a = _mm512_set1_epi32(A[r]);
            c[r][0] = _mm512_dpbusd_epi32(c[r][0], b0, a);
            c[r][1] = _mm512_dpbusd_epi32(c[r][1], b1, a);
        }
        A += kVnniU8MR;
        B += kVnniU8NR;
    }
#pragma GCC unroll 16
    for (int r = 0; r < kVnniU8MR; ++r) {
        _mm512_storeu_si512(C + r * kVnniU8NR, c[r][0]);
        _mm512_storeu_si512(C + r * kVnniU8NR + 16, c[r][1]);
    }
}
#endif  // QFRAME_KERNELS_X86

struct KernelChoice {
    GemmKernel pairs;  // int16 activations (and int8 ones without VNNI)
    GemmKernel int8;   // int8 activations
};

inline KernelChoice choose_gemm_kernels() {
    const GemmKernel scalar{"scalar", kScalarMR, kScalarNR, 2, &ukr_scalar, Isa::Scalar};
#ifdef QFRAME_KERNELS_X86
    const GemmKernel avx2{"avx2", kAvx2MR, kAvx2NR, 2, &ukr_avx2, Isa::Avx2};
    const GemmKernel avx512bw{"avx512bw", kAvx512MR, kAvx512NR, 2, &ukr_avx512bw, Isa::Avx512};
    const GemmKernel avx512vnni{"avx512vnni", kAvx512MR, kAvx512NR, 2, &ukr_avx512vnni, Isa::Avx512};
    const GemmKernel vnni_u8{"avx512vnni_u8s8", kVnniU8MR, kVnniU8NR, 4, &ukr_avx512vnni_u8, Isa::Avx512};
    const CpuFeatures& f = cpu_features();
    const char* want = std::getenv("QFRAME_KERNEL");
    if (want != nullptr && want[0] != '\0') {
        if (std::strcmp(want, "scalar") == 0) return {scalar, scalar};
        if (std::strcmp(want, "avx2") == 0 && f.avx2) return {avx2, avx2};
        if (std::strcmp(want, "avx512bw") == 0 && f.avx512bw) return {avx512bw, avx512bw};
        if (std::strcmp(want, "avx512vnni") == 0 && f.avx512vnni) return {avx512vnni, vnni_u8};
    }
    if (f.avx512vnni) return {avx512vnni, vnni_u8};
    if (f.avx512bw) return {avx512bw, avx512bw};
    if (f.avx2) return {avx2, avx2};
#endif
    return {scalar, scalar};
}

inline const KernelChoice& kernel_choice() {
    static const KernelChoice k = choose_gemm_kernels();
    return k;
}

}  // namespace detail

// The GEMM path for this process (the int16-pair kernel), chosen on first use.
inline const GemmKernel& gemm_kernel() { return detail::kernel_choice().pairs; }

// The GEMM kernel used for activations of type TIn (int8 may use u8 quads).
template <class TIn>
inline const GemmKernel& gemm_kernel_for() {
    return sizeof(TIn) == 1 ? detail::kernel_choice().int8 : detail::kernel_choice().pairs;
}

inline int64_t kgroups(int64_t K, int kg) { return (K + kg - 1) / kg; }
inline int64_t kpairs(int64_t K) { return kgroups(K, 2); }

inline int64_t packed_a_size(int64_t M, int64_t K, const GemmKernel& kern) {
    return (M + kern.mr - 1) / kern.mr * kern.mr * kgroups(K, kern.kgroup);
}

// Pack int8 rows W[M][K] (row stride ldw) into the A layout of `kern`.
// For u8-quad kernels comp[m] = 128 * sum_k W[m][k] (else comp may be null).
inline void pack_a(const int8_t* W, int64_t M, int64_t K, int64_t ldw, const GemmKernel& kern, int32_t* out,
                   int64_t* comp) {
    const int mr = kern.mr, kg = kern.kgroup;
    const int64_t Kg = kgroups(K, kg);
    const int64_t blocks = (M + mr - 1) / mr;
    for (int64_t mb = 0; mb < blocks; ++mb) {
        int32_t* dst = out + mb * Kg * mr;
        for (int r = 0; r < mr; ++r) {
            const int64_t m = mb * mr + r;
            const int8_t* w = m < M ? W + m * ldw : nullptr;
            int64_t sum = 0;
            for (int64_t g = 0; g < Kg; ++g) {
                uint32_t v = 0;
                for (int i = 0; i < kg; ++i) {
                    const int64_t k = g * kg + i;
                    const int32_t x = (w && k < K) ? w[k] : 0;
                    sum += x;
                    if (kg == 2)
                        v |= (static_cast<uint32_t>(x) & 0xffffu) << (16 * i);
                    else
                        v |= (static_cast<uint32_t>(x) & 0xffu) << (8 * i);
                }
                dst[g * mr + r] = static_cast<int32_t>(v);
            }
            if (comp && m < M) comp[m] = 128 * sum;
        }
    }
}

// Pairs per int32 chunk before spilling to int64 (see header comment).
template <class TIn>
constexpr int64_t chunk_pairs() {
    return sizeof(TIn) == 1 ? 65535 : 255;
}

// k-groups per int32 chunk for `kern` and activation type TIn.
template <class TIn>
inline int64_t chunk_groups(const GemmKernel& kern) {
    return kern.kgroup == 4 ? 16448 : chunk_pairs<TIn>();
}

// Per-thread scratch that lives across calls (no allocation per call once warm).
template <class T, int Slot>
inline T* thread_scratch(int64_t n) {
    static thread_local std::vector<T> buf;
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
    return buf.data();
}

// Number of row chunks so that `base` equal tasks x rchunks balance over the
// threads (>= 90% efficiency), capped by `rblocks`.
inline int64_t balance_row_chunks(int64_t base, int64_t rblocks, int nthreads) {
    if (nthreads <= 1 || base <= 0) return 1;
    for (int64_t r = 1; r <= rblocks; ++r) {
        const int64_t t = base * r;
        const int64_t rounds = (t + nthreads - 1) / nthreads;
        if (static_cast<double>(t) / static_cast<double>(rounds * nthreads) >= 0.9) {
            // row chunks must also be about equal: rblocks / r blocks each
            const int64_t per = (rblocks + r - 1) / r;
            const int64_t real = (rblocks + per - 1) / per;
            if (real == r) return r;
        }
    }
    return std::min<int64_t>(rblocks, nthreads);
}

// Runs the tiled GEMM over `batch` independent problems of the same shape.
//   a_for(b)                     -> packed A for problem b
//   pack_b(b, p0, np, int32_t*)  -> writes one packed B panel (Kg x NR int32 groups)
//   epi(b, m0, mrows, p0, np, const TC* C)  C is [MR][NR] row-major; TC is
//                                   int32 (single chunk) or int64 (generic lambda)
// Parallel (OpenMP) over (problem, column panel, row chunk) tasks; each task
// packs its B panel once and sweeps its rows.
template <class AFor, class PackB, class Epi>
void gemm_driver(const GemmKernel& kern, int64_t batch, int64_t M, int64_t K, int64_t P, int64_t chunk,
                 AFor a_for, PackB pack_b, Epi epi) {
    if (batch <= 0 || M <= 0 || P <= 0) return;
    const int mr = kern.mr, nr = kern.nr;
    const int64_t Kg = kgroups(K, kern.kgroup);
    const int64_t panels = (P + nr - 1) / nr;
    const int64_t rblocks = (M + mr - 1) / mr;
    const int nthreads = max_threads();
    const int64_t base_tasks = batch * panels;
    int64_t rchunks = balance_row_chunks(base_tasks, rblocks, nthreads);
    const int64_t rper = (rblocks + rchunks - 1) / rchunks;
    rchunks = (rblocks + rper - 1) / rper;
    const int64_t tasks = base_tasks * rchunks;

    const int64_t bsize = std::max<int64_t>(Kg, 1) * nr;
    const int64_t csize = static_cast<int64_t>(mr) * nr;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (tasks > 1)
    for (int64_t t = 0; t < tasks; ++t) {
        int32_t* B = thread_scratch<int32_t, 0>(bsize);
        int32_t* C32 = thread_scratch<int32_t, 1>(csize);
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
            const int32_t* Ab = A + rb * Kg * mr;
            const int64_t m0 = rb * mr;
            const int64_t mrows = std::min<int64_t>(mr, M - m0);
            if (Kg <= chunk) {
                kern.ukr(Ab, B, Kg, C32);
                epi(b, m0, mrows, p0, np, static_cast<const int32_t*>(C32));
            } else {
                int64_t* C64 = thread_scratch<int64_t, 2>(csize);
                std::fill(C64, C64 + csize, 0);
                for (int64_t k0 = 0; k0 < Kg; k0 += chunk) {
                    const int64_t kn = std::min(chunk, Kg - k0);
                    kern.ukr(Ab + k0 * mr, B + k0 * nr, kn, C32);
                    for (int64_t i = 0; i < csize; ++i) C64[i] += C32[i];
                }
                epi(b, m0, mrows, p0, np, static_cast<const int64_t*>(C64));
            }
        }
    }
}

}  // namespace qframe_kernels
