// Exact int8 x ternary matmul straight from I2_S bytes (docs/formats.md, the "x86" layout: rows
// cut into blocks of 128 values, 32 bytes each, byte j of a block holding c = code + 1 of values
// j, j + 32, j + 64, j + 96 in bits 6-7, 4-5, 2-3, 0-1). The bytes a GGUF file stores are the
// weights: no repacking, no int8 codes. acc[m, n] = sum_k xq[m, k] code[n, k] in int32, computed
// as sum_k c x - sum_k x like bitnet.cpp's own kernel. One variant per instruction set
// (cpu_dispatch.h): AVX-512 VNNI (vpdpbusd on 64 unpacked codes at a time), AVX2 (vpmaddubsw),
// AVX-VNNI (vpdpbusd on 32) and a scalar loop; all give the same results. A plain C++ library:
// no Python, no numpy headers.
#pragma once

#include <cstdint>

namespace bitk {

// Values per I2_S block: k must be a multiple of it (a file's I2_S tensors always are).
constexpr int64_t kI2sBlock = 128;
// Largest supported k: every int32 partial sum sum_k c x, c in {0, 1, 2, 3} (3 is no valid code,
// but the bytes are not checked), lies in [-384 k, 381 k], inside int32.
constexpr int64_t kI2sGemmMaxK = int64_t(1) << 21;

// Bytes of the codes of an I2_S tensor [n, k] (without the 32-byte tail of the scale): n k / 4.
int64_t i2s_gemm_weight_bytes(int64_t n, int64_t k);

// y[m, n] = (float(acc[m, n]) / s[m]) * scale: bitnet.cpp's I2_S epilogue (a float32 division, then
// a float32 multiply), for xq [m, k] and s [m] from quantize_activations(kBitnet) and `w` the
// i2s_gemm_weight_bytes(n, k) code bytes of an I2_S tensor [n, k] in the x86 layout. y [m, n]
// must not overlap the inputs. std::invalid_argument for negative sizes, k not a multiple of
// kI2sBlock or above kI2sGemmMaxK. Threads: parallel.h; the thread count never changes a result.
void i2s_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* w, int64_t n, float scale,
                     float* y);

// The raw accumulator acc[m, n] = sum_k xq[m, k] code[n, k] as int32 [m, n].
void i2s_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* w, int64_t n, int32_t* acc);

}  // namespace bitk
