// pybind11 bindings of the ternary codecs as `bitk._codecs`: the same functions, names and
// argument order as python/bitk/formats/reference.py, over numpy buffers (no libtorch). Inputs are
// validated for dtype/shape by bitk.formats; these wrappers only check what would be unsafe to
// trust: shapes whose element or byte counts overflow 64 bits, and input arrays that are not
// aligned for their dtype (numpy views at odd offsets, e.g. of a safetensors file), which are
// copied to aligned memory because the codecs load floats as floats. The GIL is released while
// the codecs run; std::invalid_argument becomes ValueError.
// The ternary GEMM entries (ternary_gemm.h) check their own inputs; see their section.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "convert_bf16.h"
#include "cpu_dispatch.h"
#include "i2s_gemm.h"
#include "parallel.h"
#include "quantize_activations.h"
#include "quantize_gradients.h"
#include "relu2_gate.h"
#include "rms_norm.h"
#include "ternary_codecs.h"
#include "ternary_gemm.h"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using Int8Array = py::array_t<int8_t, py::array::c_style>;
using ByteArray = py::array_t<uint8_t, py::array::c_style>;

void require_2d(const py::array& a, const char* what) {
  if (a.ndim() != 2) throw std::invalid_argument(std::string(what) + " must be 2-D");
}

void require_bytes(const ByteArray& data, int64_t expected, const char* qtype) {
  if (data.size() != expected)
    throw std::invalid_argument(std::string(qtype) + " data has " + std::to_string(data.size()) +
                                " bytes; the shape needs " + std::to_string(expected));
}

// rows * cols, or std::invalid_argument for a negative shape or one whose count overflows int64.
int64_t element_count(int64_t rows, int64_t cols, const char* what) {
  if (rows < 0 || cols < 0)
    throw std::invalid_argument(std::string(what) + ": the shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "] has a negative dimension");
  if (cols != 0 && rows > std::numeric_limits<int64_t>::max() / cols)
    throw std::invalid_argument(std::string(what) + ": the shape [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "] has more elements than a 64-bit count holds");
  return rows * cols;
}

int64_t i2s_bytes(int64_t rows, int64_t cols) { return element_count(rows, cols, "I2_S") / 4 + 32; }

