// qframe_kernels/bindings.hpp -- the shared pybind11 layer.
//
// A march's extension is:
//   struct MyPolicy { static constexpr const char* name = "..."; static constexpr int multiplier_bits = 16;
//                     using Rounding = qframe_kernels::RoundHalfUp; };
//   PYBIND11_MODULE(_kernels, m) { qframe_kernels::bind_kernels<MyPolicy>(m); }
//
// This layer only validates arguments (type, dtype, rank, shape, contiguity,
// ranges), converts between numpy and raw pointers and releases the GIL;
// arithmetic lives in the other headers.  Arrays are never copied or cast:
// anything that is not exactly what a function expects raises TypeError or
// ValueError naming the function, the argument, the rule and what was given.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "eltwise.hpp"
#include "lookup.hpp"
#include "softmax.hpp"
#include "layernorm.hpp"
#include "sample.hpp"
#include "glu.hpp"
#include "matmul.hpp"
#include "conv2d.hpp"
#include "conv2d_nhwc.hpp"
#include "cpu_features.hpp"
#include "gemm_s8.hpp"
#include "linear.hpp"
#include "quantize.hpp"
#include "requant.hpp"
#include "rounding.hpp"

namespace qframe_kernels {
namespace bind {

namespace py = pybind11;

inline const char* dtype_name(DType d) {
    switch (d) {
        case DType::Int8: return "int8";
        case DType::Int16: return "int16";
        case DType::Int32: return "int32";
        default: return "int64";
    }
}

inline std::string shape_str(const std::vector<int64_t>& s) {
    std::ostringstream o;
    o << "(";
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    if (s.size() == 1) o << ",";
    o << ")";
    return o.str();
}

inline std::string py_repr(const py::handle& h) { return py::str(py::repr(h)).cast<std::string>(); }

inline std::string type_name(const py::handle& h) {
    return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>();
}

[[noreturn]] inline void type_err(const std::string& fn, const std::string& msg) {
    throw py::type_error(fn + ": " + msg);
}
[[noreturn]] inline void value_err(const std::string& fn, const std::string& msg) {
    throw py::value_error(fn + ": " + msg);
}

// A validated, C-contiguous, aligned, native-endian integer numpy array.
struct Arr {
    py::array a;
    DType dt = DType::Int8;
    std::vector<int64_t> shape;
    const void* data() const { return a.data(); }
    int64_t size() const {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        return n;
    }
};

inline std::optional<DType> int_dtype(const py::dtype& d) {
    if (d.equal(py::dtype::of<int8_t>())) return DType::Int8;
    if (d.equal(py::dtype::of<int16_t>())) return DType::Int16;
    if (d.equal(py::dtype::of<int32_t>())) return DType::Int32;
    if (d.equal(py::dtype::of<int64_t>())) return DType::Int64;
    return std::nullopt;
}

inline std::string allowed_str(std::initializer_list<DType> allowed) {
    std::string s;
    size_t i = 0;
    for (DType d : allowed) {
        if (i) s += (i + 1 == allowed.size()) ? " or " : ", ";
        s += dtype_name(d);
        ++i;
    }
    return s;
}

// rank < 0: any rank.  (Runs on every kernel call: the messages are built only on the error paths.)
inline Arr get_array(const char* fn, const char* arg, const py::handle& obj, std::initializer_list<DType> allowed,
                     int rank, const char* layout = nullptr) {
    auto expect = [&] {
        return std::string("a C-contiguous numpy.ndarray of dtype ") + allowed_str(allowed) +
               (rank >= 0 ? " with " + std::to_string(rank) + " dimensions" : std::string()) +
               (layout ? std::string(" ") + layout : std::string());
    };
    if (!py::isinstance<py::array>(obj))
        type_err(fn, "argument '" + std::string(arg) + "' must be " + expect() + ", got " + type_name(obj));
    Arr r;
    r.a = py::reinterpret_borrow<py::array>(obj);
    const auto dt = int_dtype(r.a.dtype());
    bool ok = dt.has_value();
    if (ok) {
        ok = false;
        for (DType d : allowed) ok = ok || d == *dt;
    }
    if (!ok)
        type_err(fn, "argument '" + std::string(arg) + "' must be " + expect() + ", got dtype " +
                         py::str(r.a.dtype()).cast<std::string>());
    r.dt = *dt;
    r.shape.reserve(static_cast<size_t>(r.a.ndim()));
    for (py::ssize_t i = 0; i < r.a.ndim(); ++i) r.shape.push_back(static_cast<int64_t>(r.a.shape(i)));
    if (rank >= 0 && r.a.ndim() != rank)
        value_err(fn, "argument '" + std::string(arg) + "' must be " + expect() + ", got " +
                          std::to_string(r.a.ndim()) + " dimensions with shape " + shape_str(r.shape));
    const int flags = r.a.flags();
    if (!(flags & py::array::c_style))
        value_err(fn, "argument '" + std::string(arg) + "' must be C-contiguous (got a non-contiguous array of shape " +
                          shape_str(r.shape) + "); pass numpy.ascontiguousarray(" + arg + ")");
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        value_err(fn, "argument '" + std::string(arg) + "' must be aligned; pass a copy (numpy.array(" + arg + "))");
    return r;
}

inline std::optional<Arr> get_optional_array(const char* fn, const char* arg, const py::handle& obj,
                                             std::initializer_list<DType> allowed, int rank,
                                             const char* layout = nullptr) {
    if (obj.is_none()) return std::nullopt;
    return get_array(fn, arg, obj, allowed, rank, layout);
}

inline int64_t get_int(const char* fn, const char* arg, const py::handle& obj) {
    if (py::isinstance<py::bool_>(obj) || !(py::isinstance<py::int_>(obj) || py::hasattr(obj, "__index__")))
        type_err(fn, "argument '" + std::string(arg) + "' must be an int, got " + type_name(obj) + " " + py_repr(obj));
    py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
    if (!idx) {
        PyErr_Clear();
        type_err(fn, "argument '" + std::string(arg) + "' must be an int, got " + type_name(obj) + " " + py_repr(obj));
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow);
    if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        value_err(fn, "argument '" + std::string(arg) + "' must fit in int64, got " + py_repr(obj));
    }
    return static_cast<int64_t>(v);
}

inline std::optional<int64_t> get_optional_int(const char* fn, const char* arg, const py::handle& obj) {
    if (obj.is_none()) return std::nullopt;
    return get_int(fn, arg, obj);
}

// A pair of ints given as a tuple/list of two ints (or one int for both).
inline std::pair<int64_t, int64_t> get_pair(const char* fn, const char* arg, const py::handle& obj, int64_t min) {
    int64_t a, b;
    if (py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) {
        py::sequence s = py::reinterpret_borrow<py::sequence>(obj);
        if (py::len(s) != 2)
            value_err(fn, "argument '" + std::string(arg) + "' must be a 2-tuple of ints, got " + py_repr(obj));
        a = get_int(fn, arg, s[0]);
        b = get_int(fn, arg, s[1]);
    } else if (py::isinstance<py::int_>(obj) && !py::isinstance<py::bool_>(obj)) {
        a = b = get_int(fn, arg, obj);
    } else {
        type_err(fn, "argument '" + std::string(arg) + "' must be a 2-tuple of ints, got " + type_name(obj) + " " +
                         py_repr(obj));
    }
    if (a < min || b < min || a > (int64_t(1) << 31) || b > (int64_t(1) << 31))
        value_err(fn, "argument '" + std::string(arg) + "' must have values in [" + std::to_string(min) +
                          ", 2**31], got " + py_repr(obj));
    return {a, b};
}

inline DType get_out_dtype(const char* fn, const py::handle& obj) {
    if (!py::isinstance<py::str>(obj))
        type_err(fn, "argument 'out_dtype' must be one of 'int8', 'int16', 'int32' (a str), got " + type_name(obj) +
                         " " + py_repr(obj));
    const std::string s = obj.cast<std::string>();
    if (s == "int8") return DType::Int8;
    if (s == "int16") return DType::Int16;
    if (s == "int32") return DType::Int32;
    value_err(fn, "argument 'out_dtype' must be one of 'int8', 'int16', 'int32', got " + py_repr(obj));
}

// "nchw" -> false, "nhwc" -> true.
inline bool get_layout(const char* fn, const char* arg, const py::handle& obj) {
    if (py::isinstance<py::str>(obj)) {
        const std::string s = obj.cast<std::string>();
        if (s == "nchw") return false;
        if (s == "nhwc") return true;
    }
    value_err(fn, std::string("argument '") + arg + "' must be 'nchw' or 'nhwc', got " + py_repr(obj));
}

inline ClampRange get_clamp(const char* fn, DType out, const py::handle& cmin, const py::handle& cmax) {
    const auto lo_u = get_optional_int(fn, "clamp_min", cmin);
    const auto hi_u = get_optional_int(fn, "clamp_max", cmax);
    ClampRange r{dtype_min(out), dtype_max(out)};
    if (lo_u) r.lo = std::max(r.lo, *lo_u);
    if (hi_u) r.hi = std::min(r.hi, *hi_u);
    if (r.lo > r.hi)
        value_err(fn, "clamp range [clamp_min, clamp_max] = [" + (lo_u ? std::to_string(*lo_u) : "None") + ", " +
                          (hi_u ? std::to_string(*hi_u) : "None") + "] does not intersect the " + dtype_name(out) +
                          " range [" + std::to_string(dtype_min(out)) + ", " + std::to_string(dtype_max(out)) + "]");
    return r;
}

template <class Policy>
inline std::string multiplier_rule() {
    return std::string("march '") + Policy::name + "' uses " + std::to_string(Policy::multiplier_bits) +
           "-bit multipliers: 0 <= multiplier <= " + std::to_string(max_multiplier<Policy>());
}

template <class Policy>
inline void check_multiplier_value(const char* fn, const std::string& what, int64_t m) {
    if (m < 0 || m > max_multiplier<Policy>())
        value_err(fn, "argument " + what + " = " + std::to_string(m) + " is out of range; " + multiplier_rule<Policy>());
}

inline void check_shift_value(const char* fn, const std::string& what, int64_t s) {
    if (s < 0 || s > kMaxShift)
        value_err(fn, "argument " + what + " = " + std::to_string(s) + " is out of range; shifts must satisfy 0 <= shift <= " +
                          std::to_string(kMaxShift));
}

// int32 array of length 1 or n (allow_one) or exactly n; values range-checked.
template <class Policy>
inline Arr get_params(const char* fn, const char* arg, const py::handle& obj, int64_t n, bool allow_one,
                      bool is_shift) {
    Arr a = get_array(fn, arg, obj, {DType::Int32}, 1);
    const int64_t len = a.shape[0];
    if (!(len == n || (allow_one && len == 1)))
        value_err(fn, "argument '" + std::string(arg) + "' must have length " +
                          (allow_one ? "1 or " + std::to_string(n) : std::to_string(n)) + ", got shape " +
                          shape_str(a.shape));
    const int32_t* p = static_cast<const int32_t*>(a.data());
    const int64_t hi = is_shift ? kMaxShift : max_multiplier<Policy>();
    for (int64_t i = 0; i < len; ++i) {
        if (p[i] >= 0 && p[i] <= hi) continue;  // the message is built only for a bad value
        const std::string what = std::string("'") + arg + "'[" + std::to_string(i) + "]";
        if (is_shift)
            check_shift_value(fn, what, p[i]);
        else
            check_multiplier_value<Policy>(fn, what, p[i]);
    }
    return a;
}

template <class F>
inline void dispatch_out(DType d, F&& f) {
    switch (d) {
        case DType::Int8: f(int8_t{}); break;
        case DType::Int16: f(int16_t{}); break;
        case DType::Int32: f(int32_t{}); break;
        default: f(int64_t{}); break;
    }
}

template <class F>
inline void dispatch_in8_16(DType d, F&& f) {
    if (d == DType::Int8) f(int8_t{});
    else f(int16_t{});
}

inline py::array make_out(DType d, const std::vector<int64_t>& shape) {
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    switch (d) {
        case DType::Int8: return py::array_t<int8_t>(s);
        case DType::Int16: return py::array_t<int16_t>(s);
        case DType::Int32: return py::array_t<int32_t>(s);
        default: return py::array_t<int64_t>(s);
    }
}

// Weights packed once for the GEMM kernels of this process (the Python
// class PackedWeight).  Holds a private copy of the int8 weights (used by the
// direct depthwise loop, for pickling and for packing the int16-activation
// layout on first use) and the packed layout(s).  Immutable from Python.
struct PackedWeight {
    std::string op;  // "conv2d" or "linear"
    std::string march;
    std::vector<int64_t> shape;
    int64_t groups = 1;
    std::vector<int8_t> raw;
    PackedGemmWeight p8, p16;
    PackedNhwcWeight nhwc;  // conv2d weights for the channels-last kernel (when it applies)
    PackedDepthwiseWeight dw;  // depthwise conv2d weights for the channels-last depthwise kernel

