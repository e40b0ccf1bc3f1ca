"""bitk's fused Triton training kernels, installed as `bitk.triton_kernels`.

One op per file (../shared/STYLE.md): activation quantization, weight quantization, SubLN fused
with activation quantization, and the ternary matmul, each tested against `bitk.numerics`.
The folder is named `triton_kernels/` in the repository; it installs under another import name
because `triton_kernels` is taken by a package published from the Triton repository.
"""