// `a` itself when its data is aligned for T, else an aligned copy: numpy views at odd byte offsets
// (np.frombuffer(buf, offset=1), a memory map of a safetensors file) are legal numpy arrays, but the
// codecs load T through T*, which needs alignof(T).
template <class T>
py::array_t<T, py::array::c_style> aligned(const py::array_t<T, py::array::c_style>& a) {
  if (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) return a;
  py::array_t<T, py::array::c_style> copy(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
  std::memcpy(copy.mutable_data(), static_cast<const void*>(a.data()), size_t(a.nbytes()));
  return copy;
}

py::tuple ternarize(const FloatArray& w_in) {
  require_2d(w_in, "w");
  const FloatArray w = aligned(w_in);
  Int8Array codes({w.shape(0), w.shape(1)});
  float gamma;
  {
    py::gil_scoped_release release;
    gamma = bitk::ternarize(w.data(), w.shape(0), w.shape(1), codes.mutable_data());
  }
  return py::make_tuple(codes, double(gamma));
}

py::tuple ternarize_bf16(const py::array_t<uint16_t, py::array::c_style>& bits_in) {
  require_2d(bits_in, "w");
  const auto bits = aligned(bits_in);
  Int8Array codes({bits.shape(0), bits.shape(1)});
  float gamma;
  {
    py::gil_scoped_release release;
    gamma = bitk::ternarize_bf16(bits.data(), bits.shape(0), bits.shape(1), codes.mutable_data());
  }
  return py::make_tuple(codes, double(gamma));
}

double abs_sum(const FloatArray& w_in) {
  const FloatArray w = aligned(w_in);
  py::gil_scoped_release release;
  return bitk::abs_sum(w.data(), w.size());
}

ByteArray pack_i2s(const Int8Array& codes, double scale, const std::string& layout) {
  require_2d(codes, "codes");
  const auto lay = bitk::parse_i2s_layout(layout);
  ByteArray out(i2s_bytes(codes.shape(0), codes.shape(1)));
  py::gil_scoped_release release;
  bitk::pack_i2s(codes.data(), codes.shape(0), codes.shape(1), float(scale), lay, out.mutable_data());
  return out;
}

py::tuple unpack_i2s(const ByteArray& data, int64_t rows, int64_t cols, const std::string& layout) {
  const auto lay = bitk::parse_i2s_layout(layout);
  require_bytes(data, i2s_bytes(rows, cols), "I2_S");
  Int8Array codes({rows, cols});
  float scale;
  {
    py::gil_scoped_release release;
    scale = bitk::unpack_i2s(data.data(), rows, cols, lay, codes.mutable_data());
  }
  return py::make_tuple(codes, double(scale));
}

ByteArray quantize_i2s(const FloatArray& w_in, const std::string& layout) {
  require_2d(w_in, "w");
  const FloatArray w = aligned(w_in);
  const auto lay = bitk::parse_i2s_layout(layout);
  ByteArray out(i2s_bytes(w.shape(0), w.shape(1)));
  py::gil_scoped_release release;
  bitk::quantize_i2s(w.data(), w.shape(0), w.shape(1), lay, out.mutable_data());
  return out;
}

FloatArray dequantize_i2s(const ByteArray& data, int64_t rows, int64_t cols, const std::string& layout) {
  const auto lay = bitk::parse_i2s_layout(layout);
  require_bytes(data, i2s_bytes(rows, cols), "I2_S");
  FloatArray out({rows, cols});
  py::gil_scoped_release release;
  bitk::dequantize_i2s(data.data(), rows, cols, lay, out.mutable_data());
  return out;
}

template <void (*Quantize)(const float*, int64_t, int64_t, uint8_t*), int64_t BlockBytes>
ByteArray quantize_tq(const FloatArray& w_in) {
  require_2d(w_in, "w");
  const FloatArray w = aligned(w_in);
  ByteArray out(w.size() / 256 * BlockBytes);
  py::gil_scoped_release release;
  Quantize(w.data(), w.shape(0), w.shape(1), out.mutable_data());
  return out;
}

template <void (*Dequantize)(const uint8_t*, int64_t, int64_t, float*), int64_t BlockBytes>
FloatArray dequantize_tq(const ByteArray& data, int64_t rows, int64_t cols) {
  const char* qtype = BlockBytes == 66 ? "TQ2_0" : "TQ1_0";
  require_bytes(data, element_count(rows, cols, qtype) / 256 * BlockBytes, qtype);
  FloatArray out({rows, cols});
  py::gil_scoped_release release;
  Dequantize(data.data(), rows, cols, out.mutable_data());
  return out;
}

// ---------------------------------------------------------------------------- ternary GEMM
// The Python side hands these torch tensors' .numpy() views, so they check everything themselves:
// a numpy array of the exact dtype (else TypeError), then ndim, shape, C-contiguity and alignment
// (else ValueError). Nothing is converted or copied.

std::string shape_str(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) out += (d ? ", " : "") + std::to_string(a.shape(d));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
py::array_t<T> gemm_array(const py::object& obj, const char* name, const char* dtype, py::ssize_t ndim) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         std::string(py::str(py::type::handle_of(obj))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<T>>(a))
    throw py::type_error(std::string(name) + " must have dtype " + dtype + ", got " + std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + " must be aligned for its dtype (a view at an odd byte offset)");
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

void require_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  py::ssize_t d = 0;
  bool same = a.ndim() == py::ssize_t(shape.size());
  for (py::ssize_t want : shape) same = same && a.shape(d++) == want;
  if (same) return;
  std::string expected = "(";
  d = 0;
  for (py::ssize_t want : shape) expected += (d++ ? ", " : "") + std::to_string(want);
  throw py::value_error(std::string(name) + " has shape " + shape_str(a) + "; expected " + expected +
                        (shape.size() == 1 ? ",)" : ")"));
}

// Checks xq [m, k] and packed (the size ternary_gemm_pack gives for n, k); returns (m, k).
std::pair<int64_t, int64_t> gemm_inputs(const py::array_t<int8_t>& xq, const py::array_t<uint8_t>& packed, int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0, got " + std::to_string(n));
  const int64_t m = xq.shape(0), k = xq.shape(1);
  const int64_t expected = bitk::ternary_gemm_packed_size(n, k);
  if (packed.size() != expected)
    throw py::value_error("packed has " + std::to_string(packed.size()) + " bytes; n=" + std::to_string(n) +
                          " and k=" + std::to_string(k) + " (from xq) need " + std::to_string(expected) +
                          " (ternary_gemm_pack of codes [n, k])");
  return {m, k};
}

