// qframe_kernels/conv2d_nhwc.hpp -- integer conv2d with channels-last (NHWC) output.
//
// Same arithmetic as conv2d.hpp (see there and the kernels README); only the
// formulation differs, so that activations can stay channels-last from one
// conv to the next (no NCHW <-> NHWC copies between layers):
//
//   out[n, oh, ow, o] = requant(sum_{kh, kw, c} x[n, ih, iw, c] * w[o, c, kh, kw] + bias[o])
//
// computed as an implicit GEMM whose rows are output pixels and whose columns
// are output channels: a micro-tile of kNhwcMR pixels x kNhwcNR channels
// broadcasts four input channels (one u8 quad, x + 128) of each pixel straight
// from the padded channels-last copy of the input and multiplies them with
// packed weight quads by vpdpbusd (AVX-512 VNNI) -- no im2col panel is built.
// sum x*w = sum (x+128)*w - 128 * sum w exactly (vpdpbusd does not saturate),
// the second term is per output channel (`comp`, folded into the bias).
// The int32 tile is exact for K <= 4 * 16448 (see gemm_s8.hpp); larger
// reductions use the NCHW GEMM path.  The epilogue requantizes 16 channels of
// one pixel per step with per-lane multipliers and shifts (lane-exact with
// requant_row), and stores them contiguously: the output is NHWC.
//
// Used for int8 activations, groups == 1, on CPUs with AVX-512 VNNI; every
// other case runs conv2d.hpp's kernels (conv2d_any_layout converts layouts
// around them).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "conv2d.hpp"

namespace qframe_kernels {

constexpr int kNhwcMR = 14;  // output pixels per micro-tile (28 accumulators + 2 weight + 1 input zmm)
constexpr int kNhwcNR = 32;  // output channels per micro-tile (2 zmm of 16 int32)
constexpr int64_t kNhwcMaxQuads = 16448;  // int32-exact reduction length in u8 quads (gemm_s8.hpp)

// Weights of one conv for the channels-last kernel, in one of two reduction orders:
//  * taps: w[ob][tap = kh * KW + kw][cq][lane] (int32 = the four int8 weights of input channels
//    4cq .. 4cq+3 for output channel ob * 32 + lane; zero past C and past O); the input copy has
//    CgP = C rounded up to 4 channels a pixel;
//  * runs (C not a multiple of 4, e.g. a 3-channel stem or a 1-channel input): the input copy has
//    exactly C channels a pixel, so the KW * C values of one kernel row are contiguous; w[ob][kh][q][lane]
//    holds the weights of run values 4q .. 4q+3 (value f is (kw, c) = (f / C, f % C)); the up to 3
//    values read past the run's end meet zero weights.  ceil(KW * C / 4) quads a row instead of
//    KW * ceil(C / 4) (3-channel 7x7: 6 instead of 7).  Needs unit width dilation.
struct PackedNhwcWeight {
    int64_t O = 0, C = 0, KH = 0, KW = 0, CgP = 0;
    bool run = false;
    std::vector<int32_t> w;
    std::vector<int64_t> comp;  // 128 * sum of output channel o's weights

    bool empty() const { return w.empty(); }
    int64_t taps() const { return run ? KH : KH * KW; }
    int64_t quads_per_tap() const { return run ? (KW * C + 3) / 4 : CgP / 4; }
    int64_t quads() const { return taps() * quads_per_tap(); }
    const int32_t* block(int64_t ob) const { return w.data() + ob * quads() * kNhwcNR; }
    size_t nbytes() const { return w.size() * sizeof(int32_t) + comp.size() * sizeof(int64_t); }
};

// True when conv2d with these weights and int8 activations runs the channels-last kernel.
inline bool nhwc_kernel_applies(int64_t O, int64_t Cg, int64_t KH, int64_t KW, int64_t groups) {
    const GemmKernel& kern = gemm_kernel_for<int8_t>();
    return kern.kgroup == 4 && kern.isa == Isa::Avx512 && groups == 1 && !conv2d_uses_direct(O, groups) &&
           KH * KW * ((Cg + 3) / 4) <= kNhwcMaxQuads;
}

// Depthwise weights for the channels-last depthwise kernels (C padded to 16), comp[c] = 128 * sum of
// channel c's weights, and one of:
//  * pairs (AVX-512BW): w[pair][c] (int32 = the int16 weights of taps 2 * pair and 2 * pair + 1 in its
//    low and high halves; an odd last tap is paired with a zero weight);
//  * row quads (AVX-512 VNNI, `quads`): w[(g * KW + kw)][c] (int32 = the int8 weights of kernel rows
//    4g .. 4g+3 at column kw, zero past KH), the operand of one vpdpbusd against four input rows.
struct PackedDepthwiseWeight {
    int64_t C = 0, KH = 0, KW = 0, Cpad = 0;
    bool quads = false;
    std::vector<int32_t> w;
    std::vector<int64_t> comp;
    bool empty() const { return w.empty(); }
    int64_t row_groups() const { return (KH + 3) / 4; }
    size_t nbytes() const { return w.size() * sizeof(int32_t) + comp.size() * sizeof(int64_t); }
};

// True when conv2d with these weights and int8 activations runs the channels-last depthwise kernel:
// one input and one output channel per group, on a CPU with AVX-512BW.
inline bool depthwise_nhwc_applies(int64_t O, int64_t Cg, int64_t KH, int64_t KW, int64_t groups) {
    return gemm_kernel_for<int8_t>().isa == Isa::Avx512 && Cg == 1 && O == groups && KH * KW <= kNhwcMaxQuads * 4;
}

// Packs for the kernel this process runs: row quads on AVX-512 VNNI, pairs otherwise.
inline void pack_depthwise_weight(PackedDepthwiseWeight& p, const int8_t* w, int64_t C, int64_t KH, int64_t KW) {
    p.C = C;
    p.KH = KH;
    p.KW = KW;
    p.Cpad = (C + 15) / 16 * 16;
    p.quads = gemm_kernel_for<int8_t>().kgroup == 4;  // the VNNI kernels
    const int64_t taps = KH * KW;
    p.w.assign(static_cast<size_t>((p.quads ? p.row_groups() * KW : (taps + 1) / 2) * p.Cpad), 0);
    p.comp.assign(static_cast<size_t>(p.Cpad), 0);
    for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < taps; ++t) {
            const int8_t v = w[c * taps + t];
            const int64_t kh = t / KW, kw = t % KW;
            uint32_t* slot;
            uint32_t bits;
            if (p.quads) {
                slot = reinterpret_cast<uint32_t*>(&p.w[static_cast<size_t>(((kh / 4) * KW + kw) * p.Cpad + c)]);
                bits = static_cast<uint32_t>(static_cast<uint8_t>(v)) << (8 * (kh % 4));
            } else {
                slot = reinterpret_cast<uint32_t*>(&p.w[static_cast<size_t>((t / 2) * p.Cpad + c)]);
                bits = static_cast<uint32_t>(static_cast<uint16_t>(static_cast<int16_t>(v))) << (t % 2 ? 16 : 0);
            }
            *slot |= bits;
            p.comp[static_cast<size_t>(c)] += 128 * static_cast<int64_t>(v);
        }
}