    int64_t rows() const { return shape[0] / groups; }
    int64_t K() const {
        int64_t k = 1;
        for (size_t i = 1; i < shape.size(); ++i) k *= shape[i];
        return k;
    }
    bool direct() const { return op == "conv2d" && conv2d_uses_direct(shape[0], groups); }
    // The layout conv2d writes natively for activations of `in`: NHWC on the channels-last kernel.
    bool nhwc_gemm(DType in) const {
        return op == "conv2d" && in == DType::Int8 && nhwc_kernel_applies(shape[0], shape[1], shape[2], shape[3], groups);
    }
    bool nhwc_depthwise(DType in) const {
        return op == "conv2d" && in == DType::Int8 &&
               depthwise_nhwc_applies(shape[0], shape[1], shape[2], shape[3], groups);
    }
    bool nhwc_native(DType in) const { return nhwc_gemm(in) || nhwc_depthwise(in); }
    // Packed for the channels-last kernel; the runs order (unit width dilation only) where it pays off.
    const PackedNhwcWeight& get_nhwc(int64_t dw = 1) {
        const bool run = dw == 1 && nhwc_runs_pay_off(shape[1], shape[3]);
        if (nhwc.empty() || nhwc.run != run)
            pack_nhwc_weight(nhwc, raw.data(), shape[0], shape[1], shape[2], shape[3], run);
        return nhwc;
    }
    const PackedDepthwiseWeight& get_depthwise() {
        if (dw.empty()) pack_depthwise_weight(dw, raw.data(), shape[0], shape[2], shape[3]);
        return dw;
    }
    // Packed layout for activations of `in` (int8 / int16); packs on first use.
    // Called with the GIL held, so lazy packing is not racy.
    const PackedGemmWeight* get(DType in) {
        if (direct()) return nullptr;
        const GemmKernel& kern = in == DType::Int8 ? gemm_kernel_for<int8_t>() : gemm_kernel_for<int16_t>();
        for (PackedGemmWeight* p : {&p8, &p16})
            if (p->kern == &kern) return p;
        PackedGemmWeight& slot = in == DType::Int8 ? p8 : p16;
        if (op == "conv2d")
            pack_conv2d_gemm_weight(slot, kern, raw.data(), shape[0], shape[1], shape[2], shape[3], groups,
                                    /*dw=*/1);  // other dilations repack per call
        else
            pack_gemm_weight(slot, kern, raw.data(), groups, rows(), K());
        return &slot;
    }
    size_t nbytes() const { return raw.size() + p8.nbytes() + p16.nbytes() + nhwc.nbytes() + dw.nbytes(); }
};

template <class Policy>
std::shared_ptr<PackedWeight> make_packed(const char* fn, const std::string& op, const py::object& weight,
                                          int64_t groups) {
    const bool conv = op == "conv2d";
    Arr w = get_array(fn, "weight", weight, {DType::Int8}, conv ? 4 : 2,
                      conv ? "[O, C // groups, KH, KW]" : "[N, K]");
    if (groups < 1) value_err(fn, "argument 'groups' must be >= 1, got " + std::to_string(groups));
    if (w.shape[0] % groups != 0)
        value_err(fn, "argument 'groups' = " + std::to_string(groups) +
                          " must divide the output channels O = weight.shape[0] = " + std::to_string(w.shape[0]));
    if (conv && (w.shape[2] < 1 || w.shape[3] < 1))
        value_err(fn, "argument 'weight' must have a non-empty kernel, got shape " + shape_str(w.shape));
    auto pw = std::make_shared<PackedWeight>();
    pw->op = op;
    pw->march = Policy::name;
    pw->shape = w.shape;
    pw->groups = groups;
    const int8_t* src = static_cast<const int8_t*>(w.data());
    pw->raw.assign(src, src + w.size());
    {
        py::gil_scoped_release nogil;
        // the usual case is packed now; others on first use
        if (pw->nhwc_gemm(DType::Int8)) pw->get_nhwc();
        else if (pw->nhwc_depthwise(DType::Int8)) pw->get_depthwise();
        else pw->get(DType::Int8);
    }
    return pw;
}

// The weight argument of conv2d/linear: an int8 array or a PackedWeight of `op`.
struct WeightArg {
    std::vector<int64_t> shape;
    const int8_t* data = nullptr;
    std::shared_ptr<PackedWeight> packed;  // null for a plain array
    std::optional<Arr> arr;
};

template <class Policy>
inline WeightArg get_weight(const char* fn, const py::handle& obj, int rank, const char* layout,
                            const char* op = nullptr) {
    WeightArg r;
    if (py::isinstance<PackedWeight>(obj)) {
        r.packed = obj.cast<std::shared_ptr<PackedWeight>>();
        const std::string want = op ? op : fn;
        if (r.packed->op != want)
            value_err(fn, "argument 'weight' is a PackedWeight made by pack_" + r.packed->op +
                              "_weight; pass one made by pack_" + want + "_weight");
        if (r.packed->march != Policy::name)
            value_err(fn, "argument 'weight' is a PackedWeight of march '" + r.packed->march + "', this is march '" +
                              Policy::name + "'");
        r.shape = r.packed->shape;
        r.data = r.packed->raw.data();
        return r;
    }
    r.arr = get_array(fn, "weight", obj, {DType::Int8}, rank, layout);
    r.shape = r.arr->shape;
    r.data = static_cast<const int8_t*>(r.arr->data());
    return r;
}

// Requantization parameters of conv2d / linear (multiplier/shift/bias).
template <class Policy>
struct EpilogueArgs {
    std::optional<Arr> bias, mult, shift, res_mult;
    RequantArgs q;
};

template <class Policy>
inline EpilogueArgs<Policy> get_epilogue(const char* fn, int64_t O, const py::handle& bias, const py::handle& multiplier,
                                         const py::handle& shift, DType out, const py::handle& cmin,
                                         const py::handle& cmax) {
    EpilogueArgs<Policy> e;
    e.bias = get_optional_array(fn, "bias", bias, {DType::Int32}, 1);
    if (e.bias && e.bias->shape[0] != O)
        value_err(fn, "argument 'bias' must have shape (" + std::to_string(O) + ",) (one per output channel), got " +
                          shape_str(e.bias->shape));
    const bool raw = multiplier.is_none() && shift.is_none();
    if (raw) {
        if (out != DType::Int32)
            value_err(fn, "multiplier and shift may be None only for the raw accumulator output out_dtype='int32', got "
                          "out_dtype='" + std::string(dtype_name(out)) + "'");
    } else {
        if (multiplier.is_none() || shift.is_none())
            value_err(fn, "multiplier and shift must both be given or both be None (raw int32 accumulator output)");
        e.mult = get_params<Policy>(fn, "multiplier", multiplier, O, false, false);
        e.shift = get_params<Policy>(fn, "shift", shift, O, false, true);
    }
    e.q.bias = e.bias ? static_cast<const int32_t*>(e.bias->data()) : nullptr;
    e.q.multiplier = e.mult ? static_cast<const int32_t*>(e.mult->data()) : nullptr;
    e.q.shift = e.shift ? static_cast<const int32_t*>(e.shift->data()) : nullptr;
    e.q.range = get_clamp(fn, out, cmin, cmax);
    return e;
}

// conv2d's arguments that do not depend on the input, validated once: conv2d_py builds one per call, a
// Conv2dPlan (the Python class) keeps it for every call of an integer module.
template <class Policy>
struct Conv2dArgs {
    WeightArg w;
    int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
    DType od = DType::Int8;
    EpilogueArgs<Policy> e;
    std::optional<Arr> res_mult;
    // the channels-last kernels' epilogue, built on the first call (with the GIL held): it depends on the
    // weights and the requantization only, which a Conv2dPlan fixes
    mutable std::shared_ptr<const detail::NhwcEpilogue> nhwc_epilogue;
};

template <class Policy>
Conv2dArgs<Policy> conv2d_args(const char* fn, const py::object& weight, const py::object& bias,
                               const py::object& stride, const py::object& padding, const py::object& dilation,
                               const py::object& groups_o, const py::object& multiplier, const py::object& shift,
                               const py::object& out_dtype, const py::object& clamp_min, const py::object& clamp_max,
                               const py::object& residual_multiplier) {
    Conv2dArgs<Policy> a;
    a.w = get_weight<Policy>(fn, weight, 4, "[O, C // groups, KH, KW]", "conv2d");
    std::tie(a.sh, a.sw) = get_pair(fn, "stride", stride, 1);
    std::tie(a.ph, a.pw) = get_pair(fn, "padding", padding, 0);
    std::tie(a.dh, a.dw) = get_pair(fn, "dilation", dilation, 1);
    a.groups = get_int(fn, "groups", groups_o);
    if (a.groups < 1) value_err(fn, "argument 'groups' must be >= 1, got " + std::to_string(a.groups));
    if (a.w.packed && a.w.packed->groups != a.groups)
        value_err(fn, "argument 'groups' = " + std::to_string(a.groups) + " does not match the PackedWeight, packed "
                      "with groups = " + std::to_string(a.w.packed->groups) + " (pack_conv2d_weight(weight, groups))");
    const int64_t O = a.w.shape[0];
    if (O % a.groups != 0)
        value_err(fn, "argument 'groups' = " + std::to_string(a.groups) +
                          " must divide the output channels O = weight.shape[0] = " + std::to_string(O));
    if (a.w.shape[2] < 1 || a.w.shape[3] < 1)
        value_err(fn, "argument 'weight' must have a non-empty kernel, got shape " + shape_str(a.w.shape));
    a.od = get_out_dtype(fn, out_dtype);
    a.e = get_epilogue<Policy>(fn, O, bias, multiplier, shift, a.od, clamp_min, clamp_max);
    if (!residual_multiplier.is_none()) {
        if (a.e.q.multiplier == nullptr)
            value_err(fn, "a residual needs multiplier and shift (it is not allowed with the raw int32 output)");
        a.res_mult = get_params<Policy>(fn, "residual_multiplier", residual_multiplier, O, false, false);
    }
    return a;
}

// Runs conv2d with validated arguments on one input (and residual).
template <class Policy>
py::array conv2d_run(const char* fn, const Conv2dArgs<Policy>& a, const py::object& input, const py::object& residual,
                     bool in_nhwc, bool out_nhwc) {
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 4, in_nhwc ? "[N, H, W, C]" : "[N, C, H, W]");
    const WeightArg& w = a.w;
    Conv2dShape s{};
    s.N = x.shape[0];
    if (in_nhwc) { s.H = x.shape[1]; s.W = x.shape[2]; s.C = x.shape[3]; }
    else { s.C = x.shape[1]; s.H = x.shape[2]; s.W = x.shape[3]; }
    s.O = w.shape[0]; s.KH = w.shape[2]; s.KW = w.shape[3];
    s.sh = a.sh; s.sw = a.sw; s.ph = a.ph; s.pw = a.pw; s.dh = a.dh; s.dw = a.dw; s.groups = a.groups;
    if (s.C % s.groups != 0)
        value_err(fn, "argument 'groups' = " + std::to_string(s.groups) + " must divide the input channels C = " +
                          std::to_string(s.C));
    if (w.shape[1] != s.C / s.groups)
        value_err(fn, "argument 'weight' has shape " + shape_str(w.shape) + " but input has C = " + std::to_string(s.C) +
                          " channels and groups = " + std::to_string(s.groups) + ", so weight.shape[1] must be " +
                          std::to_string(s.C / s.groups));
    s.Ho = conv2d_out_size(s.H, s.KH, s.sh, s.ph, s.dh);
    s.Wo = conv2d_out_size(s.W, s.KW, s.sw, s.pw, s.dw);
    if (s.Ho <= 0 || s.Wo <= 0)
        value_err(fn, "the dilated kernel " + shape_str({s.dh * (s.KH - 1) + 1, s.dw * (s.KW - 1) + 1}) +
                          " does not fit the padded input " + shape_str({s.H + 2 * s.ph, s.W + 2 * s.pw}));
    const std::vector<int64_t> oshape = out_nhwc ? std::vector<int64_t>{s.N, s.Ho, s.Wo, s.O}
                                                 : std::vector<int64_t>{s.N, s.O, s.Ho, s.Wo};
    {
        // Each factor is < 2**33 (padding, stride, dilation <= 2**31), so a
        // long double product detects sizes numpy could not allocate.
        const long double elems = static_cast<long double>(s.N) * s.O * s.Ho * s.Wo;
        if (elems > static_cast<long double>(int64_t(1) << 40))
            value_err(fn, "the output shape " + shape_str(oshape) + " is too large (more than 2**40 elements)");
    }
    const DType od = a.od;
    EpilogueArgs<Policy> e = a.e;
    std::optional<Arr> res;
    if (!residual.is_none() || a.res_mult) {
        if (residual.is_none() || !a.res_mult)
            value_err(fn, "residual and residual_multiplier must both be given or both be None");
        res = get_array(fn, "residual", residual, {DType::Int8, DType::Int16}, 4,
                        out_nhwc ? "[N, Ho, Wo, O]" : "[N, O, Ho, Wo]");
        if (res->shape != oshape)
            value_err(fn, "argument 'residual' must have the output shape " + shape_str(oshape) + ", got " +
                              shape_str(res->shape));
        e.q.res_multiplier = static_cast<const int32_t*>(a.res_mult->data());
    }
    py::array out = make_out(od, oshape);
    void* optr = out.mutable_data();
    const void* xp = x.data();
    const int8_t* wp = w.data;
    const void* rp = res ? res->data() : nullptr;
    const DType rdt = res ? res->dt : DType::Int8;
    const bool nhwc_kernel = x.dt == DType::Int8 && nhwc_kernel_applies(s.O, s.C / s.groups, s.KH, s.KW, s.groups);
    const bool dw_kernel = x.dt == DType::Int8 && depthwise_nhwc_applies(s.O, s.C / s.groups, s.KH, s.KW, s.groups);
    PackedNhwcWeight local_nhwc;
    PackedDepthwiseWeight local_dw;
    const PackedNhwcWeight* pn = nullptr;
    const PackedDepthwiseWeight* pd = nullptr;
    const PackedGemmWeight* pk = nullptr;
    if (nhwc_kernel) {
        if (w.packed) {
            pn = &w.packed->get_nhwc(s.dw);
        } else {
            pack_nhwc_weight(local_nhwc, wp, s.O, s.C, s.KH, s.KW, s.dw == 1 && nhwc_runs_pay_off(s.C, s.KW));
            pn = &local_nhwc;
        }
    } else if (dw_kernel) {
        if (w.packed) {
            pd = &w.packed->get_depthwise();
        } else {
            pack_depthwise_weight(local_dw, wp, s.O, s.KH, s.KW);
            pd = &local_dw;
        }
    } else if (w.packed) {
        pk = w.packed->get(x.dt);
    }
    if ((nhwc_kernel || dw_kernel) && !a.nhwc_epilogue)
        a.nhwc_epilogue = std::make_shared<const detail::NhwcEpilogue>(
            nhwc_kernel ? nhwc_conv2d_epilogue<Policy>(e.q, *pn) : nhwc_depthwise_epilogue<Policy>(e.q, *pd));
    const detail::NhwcEpilogue* epi = a.nhwc_epilogue.get();
    {
        py::gil_scoped_release nogil;
        const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using TIn = decltype(tin);
            dispatch_out(od, [&](auto tout) {
                using TOut = decltype(tout);
                if constexpr (!std::is_same_v<TOut, int64_t>) {
                    dispatch_in8_16(rdt, [&](auto tres) {
                        using TRes = decltype(tres);
                        const TRes* r = static_cast<const TRes*>(rp);
                        TOut* o = static_cast<TOut*>(optr);
                        const int64_t oelems = s.N * s.O * P;
                        // the kernel's native layouts: NHWC out of the channels-last kernel, NCHW in and out of
                        // the others; the arguments are converted to and from them where they differ
                        const bool native_out_nhwc = nhwc_kernel || dw_kernel;
                        std::vector<TRes> rtmp;
                        if (r && out_nhwc != native_out_nhwc) {
                            rtmp.resize(static_cast<size_t>(oelems));
                            if (out_nhwc) nhwc_to_nchw(r, s.N, s.O, P, rtmp.data());
                            else nchw_to_nhwc(r, s.N, s.O, P, rtmp.data());
                            r = rtmp.data();
                        }
                        std::vector<TOut> otmp;
                        TOut* dst = o;
                        if (out_nhwc != native_out_nhwc) {
                            otmp.resize(static_cast<size_t>(oelems));
                            dst = otmp.data();
                        }
                        if constexpr (std::is_same_v<TIn, int8_t>) {
                            if (nhwc_kernel)
                                conv2d_nhwc<Policy, TOut, TRes>(s, static_cast<const int8_t*>(xp), in_nhwc, *pn, r,
                                                                e.q, dst, epi);
                            if (dw_kernel)
                                conv2d_depthwise_nhwc<Policy, TOut, TRes>(s, static_cast<const int8_t*>(xp), in_nhwc,
                                                                          *pd, r, e.q, dst, epi);
                        }
                        if (!native_out_nhwc) {
                            const TIn* xin = static_cast<const TIn*>(xp);
                            std::vector<TIn> xtmp;
                            if (in_nhwc) {
                                xtmp.resize(static_cast<size_t>(s.N * s.C * HW));
                                nhwc_to_nchw(xin, s.N, s.C, HW, xtmp.data());
                                xin = xtmp.data();
                            }
                            conv2d<Policy, TIn, TOut, TRes>(s, xin, wp, r, e.q, dst, pk);
                        }
                        if (dst != o) {
                            if (out_nhwc) nchw_to_nhwc(dst, s.N, s.O, P, o);
                            else nhwc_to_nchw(dst, s.N, s.O, P, o);
                        }
                    });
                }
            });
        });
    }
    return out;
}

