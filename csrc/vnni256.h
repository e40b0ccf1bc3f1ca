// The avx_vnni build's kernels multiply with vpdpbusd on ymm registers: in its VEX encoding on a
// CPU with AVX-VNNI, else (a CPU with AVX-512 VNNI and VL, where this build runs when forced:
// BITK_CPU_KERNEL=avx_vnni) in the EVEX encoding of the same instruction, with the same results.
// Included by that build only (internal linkage, like everything compiled per instruction set).
#pragma once

namespace bitk {
namespace {

inline bool vnni256_evex() {
  static const bool evex = !__builtin_cpu_supports("avxvnni");
  return evex;
}

}  // namespace
}  // namespace bitk
