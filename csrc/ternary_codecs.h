// bitk's ternary codecs: absmean ternarization (BitNet b1.58, arXiv 2402.17764) and the I2_S,
// TQ2_0 and TQ1_0 byte layouts of docs/formats.md (I2_S as bitnet.cpp reads it, TQ1_0 and
// TQ2_0 as upstream llama.cpp reads them). A plain C++ library: no Python, no numpy headers.
// Buffers are C-contiguous, row-major [rows, cols] with cols = ne0, the fastest dimension.
// Bad contents (NaN/Inf, non-ternary input, code 3) throw std::invalid_argument.
#pragma once

#include <cstdint>
#include <string>

namespace bitk {

enum class I2SLayout { kX86, kArm, kX86_1x4 };

I2SLayout parse_i2s_layout(const std::string& name);

// Sum of |w| in float64 in the one order every bitk backend uses (numpy, C++, torch), so that the
// absmean scale is bit-identical everywhere. The flat array, zero-padded, is cut into chunks of
// kAbsSumChunk values, each viewed as rows of kAbsSumLanes; the rows are summed by an adjacent-pair
// tree (rows 0+1, 2+3, then (0+1)+(2+3), ...), lane by lane; then the lanes by the same tree; then
// the chunk totals, zero-padded to a power of two, by the same tree. Every step adds two numbers,
// so neither the machine nor the thread count changes the result.
constexpr int64_t kAbsSumChunk = int64_t(1) << 16;
constexpr int64_t kAbsSumLanes = 16;
double abs_sum(const float* w, int64_t n);

// Absmean ternarization: gamma = max(float32(abs_sum / n), 1e-5); codes = clamp(round(w / gamma),
// -1, 1) with round-half-even, as int8. Returns gamma.
float ternarize(const float* w, int64_t rows, int64_t cols, int8_t* codes);
// The same from bfloat16 weights given as their 16 bits (each is float32's high half): the same
// codes and gamma as ternarize() of the widened float32 matrix, without materializing it.
float ternarize_bf16(const uint16_t* w, int64_t rows, int64_t cols, int8_t* codes);

// I2_S: n/4 bytes of 2-bit codes (c = w + 1, four per byte, first value in the top bits) and a
// 32-byte tail holding the float32 scale (repeated eight times; readers use the first).
void pack_i2s(const int8_t* codes, int64_t rows, int64_t cols, float scale, I2SLayout layout, uint8_t* out);
float unpack_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, int8_t* codes);
// From an already-ternary float matrix ({-s, 0, +s} with one s = max|w|).
void quantize_i2s(const float* w, int64_t rows, int64_t cols, I2SLayout layout, uint8_t* out);
void dequantize_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, float* out);

// TQ2_0 / TQ1_0: per 256-value block, d = max|x| as float16; input must be {-d, 0, +d} per block.
void quantize_tq2_0(const float* w, int64_t rows, int64_t cols, uint8_t* out);
void dequantize_tq2_0(const uint8_t* data, int64_t rows, int64_t cols, float* out);
void quantize_tq1_0(const float* w, int64_t rows, int64_t cols, uint8_t* out);
void dequantize_tq1_0(const uint8_t* data, int64_t rows, int64_t cols, float* out);

// IEEE binary16 conversions, round to nearest even (numpy's astype(float16)).
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);

}  // namespace bitk
