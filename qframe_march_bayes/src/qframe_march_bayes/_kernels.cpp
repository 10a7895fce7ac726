// Integer kernels of march "bayes": the shared qframe_kernels templates
// instantiated with this march's numeric policy.
#include <qframe_kernels/bindings.hpp>

namespace {

struct BayesPolicy {
    static constexpr const char* name = "bayes";
    static constexpr int multiplier_bits = 32;
    using Rounding = qframe_kernels::RoundHalfEven;
};

}  // namespace

PYBIND11_MODULE(_kernels, m) { qframe_kernels::bind_kernels<BayesPolicy>(m); }
