// Implementation of rms_norm.h, compiled once per instruction set (cpu_dispatch.h). Plain loops
// that -O3 vectorizes at the build's width; no FMA contraction (CMakeLists.txt), so each line is
// the float32 operations it shows, rounded one at a time, at every width.
#include "rms_norm.h"

#include "parallel.h"

namespace bitk {
namespace BITK_ISA {

void rms_norm_apply(const float* x, const float* rms, const float* w, int64_t rows, int64_t cols, float* y) {
  parallel_for(rows, 3 * (cols > 0 ? cols : 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float d = rms[r];
      const float* xr = x + r * cols;
      float* yr = y + r * cols;
      for (int64_t c = 0; c < cols; ++c) yr[c] = (xr[c] / d) * w[c];
    }
  });
}

void rms_norm_backward_terms(const float* g, const float* x, const float* rms, const float* w, int64_t rows,
                             int64_t cols, float* t, float* p) {
  parallel_for(rows, 4 * (cols > 0 ? cols : 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float d = rms[r];
      const float* gr = g + r * cols;
      const float* xr = x + r * cols;
      if (t != nullptr) {
        float* tr = t + r * cols;
        for (int64_t c = 0; c < cols; ++c) tr[c] = -(gr[c] * w[c]) * ((xr[c] / d) / d);
      }
      if (p != nullptr) {
        float* pr = p + r * cols;
        for (int64_t c = 0; c < cols; ++c) pr[c] = gr[c] * (xr[c] / d);
      }
    }
  });
}

void rms_norm_backward_input(const float* g, const float* x, const float* rms, const float* w, const float* coef,
                             int64_t rows, int64_t cols, float* gd, float* gs) {
  parallel_for(rows, 4 * (cols > 0 ? cols : 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float d = rms[r], k = coef[r];
      const float* gr = g + r * cols;
      const float* xr = x + r * cols;
      float* dr = gd + r * cols;
      float* sr = gs + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        dr[c] = (gr[c] * w[c]) / d;
        sr[c] = k * (2.0f * xr[c]);
      }
    }
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
