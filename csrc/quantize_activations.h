// Per-token absmax int8 quantization of activations in one pass over each row (max|x|, the scale,
// the codes), bit-identical to bitk.numerics: xq = clamp(round_half_even(x * s), -128, 127) with
// the product in float32, and
//  - kTrain (quantize_activations, BitLinear's training forward): s = 127.0f / max(max|x|, 1e-5f),
//    one float32 division;
//  - kBitnet (quantize_activations_bitnet_cpp, bitnet.cpp's I2_S matmul):
//    s = float(127.0 / max(double(max|x|), 1e-5)), the quotient in float64.
// Rows with NaN or Inf give unspecified codes (never out-of-bounds accesses).
#pragma once

#include <cstdint>

namespace bitk {

enum class ActivationScale { kTrain = 0, kBitnet = 1 };

// x [m, k] float32 -> xq [m, k] int8 and s [m] float32. Threads: parallel.h.
void quantize_activations(const float* x, int64_t m, int64_t k, ActivationScale mode, int8_t* xq, float* s);

}  // namespace bitk