template <class Policy>
py::array conv2d_py(const py::object& input, const py::object& weight, const py::object& bias,
                    const py::object& stride, const py::object& padding, const py::object& dilation,
                    const py::object& groups_o, const py::object& multiplier, const py::object& shift,
                    const py::object& out_dtype, const py::object& clamp_min, const py::object& clamp_max,
                    const py::object& residual, const py::object& residual_multiplier,
                    const py::object& input_layout, const py::object& output_layout) {
    const char* fn = "conv2d";
    const bool in_nhwc = get_layout(fn, "input_layout", input_layout);
    const bool out_nhwc = get_layout(fn, "output_layout", output_layout);
    if (!residual.is_none() && residual_multiplier.is_none())
        value_err(fn, "residual and residual_multiplier must both be given or both be None");
    const Conv2dArgs<Policy> a = conv2d_args<Policy>(fn, weight, bias, stride, padding, dilation, groups_o, multiplier,
                                                     shift, out_dtype, clamp_min, clamp_max, residual_multiplier);
    return conv2d_run<Policy>(fn, a, input, residual, in_nhwc, out_nhwc);
}

// A conv2d whose weights and requantization are fixed (an integer Conv2d module): validated once.
template <class Policy>
struct Conv2dPlan {
    Conv2dArgs<Policy> args;
    py::array call(const py::object& input, const py::object& residual, const py::object& input_layout,
                   const py::object& output_layout) const {
        const char* fn = "Conv2dPlan";
        return conv2d_run<Policy>(fn, args, input, residual, get_layout(fn, "input_layout", input_layout),
                                  get_layout(fn, "output_layout", output_layout));
    }
};

