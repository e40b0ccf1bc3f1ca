// Implementation of relu2_gate.h, compiled once per instruction set (cpu_dispatch.h). Plain loops
// that -O3 vectorizes; no FMA contraction (CMakeLists.txt), so each line rounds as it reads.
#include "relu2_gate.h"

#include "parallel.h"

namespace bitk {
namespace BITK_ISA {
namespace {

// torch's relu (clamp_min(x, 0)): NaN stays NaN.
inline float relu(float v) { return v > 0.0f || v != v ? v : 0.0f; }

}  // namespace

void relu2_gate(const float* gate, const float* up, int64_t count, float* h) {
  parallel_for(count, 3, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float r = relu(gate[i]);
      h[i] = (r * r) * up[i];
    }
  });
}

void relu2_gate_backward(const float* gate, const float* up, const float* gh, int64_t count, float* ggate, float* gup) {
  // Autograd on square(relu(gate)) * up: MulBackward gives up gh * a (a = r * r) and a gh * up;
  // PowBackward (square) gives r (gh * up) * (2 * r); ReluBackward passes it where r > 0 (and NaN).
  // One loop per output, over restrict pointers and without branches, so -O3 vectorizes each (a
  // loop with both outputs optional and a data-dependent branch stayed scalar: ~20x slower).
  parallel_for(count, 5, [&](int64_t begin, int64_t end) {
    const float* __restrict g = gate;
    const float* __restrict u = up;
    const float* __restrict d = gh;
    if (float* __restrict out = gup; out != nullptr) {
      for (int64_t i = begin; i < end; ++i) {
        const float r = relu(g[i]);
        out[i] = d[i] * (r * r);
      }
    }
    if (float* __restrict out = ggate; out != nullptr) {
      for (int64_t i = begin; i < end; ++i) {
        const float r = relu(g[i]);
        const float v = (d[i] * u[i]) * (2.0f * r);
        out[i] = r <= 0.0f ? 0.0f : v;
      }
    }
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