// The runs order pays off when it needs fewer quads than the taps order.
inline bool nhwc_runs_pay_off(int64_t C, int64_t KW) { return (KW * C + 3) / 4 < KW * ((C + 3) / 4); }

inline void pack_nhwc_weight(PackedNhwcWeight& p, const int8_t* w, int64_t O, int64_t C, int64_t KH, int64_t KW,
                             bool run) {
    p.O = O;
    p.C = C;
    p.KH = KH;
    p.KW = KW;
    p.run = run;
    p.CgP = run ? C : (C + 3) / 4 * 4;
    const int64_t obs = (O + kNhwcNR - 1) / kNhwcNR, taps = p.taps(), cqs = p.quads_per_tap();
    p.w.assign(static_cast<size_t>(obs * taps * cqs * kNhwcNR), 0);
    p.comp.assign(static_cast<size_t>(obs * kNhwcNR), 0);
    for (int64_t o = 0; o < O; ++o) {
        const int64_t ob = o / kNhwcNR, lane = o % kNhwcNR;
        for (int64_t c = 0; c < C; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
                for (int64_t kw = 0; kw < KW; ++kw) {
                    const int8_t v = w[((o * C + c) * KH + kh) * KW + kw];
                    // (tap, value index within the tap's reduction)
                    const int64_t tap = run ? kh : kh * KW + kw, f = run ? kw * C + c : c;
                    const int64_t slot = ((ob * taps + tap) * cqs + f / 4) * kNhwcNR + lane;
                    reinterpret_cast<int8_t*>(&p.w[static_cast<size_t>(slot)])[f % 4] = v;
                    p.comp[static_cast<size_t>(o)] += 128 * static_cast<int64_t>(v);
                }
    }
}

namespace detail {

// Padded, encoded channels-last copy X[n][ih + ph][iw + pw][c] (CgP bytes a pixel) of an NHWC int8
// input: x + 128 (x ^ 0x80) as u8; padding pixels hold 128, the encoding of 0 (channel padding is left
// as it is: it meets zero weights, see fill_padding_border).
// (An NCHW input is copied by prepare_channels_last<int8_t, uint8_t>, which writes the same layout.)
inline void prepare_channels_last_from_nhwc(const Conv2dShape& s, const int8_t* in, int64_t CgP, uint8_t* X) {
    const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
    const int64_t total = s.N * Hp * Wp * CgP;
    fill_padding_border<uint8_t>(X, s.N, s.H, s.W, s.ph, s.pw, CgP, 128);
    // locals, not s.*: a uint8_t store may alias them, which would keep the loops scalar
    const int64_t rows = s.N * s.H, H = s.H, W = s.W, C = s.C, ph = s.ph, pw = s.pw;
#pragma omp parallel for schedule(static) if (total > 65536)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = r / H, h = r % H;
        const uint8_t* __restrict src = reinterpret_cast<const uint8_t*>(in) + r * W * C;
        uint8_t* __restrict dst = X + ((n * Hp + h + ph) * Wp + pw) * CgP;
        if (CgP == C) {
            const int64_t len = W * C;
            for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<uint8_t>(src[i] ^ 0x80u);
        } else {
            for (int64_t w = 0; w < W; ++w)
                for (int64_t c = 0; c < C; ++c) dst[w * CgP + c] = static_cast<uint8_t>(src[w * C + c] ^ 0x80u);
        }
    }
}

// The input pixels a strided 1x1 conv without padding reads, X[n][oh][ow][c] = x[n][oh * sh][ow * sw][c]
// (encoded as in prepare_channels_last_from_nhwc).
inline void sample_channels_last_from_nhwc(const Conv2dShape& s, const int8_t* in, int64_t CgP, uint8_t* X) {
    const int64_t rows = s.N * s.Ho, Ho = s.Ho, Wo = s.Wo, H = s.H, W = s.W, C = s.C, sh = s.sh, sw = s.sw;
#pragma omp parallel for schedule(static) if (rows * Wo * C > 65536)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = r / Ho, oh = r % Ho;
        const uint8_t* __restrict src = reinterpret_cast<const uint8_t*>(in) + (n * H + oh * sh) * W * C;
        uint8_t* __restrict dst = X + r * Wo * CgP;
        for (int64_t ow = 0; ow < Wo; ++ow)
            for (int64_t c = 0; c < C; ++c) dst[ow * CgP + c] = static_cast<uint8_t>(src[ow * sw * C + c] ^ 0x80u);
    }
}

