// qframe_kernels/add.hpp -- integer elementwise add with requantization.
//
// out[i] = clamp(round_shift(a[i] * ma + b[i] * mb, s))   (same shapes)
#pragma once

#include <cstdint>

#include "requant.hpp"

namespace qframe_kernels {

template <class Policy, class TA, class TB, class TOut>
void add(const TA* a, const TB* b, int64_t count, int64_t ma, int64_t mb, int s, ClampRange cr, TOut* out) {
    using R = typename Policy::Rounding;
#pragma omp parallel for schedule(static) if (count > 65536)
    for (int64_t i = 0; i < count; ++i)
        out[i] = static_cast<TOut>(requant_one<R>(a[i], ma, b[i], mb, s, cr.lo, cr.hi));
}

}  // namespace qframe_kernels
