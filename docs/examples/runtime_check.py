"""Run bitk's GGUF files in the real runtimes: which family x type loads where, and how close it is.

    python docs/examples/runtime_check.py [--runtimes ~/.cache/bitk-runtimes] [--out /tmp/bitk-runtime-check]

Needs the runtimes built with a logits dumper (`bin_dump_logits MODEL OUT --threads N --ids 1,2,3`,
float32 [n_tokens, n_vocab]) under RUNTIMES/oracle (bitnet.cpp and its llama.cpp fork, with
build/bin/llama-cli) and RUNTIMES/upstream (llama.cpp, with build/bin/llama-simple); a runtime
that is missing is reported as such. No download: the models are random bitk models with the
widths of bitk's presets (2 blocks, bitk's 4096-token tokenizer), norms and embeddings scaled so
the logits are far from uniform.

Part 1 (the table in docs/gguf.md): each family x type is packed with `bitk.gguf.export`, run in
each runtime on 48 token ids, and compared with bitk's prediction of the same file
(`bitk.gguf.load`, the runtime's numerics): top-1 agreement and the median per-position
|difference| over the logits' standard deviation. Also against the checkpoint itself in
`bitk.gguf.runtime_numerics` (what the trainer reports), and against one numerics for every
layer ("i2s" / "train"), which ignores fallbacks and ggml's per-block quantization.

Part 2 (docs/perf.md, --speed): SmolLM2-135M's full shape (30 blocks, vocab 49152) packed as F16,
as I2_S / TQ2_0 with the 576-wide projections in F16 (--pad none) and zero-padded (--pad auto):
file size, and prompt / generation tokens per second in each runtime that runs the file (the
median of 5 rounds, each running every file in turn).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

from bitk.data import default_corpus, default_tokenizer
from bitk.gguf import export, load, runtime_numerics, set_runtime_numerics
from bitk.models import PRESETS, CausalLM, ModelConfig

FAMILIES = {
    # bitk's tiny preset: BitNet b1.58 2B4T's block (ReLU^2 FFN, SubLN), 256 wide
    "BitNet b1.58 (ReLU^2)": PRESETS["tiny"],
    # SmolLM2-135M's widths (576, 9/3 heads), converted with SubLN (SiLU FFN: arch bitnet)
    "SmolLM2 (576 wide)": PRESETS["smollm2_135m"],
    # Qwen3-0.6B's widths, converted without SubLN (model.subln=false: arch qwen3)
    "Qwen3 (subln=false)": PRESETS["qwen3_0_6b"].replace(subln=False),
    # Qwen3 converted with SubLN (bitk's default conversion): no runtime graph has both norms
    "Qwen3 (SubLN)": PRESETS["qwen3_0_6b"],
}
TYPES = ("i2_s", "tq1_0", "tq2_0", "f16")


def make_model(config: ModelConfig, vocab: int, layers: int = 2, seed: int = 0) -> CausalLM:
    """A random model of `config`'s widths, `layers` blocks and `vocab` rows, far from uniform logits."""
    torch.manual_seed(seed)
    config = config.replace(
        vocab_size=vocab,
        num_hidden_layers=layers,
        max_position_embeddings=min(config.max_position_embeddings, 2048),
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=None,
    )
    model = CausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif "embed" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 0.05)
    return model.eval()


def dump_logits(dumper: Path, path: Path, ids: list[int]) -> tuple[np.ndarray | None, str]:
    """(logits, '') or (None, the runtime's error line)."""
    out = path.with_suffix(f".{dumper.parent.name}.f32")
    cmd = [str(dumper), str(path), str(out), "--threads", "2", "--ids", ",".join(map(str, ids))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [
            line
            for line in proc.stderr.splitlines()
            if re.search("error|unknown|invalid|wrong|not a multiple", line, re.I)
            and "failed to load model" not in line
        ]
        return None, (lines[0] if lines else proc.stderr.strip().splitlines()[-1]).strip()
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1), ""


def agreement(got: np.ndarray, want: np.ndarray) -> dict:
    spread = want.std(-1)
    return {
        "top1": round(float((got.argmax(-1) == want.argmax(-1)).mean()), 3),
        "median_err": round(float(np.median(np.median(np.abs(got - want), -1) / spread)), 4),
    }