#ifdef QFRAME_KERNELS_X86
// Where a micro-tile's pixels read their taps.  The copy path: X is the padded, encoded copy, and pixel r
// reads tap t at base + off[r] + tapoff[t].  The direct path (raw int8 NHWC input, C a multiple of 4, no
// copy): the same addressing over the unpadded input; tiles touching the padding check each (pixel, tap)
// pair and read a zero pixel where it falls outside the input (ih = ih0[r] + th[t], iw = iw0[r] + tw[t]).
struct NhwcTapSource {
    const uint8_t* base;
    const int64_t* tapoff;  // [taps]
    const int64_t* th;      // [taps] (direct path)
    const int64_t* tw;      // [taps] (direct path)
    const uint8_t* zero;    // one pixel of zeros (direct path)
    int64_t H, W;           // the input (direct path)
};

// One micro-tile: C[r][j] (r < MR pixels, j < kNhwcNR channels) = sum over taps and quads of the u8 quad
// each pixel reads at the tap (see NhwcTapSource) + 4q times the weight quads of W.  kRaw: the input is
// raw int8 and is encoded (x ^ 0x80 = x + 128) in registers; kCheck: test each (pixel, tap) against the
// input's bounds (tiles at the border of the direct path).
template <int MR, bool kRaw, bool kCheck>
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) void nhwc_tile_vnni(
    const NhwcTapSource& src, const int64_t* off, const int64_t* ih0, const int64_t* iw0, int64_t taps, int64_t cqs,
    const int32_t* W, int32_t* C) {
    __m512i c[MR][2];
    const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int64_t t = 0; t < taps; ++t) {
        const int64_t toff = src.tapoff[t];
        const uint8_t* p[MR];
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            if constexpr (kCheck) {
                const bool in = static_cast<uint64_t>(ih0[r] + src.th[t]) < static_cast<uint64_t>(src.H) &&
                                static_cast<uint64_t>(iw0[r] + src.tw[t]) < static_cast<uint64_t>(src.W);
                p[r] = in ? src.base + (off[r] + toff) : src.zero;
            } else {
                p[r] = src.base + (off[r] + toff);
            }
        }
        for (int64_t q = 0; q < cqs; ++q) {
            const __m512i b0 = _mm512_loadu_si512(W);
            const __m512i b1 = _mm512_loadu_si512(W + 16);
            W += kNhwcNR;
#pragma GCC unroll 16
            for (int r = 0; r < MR; ++r) {
                int32_t v;
                std::memcpy(&v, p[r] + 4 * q, 4);
                __m512i a = _mm512_set1_epi32(v);
                if constexpr (kRaw) a = _mm512_xor_si512(a, sign);  // free: the port is not vpdpbusd's
                c[r][0] = _mm512_dpbusd_epi32(c[r][0], a, b0);
                c[r][1] = _mm512_dpbusd_epi32(c[r][1], a, b1);
            }
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        _mm512_storeu_si512(C + r * kNhwcNR, c[r][0]);
        _mm512_storeu_si512(C + r * kNhwcNR + 16, c[r][1]);
    }
}

#endif  // QFRAME_KERNELS_X86

// Requantization parameters of 16 consecutive output channels as vectors (per-lane rounding terms
// precomputed from the shifts); `fast` is false when a bias (bias - comp) does not fit int32 or no
// multiplier is given (raw int32 mode): such groups take the scalar epilogue.
struct alignas(64) LaneParams {
    int32_t bias[16], mult[16], rmult[16];
    int64_t mult_o[8], rmult_o[8];  // the odd lanes' multipliers in the low halves of 64-bit lanes
    int64_t shift_e[8], shift_o[8], half_e[8], half_o[8];
    int64_t bit_e[8], bit_o[8];  // half to even: 2**s, the bit whose parity breaks a tie (0 when s == 0)
    bool fast;
    bool no_overflow;  // acc + bias fits int32 for every accumulator this layer can produce
};

template <class Rounding>
inline void make_lane_params(LaneParams& lp, const int64_t* bias64, const RequantArgs& q, int64_t o0, int64_t n,
                             int64_t acc_bound) {
    constexpr bool even = std::is_same_v<Rounding, RoundHalfEven>;
    lp.fast = q.multiplier != nullptr;
    lp.no_overflow = true;
    for (int l = 0; l < 16; ++l) {
        const bool on = l < n;
        const int64_t b = on ? bias64[l] : 0;
        if (b < INT32_MIN || b > INT32_MAX) lp.fast = false;
        if (acc_bound + (b < 0 ? -b : b) > INT32_MAX) lp.no_overflow = false;
        lp.bias[l] = static_cast<int32_t>(std::clamp<int64_t>(b, INT32_MIN, INT32_MAX));
        lp.mult[l] = on && q.multiplier ? q.multiplier[o0 + l] : 0;
        lp.rmult[l] = on && q.res_multiplier ? q.res_multiplier[o0 + l] : 0;
        const int64_t s = on && q.shift ? q.shift[o0 + l] : 0;
        const int64_t h = s == 0 ? 0 : (int64_t(1) << (s - 1));
        int64_t* sh = l % 2 ? lp.shift_o : lp.shift_e;
        int64_t* hf = l % 2 ? lp.half_o : lp.half_e;
        int64_t* bt = l % 2 ? lp.bit_o : lp.bit_e;
        sh[l / 2] = s;
        hf[l / 2] = even ? (s == 0 ? 0 : h - 1) : h;
        bt[l / 2] = even && s != 0 ? (int64_t(1) << s) : 0;
        if (l % 2) {
            lp.mult_o[l / 2] = lp.mult[l];
            lp.rmult_o[l / 2] = lp.rmult[l];
        }
    }
}

