// qframe_kernels/eltwise.hpp -- integer elementwise ops with requantization (same shapes):
//
//   add:  out[i] = clamp(round_shift(a[i] * ma + b[i] * mb, s))      (mb < 0: subtraction)
//   mul:  out[i] = clamp(round_shift(a[i] * b[i] * ma, s))
//   requantize (rows sharing a multiplier):  out[i] = clamp(round_shift(x[i] * m, s))
//
// Blocks of codes go through requant_row's vector epilogue (the conv epilogue: exact 64-bit products and the
// march's rounding): add passes a as the accumulator and b as the residual, mul the int32 product a*b (int8/int16
// codes: |a*b| <= 2**30).  Multipliers beyond int32 take requant_row's exact scalar path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_features.hpp"
#include "gemm_s8.hpp"  // gemm_kernel_for: the selected ISA
#include "requant.hpp"

namespace qframe_kernels {

enum class EltwiseOp { Add, Mul };

struct EpilogueIsa {
    bool avx512 = false, avx2 = false;
    EpilogueIsa() {
#ifdef QFRAME_KERNELS_X86
        const Isa isa = gemm_kernel_for<int8_t>().isa;
        avx512 = isa == Isa::Avx512;
        avx2 = isa == Isa::Avx2;
#endif
    }
};

constexpr int64_t kEltwiseBlock = 4096;

template <class Policy, class TA, class TB, class TOut>
void eltwise(const TA* a, const TB* b, int64_t count, int64_t ma, int64_t mb, int s, ClampRange cr, EltwiseOp op,
             TOut* out) {
    using R = typename Policy::Rounding;
    const EpilogueIsa isa;
    const int64_t blocks = (count + kEltwiseBlock - 1) / kEltwiseBlock;
#pragma omp parallel num_threads(max_threads()) if (count > 65536)
    {
        int32_t acc[kEltwiseBlock];
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t i0 = blk * kEltwiseBlock, n = std::min(kEltwiseBlock, count - i0);
            if (op == EltwiseOp::Mul) {
                for (int64_t i = 0; i < n; ++i)
                    acc[i] = static_cast<int32_t>(a[i0 + i]) * static_cast<int32_t>(b[i0 + i]);
                requant_row_isa<R>(isa.avx512, isa.avx2, acc, n, 0, ma, s, static_cast<const int8_t*>(nullptr), 0,
                                   cr.lo, cr.hi, out + i0);
            } else {
                for (int64_t i = 0; i < n; ++i) acc[i] = a[i0 + i];
                requant_row_isa<R>(isa.avx512, isa.avx2, acc, n, 0, ma, s, b + i0, mb, cr.lo, cr.hi, out + i0);
            }
        }
    }
}

// Per-tensor or per-channel requantization of a tensor viewed as [outer, channels, inner]; multiplier/shift
// have `channels` entries, or one when per_tensor.  int8/int16/int32 inputs take the vector epilogue (int32
// accumulators), int64 ones the exact scalar rule.
template <class Policy, class TIn, class TOut>
void requantize(const TIn* x, TOut* y, int64_t outer, int64_t channels, int64_t inner, const int32_t* multiplier,
                const int32_t* shift, bool per_tensor, ClampRange cr) {
    using R = typename Policy::Rounding;
    const EpilogueIsa isa;
    const int64_t rows = outer * channels;
    if (inner < 16) {  // short rows (per-position multipliers): the exact scalar rule element by element
#pragma omp parallel for schedule(static) num_threads(max_threads()) if (rows * inner > 65536)
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t c = per_tensor ? 0 : r % channels;
            for (int64_t i = 0; i < inner; ++i)
                y[r * inner + i] = static_cast<TOut>(requant_one<R>(static_cast<int64_t>(x[r * inner + i]),
                                                                    multiplier[c], 0, 0, shift[c], cr.lo, cr.hi));
        }
        return;
    }
    const int64_t blocks_per_row = (inner + kEltwiseBlock - 1) / kEltwiseBlock;
    const int64_t tasks = rows * blocks_per_row;
#pragma omp parallel num_threads(max_threads()) if (rows * inner > 65536)
    {
        int32_t acc[kEltwiseBlock];
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t r = t / blocks_per_row, i0 = (t % blocks_per_row) * kEltwiseBlock;
            const int64_t n = std::min(kEltwiseBlock, inner - i0);
            const int64_t c = per_tensor ? 0 : r % channels;
            const TIn* xr = x + r * inner + i0;
            TOut* yr = y + r * inner + i0;
            if constexpr (sizeof(TIn) <= 4) {
                const int32_t* a = nullptr;
                if constexpr (std::is_same_v<TIn, int32_t>) {
                    a = xr;
                } else {
                    for (int64_t i = 0; i < n; ++i) acc[i] = xr[i];
                    a = acc;
                }
                requant_row_isa<R>(isa.avx512, isa.avx2, a, n, 0, multiplier[c], shift[c],
                                   static_cast<const int8_t*>(nullptr), 0, cr.lo, cr.hi, yr);
            } else {
                for (int64_t i = 0; i < n; ++i)
                    yr[i] = static_cast<TOut>(requant_one<R>(static_cast<int64_t>(xr[i]), multiplier[c], 0, 0, shift[c],
                                                             cr.lo, cr.hi));
            }
        }
    }
}

}  // namespace qframe_kernels
