"""Evidence that data.mixture=influence learns a mixture, at tiny scale on CPU (docs/data.md records its output).

Three sources: `a` and `b`, the even and odd documents of the embedded corpus's train split (the
probe's distribution), and `noise`, documents of random characters. The probe is the embedded
corpus's held-out split (data.probe=default). The same model trains for the same steps twice:
with the influence mixture and with fixed equal weights. The script writes the sources, both runs,
results.json (the weights after each re-weighting, the probe loss at each evaluation) and
mixture-evidence.png (the weights of the influence run; the probe loss of both runs).

    python docs/examples/mixture_evidence.py [--out runs/mixture-evidence] [--steps 200] [--every 10]

About 5 minutes on a 2-core CPU with the defaults (the tiny preset, 16 x 64 tokens per step).
Runs are deterministic: the same machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bitk.data import default_corpus
from bitk.train.config import parse_args
from bitk.train.loop import train
from bitk.train.metrics import read_metrics

NOISE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?()[]{}<>/\\|@#$%^&*-_=+'\"~`"


def write_sources(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = default_corpus("train")
    rng = random.Random(0)
    noise = ["".join(rng.choice(NOISE_CHARS) for _ in range(6000)) for _ in range(40)]
    paths = []
    for name, rows in (("a", docs[0::2]), ("b", docs[1::2]), ("noise", noise)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/mixture-evidence"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10, help="data.mixture_every")
    parser.add_argument("--model", nargs="*", default=[], help="extra key=value settings (e.g. model.hidden_size=128)")
    args = parser.parse_args()
    sources = write_sources(args.out / "data")
    results = {}
    for mixture in ("influence", "fixed"):
        out = args.out / mixture
        summary = train(
            parse_args(
                [
                    f"data.sources=[{','.join(str(p) for p in sources)}]",
                    f"data.mixture={mixture}",
                    "data.probe=default",
                    "data.probe_tokens=1024",
                    f"data.mixture_every={args.every}",
                    "data.block_size=64",
                    f"training.max_steps={args.steps}",
                    "training.global_batch_size=16",
                    f"training.eval_every={max(1, args.steps // 10)}",
                    f"logging.log_every={args.every}",
                    "logging.progress=false",
                    "export_gguf=none",
                    "device=cpu",
                    "resume=none",
                    f"output_dir={out}",
                    *args.model,
                ]
            )
        )
        records = read_metrics(out / "metrics.jsonl")
        results[mixture] = {
            "probe_loss": summary["probe_loss"],
            "mixture": summary["mixture"],
            "source_tokens": summary["source_tokens"],
            "weights": [
                {"step": r["step"], **{k.removeprefix("mixture/"): v for k, v in r.items() if k.startswith("mixture/")}}
                for r in records
                if r["kind"] == "mixture"
            ],
            "probe_losses": [[r["step"], r["probe_loss"]] for r in records if r["kind"] == "eval"],
        }
        print(f"== {mixture}: probe loss {summary['probe_loss']:.4f}, mixture {summary['mixture']}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "mixture-evidence.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'mixture-evidence.png'}")


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=100)
    left, right = fig.subplots(1, 2)
    weights = results["influence"]["weights"]
    steps = [w["step"] for w in weights]
    for name in results["influence"]["mixture"]:
        left.step(steps, [w[name] for w in weights], where="post", label=name, linewidth=1.5)
    left.set(xlabel="step", ylabel="mixture weight", title="data.mixture=influence: weights", ylim=(0, None))
    for mixture, style in (("influence", "o-"), ("fixed", "s--")):
        losses = results[mixture]["probe_losses"]
        right.plot(*zip(*losses), style, label=mixture, linewidth=1.2, markersize=3)
    right.set(xlabel="step", ylabel="probe loss (nats / token)", title="loss on the probe (held-out text)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


if __name__ == "__main__":
    main()
