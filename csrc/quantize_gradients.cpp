// Implementation of quantize_gradients.h, compiled once per instruction set (cpu_dispatch.h).
// max|g| is taken on the magnitudes' bits as integers (for non-negative floats their order is the
// integers' order, and every NaN or infinity is at or above 0x7f800000), which vectorizes in plain
// loops and catches non-finite values in the same pass; the codes round to nearest even by the
// vector conversions (the default MXCSR mode) or std::nearbyint, as torch.round does.
#include "quantize_gradients.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "parallel.h"

#if defined(__GNUC__) && defined(__x86_64__) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

namespace bitk {
namespace BITK_ISA {
namespace {

constexpr uint32_t kInfBits = 0x7f800000u;

inline uint32_t magnitude_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits & 0x7fffffffu;
}

// scale and step of a group whose largest magnitude has the bits `max_bits`.
inline void group_scale(uint32_t max_bits, float* scale, float* step) {
  if (max_bits >= kInfBits) {  // a NaN or an infinity in the group
    *scale = 0.0f;
    *step = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  float amax;
  std::memcpy(&amax, &max_bits, 4);
  const float s = 127.0f / amax;
  *scale = std::isfinite(s) ? s : 0.0f;
  *step = std::isfinite(s) ? amax / 127.0f : 0.0f;
}

inline int8_t code(float v) { return int8_t(std::min(127.0f, std::max(-127.0f, std::nearbyint(v)))); }

// out[i] = round((x[i] * factor) * scales[i * stride]) for stride 0 (one scale) or 1.
void quantize_span(const float* x, float factor, const float* scales, int64_t stride, int64_t n, int8_t* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 fv = _mm512_set1_ps(factor), one = _mm512_set1_ps(scales[0]);
  for (; i + 16 <= n; i += 16) {
    const __m512 sv = stride ? _mm512_loadu_ps(scales + i) : one;
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), fv), sv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtsepi32_epi8(q));
  }
#elif defined(__AVX2__)
  const __m256 fv = _mm256_set1_ps(factor), one = _mm256_set1_ps(scales[0]);
  for (; i + 16 <= n; i += 16) {
    const __m256 s0 = stride ? _mm256_loadu_ps(scales + i) : one, s1 = stride ? _mm256_loadu_ps(scales + i + 8) : one;
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), fv), s0));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), fv), s1));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    const __m128i v = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_packs_epi16(w, v));
  }
#endif
  for (; i < n; ++i) out[i] = code((x[i] * factor) * scales[i * stride]);
}

}  // namespace

void quantize_gradient_rows(const float* g, int64_t rows, int64_t cols, int8_t* q, float* step) {
  parallel_for(rows, 3 * std::max<int64_t>(cols, 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* src = g + r * cols;
      uint32_t max_bits = 0;
      for (int64_t c = 0; c < cols; ++c) max_bits = std::max(max_bits, magnitude_bits(src[c]));
      float scale;
      group_scale(max_bits, &scale, step + r);
      if (max_bits >= kInfBits)
        std::memset(q + r * cols, 0, size_t(cols));
      else
        quantize_span(src, 1.0f, &scale, 0, cols, q + r * cols);
    }
  });
}

void quantize_gradient_columns(const float* src, const float* factor, int64_t rows, int64_t cols, int8_t* q,
                               float* step) {
  // The columns' largest magnitudes: threads take blocks of columns and pass down all rows.
  constexpr int64_t kBlock = 256;
  std::vector<uint32_t> max_bits(size_t(std::max<int64_t>(cols, 1)), 0);
  parallel_for((cols + kBlock - 1) / kBlock, 2 * kBlock * std::max<int64_t>(rows, 1), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c0 = b * kBlock, width = std::min(kBlock, cols - c0);
      uint32_t* m = max_bits.data() + c0;
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = src + r * cols + c0;
        const float f = factor[r];
        for (int64_t c = 0; c < width; ++c) m[c] = std::max(m[c], magnitude_bits(row[c] * f));
      }
    }
  });
  // Scale 0 for a column with a non-finite value: its codes (of no meaning) come from NaN * 0.
  std::vector<float> scale(size_t(std::max<int64_t>(cols, 1)));
  for (int64_t c = 0; c < cols; ++c) group_scale(max_bits[size_t(c)], &scale[size_t(c)], step + c);
  parallel_for(rows, 3 * std::max<int64_t>(cols, 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) quantize_span(src + r * cols, factor[r], scale.data(), 1, cols, q + r * cols);
  });
}

void dequantize_int32_rows(int32_t* acc, const float* step, int64_t rows, int64_t cols) {
  // Element c is read before it is written, through memcpy (no aliasing of int32 and float).
  parallel_for(rows, 3 * std::max<int64_t>(cols, 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int32_t* row = acc + r * cols;
      const float f = step[r];
      for (int64_t c = 0; c < cols; ++c) {
        int32_t v;
        std::memcpy(&v, row + c, 4);
        const float y = float(v) * f;
        std::memcpy(row + c, &y, 4);
      }
    }
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