// quantize(x, scale, out_dtype, qmin, qmax, output_layout): see quantize.hpp.
inline py::array quantize_py(const py::object& input, const py::object& scale_o, const py::object& out_dtype,
                             const py::object& qmin_o, const py::object& qmax_o, const py::object& output_layout) {
    const char* fn = "quantize";
    if (!py::isinstance<py::array>(input) ||
        !py::reinterpret_borrow<py::array>(input).dtype().equal(py::dtype::of<float>()))
        type_err(fn, "argument 'input' must be a C-contiguous float32 numpy.ndarray, got " + type_name(input) +
                         (py::isinstance<py::array>(input)
                              ? " of dtype " + py::str(py::reinterpret_borrow<py::array>(input).dtype()).cast<std::string>()
                              : std::string()));
    py::array x = py::reinterpret_borrow<py::array>(input);
    if (!(x.flags() & py::array::c_style) || !(x.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        value_err(fn, "argument 'input' must be C-contiguous and aligned; pass numpy.ascontiguousarray(input)");
    if (!py::isinstance<py::float_>(scale_o) && !py::isinstance<py::int_>(scale_o))
        type_err(fn, "argument 'scale' must be a float, got " + type_name(scale_o));
    const float scale = static_cast<float>(scale_o.cast<double>());
    if (!(scale > 0.0f) || !std::isfinite(scale))
        value_err(fn, "argument 'scale' must be finite and > 0, got " + py_repr(scale_o));
    const DType od = get_out_dtype(fn, out_dtype);
    if (od != DType::Int8 && od != DType::Int16)
        value_err(fn, "argument 'out_dtype' must be 'int8' or 'int16' (a model input's dtype), got " + py_repr(out_dtype));
    const int64_t qmin = get_int(fn, "qmin", qmin_o), qmax = get_int(fn, "qmax", qmax_o);
    if (qmin > qmax || qmin < dtype_min(od) || qmax > dtype_max(od))
        value_err(fn, "need " + std::to_string(dtype_min(od)) + " <= qmin <= qmax <= " + std::to_string(dtype_max(od)) +
                          ", got qmin = " + std::to_string(qmin) + ", qmax = " + std::to_string(qmax));
    const bool nhwc = get_layout(fn, "output_layout", output_layout);
    std::vector<int64_t> shape;
    for (py::ssize_t i = 0; i < x.ndim(); ++i) shape.push_back(static_cast<int64_t>(x.shape(i)));
    if (nhwc && shape.size() != 4)
        value_err(fn, "output_layout='nhwc' needs a 4-D [N, C, H, W] input, got shape " + shape_str(shape));
    int64_t outer = 1, C = 1, HW = 1;
    for (int64_t d : shape) HW *= d;
    if (nhwc) {
        outer = shape[0];
        C = shape[1];
        HW = shape[2] * shape[3];
    }
    const std::vector<int64_t> oshape = nhwc ? std::vector<int64_t>{shape[0], shape[2], shape[3], shape[1]} : shape;
    py::array out = make_out(od, oshape);
    const float* xp = static_cast<const float*>(x.data());
    void* op = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        if (od == DType::Int8) quantize<int8_t>(xp, outer, C, HW, scale, qmin, qmax, nhwc, static_cast<int8_t*>(op));
        else quantize<int16_t>(xp, outer, C, HW, scale, qmin, qmax, nhwc, static_cast<int16_t*>(op));
    }
    return out;
}

// dequantize(q, scale, input_layout): see quantize.hpp.
inline py::array dequantize_py(const py::object& input, const py::object& scale_o, const py::object& input_layout) {
    const char* fn = "dequantize";
    const bool nhwc = get_layout(fn, "input_layout", input_layout);
    Arr q = get_array(fn, "input", input, {DType::Int8, DType::Int16, DType::Int32}, nhwc ? 4 : -1,
                      nhwc ? "[N, H, W, C]" : nullptr);
    if (!py::isinstance<py::float_>(scale_o) && !py::isinstance<py::int_>(scale_o))
        type_err(fn, "argument 'scale' must be a float, got " + type_name(scale_o));
    const float scale = static_cast<float>(scale_o.cast<double>());
    int64_t outer = 1, C = 1, HW = q.size();
    std::vector<int64_t> oshape = q.shape;
    if (nhwc) {
        outer = q.shape[0];
        C = q.shape[3];
        HW = q.shape[1] * q.shape[2];
        oshape = {q.shape[0], q.shape[3], q.shape[1], q.shape[2]};
    }
    py::array_t<float> out(oshape);
    float* op = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        if (q.dt == DType::Int8) dequantize(static_cast<const int8_t*>(q.data()), outer, C, HW, scale, nhwc, op);
        else if (q.dt == DType::Int16) dequantize(static_cast<const int16_t*>(q.data()), outer, C, HW, scale, nhwc, op);
        else dequantize(static_cast<const int32_t*>(q.data()), outer, C, HW, scale, nhwc, op);
    }
    return out;
}

// lookup(input, table): see lookup.hpp.
inline py::array lookup_py(const py::object& input, const py::object& table) {
    const char* fn = "lookup";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, -1);
    Arr t = get_array(fn, "table", table, {DType::Int8, DType::Int16, DType::Int32}, 1);
    const int64_t need = x.dt == DType::Int8 ? 256 : 65536;
    if (t.shape[0] != need)
        value_err(fn, "argument 'table' must have one entry per code of the " + std::string(dtype_name(x.dt)) +
                          " input (" + std::to_string(need) + ": entry i is the output for code i - " +
                          std::to_string(-dtype_min(x.dt)) + "), got " + std::to_string(t.shape[0]) +
                          "; build it by applying the lookup rule to every code");
    py::array out = make_out(t.dt, x.shape);
    void* op = out.mutable_data();
    const int64_t n = x.size();
    {
        py::gil_scoped_release nogil;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using TIn = decltype(tin);
            const TIn* xp = static_cast<const TIn*>(x.data());
            if (t.dt == DType::Int8)
                lookup_dense(xp, n, static_cast<const int8_t*>(t.data()), static_cast<int8_t*>(op));
            else if (t.dt == DType::Int16)
                lookup_dense(xp, n, static_cast<const int16_t*>(t.data()), static_cast<int16_t*>(op));
            else
                lookup_dense(xp, n, static_cast<const int32_t*>(t.data()), static_cast<int32_t*>(op));
        });
    }
    return out;
}

// softmax(input, exp_table, reciprocal_table, pre_shift, multiplier, shift, out_dtype): see softmax.hpp.
template <class Policy>
py::array softmax_py(const py::object& input, const py::object& exp_table, const py::object& reciprocal_table,
                     const py::object& pre_shift_o, const py::object& multiplier_o, const py::object& shift_o,
                     const py::object& out_dtype, const py::object& mask_o) {
    const char* fn = "softmax";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 2, "[rows, n] (softmax along the last axis)");
    const std::optional<Arr> mask = get_optional_array(fn, "mask", mask_o, {DType::Int8}, 2, "[rows, n] (non-zero = masked)");
    if (mask && mask->shape != x.shape)
        value_err(fn, "mask " + shape_str(mask->shape) + " must have the input's shape " + shape_str(x.shape));
    const int8_t* mp = mask ? static_cast<const int8_t*>(mask->data()) : nullptr;
    const int64_t span = x.dt == DType::Int8 ? 255 : 65535;
    Arr et = get_array(fn, "exp_table", exp_table, {DType::Int32}, 1);
    if (et.shape[0] != span + 1)
        value_err(fn, "argument 'exp_table' must hold the exp code of every d = x - max(x) in [-" +
                          std::to_string(span) + ", 0] (" + std::to_string(span + 1) + " entries, entry i for d = i - " +
                          std::to_string(span) + "), got " + std::to_string(et.shape[0]));
    Arr rt = get_array(fn, "reciprocal_table", reciprocal_table, {DType::Int32}, 1);
    constexpr int64_t kMantissas = int64_t(1) << kSoftmaxMantissaBits;
    if (rt.shape[0] != kMantissas)
        value_err(fn, "argument 'reciprocal_table' must hold the reciprocal code of every mantissa in [0, 2**15) (" +
                          std::to_string(kMantissas) + " entries), got " + std::to_string(rt.shape[0]));
    const int64_t pre_shift = get_int(fn, "pre_shift", pre_shift_o), shift = get_int(fn, "shift", shift_o);
    const int64_t multiplier = get_int(fn, "multiplier", multiplier_o);
    check_shift_value(fn, "'pre_shift'", pre_shift);
    check_shift_value(fn, "'shift'", shift);
    check_multiplier_value<Policy>(fn, "'multiplier'", multiplier);
    const DType od = get_out_dtype(fn, out_dtype);
    if (od != DType::Int8 && od != DType::Int16)
        value_err(fn, "argument 'out_dtype' must be 'int8' or 'int16', got '" + std::string(dtype_name(od)) + "'");
    py::array out = make_out(od, x.shape);
    void* op = out.mutable_data();
    const int32_t* e = static_cast<const int32_t*>(et.data());
    const int32_t* r = static_cast<const int32_t*>(rt.data());
    const int64_t rows = x.shape[0], n = x.shape[1];
    if (n == 0) return out;
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using TIn = decltype(tin);
            const TIn* xp = static_cast<const TIn*>(x.data());
            if (od == DType::Int8)
                softmax_rows<R>(xp, rows, n, e, span, r, static_cast<int>(pre_shift), multiplier, static_cast<int>(shift),
                                -128, 127, mp, static_cast<int8_t*>(op));
            else
                softmax_rows<R>(xp, rows, n, e, span, r, static_cast<int>(pre_shift), multiplier, static_cast<int>(shift),
                                -32768, 32767, mp, static_cast<int16_t*>(op));
        });
    }
    return out;
}