// The lane parameters of all O output channels (groups of 16) and bias64[o] = bias[o] - comp[o] (padded to
// a multiple of 16); acc_bound bounds |acc| for the overflow test.
template <class R>
inline std::vector<LaneParams> lane_params_of(const RequantArgs& q, const int64_t* comp, int64_t O,
                                              int64_t acc_bound, std::vector<int64_t>& bias64) {
    const int64_t groups16 = (O + 15) / 16;
    bias64.assign(static_cast<size_t>(groups16 * 16), 0);
    for (int64_t o = 0; o < O; ++o) bias64[o] = (q.bias ? q.bias[o] : 0) - comp[o];
    std::vector<LaneParams> lanes(static_cast<size_t>(groups16));
    for (int64_t g = 0; g < groups16; ++g)
        make_lane_params<R>(lanes[g], bias64.data() + g * 16, q, g * 16, std::min<int64_t>(16, O - g * 16), acc_bound);
    return lanes;
}

// The epilogue of one channels-last conv, built from its weights and requantization only (nothing of the
// input): a Conv2dPlan builds it once instead of on every call.
struct NhwcEpilogue {
    std::vector<int64_t> bias64;
    std::vector<LaneParams> lanes;
};

// acc_bound: |acc| = |sum (x + 128) * w| <= 255 * 128 a product, over the reduction length of the kernel.
template <class R>
inline NhwcEpilogue nhwc_epilogue_of(const RequantArgs& q, const int64_t* comp, int64_t O, int64_t reduction) {
    NhwcEpilogue e;
    e.lanes = lane_params_of<R>(q, comp, O, reduction * 255 * 128, e.bias64);
    return e;
}

#ifdef QFRAME_KERNELS_X86
// The clamp range as vectors (int64 lanes, and int8 lanes for int8 outputs).
struct ClampVecs {
    __m512i lo, hi;
    __m128i lo8, hi8;
    bool lo_inside8, hi_inside8;  // int8 outputs: a bound inside int8's range (saturation covers the others)
};

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline ClampVecs clamp_vecs(const ClampRange& r) {
    return {_mm512_set1_epi64(r.lo), _mm512_set1_epi64(r.hi),
            _mm_set1_epi8(static_cast<char>(std::clamp<int64_t>(r.lo, -128, 127))),
            _mm_set1_epi8(static_cast<char>(std::clamp<int64_t>(r.hi, -128, 127))), r.lo > -128, r.hi < 127};
}

// The lane parameters of one 16-channel group in registers.  Loaded once a group and passed by value:
// read through the LaneParams reference, every field would be reloaded after each output store (int8
// stores may alias anything), ten 64-byte loads per 16 outputs.
struct LaneVecs {
    __m512i bias, mult, mult_o, rmult, rmult_o, shift_e, shift_o, half_e, half_o, bit_e, bit_o;
};

__attribute__((target("avx512f"))) inline LaneVecs lane_vecs(const LaneParams& lp) {
    return {_mm512_load_si512(lp.bias),    _mm512_load_si512(lp.mult),    _mm512_load_si512(lp.mult_o),
            _mm512_load_si512(lp.rmult),   _mm512_load_si512(lp.rmult_o), _mm512_load_si512(lp.shift_e),
            _mm512_load_si512(lp.shift_o), _mm512_load_si512(lp.half_e),  _mm512_load_si512(lp.half_o),
            _mm512_load_si512(lp.bit_e),   _mm512_load_si512(lp.bit_o)};
}

// 16 channels of one pixel: out[l] = clamp(round_shift((acc[l] + bias[l]) * m[l] + res[l] * rm[l], s[l]))
// for lanes l < popcount(k); false (nothing stored) when some lane's acc + bias overflows int32
// (`no_overflow`: impossible for this layer, the test is skipped).
// Rounding: (p + 2**(s-1) [- 1 + bit s of p, half to even]) >> s, per lane.
template <class R, class TRes, class TOut>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline bool requant_lanes_avx512(__m512i x, __mmask16 k,
                                                                                     const LaneVecs& lv,
                                                                                     bool no_overflow,
                                                                                     const TRes* res,
                                                                                     const ClampVecs& cv, TOut* out) {
    constexpr bool even = std::is_same_v<R, RoundHalfEven>;
    const __m512i v = _mm512_add_epi32(x, lv.bias);
    // signed overflow of x + b: x and b have the same sign and v the other
    if (!no_overflow &&
        _mm512_mask_cmplt_epi32_mask(k, _mm512_and_si512(_mm512_xor_si512(x, v), _mm512_xor_si512(lv.bias, v)),
                                     _mm512_setzero_si512()))
        return false;
    __m512i pe = _mm512_mul_epi32(v, lv.mult);
    __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(v, 32), lv.mult_o);
    if (res) {
        __m512i r32;
        if constexpr (sizeof(TRes) == 1) r32 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, res));
        else r32 = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, res));
        pe = _mm512_add_epi64(pe, _mm512_mul_epi32(r32, lv.rmult));
        po = _mm512_add_epi64(po, _mm512_mul_epi32(_mm512_srli_epi64(r32, 32), lv.rmult_o));
    }
    __m512i te = _mm512_add_epi64(pe, lv.half_e);
    __m512i to = _mm512_add_epi64(po, lv.half_o);
    if constexpr (even) {  // + 1 where bit s of p is set (with half = 2**(s-1) - 1)
        const __m512i one = _mm512_set1_epi64(1);
        te = _mm512_mask_add_epi64(te, _mm512_test_epi64_mask(pe, lv.bit_e), te, one);
        to = _mm512_mask_add_epi64(to, _mm512_test_epi64_mask(po, lv.bit_o), to, one);
    }
    pe = _mm512_srav_epi64(te, lv.shift_e);
    po = _mm512_srav_epi64(to, lv.shift_o);
    if constexpr (sizeof(TOut) == 1) {
        // saturate to int8, interleave the even and odd lanes, then clamp in int8: the same as clamping
        // first, since [lo, hi] lies inside int8
        __m128i y = _mm_unpacklo_epi8(_mm512_cvtsepi64_epi8(pe), _mm512_cvtsepi64_epi8(po));
        if (cv.lo_inside8) y = _mm_max_epi8(y, cv.lo8);  // ReLU: lo = 0
        if (cv.hi_inside8) y = _mm_min_epi8(y, cv.hi8);
        _mm_mask_storeu_epi8(out, k, y);
    } else {
        pe = _mm512_min_epi64(_mm512_max_epi64(pe, cv.lo), cv.hi);
        po = _mm512_min_epi64(_mm512_max_epi64(po, cv.lo), cv.hi);
        const __m512i y = _mm512_mask_blend_epi32(static_cast<__mmask16>(0xAAAA), pe, _mm512_slli_epi64(po, 32));
        if constexpr (sizeof(TOut) == 2) _mm512_mask_cvtepi32_storeu_epi16(out, k, y);
        else _mm512_mask_storeu_epi32(out, k, y);
    }
    return true;
}

