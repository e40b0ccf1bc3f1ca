// Implementation of ternary_codecs.h. Byte layouts per docs/formats.md; the numpy module
// python/bitk/formats/reference.py defines the results and the tests compare byte for byte.
// Hot loops are written as plain fixed-trip loops over arrays so -O3 vectorizes them; the parallel
// split (parallel.h) never changes a result, only who computes which block.
#include "ternary_codecs.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "parallel.h"

// Compiled once per instruction set (CMakeLists.txt); cpu_dispatch.cpp defines the public
// bitk:: functions, which call the build of the instruction set the CPU runs.
namespace bitk {
namespace BITK_ISA {
namespace {

constexpr int64_t kQK = 256;             // TQ block
constexpr int64_t kTQ2Bytes = 66;        // qs[64], d
constexpr int64_t kTQ1Bytes = 54;        // qs[48], qh[4], d
constexpr int64_t kI2STail = 32;
constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

std::string fmt_float(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string fmt_pos(int64_t flat, int64_t cols) {
  return "(" + std::to_string(flat / cols) + ", " + std::to_string(flat % cols) + ")";
}

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void atomic_min(std::atomic<int64_t>& target, int64_t v) {
  int64_t cur = target.load(std::memory_order_relaxed);
  while (v < cur && !target.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

bool is_finite(float x) { return std::fabs(x) <= std::numeric_limits<float>::max(); }

// A weight as float32: float32 as it is, bfloat16 (its 16 bits) as float32's high half (exact).
inline float as_float(float x) { return x; }
inline float as_float(uint16_t bf16) {
  const uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
int64_t first_nonfinite(const T* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!is_finite(as_float(w[i]))) return i;
  return kNone;
}

template <typename T>
[[noreturn]] void fail_nonfinite(const char* what, const T* w, int64_t n, int64_t cols) {
  fail(std::string(what) + ": input contains NaN or Inf (first at " + fmt_pos(first_nonfinite(w, n), cols) + ")");
}

// max|x| over x[0..len) (max is exact in any order); sets *nonfinite if a NaN or Inf is present.
// GCC does not vectorize a float max reduction without -ffast-math, which bitk cannot use (results
// must be bit-exact), so the hot loop is written with GCC/Clang vector extensions.
#if defined(__GNUC__)
#if defined(__AVX__)
constexpr int kVecFloats = 8;
#else
constexpr int kVecFloats = 4;
#endif
using FloatVec = float __attribute__((vector_size(4 * kVecFloats)));
using IntVec = int32_t __attribute__((vector_size(4 * kVecFloats)));

float abs_max(const float* __restrict x, int64_t len, bool* nonfinite) {
  const FloatVec largest = FloatVec{} + std::numeric_limits<float>::max();
  const IntVec abs_mask = IntVec{} + 0x7fffffff;
  FloatVec m0 = {}, m1 = {};
  IntVec finite = IntVec{} - 1;
  const int64_t vector_end = len - len % (2 * kVecFloats);
  int64_t i = 0;
  for (; i < vector_end; i += 2 * kVecFloats) {
    FloatVec a0, a1;
    std::memcpy(&a0, x + i, sizeof a0);
    std::memcpy(&a1, x + i + kVecFloats, sizeof a1);
    a0 = FloatVec(IntVec(a0) & abs_mask);
    a1 = FloatVec(IntVec(a1) & abs_mask);
    finite &= (a0 <= largest) & (a1 <= largest);  // NaN fails every comparison
    m0 = a0 > m0 ? a0 : m0;
    m1 = a1 > m1 ? a1 : m1;
  }
  float result = 0.0f;
  bool bad = false;
  for (int l = 0; l < kVecFloats; ++l) {
    result = m0[l] > result ? m0[l] : result;
    result = m1[l] > result ? m1[l] : result;
    bad |= finite[l] == 0;
  }
#else
float abs_max(const float* __restrict x, int64_t len, bool* nonfinite) {
  float result = 0.0f;
  bool bad = false;
  int64_t i = 0;
#endif
  for (; i < len; ++i) {
    const float a = std::fabs(x[i]);
    bad |= !(a <= std::numeric_limits<float>::max());
    result = a > result ? a : result;
  }
  *nonfinite = bad;
  return result;
}

// ---------------------------------------------------------------------------- abs_sum

constexpr int kLanes = int(kAbsSumLanes);
constexpr int64_t kChunkRows = kAbsSumChunk / kAbsSumLanes;  // 4096 rows of 16 lanes
constexpr int kChunkLevels = 12;                               // log2(kChunkRows)
static_assert(int64_t(1) << kChunkLevels == kChunkRows, "chunk rows must be a power of two");

// One full chunk of the canonical abs_sum order (see the header), streamed: a binary counter of
// partial row sums pairs rows (0,1), (2,3), then (01,23), ... exactly like the numpy reference's
// x[0::2] + x[1::2] steps, while reading the chunk front to back.
template <typename T>
double full_chunk_abs_sum(const T* __restrict x) {
  double stack[kChunkLevels + 1][kLanes];
  for (int64_t r = 0; r < kChunkRows; ++r) {
    double v[kLanes];
    for (int l = 0; l < kLanes; ++l) v[l] = std::fabs(double(as_float(x[r * kLanes + l])));
    int level = 0;
    for (int64_t bits = r; bits & 1; bits >>= 1, ++level)
      for (int l = 0; l < kLanes; ++l) v[l] = stack[level][l] + v[l];
    for (int l = 0; l < kLanes; ++l) stack[level][l] = v[l];
  }
  double* v = stack[kChunkLevels];
  for (int width = kLanes; width > 1; width /= 2)
    for (int i = 0; i < width / 2; ++i) v[i] = v[2 * i] + v[2 * i + 1];
  return v[0];
}

template <typename T>
double chunk_abs_sum(const T* __restrict x, int64_t len, float* __restrict staging) {
  if (len == kAbsSumChunk) return full_chunk_abs_sum(x);
  std::fill(staging, staging + kAbsSumChunk, 0.0f);  // zero padding never changes the sum
  for (int64_t i = 0; i < len; ++i) staging[i] = as_float(x[i]);
  return full_chunk_abs_sum(staging);
}

template <typename T>
double abs_sum_of(const T* w, int64_t n) {
  const int64_t chunks = (n + kAbsSumChunk - 1) / kAbsSumChunk;
  int64_t padded = 1;
  while (padded < chunks) padded *= 2;
  std::vector<double> totals(padded, 0.0);
  parallel_for(chunks, kAbsSumChunk, [&](int64_t begin, int64_t end) {
    std::vector<float> staging(kAbsSumChunk);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t len = std::min(kAbsSumChunk, n - c * kAbsSumChunk);
      totals[c] = chunk_abs_sum(w + c * kAbsSumChunk, len, staging.data());
    }
  });
  for (int64_t width = padded; width > 1; width /= 2)
    for (int64_t i = 0; i < width / 2; ++i) totals[i] = totals[2 * i] + totals[2 * i + 1];
  return totals[0];
}

// gamma from the canonical |w| sum; NaN/Inf anywhere make the sum non-finite.
template <typename T>
float absmean_scale(const char* what, const T* w, int64_t n, int64_t cols) {
  const double total = abs_sum_of(w, n);
  if (!std::isfinite(total)) fail_nonfinite(what, w, n, cols);
  return std::max(float(total / double(n)), float(1e-5));
}

// clamp(round_half_even(x / gamma), -1, 1) == (q > 0.5) - (q < -0.5): a tie at +-0.5 rounds to 0.
inline int ternary_code(float x, float gamma) {
  const float q = x / gamma;
  return int(q > 0.5f) - int(q < -0.5f);
}

template <typename T>
void ternary_codes(const T* __restrict w, int8_t* __restrict codes, int64_t n, float gamma) {
  for (int64_t i = 0; i < n; ++i) codes[i] = int8_t(ternary_code(as_float(w[i]), gamma));
}

template <typename T>
float ternarize_of(const T* w, int64_t rows, int64_t cols, int8_t* codes) {
  const int64_t n = rows * cols;
  const float gamma = absmean_scale("ternarize", w, n, cols);
  parallel_for(n, 1, [&](int64_t begin, int64_t end) { ternary_codes(w + begin, codes + begin, end - begin, gamma); });
  return gamma;
}

}  // namespace

double abs_sum(const float* w, int64_t n) { return abs_sum_of(w, n); }

float ternarize(const float* w, int64_t rows, int64_t cols, int8_t* codes) { return ternarize_of(w, rows, cols, codes); }

float ternarize_bf16(const uint16_t* w, int64_t rows, int64_t cols, int8_t* codes) {
  return ternarize_of(w, rows, cols, codes);
}

// ---------------------------------------------------------------------------- I2_S

I2SLayout parse_i2s_layout(const std::string& name) {
  if (name == "x86") return I2SLayout::kX86;
  if (name == "arm") return I2SLayout::kArm;
  if (name == "x86-1x4") return I2SLayout::kX86_1x4;
  fail("unknown I2_S layout '" + name + "'; expected one of x86, arm, x86-1x4");
}

namespace {

// The I2_S layouts all put four values into one byte, first value in bits 7..6. A "unit" is a run
// of `width` output bytes whose four source values lie `stride` apart:
//   x86: a block of 128 values, width 32, stride 32     arm: 64 values, width 16, stride 16
//   x86-1x4: a group of four rows, width cols, stride cols.
struct I2SGeometry {
  int64_t units, width, stride;
};

I2SGeometry i2s_geometry(int64_t rows, int64_t cols, I2SLayout layout) {
  // The public Python API checks shapes with friendlier messages; this guards direct callers.
  if (rows <= 0 || cols <= 0 || cols % 128 != 0 || (layout == I2SLayout::kX86_1x4 && rows % 4 != 0))
    fail("I2_S needs a non-empty [rows, cols] matrix with cols % 128 == 0 (and rows % 4 == 0 for x86-1x4); got [" +
         std::to_string(rows) + ", " + std::to_string(cols) + "]");
  switch (layout) {
    case I2SLayout::kX86:
      return {rows * cols / 128, 32, 32};
    case I2SLayout::kArm:
      return {rows * cols / 64, 16, 16};
    case I2SLayout::kX86_1x4:
      return {rows / 4, cols, cols};
  }
  return {0, 0, 0};
}

void write_i2s_tail(uint8_t* tail, float scale) {
  for (int k = 0; k < kI2STail / 4; ++k) std::memcpy(tail + 4 * k, &scale, 4);
}

// Runs `kernel(src_offset, dst_offset)` over every unit of the layout: source values of a unit
// start at u * 4 * width, its bytes at u * width.
template <typename Kernel>
void for_each_i2s_unit(const I2SGeometry& g, Kernel kernel) {
  parallel_for(g.units, 4 * g.width, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) kernel(u * 4 * g.width, u * g.width);
  });
}

inline uint8_t byte4(int c0, int c1, int c2, int c3) { return uint8_t(c0 << 6 | c1 << 4 | c2 << 2 | c3); }

// Returns true if a code is outside {-1, 0, 1}.
bool pack_unit(const int8_t* __restrict c, uint8_t* __restrict o, int64_t width, int64_t stride) {
  uint8_t bad = 0;
  for (int64_t j = 0; j < width; ++j) {
    const uint8_t c0 = uint8_t(c[j] + 1), c1 = uint8_t(c[j + stride] + 1);
    const uint8_t c2 = uint8_t(c[j + 2 * stride] + 1), c3 = uint8_t(c[j + 3 * stride] + 1);
    bad |= uint8_t(c0 > 2) | uint8_t(c1 > 2) | uint8_t(c2 > 2) | uint8_t(c3 > 2);
    o[j] = byte4(c0, c1, c2, c3);
  }
  return bad != 0;
}

inline int sign_code(float v) { return int(v > 0.0f) - int(v < 0.0f) + 1; }

// Packs the signs of an already-ternary unit; returns true if a value is neither 0 nor +-s.
bool sign_pack_unit(const float* __restrict x, uint8_t* __restrict o, int64_t width, int64_t stride, float s) {
  uint8_t bad = 0;
  for (int64_t j = 0; j < width; ++j) {
    const float v0 = x[j], v1 = x[j + stride], v2 = x[j + 2 * stride], v3 = x[j + 3 * stride];
    const float a0 = std::fabs(v0), a1 = std::fabs(v1), a2 = std::fabs(v2), a3 = std::fabs(v3);
    bad |= uint8_t((a0 != 0.0f) & (a0 != s)) | uint8_t((a1 != 0.0f) & (a1 != s)) |
           uint8_t((a2 != 0.0f) & (a2 != s)) | uint8_t((a3 != 0.0f) & (a3 != s));
    o[j] = byte4(sign_code(v0), sign_code(v1), sign_code(v2), sign_code(v3));
  }
  return bad != 0;
}

// Decodes one unit to T (int8 codes or float values code * scale); returns true if code 3 occurs.
template <typename T>
bool unpack_unit(const uint8_t* __restrict d, T* __restrict o, int64_t width, int64_t stride, float scale) {
  uint8_t any3 = 0;
  for (int64_t j = 0; j < width; ++j) {
    const uint8_t b = d[j];
    any3 |= uint8_t((b & 0xc0) == 0xc0) | uint8_t((b & 0x30) == 0x30) | uint8_t((b & 0x0c) == 0x0c) | uint8_t((b & 3) == 3);
    for (int k = 0; k < 4; ++k) {
      const int c = int((b >> (6 - 2 * k)) & 3) - 1;
      if constexpr (std::is_same_v<T, float>)
        o[j + k * stride] = float(c) * scale;
      else
        o[j + k * stride] = T(c);
    }
  }
  return any3 != 0;
}

int64_t first_code3_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout) {
  const I2SGeometry g = i2s_geometry(rows, cols, layout);
  for (int64_t u = 0; u < g.units; ++u)
    for (int k = 0; k < 4; ++k)
      for (int64_t j = 0; j < g.width; ++j)
        if (((data[u * g.width + j] >> (6 - 2 * k)) & 3) == 3) return u * 4 * g.width + k * g.stride + j;
  return kNone;
}

template <typename T>
float decode_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, T* out, bool scaled) {
  const I2SGeometry g = i2s_geometry(rows, cols, layout);
  float scale;
  std::memcpy(&scale, data + rows * cols / 4, 4);
  if (!is_finite(scale)) fail("I2_S scale must be finite; the I2_S tail holds " + fmt_float(scale));
  std::atomic<bool> any3{false};
  const float factor = scaled ? scale : 1.0f;
  for_each_i2s_unit(g, [&](int64_t src, int64_t dst) {
    if (unpack_unit(data + dst, out + src, g.width, g.stride, factor)) any3 = true;
  });
  if (any3)
    fail("I2_S data holds the invalid code 3 (first at value " + fmt_pos(first_code3_i2s(data, rows, cols, layout), cols) +
         "); the tensor is corrupt or not I2_S");
  return scale;
}

}  // namespace

void pack_i2s(const int8_t* codes, int64_t rows, int64_t cols, float scale, I2SLayout layout, uint8_t* out) {
  const I2SGeometry g = i2s_geometry(rows, cols, layout);
  if (!is_finite(scale)) fail("I2_S scale must be finite; got " + fmt_float(scale));
  if (scale < 0) fail("I2_S scale must be >= 0; got " + fmt_float(scale));
  std::atomic<bool> bad{false};
  for_each_i2s_unit(g, [&](int64_t src, int64_t dst) {
    if (pack_unit(codes + src, out + dst, g.width, g.stride)) bad = true;
  });
  if (bad) {
    for (int64_t i = 0; i < rows * cols; ++i)
      if (codes[i] < -1 || codes[i] > 1)
        fail("pack_i2s: codes must be in {-1, 0, 1}; found " + std::to_string(int(codes[i])) + " at " + fmt_pos(i, cols));
  }
  write_i2s_tail(out + rows * cols / 4, scale);
}

float unpack_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, int8_t* codes) {
  return decode_i2s(data, rows, cols, layout, codes, false);
}

