// The elementwise passes of RMSNorm on the CPU (bitk.nn.cpu_norm): the forward's scaling and the
// backward's terms, each one multi-threaded pass over [rows, cols] float32. The statistics (the
// mean of squares, and the backward's sums over a row and over the rows) stay torch's reductions,
// so together with them these passes give the bits of autograd on the reference RMSNorm
// (bitk.numerics.rms_norm: y = x / rms * w, rms = sqrt(mean(x^2) + eps)). Every product and
// quotient below is one IEEE float32 operation in the order written, so every vector width gives
// the same bits.
#pragma once

#include <cstdint>

namespace bitk {

// y[r, c] = (x[r, c] / rms[r]) * w[c].
void rms_norm_apply(const float* x, const float* rms, const float* w, int64_t rows, int64_t cols, float* y);

// The two sums' terms of the reference's backward for the output gradient g:
//   t[r, c] = -(g[r, c] * w[c]) * ((x[r, c] / rms[r]) / rms[r])   (summed over c: rms's gradient)
//   p[r, c] = g[r, c] * (x[r, c] / rms[r])                          (summed over r: w's gradient)
// Either output may be null (not computed).
void rms_norm_backward_terms(const float* g, const float* x, const float* rms, const float* w, int64_t rows,
                             int64_t cols, float* t, float* p);

// x's two gradient terms, which autograd adds to x's gradient one after the other (after what
// reached x before them):
//   from the division  gd[r, c] = (g[r, c] * w[c]) / rms[r]
//   from the square    gs[r, c] = coef[r] * (2 * x[r, c]),  coef the gradient of mean(x^2)
//                                                            (rms's gradient / (2 rms) / cols)
void rms_norm_backward_input(const float* g, const float* x, const float* rms, const float* w, const float* coef,
                             int64_t rows, int64_t cols, float* gd, float* gs);

}  // namespace bitk