// The scalar definition for `nl` channels o0.. of one pixel (raw int32 mode, or lanes that may overflow).
template <class R, class TRes, class TOut>
inline void requant_lanes_scalar(const int32_t* acc, int64_t nl, int64_t o0, const int64_t* bias64,
                                 const RequantArgs& q, const TRes* res, TOut* out) {
    for (int64_t l = 0; l < nl; ++l) {
        const int64_t b = bias64[o0 + l];
        if (q.multiplier == nullptr) {
            raw_row(acc + l, 1, b, q.range.lo, q.range.hi, out + l);
        } else {
            const int64_t rm = res ? static_cast<int64_t>(q.res_multiplier[o0 + l]) : 0;
            requant_row<R>(acc + l, 1, b, q.multiplier[o0 + l], q.shift[o0 + l], res ? res + l : res, rm, q.range.lo,
                           q.range.hi, out + l);
        }
    }
}

// Depthwise tiles: one output row (n, oh) per task; per output pixel and 16 channels, the taps'
// encoded inputs (x + 128, zero-extended) times the weights, two taps per vpmaddwd (x1 and x2 as the
// int16 halves of each lane against the packed weight pair: x1*w1 + x2*w2 exactly), summed in int32
// (exact: |acc| <= taps * 255 * 128), then the per-lane epilogue; the output row is NHWC.  X has CgP
// (a multiple of 16) channels a pixel, so the 16-byte loads never leave it.
template <class R, class TOut, class TRes>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void depthwise_nhwc_rows(
    const Conv2dShape& s, const uint8_t* X, int64_t Hp, int64_t Wp, int64_t CgP, const PackedDepthwiseWeight& pw,
    const LaneParams* lanes, const int64_t* bias64, const TRes* res, const RequantArgs& q, TOut* out) {
    const int64_t C = s.O, taps = s.KH * s.KW, pairs = (taps + 1) / 2, Cpad = pw.Cpad;
    const int64_t rows = s.N * s.Ho, Wo = s.Wo, sw = s.sw;
    std::vector<int64_t> off(static_cast<size_t>(2 * pairs));  // tap offsets; the odd tail repeats the last tap
    for (int64_t t = 0; t < 2 * pairs; ++t) {
        const int64_t tt = std::min(t, taps - 1), kh = tt / s.KW, kw = tt % s.KW;
        off[t] = (kh * s.dh * Wp + kw * s.dw) * CgP;
    }
    const int64_t* offp = off.data();
    const ClampVecs cv = clamp_vecs(q.range);
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, rows / (4 * max_threads()))) \
    num_threads(max_threads()) if (rows * Wo * C > 16384)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t n = row / s.Ho, oh = row % s.Ho;
        alignas(64) int32_t acc[16];
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            const int64_t nl = std::min<int64_t>(16, C - c0);
            const __mmask16 k = nl == 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << nl) - 1u);
            const LaneParams& lp = lanes[c0 / 16];
            const LaneVecs lv = lane_vecs(lp);
            const bool fast = lp.fast, no_overflow = lp.no_overflow;
            const int32_t* wc = pw.w.data() + c0;
            const uint8_t* rowbase = X + (n * Hp + oh * s.sh) * Wp * CgP + c0;
            for (int64_t ow = 0; ow < Wo; ++ow) {
                const uint8_t* base = rowbase + ow * sw * CgP;
                __m512i a = _mm512_setzero_si512();
                for (int64_t pr = 0; pr < pairs; ++pr) {
                    const __m512i x1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        reinterpret_cast<const __m128i*>(base + offp[2 * pr])));
                    const __m512i x2 = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        reinterpret_cast<const __m128i*>(base + offp[2 * pr + 1])));
                    const __m512i z = _mm512_or_si512(x1, _mm512_slli_epi32(x2, 16));
                    a = _mm512_add_epi32(a, _mm512_madd_epi16(z, _mm512_loadu_si512(wc + pr * Cpad)));
                }
                const int64_t obase = (row * Wo + ow) * C + c0;
                const TRes* rr = res ? res + obase : nullptr;
                if (fast && requant_lanes_avx512<R>(a, k, lv, no_overflow, rr, cv, out + obase)) continue;
                _mm512_store_si512(acc, a);
                requant_lanes_scalar<R>(acc, nl, c0, bias64, q, rr, out + obase);
            }
        }
    }
}

