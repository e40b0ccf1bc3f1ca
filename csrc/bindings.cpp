// pybind11 bindings of the ternary codecs as `bitk._codecs`: the same functions, names and
// argument order as python/bitk/formats/reference.py, over numpy buffers (no libtorch). Inputs are
// validated for dtype/shape by bitk.formats; these wrappers only check what would be unsafe to
// trust. The GIL is released while the codecs run; std::invalid_argument becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "ternary_codecs.h"

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

int64_t i2s_bytes(int64_t rows, int64_t cols) { return rows * cols / 4 + 32; }

py::tuple ternarize(const FloatArray& w) {
  require_2d(w, "w");
  Int8Array codes({w.shape(0), w.shape(1)});
  float gamma;
  {
    py::gil_scoped_release release;
    gamma = bitk::ternarize(w.data(), w.shape(0), w.shape(1), codes.mutable_data());
  }
  return py::make_tuple(codes, double(gamma));
}

double abs_sum(const FloatArray& w) {
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

ByteArray quantize_i2s(const FloatArray& w, const std::string& layout) {
  require_2d(w, "w");
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
ByteArray quantize_tq(const FloatArray& w) {
  require_2d(w, "w");
  ByteArray out(w.size() / 256 * BlockBytes);
  py::gil_scoped_release release;
  Quantize(w.data(), w.shape(0), w.shape(1), out.mutable_data());
  return out;
}

template <void (*Dequantize)(const uint8_t*, int64_t, int64_t, float*), int64_t BlockBytes>
FloatArray dequantize_tq(const ByteArray& data, int64_t rows, int64_t cols) {
  require_bytes(data, rows * cols / 256 * BlockBytes, BlockBytes == 66 ? "TQ2_0" : "TQ1_0");
  FloatArray out({rows, cols});
  py::gil_scoped_release release;
  Dequantize(data.data(), rows, cols, out.mutable_data());
  return out;
}

}  // namespace

PYBIND11_MODULE(_codecs, m) {
  m.doc() = "bitk's C++ ternary codecs (I2_S, TQ2_0, TQ1_0); see bitk.formats.";
  m.def("abs_sum", &abs_sum, py::arg("w"));
  m.def("ternarize", &ternarize, py::arg("w"));
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
  m.def("float_to_half", &bitk::float_to_half, py::arg("f"));
  m.def("half_to_float", &bitk::half_to_float, py::arg("h"));
}
