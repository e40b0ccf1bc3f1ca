// The gated ReLU^2 of BitNet's FFN on the CPU (bitk.nn.cpu_gate): h = square(relu(gate)) * up and
// its backward, each one multi-threaded pass. Every value is the float32 operations of torch's
// ops and autograd's formulas in their order, so every vector width gives torch's bits.
#pragma once

#include <cstdint>

namespace bitk {

// h[i] = (r * r) * up[i] with r = relu(gate[i]) (NaN stays NaN).
void relu2_gate(const float* gate, const float* up, int64_t count, float* h);

// For h's gradient gh: up's gradient gh * (r * r), and gate's ((gh * up) * (2 * r), 0 where r <= 0).
// Either output may be null (not computed).
void relu2_gate_backward(const float* gate, const float* up, const float* gh, int64_t count, float* ggate, float* gup);

}  // namespace bitk