// A WideRequant (pre_shift, multiplier, shift) from Python, range-checked.
template <class Policy>
inline WideRequantArgs get_wide_requant(const char* fn, const char* arg, const py::handle& obj) {
    if (!py::isinstance<py::tuple>(obj) || py::len(obj) != 3)
        type_err(fn, "argument '" + std::string(arg) + "' must be a tuple (pre_shift, multiplier, shift), got " +
                         type_name(obj));
    const py::tuple t = py::reinterpret_borrow<py::tuple>(obj);
    const std::string a(arg);
    WideRequantArgs w;
    const int64_t pre = get_int(fn, (a + "[0]").c_str(), t[0]), m = get_int(fn, (a + "[1]").c_str(), t[1]);
    const int64_t sh = get_int(fn, (a + "[2]").c_str(), t[2]);
    check_shift_value(fn, "'" + a + "' pre_shift", pre);
    check_multiplier_value<Policy>(fn, "'" + a + "' multiplier", m);
    check_shift_value(fn, "'" + a + "' shift", sh);
    w.pre_shift = static_cast<int>(pre);
    w.multiplier = m;
    w.shift = static_cast<int>(sh);
    return w;
}

// layernorm(input, eps, rsqrt_table, norm, norm_extra, norm_dtype, weight, bias, affine, out_dtype): see
// layernorm.hpp.
template <class Policy>
py::array layernorm_py(const py::object& input, const py::object& eps_o, const py::object& rsqrt_table,
                       const py::object& norm_o, const py::object& norm_extra_o, const py::object& norm_dtype,
                       const py::object& weight, const py::object& bias, const py::object& affine_o,
                       const py::object& out_dtype) {
    const char* fn = "layernorm";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 2, "[rows, N] (normalized over the last axis)");
    const int64_t N = x.shape[1], rows = x.shape[0];
    const int64_t eps = get_int(fn, "eps", eps_o);
    if (eps < 0 || eps > (int64_t(1) << 50)) value_err(fn, "argument 'eps' must be in [0, 2**50], got " + std::to_string(eps));
    if (N > (int64_t(1) << 20))
        value_err(fn, "rows of more than 2**20 elements are not supported (the exact moments stay below 2**53), got " +
                          std::to_string(N));
    Arr rt = get_array(fn, "rsqrt_table", rsqrt_table, {DType::Int32}, 1);
    if (rt.shape[0] != (int64_t(1) << kLayerNormMantissaBits))
        value_err(fn, "argument 'rsqrt_table' must hold the rsqrt code of every mantissa in [0, 2**15) (32768 entries), "
                      "got " + std::to_string(rt.shape[0]));
    const WideRequantArgs norm = get_wide_requant<Policy>(fn, "norm", norm_o);
    const int64_t norm_extra = get_int(fn, "norm_extra", norm_extra_o);
    if (norm_extra < -kMaxShift || norm_extra > kMaxShift)
        value_err(fn, "argument 'norm_extra' must be in [-62, 62], got " + std::to_string(norm_extra));
    const DType nd = get_out_dtype(fn, norm_dtype), od = get_out_dtype(fn, out_dtype);
    if (od != DType::Int8 && od != DType::Int16)
        value_err(fn, "argument 'out_dtype' must be 'int8' or 'int16', got '" + std::string(dtype_name(od)) + "'");
    const bool affine = !affine_o.is_none();
    WideRequantArgs aff;
    std::optional<Arr> w, b;
    if (affine) {
        aff = get_wide_requant<Policy>(fn, "affine", affine_o);
        w = get_array(fn, "weight", weight, {DType::Int64}, 1);
        b = get_array(fn, "bias", bias, {DType::Int64}, 1);
        if (w->shape[0] != N || b->shape[0] != N)
            value_err(fn, "arguments 'weight' and 'bias' must have N = " + std::to_string(N) + " entries, got " +
                              std::to_string(w->shape[0]) + " and " + std::to_string(b->shape[0]));
    } else if (!weight.is_none() || !bias.is_none()) {
        value_err(fn, "'weight' and 'bias' need the 'affine' requantization (pass affine=(pre_shift, multiplier, shift))");
    }
    py::array out = make_out(od, x.shape);
    void* op = out.mutable_data();
    if (N == 0) return out;
    const int32_t* rp = static_cast<const int32_t*>(rt.data());
    const int64_t* wp = affine ? static_cast<const int64_t*>(w->data()) : nullptr;
    const int64_t* bp = affine ? static_cast<const int64_t*>(b->data()) : nullptr;
    const int64_t nlo = dtype_min(nd), nhi = dtype_max(nd);
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using TIn = decltype(tin);
            const TIn* xp = static_cast<const TIn*>(x.data());
            const WideRequantArgs* ap = affine ? &aff : nullptr;
            if (od == DType::Int8)
                layernorm_rows<R>(xp, rows, N, eps, rp, norm, static_cast<int>(norm_extra), nlo, nhi, wp, bp, ap, -128,
                                  127, static_cast<int8_t*>(op));
            else
                layernorm_rows<R>(xp, rows, N, eps, rp, norm, static_cast<int>(norm_extra), nlo, nhi, wp, bp, ap,
                                  -32768, 32767, static_cast<int16_t*>(op));
        });
    }
    return out;
}

// glu(input, table, requant, out_dtype): see glu.hpp.
template <class Policy>
py::array glu_py(const py::object& input, const py::object& table, const py::object& requant,
                 const py::object& out_dtype) {
    const char* fn = "glu";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 3, "[outer, 2, inner] (the halves a, b)");
    if (x.shape[1] != 2) value_err(fn, "argument 'input' must be [outer, 2, inner], got shape " + shape_str(x.shape));
    Arr t = get_array(fn, "table", table, {DType::Int16, DType::Int32}, 1);
    const int64_t need = x.dt == DType::Int8 ? 256 : 65536;
    if (t.shape[0] != need)
        value_err(fn, "argument 'table' must hold the sigmoid code of every " + std::string(dtype_name(x.dt)) +
                          " code (" + std::to_string(need) + " entries), got " + std::to_string(t.shape[0]));
    const WideRequantArgs req = get_wide_requant<Policy>(fn, "requant", requant);
    const DType od = get_out_dtype(fn, out_dtype);
    if (od != DType::Int8 && od != DType::Int16)
        value_err(fn, "argument 'out_dtype' must be 'int8' or 'int16', got '" + std::string(dtype_name(od)) + "'");
    const int64_t outer = x.shape[0], inner = x.shape[2];
    py::array out = make_out(od, {outer, inner});
    void* op = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using TIn = decltype(tin);
            const TIn* xp = static_cast<const TIn*>(x.data());
            auto run = [&](auto* tp) {
                if (od == DType::Int8)
                    glu_rows<R>(xp, outer, inner, tp, req, -128, 127, static_cast<int8_t*>(op));
                else
                    glu_rows<R>(xp, outer, inner, tp, req, -32768, 32767, static_cast<int16_t*>(op));
            };
            if (t.dt == DType::Int16) run(static_cast<const int16_t*>(t.data()));
            else run(static_cast<const int32_t*>(t.data()));
        });
    }
    return out;
}

// matmul_requant(a, bt, requant, out_dtype): see matmul.hpp.
template <class Policy>
py::array matmul_requant_py(const py::object& a_o, const py::object& bt_o, const py::object& requant,
                            const py::object& out_dtype) {
    const char* fn = "matmul_requant";
    Arr a = get_array(fn, "a", a_o, {DType::Int8, DType::Int16}, 3, "[B, M, K]");
    Arr bt = get_array(fn, "bt", bt_o, {DType::Int8, DType::Int16}, 3, "[B, N, K] (the right operand transposed)");
    if (bt.shape[0] != a.shape[0] || bt.shape[2] != a.shape[2])
        value_err(fn, "a " + shape_str(a.shape) + " and bt " + shape_str(bt.shape) +
                          " must be [B, M, K] and [B, N, K] with the same B and K");
    const int64_t B = a.shape[0], M = a.shape[1], K = a.shape[2], N = bt.shape[1];
    if (K > (int64_t(1) << 22))
        value_err(fn, "K = " + std::to_string(K) + " is above 2**22: sums of int16 products could leave the exact "
                      "range of double; split the reduction");
    const WideRequantArgs req = get_wide_requant<Policy>(fn, "requant", requant);
    const DType od = get_out_dtype(fn, out_dtype);
    if (od != DType::Int8 && od != DType::Int16)
        value_err(fn, "argument 'out_dtype' must be 'int8' or 'int16', got '" + std::string(dtype_name(od)) + "'");
    py::array out = make_out(od, {B, M, N});
    void* op = out.mutable_data();
    if (out.size() == 0) return out;
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        dispatch_in8_16(a.dt, [&](auto ta) {
            using TA = decltype(ta);
            dispatch_in8_16(bt.dt, [&](auto tb) {
                using TB = decltype(tb);
                const TA* ap = static_cast<const TA*>(a.data());
                const TB* bp = static_cast<const TB*>(bt.data());
                if (od == DType::Int8)
                    matmul_requant<R>(ap, bp, B, M, N, K, req, -128, 127, static_cast<int8_t*>(op));
                else
                    matmul_requant<R>(ap, bp, B, M, N, K, req, -32768, 32767, static_cast<int16_t*>(op));
            });
        });
    }
    return out;
}

// The largest sum of |w| over a row of a rows x n int32 array.
inline int64_t max_abs_row_sum(const Arr& w, int64_t rows, int64_t n) {
    const int32_t* p = static_cast<const int32_t*>(w.data());
    int64_t best = 0;
    for (int64_t r = 0; r < rows; ++r) {
        int64_t s = 0;
        for (int64_t i = 0; i < n; ++i) s += p[r * n + i] < 0 ? -static_cast<int64_t>(p[r * n + i]) : p[r * n + i];
        best = std::max(best, s);
    }
    return best;
}