void quantize_i2s(const float* w, int64_t rows, int64_t cols, I2SLayout layout, uint8_t* out) {
  const I2SGeometry g = i2s_geometry(rows, cols, layout);
  const int64_t n = rows * cols;
  // Pass 1: the scale s = max|w| (and the NaN/Inf check).
  const int64_t chunks = (n + kAbsSumChunk - 1) / kAbsSumChunk;
  std::vector<float> maxima(chunks, 0.0f);
  std::atomic<bool> nonfinite{false};
  parallel_for(chunks, kAbsSumChunk, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      bool bad = false;
      maxima[c] = abs_max(w + c * kAbsSumChunk, std::min(kAbsSumChunk, n - c * kAbsSumChunk), &bad);
      if (bad) nonfinite = true;
    }
  });
  if (nonfinite) fail_nonfinite("quantize(I2_S)", w, n, cols);
  const float s = *std::max_element(maxima.begin(), maxima.end());
  // Pass 2: pack sign codes, flagging any value that is neither 0 nor +-s.
  std::atomic<bool> bad{false};
  for_each_i2s_unit(g, [&](int64_t src, int64_t dst) {
    if (sign_pack_unit(w + src, out + dst, g.width, g.stride, s)) bad = true;
  });
  if (bad) {
    int64_t count = 0, first = kNone;
    for (int64_t i = 0; i < n; ++i) {
      const float a = std::fabs(w[i]);
      if (a != 0.0f && a != s) {
        ++count;
        first = std::min(first, i);
      }
    }
    fail("quantize(I2_S): input is not ternarized: " + std::to_string(count) + " values are neither 0 nor +-" +
         fmt_float(s) + " (first at " + fmt_pos(first, cols) + ": " + fmt_float(w[first]) +
         "); I2_S holds one scale per tensor, so ternarize first (bitk.formats.ternarize)");
  }
  write_i2s_tail(out + n / 4, s);
}

