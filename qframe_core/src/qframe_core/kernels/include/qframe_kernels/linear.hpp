// qframe_kernels/linear.hpp -- integer fully connected layer.
//
// out[m, o] = clamp(round_shift((sum_k x[m,k] * w[o,k] + bias[o]) * multiplier[o], shift[o]))
// input int8/int16 [M, K], weight int8 [N, K]; raw int32 mode as in conv2d.
// GEMM orientation: A = weights (packed once, see PackedGemmWeight), B panels
// = NR input rows; each output-channel row of a tile is requantized with the
// vector epilogue and scattered into out[:, o].
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "conv2d.hpp"
#include "gemm_s8.hpp"
#include "requant.hpp"

namespace qframe_kernels {

namespace detail {

// B panel of input rows [p0, p0+np) of x [M, K] in the layout of `kern`.
template <class TIn>
inline void pack_rows_panel(const TIn* x, int64_t K, int64_t p0, int64_t np, const GemmKernel& kern, int32_t* B) {
    const int nr = kern.nr, kg = kern.kgroup;
    const int64_t Kg = kgroups(K, kg);
    const int64_t full = K / kg;  // groups without K padding
    for (int64_t j = 0; j < nr; ++j) {
        if (j >= np) {
            for (int64_t g = 0; g < Kg; ++g) B[g * nr + j] = 0;
            continue;
        }
        const TIn* row = x + (p0 + j) * K;
        if (kg == 4) {  // int8 -> u8 quads
            for (int64_t g = 0; g < full; ++g) {
                uint32_t v;
                std::memcpy(&v, row + 4 * g, 4);
                B[g * nr + j] = static_cast<int32_t>(v ^ 0x80808080u);
            }
        } else {  // int16 pairs (int8 sign-extended)
            for (int64_t g = 0; g < full; ++g)
                B[g * nr + j] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(row[2 * g])) |
                                                     (static_cast<uint32_t>(static_cast<uint16_t>(row[2 * g + 1])) << 16));
        }
        if (full < Kg) {
            uint32_t v = 0;
            for (int64_t k = full * kg; k < K; ++k) {
                const int i = static_cast<int>(k - full * kg);
                if (kg == 4) v |= static_cast<uint32_t>(static_cast<uint8_t>(row[k])) << (8 * i);
                else v |= static_cast<uint32_t>(static_cast<uint16_t>(row[k])) << (16 * i);
            }
            if (kg == 4) v ^= 0x80808080u;  // padded k: x = 0 (weights are 0 there too)
            B[full * nr + j] = static_cast<int32_t>(v);
        }
    }
}

}  // namespace detail

template <class Policy, class TIn, class TOut>
void linear(const TIn* x, const int8_t* w, int64_t M, int64_t K, int64_t N, const RequantArgs& q, TOut* out,
            const PackedGemmWeight* packed = nullptr) {
    if (M == 0 || N == 0) return;
    const GemmKernel& kern = gemm_kernel_for<TIn>();
    PackedGemmWeight local;
    if (packed == nullptr || packed->kern != &kern) {
        pack_gemm_weight(local, kern, w, 1, N, K);
        packed = &local;
    }
    const PackedGemmWeight& pw = *packed;
    const int nr = kern.nr;
    const Isa isa = kern.isa;
    gemm_driver(
        kern, 1, N, K, M, chunk_groups<TIn>(kern), [&](int64_t) { return pw.group(0); },
        [&](int64_t, int64_t p0, int64_t np, int32_t* B) { detail::pack_rows_panel<TIn>(x, K, p0, np, kern, B); },
        [&](int64_t, int64_t m0, int64_t mrows, int64_t p0, int64_t np, const auto* C) {
            TOut tmp[detail::kMaxNR * detail::kMaxNR];
            int64_t bias[detail::kMaxNR];
            for (int64_t r = 0; r < mrows; ++r) bias[r] = (q.bias ? q.bias[m0 + r] : 0) - pw.comp_of(m0 + r);
            detail::finish_tile<Policy>(isa, C, nr, mrows, np, m0, bias, static_cast<const int8_t*>(nullptr), nr, q,
                                        tmp);
            // tmp is [channel][row of x]; out is [row of x][channel]
            for (int64_t j = 0; j < np; ++j) {
                TOut* dst = out + (p0 + j) * N + m0;
                for (int64_t r = 0; r < mrows; ++r) dst[r] = tmp[r * nr + j];
            }
        });
}

}  // namespace qframe_kernels