// Depthwise on AVX-512 VNNI: one output row (n, oh) per task.  For each 16 channels, every input column
// the row reads is packed once per group of four kernel rows (the encoded inputs x + 128 of rows
// 4g .. 4g+3 as the bytes of each lane; rows past KH meet zero weights), then each output pixel is
// sum over (g, kw) of vpdpbusd(column ow * sw + kw * dw of group g, row-quad weights (g, kw)): one
// instruction for up to four taps, and stride-1 neighbours share the packed columns.  Exact: |acc| <=
// taps * 255 * 128.  Then the per-lane epilogue; the output row is NHWC.
template <class R, class TOut, class TRes>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void depthwise_nhwc_rows_vnni(
    const Conv2dShape& s, const uint8_t* X, int64_t Hp, int64_t Wp, int64_t CgP, const PackedDepthwiseWeight& pw,
    const LaneParams* lanes, const int64_t* bias64, const TRes* res, const RequantArgs& q, TOut* out) {
    const int64_t C = s.O, Cpad = pw.Cpad, KH = s.KH, KW = s.KW, G = pw.row_groups();
    const int64_t rows = s.N * s.Ho, Wo = s.Wo, sw = s.sw, dw = s.dw, dh = s.dh;
    const int64_t span = (Wo - 1) * sw + (KW - 1) * dw + 1;  // the input columns one output row reads
    const ClampVecs cv = clamp_vecs(q.range);
#pragma omp parallel for schedule(dynamic, std::max<int64_t>(1, rows / (4 * max_threads()))) \
    num_threads(max_threads()) if (rows * Wo * C > 16384)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t n = row / s.Ho, oh = row % s.Ho;
        int32_t* scratch = thread_scratch<int32_t, 11>(G * span * 16 + 16);
        int32_t* col = reinterpret_cast<int32_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            const int64_t nl = std::min<int64_t>(16, C - c0);
            const __mmask16 k = nl == 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << nl) - 1u);
            for (int64_t g = 0; g < G; ++g) {
                const int64_t nr = std::min<int64_t>(4, KH - 4 * g);  // kernel rows in this group
                const uint8_t* r0 = X + ((n * Hp + oh * s.sh + 4 * g * dh) * Wp) * CgP + c0;
                int32_t* cg = col + g * span * 16;
                for (int64_t j = 0; j < span; ++j) {
                    const uint8_t* px = r0 + j * CgP;
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(px)));
                    for (int64_t i = 1; i < nr; ++i) {
                        const __m512i ri = _mm512_cvtepu8_epi32(
                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(px + i * dh * Wp * CgP)));
                        v = _mm512_or_si512(v, _mm512_slli_epi32(ri, static_cast<unsigned>(8 * i)));
                    }
                    _mm512_store_si512(cg + j * 16, v);
                }
            }
            const LaneParams& lp = lanes[c0 / 16];
            const LaneVecs lv = lane_vecs(lp);
            const bool fast = lp.fast, no_overflow = lp.no_overflow;
            const int32_t* wc = pw.w.data() + c0;
            alignas(64) int32_t acc[16];
            for (int64_t ow = 0; ow < Wo; ++ow) {
                __m512i a = _mm512_setzero_si512();
                for (int64_t g = 0; g < G; ++g) {
                    const int32_t* cg = col + (g * span + ow * sw) * 16;
                    for (int64_t kw = 0; kw < KW; ++kw)
                        a = _mm512_dpbusd_epi32(a, _mm512_load_si512(cg + kw * dw * 16),
                                                _mm512_loadu_si512(wc + (g * KW + kw) * Cpad));
                }
                const int64_t obase = (row * Wo + ow) * C + c0;
                const TRes* rr = res ? res + obase : nullptr;
                if (fast && requant_lanes_avx512<R>(a, k, lv, no_overflow, rr, cv, out + obase)) continue;
                _mm512_store_si512(acc, a);
                requant_lanes_scalar<R>(acc, nl, c0, bias64, q, rr, out + obase);
            }
        }
    }
}

// The tiles of conv2d_nhwc (one OpenMP loop; AVX-512 code throughout).  `src` reads the padded copy X
// (Hp x Wp pixels of CgP bytes), or with `direct` the raw NHWC input (Hp = H, Wp = W, CgP = C).
template <class R, class TOut, class TRes, int MR>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void conv2d_nhwc_tiles(
    const Conv2dShape& s, const NhwcTapSource& src, bool direct, int64_t Hp, int64_t Wp, int64_t CgP,
    const PackedNhwcWeight& pw, const LaneParams* lanes, const int64_t* bias64, const TRes* res, const RequantArgs& q,
    TOut* out) {
    const int64_t HoWo = s.Ho * s.Wo, P = s.N * HoWo;
    const int64_t taps = pw.taps(), cqs = pw.quads_per_tap();
    const int64_t obs = (s.O + kNhwcNR - 1) / kNhwcNR;
    const ClampVecs cv = clamp_vecs(q.range);
    const int64_t pbs = (P + MR - 1) / MR;
    const int64_t tasks = obs * pbs;  // output-channel block major: a chunk reuses one weight block
    const int64_t O = s.O;
    // the direct path addresses the unpadded input: the receptive field starts at (oh * sh - ph, ow * sw - pw)
    const int64_t ph = direct ? s.ph : 0, pwd = direct ? s.pw : 0;
    const int64_t hspan = (s.KH - 1) * s.dh, wspan = (s.KW - 1) * s.dw;
    // Chunks of consecutive tasks, handed out dynamically (a thread that the host preempts does not hold
    // the others up): at most one chunk a pixel sweep of one channel block, about four a thread.  Within a
    // chunk the tile (ob, pb) and the position (n, oh, ow) of the tile's first pixel advance without
    // divisions (divisions a tile are a visible share of a 1x1 conv's short tiles).
    const int64_t nthr = max_threads();
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(pbs, tasks / (4 * nthr)));
    const int64_t nchunks = (tasks + chunk - 1) / chunk;
