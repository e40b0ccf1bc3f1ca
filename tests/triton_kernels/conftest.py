"""Shared helpers of the Triton kernel tests (imported as `bitk_kernel_testing`).

Kernels run on CUDA when there is a GPU and in Triton's interpreter on CPU otherwise (the root
conftest sets TRITON_INTERPRET=1 before anything imports a kernel). Tolerances are derived as in
CONTRIBUTING.md "Style" (`assert_derived_close`, defined in the root conftest).
"""

from __future__ import annotations

import sys

import torch

from bitk_testing import assert_derived_close, max_err  # noqa: F401  (re-exported)

sys.modules["bitk_kernel_testing"] = sys.modules[__name__]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Interpreted kernels are slow (about 0.4 ms per program plus 2 ms per dot step): keep sides small
# but include M = 1, odd K and prime N.
ROW_SHAPES = ((1, 1), (1, 256), (3, 7), (5, 257), (16, 1000), (33, 2048))
