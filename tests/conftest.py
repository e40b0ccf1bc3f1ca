"""Test-wide settings: hypothesis runs derandomized under CI; Triton interprets kernels without a GPU."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be switched on
# before any module defining a kernel is imported (../shared/spec/environment.md).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Outcomes must not depend on the machine's speed: no deadline, no too_slow health check.
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", autouse=True)
def bitk_cache_dir(tmp_path_factory):
    """Fresh caches for the whole run: bitk's trained tokenizer and `datasets`' files, never the user's.

    Environment variables, so CLI tests run in subprocesses use the same folders.
    """
    import datasets

    path = tmp_path_factory.mktemp("bitk-cache")
    hf_cache = tmp_path_factory.mktemp("hf-datasets-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITK_CACHE_DIR", str(path))
        mp.setenv("HF_DATASETS_CACHE", str(hf_cache))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
        yield path


# --------------------------------------------------------------------------- derived tolerances
# Test modules import these as `bitk_testing`. Tolerances are derived as in ../shared/STYLE.md:
# against a float64 reference, an implementation may err at most about twice as much as torch
# doing the same computation in the same low precision.
sys.modules["bitk_testing"] = sys.modules[__name__]


def max_err(actual: torch.Tensor, ref64: torch.Tensor) -> float:
    return (actual.detach().to(torch.float64).cpu() - ref64.detach().to(torch.float64).cpu()).abs().max().item()


def assert_derived_close(actual: torch.Tensor, ref64: torch.Tensor, torch_lowp: torch.Tensor, what: str = "") -> None:
    """``actual`` errs against the float64 ``ref64`` at most 2x as much as ``torch_lowp`` does.

    ``torch_lowp`` is the same computation done by plain torch in the kernel's precision. The bound
    never drops below 2 ulps (of the dtype of ``actual``) of the largest reference magnitude, so an
    exact torch result does not demand an exact kernel.
    """
    assert actual.shape == ref64.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(actual.float()).all(), f"{what}: non-finite values"
    if ref64.numel() == 0:
        return
    err = max_err(actual, ref64)
    err_torch = max_err(torch_lowp, ref64)
    floor = torch.finfo(actual.dtype).eps * ref64.abs().max().item()
    bound = 2.0 * max(err_torch, floor)
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} (torch's own error {err_torch:.3g})"


@torch.no_grad()
def scramble(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every parameter: matrices N(0, 1/in) (embedding N(0, 1)), vectors 1 + N(0, 0.2^2).

    Gives O(1) activations (the std-0.02 init makes every block nearly the identity); used by the
    model and objective tests.
    """
    g = torch.Generator().manual_seed(seed)
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() == 1:
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model