#pragma omp parallel num_threads(nthr) if (tasks > 1)
    {
        alignas(64) int32_t C[MR * kNhwcNR];
        int64_t off[MR], ih0[MR], iw0[MR];
#pragma omp for schedule(dynamic, 1)
        for (int64_t ci = 0; ci < nchunks; ++ci) {
            const int64_t t_begin = ci * chunk, t_end = std::min(tasks, t_begin + chunk);
            int64_t ob = t_begin / pbs, pb = t_begin % pbs;
            int64_t n0 = pb * MR / HoWo, oh0 = pb * MR % HoWo / s.Wo, ow0 = pb * MR % s.Wo;
            for (int64_t t = t_begin; t < t_end; ++t) {
                const int64_t p0 = pb * MR, nvalid = std::min<int64_t>(MR, P - p0);
                // each pixel's receptive field; rows past P repeat the last pixel
                bool inside = true;
                int64_t n = n0, oh = oh0, ow = ow0;
                for (int64_t r = 0; r < MR; ++r) {
                    ih0[r] = oh * s.sh - ph;
                    iw0[r] = ow * s.sw - pwd;
                    off[r] = ((n * Hp + ih0[r]) * Wp + iw0[r]) * CgP;
                    inside = inside && ih0[r] >= 0 && ih0[r] + hspan < Hp && iw0[r] >= 0 && iw0[r] + wspan < Wp;
                    if (r + 1 >= nvalid) continue;
                    if (++ow == s.Wo) {
                        ow = 0;
                        if (++oh == s.Ho) oh = 0, ++n;
                    }
                }
                const int32_t* W = pw.block(ob);
                if (!direct) nhwc_tile_vnni<MR, false, false>(src, off, ih0, iw0, taps, cqs, W, C);
                else if (inside) nhwc_tile_vnni<MR, true, false>(src, off, ih0, iw0, taps, cqs, W, C);
                else nhwc_tile_vnni<MR, true, true>(src, off, ih0, iw0, taps, cqs, W, C);
                for (int64_t h = 0; h < 2; ++h) {
                    const int64_t o0 = ob * kNhwcNR + h * 16;
                    if (o0 >= O) break;
                    const int64_t nl = std::min<int64_t>(16, O - o0);
                    const LaneParams& lp = lanes[o0 / 16];
                    const LaneVecs lv = lane_vecs(lp);
                    const bool fast = lp.fast, no_overflow = lp.no_overflow;
                    const __mmask16 k =
                        nl == 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << nl) - 1u);
                    for (int64_t r = 0; r < nvalid; ++r) {
                        const int32_t* acc = C + r * kNhwcNR + h * 16;
                        const int64_t obase = (p0 + r) * O + o0;
                        const TRes* rr = res ? res + obase : nullptr;
                        if (fast && requant_lanes_avx512<R>(_mm512_maskz_loadu_epi32(k, acc), k, lv, no_overflow, rr, cv,
                                                            out + obase))
                            continue;
                        requant_lanes_scalar<R>(acc, nl, o0, bias64, q, rr, out + obase);
                    }
                }
                // the next tile: one pixel after this one's last, or pixel 0 of the next channel block
                if (++pb == pbs) {
                    pb = 0, ++ob;
                    n0 = oh0 = ow0 = 0;
                } else {
                    n0 = n, oh0 = oh, ow0 = ow;
                    if (++ow0 == s.Wo) {
                        ow0 = 0;
                        if (++oh0 == s.Ho) oh0 = 0, ++n0;
                    }
                }
            }
        }
    }
}
#endif  // QFRAME_KERNELS_X86

}  // namespace detail

// The epilogue of the channels-last kernels for weights `pw` and requantization `q` (q.res_multiplier set
// when a residual is added).
template <class Policy>
detail::NhwcEpilogue nhwc_conv2d_epilogue(const RequantArgs& q, const PackedNhwcWeight& pw) {
    return detail::nhwc_epilogue_of<typename Policy::Rounding>(q, pw.comp.data(), pw.O, pw.quads() * 4);
}
template <class Policy>
detail::NhwcEpilogue nhwc_depthwise_epilogue(const RequantArgs& q, const PackedDepthwiseWeight& pw) {
    return detail::nhwc_epilogue_of<typename Policy::Rounding>(q, pw.comp.data(), pw.C, pw.KH * pw.KW);
}