template <class T>
py::array_t<T> gemm_output(const py::object& out, const char* dtype, int64_t m, int64_t n) {
  if (out.is_none()) return py::array_t<T>({m, n});
  auto a = gemm_array<T>(out, "out", dtype, 2);
  require_shape(a, "out", {m, n});
  if (!a.writeable()) throw py::value_error("out must be writeable");
  return a;
}

int64_t ternary_gemm_packed_size(int64_t n, int64_t k) { return bitk::ternary_gemm_packed_size(n, k); }

ByteArray ternary_gemm_pack(const py::object& codes_obj) {
  const auto codes = gemm_array<int8_t>(codes_obj, "codes", "int8", 2);
  const int64_t n = codes.shape(0), k = codes.shape(1);
  ByteArray packed(bitk::ternary_gemm_packed_size(n, k));
  py::gil_scoped_release release;
  bitk::ternary_gemm_pack(codes.data(), n, k, packed.mutable_data());
  return packed;
}

ByteArray ternary_gemm_pack_transposed(const py::object& codes_obj) {
  const auto codes = gemm_array<int8_t>(codes_obj, "codes", "int8", 2);
  const int64_t n = codes.shape(0), k = codes.shape(1);
  ByteArray packed(bitk::ternary_gemm_packed_size(k, n));
  py::gil_scoped_release release;
  bitk::ternary_gemm_pack_transposed(codes.data(), n, k, packed.mutable_data());
  return packed;
}

FloatArray ternary_gemm_rows(const py::object& xq_obj, const py::object& factor_obj, const py::object& packed_obj,
                             int64_t n, const py::object& out) {
  const auto xq = gemm_array<int8_t>(xq_obj, "xq", "int8", 2);
  const auto factor = gemm_array<float>(factor_obj, "factor", "float32", 1);
  const auto packed = gemm_array<uint8_t>(packed_obj, "packed", "uint8", 1);
  const auto [m, k] = gemm_inputs(xq, packed, n);
  require_shape(factor, "factor", {m});
  auto y = gemm_output<float>(out, "float32", m, n);
  float* data = y.mutable_data();
  py::gil_scoped_release release;
  bitk::ternary_gemm_rows(xq.data(), factor.data(), m, k, packed.data(), n, data);
  return y;
}

// The weights of a GEMM: the panels of ternary_gemm_pack ("packed"), or an I2_S tensor's bytes ("w").
struct PanelWeights {
  static constexpr const char* name = "packed";
  static std::pair<int64_t, int64_t> check(const py::array_t<int8_t>& xq, const py::array_t<uint8_t>& w, int64_t n) {
    return gemm_inputs(xq, w, n);
  }
};

