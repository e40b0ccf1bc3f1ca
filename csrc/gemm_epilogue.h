// The epilogues of bitk's exact ternary GEMMs (ternary_gemm.cpp, i2s_gemm.cpp): `raw` holds
// sum_k c x for `cols` outputs of one row (c = code + 1), so acc = raw - sum_k x. Each output is
// one IEEE float32 operation sequence, vectorized or not, so every build gives the same bits.
// Compiled into each instruction set's build, with internal linkage (as parallel.h).
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace bitk {
namespace {

// The training forward's y = float(acc) * per_row[m] (per_row = gamma / s, one float32 division
// per row), or with `divide` bitnet.cpp's I2_S y = (float(acc) / per_row[m]) * scale (per_row = s:
// a float32 division, then a multiply).
struct FloatStore {
  const float* per_row;
  float scale;
  bool divide;
  float* y;
  int64_t n;
  void operator()(int64_t row, int64_t n0, int64_t cols, const int32_t* raw, int32_t xsum) const {
    float* out = y + row * n + n0;
    const float r = per_row[row];
    int64_t j = 0;
#if defined(__AVX2__) && defined(__GNUC__) && defined(__x86_64__)
    const __m256i sum = _mm256_set1_epi32(xsum);
    const __m256 rv = _mm256_set1_ps(r), sv = _mm256_set1_ps(scale);
    for (; j + 8 <= cols; j += 8) {
      const __m256i acc = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw + j)), sum);
      const __m256 v = _mm256_cvtepi32_ps(acc);
      _mm256_storeu_ps(out + j, divide ? _mm256_mul_ps(_mm256_div_ps(v, rv), sv) : _mm256_mul_ps(v, rv));
    }
#endif
    for (; j < cols; ++j) {
      const float v = float(raw[j] - xsum);
      out[j] = divide ? (v / r) * scale : v * r;
    }
  }
};

// The accumulators themselves, int32.
struct Int32Store {
  int32_t* acc;
  int64_t n;
  void operator()(int64_t row, int64_t n0, int64_t cols, const int32_t* raw, int32_t xsum) const {
    int32_t* out = acc + row * n + n0;
    for (int64_t j = 0; j < cols; ++j) out[j] = raw[j] - xsum;
  }
};

}  // namespace
}  // namespace bitk