// conv2d of an int8 input (NCHW, or NHWC when input_nhwc) into an NHWC output [N, Ho, Wo, O] (and NHWC
// residual), on the channels-last kernel; requires nhwc_kernel_applies(...) and weights packed by
// pack_nhwc_weight.  Shapes and parameters must already be validated (see bindings.hpp).  `epi`: the
// epilogue built by nhwc_conv2d_epilogue for these weights and `q` (built here when null).
template <class Policy, class TOut, class TRes>
void conv2d_nhwc(const Conv2dShape& shape, const int8_t* in, bool input_nhwc, const PackedNhwcWeight& pw,
                 const TRes* res, const RequantArgs& q, TOut* out, const detail::NhwcEpilogue* epi = nullptr) {
#ifdef QFRAME_KERNELS_X86
    using R = typename Policy::Rounding;
    if (shape.N * shape.Ho * shape.Wo == 0 || shape.O == 0) return;
    // a strided 1x1 conv without padding (a ResNet downsample) reads one input pixel in sh * sw: copy
    // only those, and run it as a stride-1 conv over the sampled map
    const bool sample = input_nhwc && shape.KH == 1 && shape.KW == 1 && shape.ph == 0 && shape.pw == 0 &&
                        (shape.sh > 1 || shape.sw > 1);
    Conv2dShape s = shape;
    if (sample) {
        s.H = shape.Ho;
        s.W = shape.Wo;
        s.sh = s.sw = 1;
    }
    // the direct path reads an NHWC input as it is (C a multiple of 4: quads never straddle pixels) and
    // encodes it in registers; the others read a padded, encoded copy
    const bool direct = input_nhwc && !sample && !pw.run && pw.CgP == s.C;
    const int64_t Hp = direct ? s.H : s.H + 2 * s.ph, Wp = direct ? s.W : s.W + 2 * s.pw, CgP = pw.CgP;
    const uint8_t* X;
    std::vector<uint8_t> zero;
    if (direct) {
        X = reinterpret_cast<const uint8_t*>(in);
        zero.assign(static_cast<size_t>(CgP), 0);  // a padding pixel: raw 0 (encoded in registers)
    } else {
        const int64_t xelems = s.N * Hp * Wp * CgP;
        constexpr int64_t kSlack = 4;  // runs read up to 3 values past the last pixel
        uint8_t* Xc = thread_scratch<uint8_t, 8>(xelems + kSlack);
        std::fill(Xc + xelems, Xc + xelems + kSlack, uint8_t(128));
        if (sample) detail::sample_channels_last_from_nhwc(shape, in, CgP, Xc);
        else if (input_nhwc) detail::prepare_channels_last_from_nhwc(s, in, CgP, Xc);
        else detail::prepare_channels_last<int8_t, uint8_t>(s, in, CgP, Xc);
        X = Xc;
    }

    const int64_t taps = pw.taps();
    std::vector<int64_t> tapoff(static_cast<size_t>(3 * taps));
    int64_t *th = tapoff.data() + taps, *tw = tapoff.data() + 2 * taps;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
        if (pw.run) {
            tapoff[kh] = kh * s.dh * Wp * CgP;  // the row's run starts at kw = 0
        } else {
            for (int64_t kw = 0; kw < s.KW; ++kw) {
                const int64_t t = kh * s.KW + kw;
                tapoff[t] = (kh * s.dh * Wp + kw * s.dw) * CgP;
                th[t] = kh * s.dh;
                tw[t] = kw * s.dw;
            }
        }
    }
    const detail::NhwcTapSource src{X, tapoff.data(), th, tw, zero.data(), s.H, s.W};
    // per 16-channel group: bias - comp and the requantization lanes
    detail::NhwcEpilogue local;
    if (epi == nullptr) epi = &(local = nhwc_conv2d_epilogue<Policy>(q, pw));
    // pixels per micro-tile: 14 (28 zmm accumulators: 14 * 2 * 16 int32), unless that leaves more than 3% of
    // the rows empty and 8 or 7 fits better (the 49 pixels of a 7x7 map: 7 tiles of 7 instead of 4 of 14)
    const int64_t P = s.N * s.Ho * s.Wo;
    auto padded = [P](int64_t mr) { return (P + mr - 1) / mr * mr; };
    int mr = kNhwcMR;
    if (padded(kNhwcMR) > P + P * 3 / 100)
        for (int cand : {8, 7})
            if (padded(cand) < padded(mr)) mr = cand;
    auto tiles = [&](auto mr_const) {
        detail::conv2d_nhwc_tiles<R, TOut, TRes, decltype(mr_const)::value>(
            s, src, direct, Hp, Wp, CgP, pw, epi->lanes.data(), epi->bias64.data(), res, q, out);
    };
    if (mr == 8) tiles(std::integral_constant<int, 8>{});
    else if (mr == 7) tiles(std::integral_constant<int, 7>{});
    else tiles(std::integral_constant<int, kNhwcMR>{});
#else
    (void)shape; (void)in; (void)input_nhwc; (void)pw; (void)res; (void)q; (void)out; (void)epi;
#endif
}

// Depthwise conv2d (C == O == groups) of an int8 input (NCHW, or NHWC when input_nhwc) into an NHWC
// output, on AVX-512BW; requires depthwise_nhwc_applies(...).  `epi`: as for conv2d_nhwc
// (nhwc_depthwise_epilogue).
template <class Policy, class TOut, class TRes>
void conv2d_depthwise_nhwc(const Conv2dShape& s, const int8_t* in, bool input_nhwc, const PackedDepthwiseWeight& pw,
                           const TRes* res, const RequantArgs& q, TOut* out,
                           const detail::NhwcEpilogue* epi = nullptr) {
#ifdef QFRAME_KERNELS_X86
    using R = typename Policy::Rounding;
    if (s.N * s.Ho * s.Wo == 0 || s.O == 0) return;
    // the input as one dense channels-last copy (groups = 1 layout, channels padded to 16 for full loads)
    Conv2dShape d = s;
    d.groups = 1;
    const int64_t CgP = pw.Cpad;
    const int64_t Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
    uint8_t* X = thread_scratch<uint8_t, 8>(s.N * Hp * Wp * CgP);
    if (input_nhwc) detail::prepare_channels_last_from_nhwc(d, in, CgP, X);
    else detail::prepare_channels_last<int8_t, uint8_t>(d, in, CgP, X);
    detail::NhwcEpilogue local;
    if (epi == nullptr) epi = &(local = nhwc_depthwise_epilogue<Policy>(q, pw));
    if (pw.quads)
        detail::depthwise_nhwc_rows_vnni<R, TOut, TRes>(s, X, Hp, Wp, CgP, pw, epi->lanes.data(), epi->bias64.data(),
                                                        res, q, out);
    else
        detail::depthwise_nhwc_rows<R, TOut, TRes>(s, X, Hp, Wp, CgP, pw, epi->lanes.data(), epi->bias64.data(), res,
                                                   q, out);
#else
    (void)s; (void)in; (void)input_nhwc; (void)pw; (void)res; (void)q; (void)out; (void)epi;
#endif
}

// NCHW <-> NHWC copies for the layout conversions around the kernels (rare paths).
template <class T>
void nchw_to_nhwc(const T* in, int64_t N, int64_t C, int64_t HW, T* out) {
#pragma omp parallel for schedule(static) if (N * C * HW > 262144)
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t p = 0; p < HW; ++p) out[(n * HW + p) * C + c] = in[(n * C + c) * HW + p];
}

template <class T>
void nhwc_to_nchw(const T* in, int64_t N, int64_t C, int64_t HW, T* out) {
#pragma omp parallel for schedule(static) if (N * C * HW > 262144)
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t p = 0; p < HW; ++p) out[(n * C + c) * HW + p] = in[(n * HW + p) * C + c];
}

}  // namespace qframe_kernels
