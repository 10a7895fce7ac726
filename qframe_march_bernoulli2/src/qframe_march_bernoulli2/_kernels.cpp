// Integer kernels of march "bernoulli2": the shared qframe_kernels templates
// instantiated with this march's numeric policy.
#include <qframe_kernels/bindings.hpp>

namespace {

struct Bernoulli2Policy {
    static constexpr const char* name = "bernoulli2";
    static constexpr int multiplier_bits = 16;
    using Rounding = qframe_kernels::RoundHalfUp;
};

}  // namespace

PYBIND11_MODULE(_kernels, m) { qframe_kernels::bind_kernels<Bernoulli2Policy>(m); }