void dequantize_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, float* out) {
  decode_i2s(data, rows, cols, layout, out, true);
}

// ---------------------------------------------------------------------------- float16

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t exp = (x >> 23) & 0xffu;
  const uint32_t man = x & 0x7fffffu;
  if (exp == 0xffu) return uint16_t(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));  // Inf / NaN
  const float a = std::fabs(f);
  if (a >= 65520.0f) return uint16_t(sign | 0x7c00u);  // rounds past the largest half, 65504
  if (a < 6.103515625e-05f) {
    // Subnormal half: an integer count of 2^-24, rounded half to even (the default FP mode).
    return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t h = ((exp - 112u) << 10) | (man >> 13);
  const uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent, as it must
  return uint16_t(sign | h);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t x;
  if (exp == 0x1fu) {
    x = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    const float v = float(man) * 5.9604644775390625e-08f;  // man * 2^-24, exact
    return sign ? -v : v;
  } else {
    x = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// ---------------------------------------------------------------------------- TQ2_0 / TQ1_0

namespace {

enum BlockStatus : uint8_t { kOk = 0, kNonFinite = 1, kNotTernary = 2, kScaleLost = 4 };

void check_tq_shape(const char* name, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || cols % kQK != 0)
    fail(std::string(name) + " needs a non-empty [rows, cols] matrix with cols % 256 == 0; got [" +
         std::to_string(rows) + ", " + std::to_string(cols) + "]");
}

// Validates one 256-value block of an already-ternary tensor and returns its codes 0..2 and the
// float16 bits of d = max|x|.
uint8_t tq_block_codes(const float* __restrict x, uint8_t* __restrict c, uint16_t* d16) {
  bool nonfinite = false;
  const float d = abs_max(x, kQK, &nonfinite);
  if (nonfinite) return kNonFinite;
  uint8_t bad = 0;
  for (int64_t i = 0; i < kQK; ++i) {
    const float a = std::fabs(x[i]);
    bad |= uint8_t((a != 0.0f) & (a != d));
    c[i] = uint8_t(sign_code(x[i]));
  }
  if (bad) return kNotTernary;
  *d16 = float_to_half(d);
  if ((*d16 & 0x7fffu) >= 0x7c00u || (d != 0.0f && (*d16 & 0x7fffu) == 0)) return kScaleLost;
  return kOk;
}

template <typename EncodeBlock>
void tq_quantize(const char* name, const float* w, int64_t rows, int64_t cols, uint8_t* out, int64_t block_bytes,
                 EncodeBlock encode) {
  check_tq_shape(name, rows, cols);
  const int64_t n = rows * cols, blocks = n / kQK;
  std::atomic<int64_t> first_block[3] = {kNone, kNone, kNone};
  parallel_for(blocks, kQK, [&](int64_t begin, int64_t end) {
    uint8_t c[kQK];
    for (int64_t b = begin; b < end; ++b) {
      uint16_t d16 = 0;
      const uint8_t status = tq_block_codes(w + b * kQK, c, &d16);
      if (status != kOk) {
        atomic_min(first_block[status == kNonFinite ? 0 : status == kNotTernary ? 1 : 2], b);
        continue;
      }
      uint8_t* o = out + b * block_bytes;
      encode(c, o);
      o[block_bytes - 2] = uint8_t(d16 & 0xff);
      o[block_bytes - 1] = uint8_t(d16 >> 8);
    }
  });
  const std::string what = std::string("quantize(") + name + ")";
  if (first_block[0].load() != kNone) fail_nonfinite(what.c_str(), w, n, cols);
  if (first_block[1].load() != kNone) {
    int64_t count = 0, first = kNone;
    for (int64_t b = 0; b < blocks; ++b) {
      float d = 0.0f;
      for (int64_t i = 0; i < kQK; ++i) d = std::max(d, std::fabs(w[b * kQK + i]));
      for (int64_t i = 0; i < kQK; ++i) {
        const float a = std::fabs(w[b * kQK + i]);
        if (a != 0.0f && a != d) {
          ++count;
          first = std::min(first, b * kQK + i);
        }
      }
    }
    fail(what + ": input is not ternarized: " + std::to_string(count) +
         " values are neither 0 nor +-d of their 256-value block (first at " + fmt_pos(first, cols) + ": " +
         fmt_float(w[first]) + "); ternarize first (bitk.formats.ternarize)");
  }
  if (first_block[2].load() != kNone) {
    const int64_t b = first_block[2].load();
    float d = 0.0f;
    for (int64_t i = 0; i < kQK; ++i) d = std::max(d, std::fabs(w[b * kQK + i]));
    fail(what + ": block scale " + fmt_float(d) + " (block " + std::to_string(b) +
         ") is not representable as float16, which TQ types store; rescale the weights");
  }
}

// trit n of a TQ1_0 byte (first trit most significant): ((b * 3^n) mod 256) * 3 >> 8.
inline uint8_t trit(uint8_t b, uint8_t pow3) { return uint8_t((uint16_t(uint8_t(b * pow3)) * 3) >> 8); }

constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};

}  // namespace