// separable_sum(input, batch, wy, wx, multiplier, shift, clamp_min, clamp_max): see sample.hpp.
template <class Policy>
py::array separable_sum_py(const py::object& input, const py::object& batch_o, const py::object& wy_o,
                           const py::object& wx_o, const py::object& multiplier_o, const py::object& shift_o,
                           const py::object& clamp_min, const py::object& clamp_max) {
    const char* fn = "separable_sum";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 4, "[N, C, H, W]");
    const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
    Arr wy = get_array(fn, "wy", wy_o, {DType::Int32}, 3, "[B, PH, H] (row weights of each output row)");
    const int64_t B = wy.shape[0], PH = wy.shape[1];
    Arr wx = get_array(fn, "wx", wx_o, {DType::Int32}, 3, "[B, PW, W] (column weights of each output column)");
    const int64_t PW = wx.shape[1];
    if (wy.shape[2] != H || wx.shape[2] != W || wx.shape[0] != B)
        value_err(fn, "wy " + shape_str(wy.shape) + " and wx " + shape_str(wx.shape) + " must be [B, PH, H] and "
                      "[B, PW, W] for input " + shape_str(x.shape));
    Arr bt = get_array(fn, "batch", batch_o, {DType::Int64}, 1, "[B] (the image of each output)");
    Arr mt = get_array(fn, "multiplier", multiplier_o, {DType::Int64}, 1, "[B]");
    if (bt.shape[0] != B || mt.shape[0] != B)
        value_err(fn, "batch " + shape_str(bt.shape) + " and multiplier " + shape_str(mt.shape) +
                          " must have one entry per output (B = " + std::to_string(B) + ")");
    const int64_t* bp = static_cast<const int64_t*>(bt.data());
    const int64_t* mp = static_cast<const int64_t*>(mt.data());
    for (int64_t b = 0; b < B; ++b) {
        if (bp[b] < 0 || bp[b] >= N)
            value_err(fn, "batch[" + std::to_string(b) + "] = " + std::to_string(bp[b]) + " is not an image of the input "
                          "(0 <= batch < N = " + std::to_string(N) + ")");
        if (mp[b] < 0 || mp[b] > (int64_t(1) << 40))
            value_err(fn, "multiplier[" + std::to_string(b) + "] = " + std::to_string(mp[b]) +
                              " is out of range [0, 2**40]");
    }
    const int64_t shift = get_int(fn, "shift", shift_o);
    check_shift_value(fn, "'shift'", shift);
    const ClampRange cr = get_clamp(fn, x.dt, clamp_min, clamp_max);
    // |each partial sum| <= (max row sum of |wy|) * (max row sum of |wx|) * max|x|
    const double bound = static_cast<double>(max_abs_row_sum(wy, B * PH, H)) *
                         static_cast<double>(max_abs_row_sum(wx, B * PW, W)) * (x.dt == DType::Int8 ? 128.0 : 32768.0);
    if (bound >= 0x1p62)
        value_err(fn, "the weights can make a sum of about 2**" + std::to_string(static_cast<int>(std::log2(bound))) +
                          " (>= 2**62), which int64 cannot hold exactly; use smaller weights (fewer fraction bits)");
    int64_t max_multiplier = 0;
    for (int64_t b = 0; b < B; ++b) max_multiplier = std::max(max_multiplier, mp[b]);
    const bool narrow = bound * static_cast<double>(max_multiplier) < 0x1p62;
    const bool vector = bound * static_cast<double>(max_multiplier) < 0x1p52 && shift <= 52;  // exact in double
    py::array out = make_out(x.dt, {B, C, PH, PW});
    void* op = out.mutable_data();
    if (out.size() == 0) return out;
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        const int32_t* yp = static_cast<const int32_t*>(wy.data());
        const int32_t* xp = static_cast<const int32_t*>(wx.data());
        dispatch_in8_16(x.dt, [&](auto tin) {
            using T = decltype(tin);
            const T* in = static_cast<const T*>(x.data());
            auto run = [&](auto acc, auto narrow) {
                separable_sum<R, decltype(acc), decltype(narrow)::value>(in, N, C, H, W, bp, B, yp, PH, xp, PW, mp,
                                                                         static_cast<int>(shift), cr.lo, cr.hi,
                                                                         vector, static_cast<T*>(op));
            };
            if (bound < 0x1p53 && narrow) run(double{}, std::true_type{});
            else if (bound < 0x1p53) run(double{}, std::false_type{});
            else if (narrow) run(int64_t{}, std::true_type{});
            else run(int64_t{}, std::false_type{});
        });
    }
    return out;
}

// grid_taps(grid, x_axis, y_axis, mult_shift, coord_frac_bits, weight_frac_bits, mode, border): see sample.hpp.
template <class Policy>
py::tuple grid_taps_py(const py::object& grid_o, const py::object& x_axis, const py::object& y_axis,
                       const py::object& mult_shift_o, const py::object& f_o, const py::object& w_o,
                       const py::object& mode_o, const py::object& border_o) {
    const char* fn = "grid_taps";
    Arr g = get_array(fn, "grid", grid_o, {DType::Int8, DType::Int16}, 3, "[N, P, 2] (x, y) grid codes");
    if (g.shape[2] != 2) value_err(fn, "argument 'grid' must be [N, P, 2], got shape " + shape_str(g.shape));
    auto axis = [&](const char* arg, const py::object& o) {
        if (!py::isinstance<py::tuple>(o) || py::len(o) != 3)
            type_err(fn, "argument '" + std::string(arg) + "' must be a tuple (A, B, size), got " + type_name(o));
        const py::tuple t = py::reinterpret_borrow<py::tuple>(o);
        GridAxis a{get_int(fn, arg, t[0]), get_int(fn, arg, t[1]), get_int(fn, arg, t[2])};
        if (a.n < 1 || a.n > (int64_t(1) << 20) || a.A < -(int64_t(1) << 47) || a.A > (int64_t(1) << 47) ||
            a.B < 0 || a.B > (int64_t(1) << 40))
            value_err(fn, "argument '" + std::string(arg) + "' = (" + std::to_string(a.A) + ", " + std::to_string(a.B) +
                              ", " + std::to_string(a.n) + ") is out of range (|A| <= 2**47, 0 <= B <= 2**40, "
                              "1 <= size <= 2**20)");
        return a;
    };
    const GridAxis ax = axis("x_axis", x_axis), ay = axis("y_axis", y_axis);
    if (ax.n * ay.n > (int64_t(1) << 31) - 1) value_err(fn, "the input has more than 2**31 - 1 positions");
    const int64_t ms = get_int(fn, "mult_shift", mult_shift_o), F = get_int(fn, "coord_frac_bits", f_o);
    const int64_t W = get_int(fn, "weight_frac_bits", w_o);
    check_shift_value(fn, "'mult_shift'", ms);
    if (F < 0 || F > 30 || W < 0 || W > F || W > 15)
        value_err(fn, "need 0 <= weight_frac_bits <= coord_frac_bits <= 30 and weight_frac_bits <= 15, got " +
                          std::to_string(F) + " and " + std::to_string(W));
    const std::string mode = py::str(mode_o).cast<std::string>();
    if (mode != "bilinear" && mode != "nearest")
        value_err(fn, "argument 'mode' must be 'bilinear' or 'nearest', got " + py_repr(mode_o));
    const bool bilinear = mode == "bilinear", border = py::bool_(border_o);
    const int64_t N = g.shape[0], P = g.shape[1], K = bilinear ? 4 : 1;
    py::array_t<int32_t> index({N, K, P}), weight({N, K, P});
    int32_t* ip = index.mutable_data();
    int32_t* wp = weight.mutable_data();
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        dispatch_in8_16(g.dt, [&](auto tg) {
            using TG = decltype(tg);
            grid_taps<R>(static_cast<const TG*>(g.data()), N, P, ax, ay, static_cast<int>(ms), static_cast<int>(F),
                         static_cast<int>(W), bilinear, border, ip, wp);
        });
    }
    return py::make_tuple(index, weight);
}

// gather_taps(input, index, weight, shift, clamp_min, clamp_max): see sample.hpp.
template <class Policy>
py::array gather_taps_py(const py::object& input, const py::object& index_o, const py::object& weight_o,
                         const py::object& shift_o, const py::object& clamp_min, const py::object& clamp_max) {
    const char* fn = "gather_taps";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 3, "[N, C, S] (S = H * W positions)");
    const int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2];
    Arr ix = get_array(fn, "index", index_o, {DType::Int32}, 3, "[G, K, P] (K taps of each of P outputs)");
    Arr wt = get_array(fn, "weight", weight_o, {DType::Int32}, 3, "[G, K, P]");
    const int64_t G = ix.shape[0], K = ix.shape[1], P = ix.shape[2];
    if (wt.shape != ix.shape)
        value_err(fn, "weight " + shape_str(wt.shape) + " must have index's shape " + shape_str(ix.shape));
    if (G != 1 && G != N)
        value_err(fn, "index " + shape_str(ix.shape) + " must hold one grid (G = 1) or one per image (G = N = " +
                          std::to_string(N) + ")");
    if (K > 65536) value_err(fn, "at most 65536 taps an output, got K = " + std::to_string(K));
    const int32_t* ip = static_cast<const int32_t*>(ix.data());
    for (int64_t i = 0, n = ix.size(); i < n; ++i)
        if (ip[i] < 0 || ip[i] >= S)
            value_err(fn, "index value " + std::to_string(ip[i]) + " is outside the " + std::to_string(S) +
                              " positions of the input (give a tap outside the input index 0 and weight 0)");
    const int64_t shift = get_int(fn, "shift", shift_o);
    check_shift_value(fn, "'shift'", shift);
    const ClampRange cr = get_clamp(fn, x.dt, clamp_min, clamp_max);
    // the double path is exact when every sum is below 2**52: max over outputs of sum_k |w| times max |x|
    const int32_t* wp = static_cast<const int32_t*>(wt.data());
    int64_t wsum = 0;
    for (int64_t g = 0; g < G; ++g)
        for (int64_t p = 0; p < P; ++p) {
            int64_t s = 0;
            for (int64_t k = 0; k < K; ++k) s += std::abs(static_cast<int64_t>(wp[(g * K + k) * P + p]));
            wsum = std::max(wsum, s);
        }
    const bool vector = static_cast<double>(wsum) * (x.dt == DType::Int8 ? 128.0 : 32768.0) < 0x1p52 && shift <= 52;
    py::array out = make_out(x.dt, {N, C, P});
    void* op = out.mutable_data();
    if (out.size() == 0) return out;
    if (S == 0) value_err(fn, "the input has no positions (S = 0) to sample");
    {
        py::gil_scoped_release nogil;
        using R = typename Policy::Rounding;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using T = decltype(tin);
            gather_taps<R>(static_cast<const T*>(x.data()), N, C, S, ip, wp, G, K, P, static_cast<int>(shift), cr.lo,
                           cr.hi, vector, static_cast<T*>(op));
        });
    }
    return out;
}

template <class Policy>
py::array linear_py(const py::object& input, const py::object& weight, const py::object& bias,
                    const py::object& multiplier, const py::object& shift, const py::object& out_dtype,
                    const py::object& clamp_min, const py::object& clamp_max) {
    const char* fn = "linear";
    Arr x = get_array(fn, "input", input, {DType::Int8, DType::Int16}, 2, "[M, K]");
    WeightArg w = get_weight<Policy>(fn, weight, 2, "[N, K]");
    const int64_t M = x.shape[0], K = x.shape[1], N = w.shape[0];
    if (w.shape[1] != K)
        value_err(fn, "argument 'weight' has shape " + shape_str(w.shape) + " but input has K = " + std::to_string(K) +
                          " features, so weight.shape[1] must be " + std::to_string(K));
    const DType od = get_out_dtype(fn, out_dtype);
    EpilogueArgs<Policy> e = get_epilogue<Policy>(fn, N, bias, multiplier, shift, od, clamp_min, clamp_max);
    py::array out = make_out(od, {M, N});
    void* optr = out.mutable_data();
    const void* xp = x.data();
    const int8_t* wp = w.data;
    const PackedGemmWeight* pk = w.packed ? w.packed->get(x.dt) : nullptr;
    {
        py::gil_scoped_release nogil;
        dispatch_in8_16(x.dt, [&](auto tin) {
            using TIn = decltype(tin);
            dispatch_out(od, [&](auto tout) {
                using TOut = decltype(tout);
                if constexpr (!std::is_same_v<TOut, int64_t>)
                    linear<Policy, TIn, TOut>(static_cast<const TIn*>(xp), wp, M, K, N, e.q, static_cast<TOut*>(optr),
                                              pk);
            });
        });
    }
    return out;
}

