// Implementation of convert_bf16.h, compiled once per instruction set (cpu_dispatch.h). Plain
// loops over integers that -O3 vectorizes at the build's width; every width gives the same bits.
#include "convert_bf16.h"

#include <cstring>

#include "parallel.h"

namespace bitk {
namespace BITK_ISA {
namespace {

inline uint16_t round_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace

void int8_to_bf16(const int8_t* src, int64_t count, uint16_t* out) {
  parallel_for(count, 3, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = float(src[i]);  // an int8 has at most 8 significant bits: the top half is exact
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      out[i] = uint16_t(bits >> 16);
    }
  });
}

void float_to_bf16(const float* src, const float* divisor, int64_t rows, int64_t cols, uint16_t* out) {
  parallel_for(rows, 6 * (cols > 0 ? cols : 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * cols;
      uint16_t* dst = out + r * cols;
      if (divisor) {
        const float d = divisor[r];
        for (int64_t c = 0; c < cols; ++c) dst[c] = round_to_bf16(row[c] / d);
      } else {
        for (int64_t c = 0; c < cols; ++c) dst[c] = round_to_bf16(row[c]);
      }
    }
  });
}

void bf16_to_float(const uint16_t* src, int64_t count, bool scale_it, float scale, float* out) {
  parallel_for(count, 6, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t bits = uint32_t(src[i]) << 16;
      float v;
      std::memcpy(&v, &bits, 4);
      out[i] = scale_it ? v * scale : v;
    }
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