void quantize_tq2_0(const float* w, int64_t rows, int64_t cols, uint8_t* out) {
  tq_quantize("TQ2_0", w, rows, cols, out, kTQ2Bytes, [](const uint8_t* __restrict c, uint8_t* __restrict o) {
    // In each half of 128 values, qs[32h + j] holds c[128h + j + 32k] in bits 2k..2k+1 (LSB first).
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 32; ++j) {
        const uint8_t* ch = c + 128 * h + j;
        o[32 * h + j] = uint8_t(ch[0] | ch[32] << 2 | ch[64] << 4 | ch[96] << 6);
      }
  });
}

namespace {

// Decodes one TQ2_0 block; returns the index of its first code 3, or -1.
int64_t decode_tq2_block(const uint8_t* __restrict p, float d, float* __restrict o) {
  uint8_t any3 = 0;
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 32; ++j) {
        const uint8_t c = (p[32 * h + j] >> (2 * k)) & 3;
        any3 |= uint8_t(c == 3);
        o[128 * h + 32 * k + j] = d * float(int(c) - 1);
      }
  if (!any3) return -1;
  for (int64_t i = 0; i < kQK; ++i)  // value i = 128h + 32k + j sits in byte 32h + j, bits 2k
    if (((p[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3) == 3) return i;
  return -1;
}

// Decodes every block with decode(bytes, d, out) -> index of the block's first code 3, or -1.
// Non-finite block scales and code 3 raise, naming the first offender.
template <typename DecodeBlock>
void tq_dequantize(const char* name, const uint8_t* data, int64_t rows, int64_t cols, float* out,
                   int64_t block_bytes, DecodeBlock decode) {
  check_tq_shape(name, rows, cols);
  const int64_t blocks = rows * cols / kQK;
  std::atomic<int64_t> first3{kNone}, bad_scale{kNone};
  parallel_for(blocks, kQK, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* p = data + b * block_bytes;
      const float d = half_to_float(uint16_t(p[block_bytes - 2] | p[block_bytes - 1] << 8));
      if (!is_finite(d)) {
        atomic_min(bad_scale, b);
        continue;
      }
      const int64_t bad = decode(p, d, out + b * kQK);
      if (bad >= 0) atomic_min(first3, b * kQK + bad);
    }
  });
  if (const int64_t b = bad_scale.load(); b != kNone) {
    const uint8_t* p = data + b * block_bytes + block_bytes - 2;
    fail(std::string(name) + " data holds a non-finite block scale " + fmt_float(half_to_float(uint16_t(p[0] | p[1] << 8))) +
         " in block " + std::to_string(b));
  }
  if (first3.load() != kNone)
    fail(std::string(name) + " data holds the invalid code 3 (first at value " + fmt_pos(first3.load(), cols) +
         "); the tensor is corrupt or not " + name);
}

}  // namespace

