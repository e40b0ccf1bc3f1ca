"""Golden loss curve: the first 30 losses of the tiny preset on CPU, committed in golden/tiny.json.

The run is the real `tiny` model (4 layers, 4.2M parameters, bitk's tokenizer and embedded corpus)
with the `base` training preset scaled down to 30 steps of 4 x 64 tokens (micro-batch 2, so
gradient accumulation is in the path): any change to the model, its numerics, the data order, the
optimizer, schedule, clipping or the loop shows up here.

Tolerance: none, the losses must be equal bit for bit. The run is deterministic and does not
depend on torch's thread count (1 and 2 threads give identical losses). And there is no useful
tolerance between "the same computation" and "a different one": moving every initial weight by
one ulp changes the step-1 loss by 1e-6 relative and, through flipped ternary roundings, the
losses of later steps by up to 1e-2 within 40 steps. A tolerance loose enough to absorb a
different summation order would also absorb real changes.

What must be pinned is pinned instead: torch picks its CPU kernels by the processor's vector
extensions (ATen's AVX2 and AVX-512 kernels sum in different orders), so the run happens in a
subprocess with ATEN_CPU_CAPABILITY=avx2, the kernel set every x86-64 machine bitk supports
has, and with BitLinear's CPU backward in float32 (BITK_CPU_BACKWARD=float32, as the whole suite
runs it: its default takes bf16 products where the CPU has them). bitk's own CPU kernels compute
exact integer products, the same on every machine. A failure on another torch version says so
(golden["generated_with"]).

Regenerate after an intended change (and say why in the commit):
    python tests/train/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "tiny.json"
ARGS = [
    "model=tiny",
    "training=base",
    "data.block_size=64",
    "training.max_steps=30",
    "training.global_batch_size=4",
    "training.micro_batch_size=2",
    "training.warmup_steps=8",
    "logging.log_every=1",
    "training.eval_every=0",
    "checkpoint.save_every=0",
    "export_gguf=none",
    "logging.progress=false",
    "device=cpu",
]


# torch's AVX2 kernels: present on every x86-64 machine bitk supports, whatever else the CPU has;
# BitLinear's float32 backward, which does not depend on the CPU's bf16 support (also when the
# golden losses are regenerated outside the suite, which pins it in tests/conftest.py).
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "BITK_CPU_BACKWARD": "float32",
}


def run_losses(output_dir: Path) -> list[float]:
    """The golden run's train losses, trained in a subprocess with torch's kernel set pinned."""
    from bitk.train.metrics import read_metrics

    env = {**os.environ, **PINNED_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "bitk.train", *ARGS, f"output_dir={output_dir}", "resume=none"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r["loss"] for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"]


def environment() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@pytest.mark.slow
def test_golden_loss_curve(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert golden["args"] == ARGS, "the golden run's arguments changed: regenerate (module doc)"
    losses = run_losses(tmp_path / "run")
    expected = golden["losses"]
    assert len(losses) == len(expected)
    if losses != expected:
        first = next(i for i, (a, b) in enumerate(zip(losses, expected)) if a != b)
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses, expected))
        here, there = environment(), golden["generated_with"]
        env = {k: (there.get(k), v) for k, v in here.items() if there.get(k) != v}
        raise AssertionError(
            f"the golden losses moved from step {first + 1} on (now {losses[first]!r}, golden {expected[first]!r}; "
            f"worst relative change {worst:.2e}). "
            + (f"Environment differs from the golden's (golden, here): {env}. " if env else "")
            + "If the change is intended, regenerate: python tests/train/test_golden.py --regenerate"
        )
    assert losses[-1] < losses[0] - 1.0  # and it learns


def regenerate() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        losses = run_losses(Path(tmp) / "run")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(
        json.dumps(
            {
                "args": ARGS,
                "losses": losses,
                "generated_with": environment(),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {GOLDEN}: {len(losses)} losses, {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/train/test_golden.py --regenerate")
    regenerate()