template <class Policy>
py::array eltwise_py(const char* fn, EltwiseOp op, const py::object& a_o, const py::object& b_o,
                     const py::object& ma_o, const py::object& mb_o, const py::object& s_o, const py::object& out_dtype,
                     const py::object& clamp_min, const py::object& clamp_max) {
    Arr a = get_array(fn, "a", a_o, {DType::Int8, DType::Int16}, -1);
    Arr b = get_array(fn, "b", b_o, {DType::Int8, DType::Int16}, -1);
    if (a.shape != b.shape)
        value_err(fn, "arguments 'a' and 'b' must have the same shape (broadcast before calling), got " +
                          shape_str(a.shape) + " and " + shape_str(b.shape));
    const int64_t ma = get_int(fn, "multiplier_a", ma_o);
    const int64_t mb = get_int(fn, "multiplier_b", mb_o);
    const int64_t sh = get_int(fn, "shift", s_o);
    check_multiplier_value<Policy>(fn, "'multiplier_a' (its magnitude: a negative one negates a)", ma < 0 ? -ma : ma);
    check_multiplier_value<Policy>(fn, "'multiplier_b' (its magnitude: a negative one subtracts b)", mb < 0 ? -mb : mb);
    check_shift_value(fn, "'shift'", sh);
    const DType od = get_out_dtype(fn, out_dtype);
    const ClampRange cr = get_clamp(fn, od, clamp_min, clamp_max);
    py::array out = make_out(od, a.shape);
    void* optr = out.mutable_data();
    const void* ap = a.data();
    const void* bp = b.data();
    const int64_t count = a.size();
    {
        py::gil_scoped_release nogil;
        dispatch_in8_16(a.dt, [&](auto ta) {
            using TA = decltype(ta);
            dispatch_in8_16(b.dt, [&](auto tb) {
                using TB = decltype(tb);
                dispatch_out(od, [&](auto tout) {
                    using TOut = decltype(tout);
                    if constexpr (!std::is_same_v<TOut, int64_t>)
                        eltwise<Policy>(static_cast<const TA*>(ap), static_cast<const TB*>(bp), count, ma, mb,
                                        static_cast<int>(sh), cr, op, static_cast<TOut*>(optr));
                });
            });
        });
    }
    return out;
}

template <class Policy>
py::array add_py(const py::object& a, const py::object& b, const py::object& ma, const py::object& mb,
                 const py::object& s, const py::object& out_dtype, const py::object& clamp_min,
                 const py::object& clamp_max) {
    return eltwise_py<Policy>("add", EltwiseOp::Add, a, b, ma, mb, s, out_dtype, clamp_min, clamp_max);
}

template <class Policy>
py::array mul_py(const py::object& a, const py::object& b, const py::object& m, const py::object& s,
                 const py::object& out_dtype, const py::object& clamp_min, const py::object& clamp_max) {
    return eltwise_py<Policy>("mul", EltwiseOp::Mul, a, b, m, py::int_(0), s, out_dtype, clamp_min, clamp_max);
}

template <class Policy>
py::array requantize_py(const py::object& x_o, const py::object& multiplier, const py::object& shift,
                        const py::object& axis_o, const py::object& out_dtype, const py::object& clamp_min,
                        const py::object& clamp_max) {
    const char* fn = "requantize";
    Arr x = get_array(fn, "x", x_o, {DType::Int8, DType::Int16, DType::Int32, DType::Int64}, -1);
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    if (!py::isinstance<py::array>(multiplier))
        type_err(fn, "argument 'multiplier' must be a C-contiguous numpy.ndarray of dtype int32 with 1 dimensions, got " +
                         type_name(multiplier));
    // Per-channel length decides whether axis matters.
    int64_t axis = 0, channels = 1;
    const bool axis_none = axis_o.is_none();
    if (!axis_none) {
        axis = get_int(fn, "axis", axis_o);
        if (axis < -rank || axis >= rank || rank == 0)
            value_err(fn, "argument 'axis' = " + std::to_string(axis) + " is out of range for x of shape " +
                              shape_str(x.shape));
        if (axis < 0) axis += rank;
        channels = x.shape[axis];
    }
    Arr m = get_params<Policy>(fn, "multiplier", multiplier, channels, true, false);
    Arr s = get_params<Policy>(fn, "shift", shift, channels, true, true);
    if (m.shape[0] != s.shape[0])
        value_err(fn, "arguments 'multiplier' and 'shift' must have the same length, got " + shape_str(m.shape) +
                          " and " + shape_str(s.shape));
    const bool per_tensor = m.shape[0] == 1;
    if (!per_tensor && axis_none) value_err(fn, "argument 'axis' is required for per-channel multiplier/shift");
    int64_t outer = 1, inner = 1, ch = 1;
    if (per_tensor) {
        inner = x.size();
    } else {
        for (int64_t i = 0; i < axis; ++i) outer *= x.shape[i];
        ch = x.shape[axis];
        for (int64_t i = axis + 1; i < rank; ++i) inner *= x.shape[i];
    }
    const DType od = get_out_dtype(fn, out_dtype);
    const ClampRange cr = get_clamp(fn, od, clamp_min, clamp_max);
    py::array out = make_out(od, x.shape);
    void* optr = out.mutable_data();
    const void* xp = x.data();
    const int32_t* mp = static_cast<const int32_t*>(m.data());
    const int32_t* sp = static_cast<const int32_t*>(s.data());
    {
        py::gil_scoped_release nogil;
        auto run = [&](auto tin) {
            using TIn = decltype(tin);
            dispatch_out(od, [&](auto tout) {
                using TOut = decltype(tout);
                if constexpr (!std::is_same_v<TOut, int64_t>)
                    requantize<Policy, TIn, TOut>(static_cast<const TIn*>(xp), static_cast<TOut*>(optr), outer, ch,
                                                  inner, mp, sp, per_tensor, cr);
            });
        };
        if (x.dt == DType::Int8) run(int8_t{});
        else if (x.dt == DType::Int16) run(int16_t{});
        else if (x.dt == DType::Int32) run(int32_t{});
        else run(int64_t{});
    }
    return out;
}

template <class Policy>
py::dict cpu_features_py() {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["avx512bw"] = f.avx512bw;
    d["avx512vnni"] = f.avx512vnni;
    d["openmp_threads"] = max_threads();
    d["kernel"] = std::string(gemm_kernel().name);
    d["kernel_int8"] = std::string(gemm_kernel_for<int8_t>().name);
    return d;
}

}  // namespace bind

