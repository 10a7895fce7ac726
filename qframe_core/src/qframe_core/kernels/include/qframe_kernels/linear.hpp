// qframe_kernels/linear.hpp -- integer fully connected layer.
//
// out[m, o] = clamp(round_shift((sum_k x[m,k] * w[o,k] + bias[o]) * multiplier[o], shift[o]))
// input int8/int16 [M, K], weight int8 [N, K]; raw int32 mode as in conv2d.
#pragma once

#include <cstdint>
#include <vector>

#include "conv2d.hpp"
#include "gemm_s8.hpp"
#include "requant.hpp"

namespace qframe_kernels {

template <class Policy, class TIn, class TOut>
void linear(const TIn* x, const int8_t* w, int64_t M, int64_t K, int64_t N, const RequantArgs& q, TOut* out) {
    if (M == 0 || N == 0) return;
    const GemmKernel& kern = gemm_kernel();
    std::vector<int32_t> apack(static_cast<size_t>(std::max<int64_t>(packed_a_size(N, K, kern.mr), 1)));
    pack_a(w, N, K, K, kern.mr, apack.data());
    const int nr = kern.nr;
    const int64_t Kp = kpairs(K);
    gemm_driver(
        kern, 1, N, K, M, chunk_pairs<TIn>(), [&](int64_t) { return static_cast<const int32_t*>(apack.data()); },
        [&](int64_t, int64_t p0, int64_t np, int16_t* B) {
            for (int64_t j = 0; j < nr; ++j) {
                if (j >= np) {
                    for (int64_t kp = 0; kp < Kp; ++kp) B[kp * nr * 2 + 2 * j] = B[kp * nr * 2 + 2 * j + 1] = 0;
                    continue;
                }
                const TIn* row = x + (p0 + j) * K;
                for (int64_t k = 0; k < K; ++k) B[(k >> 1) * nr * 2 + 2 * j + (k & 1)] = row[k];
                if (K & 1) B[(K >> 1) * nr * 2 + 2 * j + 1] = 0;
            }
        },
        [&](int64_t, int64_t m0, int64_t mrows, int64_t p0, int64_t np, const auto* C) {
            for (int64_t r = 0; r < mrows; ++r) {
                const int64_t o = m0 + r;
                const auto* c = C + r * nr;
                for (int64_t j = 0; j < np; ++j)
                    out[(p0 + j) * N + o] =
                        detail::finish_one<Policy, TOut, int8_t>(c[j], o, static_cast<const int8_t*>(nullptr), 0, q);
            }
        });
}

}  // namespace qframe_kernels