// Checks xq [m, k] and the I2_S bytes of a tensor [n, k] (its codes, with or without the 32-byte
// tail of the scale, which is not read); returns (m, k).
struct I2sWeights {
  static constexpr const char* name = "w";
  static std::pair<int64_t, int64_t> check(const py::array_t<int8_t>& xq, const py::array_t<uint8_t>& w, int64_t n) {
    if (n < 0) throw py::value_error("n must be >= 0, got " + std::to_string(n));
    const int64_t m = xq.shape(0), k = xq.shape(1);
    int64_t expected = 0;
    try {
      expected = bitk::i2s_gemm_weight_bytes(n, k);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    if (w.size() != expected && w.size() != expected + 32)
      throw py::value_error("w has " + std::to_string(w.size()) + " bytes; an I2_S tensor [n=" + std::to_string(n) +
                            ", k=" + std::to_string(k) + "] (k from xq) has " + std::to_string(expected) +
                            " bytes of codes, " + std::to_string(expected + 32) + " with its scale");
    return {m, k};
  }
};

// ternary_gemm, ternary_gemm_divide and i2s_gemm_divide: the same inputs, their epilogues.
using ScaledGemm = void (*)(const int8_t*, const float*, int64_t, int64_t, const uint8_t*, int64_t, float, float*);

template <ScaledGemm Gemm, class Weights = PanelWeights>
FloatArray scaled_gemm(const py::object& xq_obj, const py::object& s_obj, const py::object& packed_obj, int64_t n,
                       float scale, const py::object& out) {
  const auto xq = gemm_array<int8_t>(xq_obj, "xq", "int8", 2);
  const auto s = gemm_array<float>(s_obj, "s", "float32", 1);
  const auto packed = gemm_array<uint8_t>(packed_obj, Weights::name, "uint8", 1);
  const auto [m, k] = Weights::check(xq, packed, n);
  require_shape(s, "s", {m});
  auto y = gemm_output<float>(out, "float32", m, n);
  float* data = y.mutable_data();
  py::gil_scoped_release release;
  Gemm(xq.data(), s.data(), m, k, packed.data(), n, scale, data);
  return y;
}

py::tuple quantize_activations(const py::object& x_obj, const std::string& mode, const py::object& out) {
  const auto x = gemm_array<float>(x_obj, "x", "float32", 2);
  bitk::ActivationScale scale_mode;
  if (mode == "train")
    scale_mode = bitk::ActivationScale::kTrain;
  else if (mode == "bitnet")
    scale_mode = bitk::ActivationScale::kBitnet;
  else
    throw py::value_error("mode must be 'train' or 'bitnet', got '" + mode + "'");
  const int64_t m = x.shape(0), k = x.shape(1);
  py::array_t<int8_t> xq;
  if (out.is_none()) {
    xq = py::array_t<int8_t>({m, k});
  } else {
    xq = gemm_array<int8_t>(out, "out", "int8", 2);
    require_shape(xq, "out", {m, k});
    if (!xq.writeable()) throw py::value_error("out must be writeable");
  }
  FloatArray s(m);
  int8_t* q = xq.mutable_data();
  float* sd = s.mutable_data();
  {
    py::gil_scoped_release release;
    bitk::quantize_activations(x.data(), m, k, scale_mode, q, sd);
  }
  return py::make_tuple(xq, s);
}

py::array_t<uint16_t> int8_to_bf16(const py::object& src_obj) {
  const auto src = gemm_array<int8_t>(src_obj, "src", "int8", 2);
  py::array_t<uint16_t> out({src.shape(0), src.shape(1)});
  uint16_t* data = out.mutable_data();
  py::gil_scoped_release release;
  bitk::int8_to_bf16(src.data(), src.size(), data);
  return out;
}

py::array_t<uint16_t> float_to_bf16(const py::object& src_obj, const py::object& divisor_obj) {
  const auto src = gemm_array<float>(src_obj, "src", "float32", 2);
  const int64_t rows = src.shape(0), cols = src.shape(1);
  py::array_t<float> divisor;
  if (!divisor_obj.is_none()) {
    divisor = gemm_array<float>(divisor_obj, "divisor", "float32", 1);
    require_shape(divisor, "divisor", {rows});
  }
  const float* d = divisor_obj.is_none() ? nullptr : divisor.data();
  py::array_t<uint16_t> out({rows, cols});
  uint16_t* data = out.mutable_data();
  py::gil_scoped_release release;
  bitk::float_to_bf16(src.data(), d, rows, cols, data);
  return out;
}

FloatArray bf16_to_float(const py::object& src_obj, const py::object& scale) {
  const auto src = gemm_array<uint16_t>(src_obj, "src", "uint16", 2);
  FloatArray out({src.shape(0), src.shape(1)});
  const bool scale_it = !scale.is_none();
  const float factor = scale_it ? scale.cast<float>() : 1.0f;
  float* data = out.mutable_data();
  py::gil_scoped_release release;
  bitk::bf16_to_float(src.data(), src.size(), scale_it, factor, data);
  return out;
}

py::tuple quantize_gradient_rows(const py::object& g_obj) {
  const auto g = gemm_array<float>(g_obj, "g", "float32", 2);
  const int64_t rows = g.shape(0), cols = g.shape(1);
  py::array_t<int8_t> q({rows, cols});
  FloatArray step(rows);
  int8_t* qd = q.mutable_data();
  float* sd = step.mutable_data();
  {
    py::gil_scoped_release release;
    bitk::quantize_gradient_rows(g.data(), rows, cols, qd, sd);
  }
  return py::make_tuple(q, step);
}

py::tuple quantize_gradient_columns(const py::object& src_obj, const py::object& factor_obj) {
  const auto src = gemm_array<float>(src_obj, "src", "float32", 2);
  const int64_t rows = src.shape(0), cols = src.shape(1);
  const auto factor = gemm_array<float>(factor_obj, "factor", "float32", 1);
  require_shape(factor, "factor", {rows});
  py::array_t<int8_t> q({rows, cols});
  FloatArray step(cols);
  int8_t* qd = q.mutable_data();
  float* sd = step.mutable_data();
  {
    py::gil_scoped_release release;
    bitk::quantize_gradient_columns(src.data(), factor.data(), rows, cols, qd, sd);
  }
  return py::make_tuple(q, step);
}

// RMSNorm's elementwise passes (rms_norm.h): x, g [rows, cols], rms [rows] (and coef), w [cols].
struct NormArrays {
  py::array_t<float> x, rms, w;
  int64_t rows, cols;
};

NormArrays norm_arrays(const py::object& x_obj, const py::object& rms_obj, const py::object& w_obj) {
  NormArrays a{gemm_array<float>(x_obj, "x", "float32", 2), {}, {}, 0, 0};
  a.rows = a.x.shape(0);
  a.cols = a.x.shape(1);
  a.rms = gemm_array<float>(rms_obj, "rms", "float32", 1);
  require_shape(a.rms, "rms", {a.rows});
  a.w = gemm_array<float>(w_obj, "w", "float32", 1);
  require_shape(a.w, "w", {a.cols});
  return a;
}

py::array_t<float> gradient_like(const py::object& g_obj, const NormArrays& a) {
  auto g = gemm_array<float>(g_obj, "g", "float32", 2);
  require_shape(g, "g", {a.rows, a.cols});
  return g;
}

FloatArray rms_norm_apply(const py::object& x_obj, const py::object& rms_obj, const py::object& w_obj) {
  const NormArrays a = norm_arrays(x_obj, rms_obj, w_obj);
  FloatArray y({a.rows, a.cols});
  float* yd = y.mutable_data();
  py::gil_scoped_release release;
  bitk::rms_norm_apply(a.x.data(), a.rms.data(), a.w.data(), a.rows, a.cols, yd);
  return y;
}

py::tuple rms_norm_backward_terms(const py::object& g_obj, const py::object& x_obj, const py::object& rms_obj,
                                  const py::object& w_obj, bool want_t, bool want_p) {
  const NormArrays a = norm_arrays(x_obj, rms_obj, w_obj);
  const auto g = gradient_like(g_obj, a);
  FloatArray t(want_t ? std::vector<py::ssize_t>{a.rows, a.cols} : std::vector<py::ssize_t>{0});
  FloatArray p(want_p ? std::vector<py::ssize_t>{a.rows, a.cols} : std::vector<py::ssize_t>{0});
  float* td = want_t ? t.mutable_data() : nullptr;
  float* pd = want_p ? p.mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    bitk::rms_norm_backward_terms(g.data(), a.x.data(), a.rms.data(), a.w.data(), a.rows, a.cols, td, pd);
  }
  return py::make_tuple(want_t ? py::object(t) : py::object(py::none()),
                        want_p ? py::object(p) : py::object(py::none()));
}

