// qframe_kernels/rounding.hpp -- rounding policies for integer right shifts.
//
// A march picks one of these as `Policy::Rounding`.  Each provides
//   template <class T> static T round_shift(T v, int s)
// for T = int64_t or __int128: v / 2**s rounded to an integer (s in [0, 62]).
#pragma once

#include <cstdint>

namespace qframe_kernels {

using int128_t = __int128;

// Round half up: (v + 2**(s-1)) >> s with an arithmetic shift.  Ties go
// toward +inf, also for negative values (-2.5 -> -2).
struct RoundHalfUp {
    static constexpr const char* name = "half_up";

    template <class T>
    static inline T round_shift(T v, int s) {
        if (s == 0) return v;
        // Unsigned add avoids UB when v + 2**(s-1) overflows (the result is
        // then unspecified, as the contract allows); arithmetic shift after.
        using U = std::conditional_t<sizeof(T) == 16, unsigned __int128, uint64_t>;
        T t = static_cast<T>(static_cast<U>(v) + (static_cast<U>(1) << (s - 1)));
        return t >> s;
    }
};

// Round half to even: exact v / 2**s rounded to nearest, ties to even
// (-2.5 -> -2, -3.5 -> -4, 2.5 -> 2, 3.5 -> 4).  Exact for every v.
struct RoundHalfEven {
    static constexpr const char* name = "half_even";

    template <class T>
    static inline T round_shift(T v, int s) {
        if (s == 0) return v;
        const T q = v >> s;                       // floor(v / 2**s)
        const T mask = (static_cast<T>(1) << s) - 1;
        const T r = v & mask;                     // v mod 2**s, in [0, 2**s)
        const T half = static_cast<T>(1) << (s - 1);
        return (r > half || (r == half && (q & 1))) ? q + 1 : q;
    }
};

}  // namespace qframe_kernels
