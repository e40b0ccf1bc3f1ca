// int8 gradients for BitLinear's int8 backward on the CPU (bitk.nn.cpu, BITK_CPU_BACKWARD=int8):
// symmetric absmax quantization of float32 gradients per row or per column, and the epilogue that
// turns the int32 products back into float32 in place.
//
// A group (a row or a column) with amax = max|g| gets scale = 127 / amax and step = amax / 127
// (float32), and q = round_half_even(g * scale) in [-127, 127]. No floor on amax (gradients may be
// far below the activations' 1e-5): a group whose 127 / amax is not finite (amax = 0, or below
// ~4e-37) gets scale = step = 0 and q = 0. A group holding a value that is not finite gets step =
// NaN (and codes of no meaning), so whatever is computed from it is NaN: a broken gradient stays
// visible. Every vector width gives the same bits.
#pragma once

#include <cstdint>

namespace bitk {

// q[r, c] = round(g[r, c] * scale[r]), step[r] per row, for g [rows, cols].
void quantize_gradient_rows(const float* g, int64_t rows, int64_t cols, int8_t* q, float* step);

// The columns of h[r, c] = src[r, c] * factor[r] (one float32 product): q[r, c] = round(h[r, c] *
// scale[c]), step[c] over all rows, q [rows, cols] row-major as src.
void quantize_gradient_columns(const float* src, const float* factor, int64_t rows, int64_t cols, int8_t* q,
                               float* step);

// In place, the int32 acc [rows, cols] becomes float32 (the same bytes): float(acc[r, c]) * step[r]
// (one float32 multiply).
void dequantize_int32_rows(int32_t* acc, const float* step, int64_t rows, int64_t cols);

}  // namespace bitk