py::tuple rms_norm_backward_input(const py::object& g_obj, const py::object& x_obj, const py::object& rms_obj,
                                  const py::object& w_obj, const py::object& coef_obj) {
  const NormArrays a = norm_arrays(x_obj, rms_obj, w_obj);
  const auto g = gradient_like(g_obj, a);
  const auto coef = gemm_array<float>(coef_obj, "coef", "float32", 1);
  require_shape(coef, "coef", {a.rows});
  FloatArray gd({a.rows, a.cols}), gs({a.rows, a.cols});
  float* dd = gd.mutable_data();
  float* sd = gs.mutable_data();
  {
    py::gil_scoped_release release;
    bitk::rms_norm_backward_input(g.data(), a.x.data(), a.rms.data(), a.w.data(), coef.data(), a.rows, a.cols, dd, sd);
  }
  return py::make_tuple(gd, gs);
}

// The gated ReLU^2 (relu2_gate.h): gate, up and gh float32 [r, c] of one shape.
py::array_t<float> gate_operand(const py::object& obj, const char* name, const py::array_t<float>* like) {
  auto a = gemm_array<float>(obj, name, "float32", 2);
  if (like != nullptr) require_shape(a, name, {like->shape(0), like->shape(1)});
  return a;
}

FloatArray relu2_gate(const py::object& gate_obj, const py::object& up_obj) {
  const auto gate = gate_operand(gate_obj, "gate", nullptr);
  const auto up = gate_operand(up_obj, "up", &gate);
  FloatArray h({gate.shape(0), gate.shape(1)});
  float* hd = h.mutable_data();
  py::gil_scoped_release release;
  bitk::relu2_gate(gate.data(), up.data(), gate.size(), hd);
  return h;
}

