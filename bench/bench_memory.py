"""Peak memory of training: the whole `python -m bitk.train` process, 2 optimizer steps, on CPU.

Two cases where memory used to grow with tokens x vocabulary or with the square of the length:
- ``large_vocab``: a Qwen3-shaped model folder (vocabulary 151,936, hidden 256, 2 layers, random
  weights, a small BPE tokenizer) with ``data.block_size=2048`` and 2 sequences per micro-batch.
  Full fp32 logits of one micro-batch alone are 2.5 GB, their gradient as much again.
- ``long_context``: the tiny preset with ``data.block_size=16384`` (packed documents), one
  sequence per micro-batch. A dense
  ``[L, L]`` document mask is 268 MB per sequence, and attention with it materializes ``[L, L]``
  scores per head.

Each case runs in its own process; the figure is that process's peak resident set size
(``ru_maxrss``), so it counts everything: weights, optimizer state, activations, the end-of-run
evaluation and the GGUF export. ``TARGETS_GB`` are the bounds these cases must stay under.

    python bench/bench_memory.py [--json OUT] [--check]     # measure both cases, print a table
    python -m pytest bench/bench_memory.py                  # the same, failing above a target
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS_GB = {"large_vocab": 2.5, "long_context": 3.5}
COMMON = ["training.max_steps=2", "training.warmup_steps=1", "training.eval_every=0"]
BATCH_2 = ["training.global_batch_size=2", "training.micro_batch_size=2"]
BATCH_1 = ["training.global_batch_size=1", "training.micro_batch_size=1"]
QWEN3_SHAPE = {
    "vocab_size": 151936,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "qk_norm": True,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}


def build_large_vocab_folder(folder: Path) -> Path:
    """A Hugging Face folder of a random Qwen3-shaped model (QWEN3_SHAPE) with a 400-token BPE."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from bitk.data import default_corpus
    from bitk.models import CausalLM, ModelConfig, export_hf

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(default_corpus("train"), trainer=trainer)
    eos = tok.token_to_id("<|endoftext|>")
    config = ModelConfig(
        **QWEN3_SHAPE, hidden_act="silu", ternary=False, subln=False, bos_token_id=eos, eos_token_id=eos
    )
    torch.manual_seed(0)
    export_hf(CausalLM(config), folder, tokenizer=tok)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"})
    )
    return folder


def case_args(name: str, workdir: Path) -> list[str]:
    """The `python -m bitk.train` arguments of a case (building the model folder it needs)."""
    out = f"output_dir={workdir / name}"
    if name == "large_vocab":
        folder = workdir / "qwen3-shaped"
        if not folder.exists():
            build_large_vocab_folder(folder)
        return [f"model={folder}", "data.block_size=2048", "data.max_eval_tokens=4096", *COMMON, *BATCH_2, out]
    if name == "long_context":
        return [
            "model=tiny",
            "data.block_size=16384",
            "model.max_position_embeddings=16384",
            "data.max_eval_tokens=16384",
            *COMMON,
            *BATCH_1,
            out,
        ]
    raise ValueError(f"unknown memory case {name!r}; expected one of {', '.join(TARGETS_GB)}")


_CHILD = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def peak_rss_gb(args: list[str], python: list[str] | None = None) -> float:
    """Peak RSS (GB, 1e9 bytes) of ``python -m bitk.train ARGS``, run in a fresh process.

    A wrapper process runs the training as its only child and reports the child's ru_maxrss, so
    earlier runs in this process do not count. ``python``: the command that starts bitk.train
    (default: this interpreter with ``-m bitk.train``).
    """
    cmd = [*(python or [sys.executable, "-m", "bitk.train"]), *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", _CHILD, *cmd], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.split()[-1]) * 1024 / 1e9


def measure(names: list[str], python: list[str] | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: peak_rss_gb(case_args(name, Path(tmp)), python) for name in names}


# --------------------------------------------------------------------------- pytest entry points


def bench_large_vocab_peak_rss() -> None:
    peak = measure(["large_vocab"])["large_vocab"]
    assert peak < TARGETS_GB["large_vocab"], f"peak RSS {peak:.2f} GB over {TARGETS_GB['large_vocab']} GB"


def bench_long_context_peak_rss() -> None:
    peak = measure(["long_context"])["long_context"]
    assert peak < TARGETS_GB["long_context"], f"peak RSS {peak:.2f} GB over {TARGETS_GB['long_context']} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(TARGETS_GB), help="a case (default: all)")
    parser.add_argument("--json", type=Path, help="write {case: peak GB} here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a case is over its target")
    parser.add_argument("--python", nargs="+", help="command that runs bitk.train (default: this python -m bitk.train)")
    args = parser.parse_args(argv)
    peaks = measure(args.case or list(TARGETS_GB), args.python)
    over = []
    print(f"{'case':<14} {'peak RSS':>10} {'target':>8}")
    for name, peak in peaks.items():
        print(f"{name:<14} {peak:>8.2f} GB {TARGETS_GB[name]:>5.1f} GB")
        if peak >= TARGETS_GB[name]:
            over.append(name)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"peak_rss_gb": peaks, "targets_gb": TARGETS_GB}, indent=2) + "\n")
    if args.check and over:
        print(f"over target: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
