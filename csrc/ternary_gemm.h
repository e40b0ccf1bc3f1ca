// Exact ternary matmul for BitLinear's forward on the CPU: y[m, n] = float(acc[m, n]) * (gamma / s[m])
// with acc = sum_k xq[m, k] * codes[n, k] in int32, xq int8 activations, codes in {-1, 0, 1}. The
// weights stay packed as c = code + 1 in {0, 1, 2}, 2 bits each (bitnet.cpp's I2_S idea), and
// acc = sum c * x - sum x. Four kernels, one per instruction set (cpu_dispatch.h): AVX-512 VNNI
// (vpdpbusd: u8 x s8 dot products of four, straight into int32), AVX2 (vpmaddubsw, int16 partial
// sums over at most 64 steps, widened to int32), AVX-VNNI (the AVX2 kernel with vpdpbusd on ymm
// registers), and a scalar loop; all give the same results.
// A plain C++ library: no Python, no numpy headers. Buffers are C-contiguous and row-major.
#pragma once

#include <cstdint>

namespace bitk {

// Largest supported k: every int32 partial sum sum_k (code + 1) x lies in [-256 k, 254 k], inside int32.
constexpr int64_t kTernaryGemmMaxK = int64_t(1) << 23;

// Bytes of the packed weight buffer for codes [n, k]: ceil(n / 16) * ceil(k / 16) * 64 (about n k / 4).
int64_t ternary_gemm_packed_size(int64_t n, int64_t k);

// Packs int8 codes [n, k] for ternary_gemm. Contract: every code is -1, 0 or 1 (other values are not
// checked and give unspecified results, never out-of-bounds accesses). Layout: 16-row panels; per
// panel, 16-column groups of 64 bytes; in group g of panel p, bytes 4 r .. 4 r + 3 belong to row
// 16 p + r, and byte q holds c = code + 1 of column 16 g + 4 t + q in bits 2t..2t+1 (t = 0..3).
// Rows past n and columns past k are 0 bits (c = 0: they add nothing). Throws std::invalid_argument
// on negative sizes or k > kTernaryGemmMaxK.
void ternary_gemm_pack(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed);

// Packs the transpose of int8 codes [n, k] (in {-1, 0, 1}) for ternary_gemm: the same bytes as
// ternary_gemm_pack(codes^T [k, n], k, n, packed) without building codes^T (BitLinear's int8
// backward multiplies by codes^T: dx = dy @ codes).
void ternary_gemm_pack_transposed(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed);

// y[m, n] = float(acc[m, n]) * factor[m] (one float32 multiply), for callers that form the row
// factor themselves.
void ternary_gemm_rows(const int8_t* xq, const float* factor, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                       float* y);

// y[m, n] = float(acc[m, n]) * (gamma / s[m]) for xq [m, k] int8 (any value in [-128, 127]), s [m],
// packed from ternary_gemm_pack(codes, n, k): the division is one float32 IEEE division per row,
// the product one float32 multiply, so the result is bit-identical to that formula evaluated in
// numpy or torch. y [m, n] must not overlap the inputs. Threads: BITK_NUM_THREADS (parallel.h);
// the thread count never changes a result.
void ternary_gemm(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                  float gamma, float* y);

// y[m, n] = (float(acc[m, n]) / s[m]) * scale: bitnet.cpp's I2_S epilogue (a float32 division, then
// a float32 multiply), for s from quantize_activations(kBitnet).
void ternary_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                         float scale, float* y);

// The raw accumulator acc[m, n] = sum_k xq[m, k] * codes[n, k] as int32 [m, n] (for tests and for
// callers with their own epilogue).
void ternary_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n, int32_t* acc);

// out[i] = float(codes[i]) * gamma for `count` int8 codes: the dequantized weights BitLinear's backward
// multiplies by (dx = dy @ (codes * gamma)), at memory speed.
void ternary_scale(const int8_t* codes, int64_t count, float gamma, float* out);

}  // namespace bitk
