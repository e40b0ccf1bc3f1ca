// Run-time choice of the instruction set bitk's C++ kernels run with. The codecs, the activation
// quantizer and the ternary GEMM are each compiled once per instruction set (CMakeLists.txt:
// scalar baseline x86-64 or any other CPU, AVX2 = x86-64-v3, AVX-VNNI = x86-64-v3 + AVX-VNNI,
// AVX-512 VNNI = x86-64-v4 + VNNI), so
// one build runs on every machine; the public bitk:: functions call the build of the best
// instruction set this CPU (and its OS) supports. BITK_CPU_KERNEL=<name>, or set_cpu_kernel(),
// forces a supported one, which is how the tests run every variant the machine has.
#pragma once

#include <string>
#include <vector>

namespace bitk {

enum class CpuKernel { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kAvxVnni = 3 };

// "scalar", "avx2", "avx_vnni", "avx512_vnni".
const char* cpu_kernel_name(CpuKernel kernel);

// Every variant this CPU can run, from the baseline up (scalar always; the others by CPUID and
// the OS's saved register state).
std::vector<std::string> supported_cpu_kernels();

// The variant in use: the one set_cpu_kernel() chose, else BITK_CPU_KERNEL if it names a
// supported variant, else the best supported one.
CpuKernel cpu_kernel();

// Use `name` ("auto" returns to the default choice) for every later call. std::invalid_argument
// for an unknown name or one this CPU cannot run.
void set_cpu_kernel(const std::string& name);

}  // namespace bitk