void dequantize_tq2_0(const uint8_t* data, int64_t rows, int64_t cols, float* out) {
  tq_dequantize("TQ2_0", data, rows, cols, out, kTQ2Bytes, decode_tq2_block);
}

void quantize_tq1_0(const float* w, int64_t rows, int64_t cols, uint8_t* out) {
  tq_quantize("TQ1_0", w, rows, cols, out, kTQ1Bytes, [](const uint8_t* __restrict c, uint8_t* __restrict o) {
    // Five trits per byte in base 3, first trit most significant; a byte stores ceil(t * 256 / 243).
    auto store = [](uint16_t t) { return uint8_t((t * 256 + 242) / 243); };
    for (int m = 0; m < 32; ++m)  // qs[m]: x[m + 32n]
      o[m] = store(uint16_t(c[m] * 81 + c[m + 32] * 27 + c[m + 64] * 9 + c[m + 96] * 3 + c[m + 128]));
    for (int m = 0; m < 16; ++m)  // qs[32 + m]: x[160 + m + 16n]
      o[32 + m] = store(uint16_t(c[160 + m] * 81 + c[176 + m] * 27 + c[192 + m] * 9 + c[208 + m] * 3 + c[224 + m]));
    for (int j = 0; j < 4; ++j)  // qh[j]: x[240 + j + 4m], a five-trit number whose last trit is 0
      o[48 + j] = store(uint16_t(c[240 + j] * 81 + c[244 + j] * 27 + c[248 + j] * 9 + c[252 + j] * 3));
  });
}

namespace {

int64_t decode_tq1_block(const uint8_t* __restrict p, float d, float* __restrict o) {
  for (int n = 0; n < 5; ++n)
    for (int m = 0; m < 32; ++m) o[32 * n + m] = d * float(int(trit(p[m], kPow3[n])) - 1);
  for (int n = 0; n < 5; ++n)
    for (int m = 0; m < 16; ++m) o[160 + 16 * n + m] = d * float(int(trit(p[32 + m], kPow3[n])) - 1);
  for (int n = 0; n < 4; ++n)
    for (int j = 0; j < 4; ++j) o[240 + 4 * n + j] = d * float(int(trit(p[48 + j], kPow3[n])) - 1);
  return -1;  // every byte decodes to valid trits: TQ1_0 has no invalid code
}

}  // namespace

void dequantize_tq1_0(const uint8_t* data, int64_t rows, int64_t cols, float* out) {
  tq_dequantize("TQ1_0", data, rows, cols, out, kTQ1Bytes, decode_tq1_block);
}

}  // namespace BITK_ISA
}  // namespace bitk
