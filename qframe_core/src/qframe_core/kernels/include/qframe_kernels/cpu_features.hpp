// qframe_kernels/cpu_features.hpp -- run-time CPU feature detection.
//
// Kernels are compiled for the baseline ISA; faster paths are compiled with
// __attribute__((target(...))) and chosen once at run time from these flags.
// The environment variable QFRAME_KERNEL=scalar|avx2|avx512bw|avx512vnni
// forces a path (it is ignored if the CPU lacks the feature).
#pragma once

#include <cstdlib>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace qframe_kernels {

struct CpuFeatures {
    bool avx2 = false;
    bool avx512bw = false;
    bool avx512vnni = false;
};

inline CpuFeatures detect_cpu_features() {
    CpuFeatures f;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    f.avx512vnni = f.avx512bw && __builtin_cpu_supports("avx512vnni");
#endif
    return f;
}

inline const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect_cpu_features();
    return f;
}

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

}  // namespace qframe_kernels