py::tuple relu2_gate_backward(const py::object& gate_obj, const py::object& up_obj, const py::object& gh_obj,
                              bool want_gate, bool want_up) {
  const auto gate = gate_operand(gate_obj, "gate", nullptr);
  const auto up = gate_operand(up_obj, "up", &gate);
  const auto gh = gate_operand(gh_obj, "gh", &gate);
  const auto shape = [&](bool want) {
    return want ? std::vector<py::ssize_t>{gate.shape(0), gate.shape(1)} : std::vector<py::ssize_t>{0};
  };
  FloatArray gg(shape(want_gate)), gu(shape(want_up));
  float* gd = want_gate ? gg.mutable_data() : nullptr;
  float* ud = want_up ? gu.mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    bitk::relu2_gate_backward(gate.data(), up.data(), gh.data(), gate.size(), gd, ud);
  }
  return py::make_tuple(want_gate ? py::object(gg) : py::object(py::none()),
                        want_up ? py::object(gu) : py::object(py::none()));
}

void dequantize_int32_rows(const py::object& acc_obj, const py::object& step_obj) {
  auto acc = gemm_array<int32_t>(acc_obj, "acc", "int32", 2);
  if (!acc.writeable()) throw py::value_error("acc must be writeable");
  const int64_t rows = acc.shape(0), cols = acc.shape(1);
  const auto step = gemm_array<float>(step_obj, "step", "float32", 1);
  require_shape(step, "step", {rows});
  int32_t* data = acc.mutable_data();
  py::gil_scoped_release release;
  bitk::dequantize_int32_rows(data, step.data(), rows, cols);
}

