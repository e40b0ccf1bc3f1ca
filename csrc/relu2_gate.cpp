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
  parallel_for(count, 5, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float r = relu(gate[i]);
      if (gup != nullptr) gup[i] = gh[i] * (r * r);
      if (ggate != nullptr) ggate[i] = r <= 0.0f ? 0.0f : (gh[i] * up[i]) * (2.0f * r);
    }
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