def part1(runtimes: dict[str, Path], out: Path) -> list[dict]:
    tok = default_tokenizer()
    vocab = tok.get_vocab_size()
    ids = [int(i) for i in np.random.default_rng(0).integers(1, vocab, 48)]
    x = torch.tensor([ids])
    rows = []
    for family, config in FAMILIES.items():
        for qtype in TYPES:
            for pad in ("auto", "none") if family.startswith("SmolLM2") and qtype != "f16" else ("auto",):
                model = make_model(config, vocab)
                path = out / f"{re.sub(r'[^a-z0-9]+', '-', family.lower()).strip('-')}-{qtype}-{pad}.gguf"
                row: dict = {"family": family, "type": qtype, "pad": pad}
                try:
                    res = export(model, path, qtype, tokenizer=tok, pad=pad)
                except ValueError as exc:
                    row["refused"] = str(exc).split(": ", 1)[-1]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                row.update(arch=res.arch, types=sorted({r.type for r in res.rows if r.name.endswith("_q.weight")}))
                row["padded"] = any(n.startswith("zero-padded") for n in res.notes)
                with torch.no_grad():
                    file_logits = load(path)(x).logits[0].numpy()
                    emb = model.model.embed_tokens.weight
                    emb.copy_(emb.half().float())  # the file's F16 embedding
                    set_runtime_numerics(model, runtime_numerics(model.config, qtype, pad=pad))
                    ckpt_logits = model(x).logits[0].numpy()
                    model.set_numerics({"i2_s": "i2s", "f16": "float"}.get(qtype, "train"))
                    uniform_logits = model(x).logits[0].numpy()
                for name, dumper in runtimes.items():
                    if not dumper.is_file():
                        row[name] = "not built"
                        continue
                    got, error = dump_logits(dumper, path, ids)
                    row[name] = (
                        {
                            "vs_file": agreement(got, file_logits),
                            "vs_checkpoint": agreement(got, ckpt_logits),
                            "vs_one_numerics": agreement(got, uniform_logits),
                        }
                        if got is not None
                        else error
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _tokens_per_s(text: str, what: str) -> float | None:
    m = re.search(rf"(?<!prompt ){what} time =\s*[\d.]+ ms /\s*\d+ (?:tokens|runs).*?([\d.]+) tokens per second", text)
    return float(m.group(1)) if m else None


def _measure(name: str, cmd: list[str]) -> dict:
    """One run of a runtime's tool: tokens/s figures, or {"error": ...}."""
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.splitlines() if re.search("error|unknown", x, re.I)]
        return {"error": (lines or ["?"])[0].strip()[:160]}
    text = proc.stderr + proc.stdout
    if name == "bitnet.cpp":
        return {"prompt_tok_s": _tokens_per_s(text, "prompt eval"), "generate_tok_s": _tokens_per_s(text, r"\beval")}
    m = re.search(r"([\d.]+) seconds per pass", text)
    return {"prompt_tok_s": round(512 / float(m.group(1)), 1) if m else None}


def part2(root: Path, out: Path, rounds: int = 5) -> list[dict]:
    """SmolLM2-135M-sized files: size, and the median tokens/s of `rounds` rounds over all files in turn."""
    tok = default_tokenizer()
    smollm2 = PRESETS["smollm2_135m"]
    model = make_model(smollm2, smollm2.vocab_size, layers=smollm2.num_hidden_layers)
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    text_file = out / "heldout.txt"
    text_file.write_text("\n\n".join(default_corpus("heldout")))
    rows, tools = [], {}
    for qtype, pad in (("f16", "auto"), ("i2_s", "none"), ("i2_s", "auto"), ("tq2_0", "none"), ("tq2_0", "auto")):
        path = out / f"smollm2-135m-{qtype}-{pad}.gguf"
        res = export(model, path, qtype, tokenizer=tok, pad=pad)
        row = {"type": qtype.upper(), "pad": pad, "MiB": round(res.file_bytes / 2**20, 1)}
        row["projection_types"] = sorted(
            {r.type for r in res.rows if r.name.startswith("blk.") and not r.name.endswith("norm.weight")}
        )
        rows.append(row)
        tools[len(rows) - 1] = {  # bitnet.cpp: llama-cli (prompt, generation); llama.cpp: llama-perplexity (prompt)
            "bitnet.cpp": [str(root / "oracle/build/bin/llama-cli"), "-m", str(path), "-p", prompt, "-n", "128"]
            + ["--temp", "0", "-t", "2", "-c", "512"],
            "llama.cpp": [str(root / "upstream/build/bin/llama-perplexity"), "-m", str(path), "-f", str(text_file)]
            + ["-c", "512", "-b", "512", "--chunks", "2", "-t", "2"],
        }
    runs: dict[tuple[int, str], list[dict]] = {}
    for _ in range(rounds):  # the files in turn, round after round: drifts of a busy machine hit them all
        for i, by_runtime in tools.items():
            for name, cmd in by_runtime.items():
                if not Path(cmd[0]).is_file() or any("error" in r for r in runs.get((i, name), [])):
                    continue
                runs.setdefault((i, name), []).append(_measure(name, cmd))
    for i, row in enumerate(rows):
        for name in tools[i]:
            got = runs.get((i, name))
            if not got:
                row[name] = "not built"
            elif "error" in got[0]:
                row[name] = got[0]
            else:
                row[name] = {k: float(np.median([r[k] for r in got])) for k in got[0] if got[0][k] is not None}
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runtimes", type=Path, default=Path.home() / ".cache" / "bitk-runtimes")
    p.add_argument("--out", type=Path, default=Path("/tmp/bitk-runtime-check"))
    p.add_argument("--speed", action="store_true", help="also part 2: SmolLM2-135M-sized files, size and speed")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runtimes = {
        "bitnet.cpp": args.runtimes / "oracle" / "bin_dump_logits",
        "llama.cpp": args.runtimes / "upstream" / "bin_dump_logits",
    }
    results = {"agreement": part1(runtimes, args.out)}
    if args.speed:
        results["speed"] = part2(args.runtimes, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
