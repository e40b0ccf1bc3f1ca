// Implementation of quantize_activations.h, compiled once per instruction set (cpu_dispatch.h).
// max|x| is exact in any order and the codes are elementwise, so every width gives the same bits;
// the vector conversions round to nearest even (the default MXCSR mode), as torch.round does.
#include "quantize_activations.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "parallel.h"

#if defined(__GNUC__) && defined(__x86_64__) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

namespace bitk {
namespace BITK_ISA {
namespace {

float row_abs_max(const float* x, int64_t k) {
  int64_t i = 0;
  float result = 0.0f;
#if defined(__AVX512F__)
  __m512 m0 = _mm512_setzero_ps(), m1 = _mm512_setzero_ps();
  for (; i + 32 <= k; i += 32) {
    m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    m1 = _mm512_max_ps(m1, _mm512_abs_ps(_mm512_loadu_ps(x + i + 16)));
  }
  result = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
#elif defined(__AVX2__)
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  for (; i + 16 <= k; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
    m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(x + i + 8), abs_mask));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  for (float v : lanes) result = std::max(result, v);
#endif
  for (; i < k; ++i) result = std::max(result, std::fabs(x[i]));
  return result;
}

int8_t code(float v) { return int8_t(std::min(127.0f, std::max(-128.0f, std::nearbyint(v)))); }

void quantize_row(const float* x, int64_t k, float s, int8_t* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 sv = _mm512_set1_ps(s);
  for (; i + 16 <= k; i += 16) {
    // cvtps rounds half to even; |x * s| <= 127 for finite rows, and the narrowing saturates.
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), sv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtsepi32_epi8(q));
  }
#elif defined(__AVX2__)
  const __m256 sv = _mm256_set1_ps(s);
  for (; i + 16 <= k; i += 16) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), sv));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    const __m128i v = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_packs_epi16(w, v));
  }
#endif
  for (; i < k; ++i) out[i] = code(x[i] * s);
}

}  // namespace

void quantize_activations(const float* x, int64_t m, int64_t k, ActivationScale mode, int8_t* xq, float* s) {
  parallel_for(m, 2 * std::max<int64_t>(k, 1), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* src = x + row * k;
      const float amax = row_abs_max(src, k);
      const float scale = mode == ActivationScale::kTrain ? 127.0f / std::max(amax, 1e-5f)
                                                          : float(127.0 / std::max(double(amax), 1e-5));
      s[row] = scale;
      quantize_row(src, k, scale, xq + row * k);
    }
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