// Registers conv2d, linear, add, requantize, cpu_features, MARCH and
// MULTIPLIER_BITS on `m` for the march described by Policy.
template <class Policy>
void bind_kernels(pybind11::module_& m) {
    namespace py = pybind11;
    static_assert(Policy::multiplier_bits >= 2 && Policy::multiplier_bits <= 32, "multiplier_bits must be in [2, 32]");
    const std::string march = Policy::name;
    m.doc() = "Integer kernels of march '" + march + "' (" + std::to_string(Policy::multiplier_bits) +
              "-bit multipliers, rounding " + Policy::Rounding::name + "); see qframe_core/kernels/README.md.";
    m.attr("MARCH") = march;
    m.attr("MULTIPLIER_BITS") = Policy::multiplier_bits;
    m.def("conv2d", &bind::conv2d_py<Policy>, py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
          py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("multiplier"), py::arg("shift"),
          py::arg("out_dtype"), py::arg("clamp_min") = py::none(), py::arg("clamp_max") = py::none(),
          py::arg("residual") = py::none(), py::arg("residual_multiplier") = py::none(),
          py::arg("input_layout") = "nchw", py::arg("output_layout") = "nchw",
          "Integer conv2d. input int8/int16 [N,C,H,W] (input_layout='nchw') or [N,H,W,C] ('nhwc'), weight int8 "
          "[O,C//groups,KH,KW], bias int32 [O] or None, multiplier/shift int32 [O] (None/None with out_dtype='int32' "
          "returns the raw accumulator + bias), optional residual int8/int16 in the output's layout with "
          "residual_multiplier int32 [O]; the output is [N,O,Ho,Wo] (output_layout='nchw') or [N,Ho,Wo,O] ('nhwc'). "
          "PackedWeight.native_layout(dtype) names the layout written without a conversion.");
    py::class_<bind::Conv2dPlan<Policy>, std::shared_ptr<bind::Conv2dPlan<Policy>>>(
        m, "Conv2dPlan", py::module_local(),
        "conv2d with its weights, bias, geometry and requantization validated once (conv2d_plan); call it with "
        "the input (and residual) only.")
        .def("__call__", &bind::Conv2dPlan<Policy>::call, py::arg("input"), py::arg("residual") = py::none(),
             py::arg("input_layout") = "nchw", py::arg("output_layout") = "nchw");
    m.def("conv2d_plan",
          [](const py::object& weight, const py::object& bias, const py::object& stride, const py::object& padding,
             const py::object& dilation, const py::object& groups, const py::object& multiplier,
             const py::object& shift, const py::object& out_dtype, const py::object& clamp_min,
             const py::object& clamp_max, const py::object& residual_multiplier) {
              auto plan = std::make_shared<bind::Conv2dPlan<Policy>>();
              plan->args = bind::conv2d_args<Policy>("conv2d_plan", weight, bias, stride, padding, dilation, groups,
                                                     multiplier, shift, out_dtype, clamp_min, clamp_max,
                                                     residual_multiplier);
              return plan;
          },
          py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
          py::arg("groups"), py::arg("multiplier"), py::arg("shift"), py::arg("out_dtype"),
          py::arg("clamp_min") = py::none(), py::arg("clamp_max") = py::none(),
          py::arg("residual_multiplier") = py::none(),
          "conv2d's arguments except input and residual, validated once: plan(input, residual, input_layout, "
          "output_layout) computes what conv2d computes.");
    m.def("linear", &bind::linear_py<Policy>, py::arg("input"), py::arg("weight"), py::arg("bias"),
          py::arg("multiplier"), py::arg("shift"), py::arg("out_dtype"), py::arg("clamp_min") = py::none(),
          py::arg("clamp_max") = py::none(),
          "Integer linear. input int8/int16 [M,K], weight int8 [N,K], bias int32 [N] or None, multiplier/shift int32 "
          "[N] (or None/None for the raw int32 accumulator).");
    m.def("add", &bind::add_py<Policy>, py::arg("a"), py::arg("b"), py::arg("multiplier_a"), py::arg("multiplier_b"),
          py::arg("shift"), py::arg("out_dtype"), py::arg("clamp_min") = py::none(), py::arg("clamp_max") = py::none(),
          "out = clamp(round_shift(a*multiplier_a + b*multiplier_b, shift)); a, b int8/int16 of the same shape "
          "(a negative multiplier_b subtracts).");
    m.def("mul", &bind::mul_py<Policy>, py::arg("a"), py::arg("b"), py::arg("multiplier"), py::arg("shift"),
          py::arg("out_dtype"), py::arg("clamp_min") = py::none(), py::arg("clamp_max") = py::none(),
          "out = clamp(round_shift(a*b*multiplier, shift)); a, b int8/int16 of the same shape.");
    m.def("quantize", &bind::quantize_py, py::arg("input"), py::arg("scale"), py::arg("out_dtype"), py::arg("qmin"),
          py::arg("qmax"), py::arg("output_layout") = "nchw",
          "clamp(round_half_even(input / scale), qmin, qmax) of a float32 array (NaN -> 0), as int8/int16; "
          "output_layout='nhwc' writes an [N, C, H, W] input as [N, H, W, C].");
    m.def("dequantize", &bind::dequantize_py, py::arg("input"), py::arg("scale"), py::arg("input_layout") = "nchw",
          "float32(input) * scale (float32 arithmetic) of an int8/int16/int32 array; input_layout='nhwc' takes an "
          "[N, H, W, C] input and writes [N, C, H, W].");
    m.def("lookup", &bind::lookup_py, py::arg("input"), py::arg("table"),
          "out[i] = table[input[i] - min]: int8 input with a 256-entry table, int16 input with a 65536-entry one "
          "(entry i for code i + min; int8/int16/int32 entries), any shape.");
    m.def("softmax", &bind::softmax_py<Policy>, py::arg("input"), py::arg("exp_table"), py::arg("reciprocal_table"),
          py::arg("pre_shift"), py::arg("multiplier"), py::arg("shift"), py::arg("out_dtype"),
          py::arg("mask") = py::none(),
          "Integer softmax along the last axis of an int8/int16 [rows, n] array (see softmax.hpp): exp and "
          "reciprocal tables dense over their indices, the output requantization (pre_shift, multiplier, "
          "shift) shifted further by each row's normalization exponent; an int8 mask of the input's shape "
          "(non-zero = masked) leaves codes out (output 0).");
    m.def("layernorm", &bind::layernorm_py<Policy>, py::arg("input"), py::arg("eps"), py::arg("rsqrt_table"),
          py::arg("norm"), py::arg("norm_extra"), py::arg("norm_dtype"), py::arg("weight") = py::none(),
          py::arg("bias") = py::none(), py::arg("affine") = py::none(), py::arg("out_dtype") = "int8",
          "Integer layer normalization over the last axis of an int8/int16 [rows, N] array (see layernorm.hpp).");
    m.def("glu", &bind::glu_py<Policy>, py::arg("input"), py::arg("table"), py::arg("requant"),
          py::arg("out_dtype"),
          "Integer GLU of an int8/int16 [outer, 2, inner] array (see glu.hpp): wide_requant(a * table[b]) with the "
          "sigmoid table dense over the input codes and requant = (pre_shift, multiplier, shift).");
    m.def("matmul_requant", &bind::matmul_requant_py<Policy>, py::arg("a"), py::arg("bt"), py::arg("requant"),
          py::arg("out_dtype"),
          "out[b, m, n] = wide(sum_k a[b, m, k] * bt[b, n, k]) of int8/int16 [B, M, K] and [B, N, K] arrays, exact "
          "(see matmul.hpp), requant = (pre_shift, multiplier, shift): attention's matmuls.");
    m.def("separable_sum", &bind::separable_sum_py<Policy>, py::arg("input"), py::arg("batch"), py::arg("wy"),
          py::arg("wx"), py::arg("multiplier"), py::arg("shift"), py::arg("clamp_min") = py::none(),
          py::arg("clamp_max") = py::none(),
          "out[b, c, i, j] = clamp(round_shift(multiplier[b] * sum_{h,w} wy[b,i,h] * wx[b,j,w] * "
          "input[batch[b], c, h, w], shift)), exact (see sample.hpp): bilinear resize and RoIAlign.");
    m.def("grid_taps", &bind::grid_taps_py<Policy>, py::arg("grid"), py::arg("x_axis"), py::arg("y_axis"),
          py::arg("mult_shift"), py::arg("coord_frac_bits"), py::arg("weight_frac_bits"), py::arg("mode"),
          py::arg("border"),
          "(index, weight) int32 [N, K, P] of grid_sample's taps from int8/int16 [N, P, 2] grid codes (see "
          "sample.hpp); x_axis/y_axis = (A, B, size): the inputs of gather_taps.");
    m.def("gather_taps", &bind::gather_taps_py<Policy>, py::arg("input"), py::arg("index"), py::arg("weight"),
          py::arg("shift"), py::arg("clamp_min") = py::none(), py::arg("clamp_max") = py::none(),
          "out[n, c, p] = clamp(round_shift(sum_k weight[g,k,p] * input[n, c, index[g,k,p]], shift)), exact, g = n "
          "or 0 (see sample.hpp): grid_sample.");
    m.def("requantize", &bind::requantize_py<Policy>, py::arg("x"), py::arg("multiplier"), py::arg("shift"),
          py::arg("axis") = py::none(), py::arg("out_dtype") = "int8", py::arg("clamp_min") = py::none(),
          py::arg("clamp_max") = py::none(),
          "out = clamp(round_shift(x*multiplier, shift)); x int8/int16/int32/int64, multiplier/shift int32 of length 1 or "
          "x.shape[axis].");
    py::class_<bind::PackedWeight, std::shared_ptr<bind::PackedWeight>>(
        m, "PackedWeight", py::module_local(),
        "int8 weights packed once for this process's GEMM kernels (pack_conv2d_weight / pack_linear_weight); pass "
        "it as the 'weight' of conv2d / linear.  Picklable (stores the int8 weights; repacks on load).")
        .def_property_readonly("op", [](const bind::PackedWeight& p) { return p.op; })
        .def_property_readonly("march", [](const bind::PackedWeight& p) { return p.march; })
        .def_property_readonly("shape", [](const bind::PackedWeight& p) {
            py::tuple t(p.shape.size());
            for (size_t i = 0; i < p.shape.size(); ++i) t[i] = p.shape[i];
            return t;
        })
        .def_property_readonly("groups", [](const bind::PackedWeight& p) { return p.groups; })
        .def_property_readonly("kernel", [](const bind::PackedWeight& p) {
            if (p.nhwc_depthwise(DType::Int8))
                return std::string(gemm_kernel_for<int8_t>().kgroup == 4 ? "channels_last_depthwise_avx512vnni"
                                                                          : "channels_last_depthwise_avx512bw");
            if (p.direct()) return std::string("direct");
            if (p.nhwc_gemm(DType::Int8)) return std::string("channels_last_avx512vnni_u8s8");
            return std::string(p.p8.kern ? p.p8.kern->name : "none");
        })
        .def_property_readonly("nbytes", [](const bind::PackedWeight& p) { return p.nbytes(); })
        .def("native_layout", [](const bind::PackedWeight& p, const std::string& dtype) {
            if (dtype != "int8" && dtype != "int16")
                bind::value_err("PackedWeight.native_layout", "dtype must be 'int8' or 'int16', got '" + dtype + "'");
            return std::string(p.nhwc_native(dtype == "int8" ? DType::Int8 : DType::Int16) ? "nhwc" : "nchw");
        }, py::arg("dtype"),
        "The output layout conv2d writes without a conversion for activations of this dtype ('nhwc' on the "
        "channels-last kernel, else 'nchw').")
        .def("weight", [](const bind::PackedWeight& p) {
            py::array_t<int8_t> a(std::vector<py::ssize_t>(p.shape.begin(), p.shape.end()));
            if (!p.raw.empty()) std::memcpy(a.mutable_data(), p.raw.data(), p.raw.size());
            return a;
        }, "A copy of the int8 weights.")
        .def("__repr__", [](const bind::PackedWeight& p) {
            return "PackedWeight(op='" + p.op + "', march='" + p.march + "', shape=" + bind::shape_str(p.shape) +
                   ", groups=" + std::to_string(p.groups) + ")";
        })
        .def(py::pickle(
            [](const bind::PackedWeight& p) {
                py::array_t<int8_t> a(std::vector<py::ssize_t>(p.shape.begin(), p.shape.end()));
                if (!p.raw.empty()) std::memcpy(a.mutable_data(), p.raw.data(), p.raw.size());
                return py::make_tuple(p.op, p.march, a, p.groups);
            },
            [](const py::tuple& t) {
                const char* fn = "PackedWeight.__setstate__";
                if (t.size() != 4) bind::value_err(fn, "expected a 4-tuple (op, march, weight, groups)");
                const std::string op = t[0].cast<std::string>();
                const std::string mch = t[1].cast<std::string>();
                if (mch != Policy::name)
                    bind::value_err(fn, "a PackedWeight of march '" + mch + "' cannot be loaded by march '" +
                                        Policy::name + "'");
                if (op != "conv2d" && op != "linear") bind::value_err(fn, "unknown op '" + op + "'");
                return bind::make_packed<Policy>(fn, op, t[2], bind::get_int(fn, "groups", t[3]));
            }));
    m.def("pack_conv2d_weight",
          [](const py::object& weight, const py::object& groups) {
              const char* fn = "pack_conv2d_weight";
              return bind::make_packed<Policy>(fn, "conv2d", weight, bind::get_int(fn, "groups", groups));
          },
          py::arg("weight"), py::arg("groups") = 1,
          "Pack int8 conv weights [O, C//groups, KH, KW] once; pass the result as conv2d's weight (same groups).");
    m.def("pack_linear_weight",
          [](const py::object& weight) { return bind::make_packed<Policy>("pack_linear_weight", "linear", weight, 1); },
          py::arg("weight"), "Pack int8 linear weights [N, K] once; pass the result as linear's weight.");
    m.def("cpu_features", &bind::cpu_features_py<Policy>,
          "CPU features seen at run time and the GEMM path selected ('kernel').");
}

}  // namespace qframe_kernels
