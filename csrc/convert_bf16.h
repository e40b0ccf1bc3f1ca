// bfloat16 operands and results of BitLinear's backward GEMMs on the CPU, converted in one
// multi-threaded pass (bfloat16 values given as their uint16 bits). Rounding is to nearest even, as torch's
// .to(torch.bfloat16): bits = (f + 0x7fff + ((f >> 16) & 1)) >> 16; a NaN becomes the quiet NaN
// 0x7fc0 (torch's own conversions differ among themselves in which NaN bits they give).
#pragma once

#include <cstdint>

namespace bitk {

// out[i] = bf16(float(src[i])) for int8 src: exact (every int8 is a bfloat16).
void int8_to_bf16(const int8_t* src, int64_t count, uint16_t* out);

// out[r, c] = bf16(src[r, c] / divisor[r]) (one float32 division, then rounding), or bf16(src[r, c])
// when divisor is null; src and out are [rows, cols].
void float_to_bf16(const float* src, const float* divisor, int64_t rows, int64_t cols, uint16_t* out);

// out[i] = float(src[i]) (exact), times `scale` in float32 when `scale_it` (one rounding, as
// torch's `.float() * scale`).
void bf16_to_float(const uint16_t* src, int64_t count, bool scale_it, float scale, float* out);

}  // namespace bitk
