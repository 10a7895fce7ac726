// qframe_kernels/glu.hpp -- integer GLU, the steps of qframe_core.nn.integer_glu, on an input viewed as
// [outer, 2, inner] (F.glu's halves a = x[:, 0], b = x[:, 1]):
//
//   g = table[b - min(T)]                     the march's sigmoid table on every code (built by the caller)
//   y = wide(a * g, requant)                  exact product; wide = clamp(round_shift(round_shift(v, pre_shift)
//                                             * multiplier, shift)) with the march's rounding (wide_requant_one)
//
// With no pre_shift and an int16 table, a * g fits int32 and wide is the conv epilogue's requantization: the
// products of a block go through the vector epilogue of the selected ISA (requant_row_avx512/avx2).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_features.hpp"
#include "eltwise.hpp"    // EpilogueIsa
#include "layernorm.hpp"  // WideRequantArgs, RoundingShift, wide_requant_one
#include "requant.hpp"

namespace qframe_kernels {

template <class Rounding, class TIn, class TTable, class TOut>
void glu_rows(const TIn* x, int64_t outer, int64_t inner, const TTable* table, const WideRequantArgs& req,
              int64_t lo, int64_t hi, TOut* out) {
    constexpr int64_t offset = -static_cast<int64_t>(std::numeric_limits<TIn>::min());
    const RoundingShift pre(req.pre_shift), post(req.shift);
    const int64_t total = outer * inner;
    constexpr int64_t kBlock = 1 << 14;  // outputs a task
    const int64_t blocks = (total + kBlock - 1) / kBlock;
    const bool fast = req.pre_shift == 0 && sizeof(TTable) <= 2;
    const EpilogueIsa isa;
#pragma omp parallel num_threads(max_threads()) if (blocks > 1)
    {
    std::vector<int32_t> buffer(fast ? kBlock : 0);
    int32_t* prod = buffer.data();
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t e = std::min(total, (blk + 1) * kBlock);
        for (int64_t i = blk * kBlock; i < e;) {
            const int64_t o = i / inner, j0 = i % inner, j1 = std::min(inner, j0 + (e - i));
            const TIn* a = x + o * 2 * inner;
            const TIn* b = a + inner;
            TOut* y = out + o * inner;
            if (fast) {
                for (int64_t j = j0; j < j1; ++j)
                    prod[j - j0] = static_cast<int32_t>(a[j]) * static_cast<int32_t>(table[b[j] + offset]);
                requant_row_isa<Rounding>(isa.avx512, isa.avx2, prod, j1 - j0, 0, req.multiplier, req.shift,
                                          static_cast<const int8_t*>(nullptr), 0, lo, hi, y + j0);
            } else {
                for (int64_t j = j0; j < j1; ++j) {
                    const int64_t v = static_cast<int64_t>(a[j]) * static_cast<int64_t>(table[b[j] + offset]);
                    y[j] = static_cast<TOut>(wide_requant_one<Rounding>(v, pre, req.multiplier, post, lo, hi));
                }
            }
            i += j1 - j0;
        }
    }
    }
}

}  // namespace qframe_kernels