void set_cpu_kernel(const std::string& name) {
  try {
    bitk::set_cpu_kernel(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// ternary_gemm_int32 and i2s_gemm_int32.
using Int32Gemm = void (*)(const int8_t*, int64_t, int64_t, const uint8_t*, int64_t, int32_t*);

template <Int32Gemm Gemm, class Weights = PanelWeights>
py::array_t<int32_t> int32_gemm(const py::object& xq_obj, const py::object& packed_obj, int64_t n,
                                const py::object& out) {
  const auto xq = gemm_array<int8_t>(xq_obj, "xq", "int8", 2);
  const auto packed = gemm_array<uint8_t>(packed_obj, Weights::name, "uint8", 1);
  const auto [m, k] = Weights::check(xq, packed, n);
  auto acc = gemm_output<int32_t>(out, "int32", m, n);
  int32_t* data = acc.mutable_data();
  py::gil_scoped_release release;
  Gemm(xq.data(), m, k, packed.data(), n, data);
  return acc;
}

FloatArray ternary_scale(const py::object& codes_obj, float gamma) {
  const auto codes = gemm_array<int8_t>(codes_obj, "codes", "int8", 2);
  FloatArray out({codes.shape(0), codes.shape(1)});
  float* data = out.mutable_data();
  py::gil_scoped_release release;
  bitk::ternary_scale(codes.data(), codes.size(), gamma, data);
  return out;
}

}  // namespace

PYBIND11_MODULE(_codecs, m) {
  m.doc() = "bitk's C++ ternary codecs (I2_S, TQ2_0, TQ1_0; see bitk.formats) and exact ternary matmul.";
  m.def("abs_sum", &abs_sum, py::arg("w"));
  m.def("ternarize", &ternarize, py::arg("w"));
  m.def("ternarize_bf16", &ternarize_bf16, py::arg("bits"));
  m.def("pack_i2s", &pack_i2s, py::arg("codes"), py::arg("scale"), py::arg("layout"));
  m.def("unpack_i2s", &unpack_i2s, py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("layout"));
  m.def("quantize_i2s", &quantize_i2s, py::arg("w"), py::arg("layout"));
  m.def("dequantize_i2s", &dequantize_i2s, py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("layout"));
  m.def("quantize_tq2_0", &quantize_tq<bitk::quantize_tq2_0, 66>, py::arg("w"));
  m.def("dequantize_tq2_0", &dequantize_tq<bitk::dequantize_tq2_0, 66>, py::arg("data"), py::arg("rows"),
        py::arg("cols"));
  m.def("quantize_tq1_0", &quantize_tq<bitk::quantize_tq1_0, 54>, py::arg("w"));
  m.def("dequantize_tq1_0", &dequantize_tq<bitk::dequantize_tq1_0, 54>, py::arg("data"), py::arg("rows"),
        py::arg("cols"));
  m.def("ternary_gemm_packed_size", &ternary_gemm_packed_size, py::arg("n"), py::arg("k"));
  m.def("ternary_gemm_pack", &ternary_gemm_pack, py::arg("codes"),
        "int8 codes [n, k] in {-1, 0, 1} -> the uint8 packed weights of ternary_gemm (about n k / 4 bytes).");
  m.def("ternary_gemm", &scaled_gemm<bitk::ternary_gemm>, py::arg("xq"), py::arg("s"), py::arg("packed"), py::arg("n"),
        py::arg("gamma"), py::arg("out") = py::none(),
        "y[m, n] = float32(sum_k xq[m, k] codes[n, k]) * (gamma / s[m]) as float32 [m, n], exactly; gamma is\n"
        "rounded to float32. xq int8 [m, k], s float32 [m], packed from ternary_gemm_pack(codes [n, k]);\n"
        "out (optional) a float32 [m, n] array to write into (not overlapping the inputs).");
  m.def("ternary_gemm_pack_transposed", &ternary_gemm_pack_transposed, py::arg("codes"),
        "int8 codes [n, k] in {-1, 0, 1} -> the packed weights of their transpose, as\n"
        "ternary_gemm_pack(codes.T.copy()) gives them (for products with codes^T, n = k).");
  m.def("ternary_gemm_rows", &ternary_gemm_rows, py::arg("xq"), py::arg("factor"), py::arg("packed"), py::arg("n"),
        py::arg("out") = py::none(),
        "y[m, n] = float32(sum_k xq[m, k] codes[n, k]) * factor[m] as float32 [m, n], exactly (one float32\n"
        "multiply per value); factor float32 [m].");
  m.def("ternary_gemm_int32", &int32_gemm<bitk::ternary_gemm_int32>, py::arg("xq"), py::arg("packed"),
        py::arg("n"), py::arg("out") = py::none(), "acc[m, n] = sum_k xq[m, k] codes[n, k] as int32 [m, n].");
  m.def("ternary_gemm_divide", &scaled_gemm<bitk::ternary_gemm_divide>, py::arg("xq"), py::arg("s"),
        py::arg("packed"), py::arg("n"), py::arg("scale"), py::arg("out") = py::none(),
        "y[m, n] = (float32(sum_k xq[m, k] codes[n, k]) / s[m]) * scale (bitnet.cpp's I2_S epilogue), exactly.");
  m.def("i2s_gemm_divide", &scaled_gemm<bitk::i2s_gemm_divide, I2sWeights>, py::arg("xq"), py::arg("s"),
        py::arg("w"), py::arg("n"), py::arg("scale"), py::arg("out") = py::none(),
        "y[m, n] = (float32(sum_k xq[m, k] codes[n, k]) / s[m]) * scale (bitnet.cpp's I2_S forward), exactly,\n"
        "straight from w, the bytes of an I2_S tensor [n, k] in the x86 layout (k a multiple of 128; with or\n"
        "without its 32-byte tail, which is not read).");
  m.def("i2s_gemm_int32", &int32_gemm<bitk::i2s_gemm_int32, I2sWeights>, py::arg("xq"), py::arg("w"),
        py::arg("n"), py::arg("out") = py::none(),
        "acc[m, n] = sum_k xq[m, k] codes[n, k] as int32 [m, n], from the bytes of an I2_S tensor [n, k].");
  m.def("quantize_activations", &quantize_activations, py::arg("x"), py::arg("mode") = "train",
        py::arg("out") = py::none(),
        "Per-row absmax int8 quantization of float32 x [m, k] in one pass -> (xq int8 [m, k], s float32 [m]):\n"
        "xq = clamp(round_half_even(x * s), -128, 127); mode 'train': s = 127 / max(max|x|, 1e-5) in float32\n"
        "(bitk.numerics.quantize_activations), 'bitnet': the quotient in float64 (quantize_activations_bitnet_cpp).");
  m.def("int8_to_bf16", &int8_to_bf16, py::arg("src"),
        "int8 [r, c] -> the bfloat16 bits (uint16 [r, c]) of its values, exactly.");
  m.def("float_to_bf16", &float_to_bf16, py::arg("src"), py::arg("divisor") = py::none(),
        "float32 [r, c] -> bfloat16 bits (uint16) of src / divisor[r] (or src), rounded to nearest even\n"
        "as torch's .to(torch.bfloat16).");
  m.def("bf16_to_float", &bf16_to_float, py::arg("src"), py::arg("scale") = py::none(),
        "bfloat16 bits (uint16 [r, c]) -> float32 [r, c], exactly; times scale (float32) if given.");
  m.def("quantize_gradient_rows", &quantize_gradient_rows, py::arg("g"),
        "Per-row absmax int8 quantization of a float32 gradient g [r, c] -> (q int8 [r, c], step float32 [r]):\n"
        "scale = 127 / max|g| (no floor; 0 where not finite), q = round_half_even(g * scale), step = max|g| / 127\n"
        "(0 with scale 0; NaN for a row holding a NaN or infinity).");
  m.def("quantize_gradient_columns", &quantize_gradient_columns, py::arg("src"), py::arg("factor"),
        "The same per column of h = src * factor[r] (float32 [r, c] times float32 [r]) -> (q int8 [r, c],\n"
        "step float32 [c]).");
  m.def("dequantize_int32_rows", &dequantize_int32_rows, py::arg("acc"), py::arg("step"),
        "In place: int32 acc [r, c] becomes the float32 float(acc) * step[r] in the same bytes; view acc as\n"
        "float32 afterwards.");
  m.def("rms_norm_apply", &rms_norm_apply, py::arg("x"), py::arg("rms"), py::arg("w"),
        "RMSNorm's scaling: float32 x [r, c], rms [r], w [c] -> y = (x / rms[r]) * w[c] [r, c].");
  m.def("rms_norm_backward_terms", &rms_norm_backward_terms, py::arg("g"), py::arg("x"), py::arg("rms"),
        py::arg("w"), py::arg("want_t") = true, py::arg("want_p") = true,
        "The terms of RMSNorm's backward sums for the output gradient g [r, c] -> (t, p) [r, c] (None where not\n"
        "wanted): t = -(g * w) * ((x / rms) / rms) (summed over c: rms's gradient), p = g * (x / rms) (summed\n"
        "over r: w's gradient).");
  m.def("rms_norm_backward_input", &rms_norm_backward_input, py::arg("g"), py::arg("x"), py::arg("rms"),
        py::arg("w"), py::arg("coef"),
        "x's two gradient terms of RMSNorm -> (from the division (g * w) / rms[r], from the square coef[r] * (2 * x))\n"
        "[r, c], coef [r] being mean(x^2)'s gradient; autograd adds them to x's gradient in that order.");
  m.def("relu2_gate", &relu2_gate, py::arg("gate"), py::arg("up"),
        "BitNet's gated ReLU^2: float32 gate, up [r, c] -> square(relu(gate)) * up [r, c], torch's bits.");
  m.def("relu2_gate_backward", &relu2_gate_backward, py::arg("gate"), py::arg("up"), py::arg("gh"),
        py::arg("want_gate") = true, py::arg("want_up") = true,
        "For h's gradient gh [r, c] -> (gate's gradient, up's gradient) [r, c] (None where not wanted), autograd's\n"
        "bits: ((gh * up) * (2 * r), 0 where r = relu(gate) <= 0) and gh * (r * r).");
  m.def("cpu_kernels", &bitk::supported_cpu_kernels,
        "The kernel variants this CPU can run, baseline first: 'scalar', 'avx2', 'avx_vnni', 'avx512_vnni'.");
  m.def("cpu_kernel", [] { return std::string(bitk::cpu_kernel_name(bitk::cpu_kernel())); },
        "The variant in use (BITK_CPU_KERNEL or set_cpu_kernel, else the best this CPU supports).");
  m.def("set_cpu_kernel", &set_cpu_kernel, py::arg("name"),
        "Run every later call with the variant `name` ('auto': BITK_CPU_KERNEL, else the best); ValueError\n"
        "for a name this CPU cannot run.");
  m.def("set_num_threads", [](int count) { bitk::set_num_threads(count); }, py::arg("count"),
        "Threads of the later calls (0: BITK_NUM_THREADS, else the hardware's count).");
  m.def("num_threads", [] { return bitk::max_threads(); }, "The threads the next call may use.");
  m.def("ternary_scale", &ternary_scale, py::arg("codes"), py::arg("gamma"),
        "int8 codes [n, k] -> float32 codes * gamma [n, k] (exact; gamma is rounded to float32).");
  m.def("float_to_half", &bitk::float_to_half, py::arg("f"));
  m.def("half_to_float", &bitk::half_to_float, py::arg("h"));
}
