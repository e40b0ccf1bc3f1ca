"""Evidence that the recipes work, at tiny scale on CPU (docs/recipes.md records its output).

1. A full-precision teacher: the `tiny` preset with ternary=false, trained on the embedded corpus.
2. Ternary students train for the same steps on the same data, with the same hyperparameters,
   either with CE only (training=base) or with BitDistill's stage-3 objectives
   (training=bitdistill_full objectives.phase=2: CE + logits KD + attention relation from the
   teacher). Two pairs: students initialised from scratch (the tiny preset, seed 0), and students
   converted from the teacher's weights (BitLinear + SubLN, BitDistill's stage 1).
3. LRC calibration (training=lrc_calibration, the teacher's hidden states as targets) of the
   teacher ternarized without training (post-training quantization, LRC's setting) and of the
   CE student converted from the teacher.
Every held-out loss is the trainer's evaluation on the embedded corpus's held-out split.

    python docs/examples/recipe_evidence.py [--out runs/evidence] [--teacher-steps 800] [--steps 200]

About 25 minutes on a 2-core CPU (`--teacher PATH` reuses a trained teacher). Runs are
deterministic: the same machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bitk.data import TrainData, default_tokenizer
from bitk.eval import evaluate
from bitk.models import load_model
from bitk.train.config import parse_args
from bitk.train.loop import train

COMMON = ["logging.progress=false", "device=cpu", "export_gguf=none", "resume=none"]


def run(name: str, out: Path, *args: str) -> dict:
    start = time.perf_counter()
    summary = train(parse_args([*COMMON, f"output_dir={out / name}", *args]))
    summary["wall_s"] = time.perf_counter() - start
    print(
        f"== {name}: held-out loss {summary['eval_loss']:.4f} (ppl {summary['eval_perplexity']:.1f}), "
        f"{summary['wall_s']:.0f} s",
        flush=True,
    )
    return summary


def heldout_loss(path: str, ternary: bool) -> dict:
    """The trainer's held-out evaluation of a checkpoint loaded (and converted) as a run would."""
    cfg = parse_args([])
    ids, pos = TrainData(cfg.data, default_tokenizer(), seed=cfg.training.seed).heldout()
    result = evaluate(load_model(path, ternary=ternary), ids, pos, batch_size=cfg.training.micro_batch_size)
    return {"eval_loss": result.loss, "eval_perplexity": result.perplexity, "steps": 0, "wall_s": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/evidence"))
    parser.add_argument("--teacher", help="a trained full-precision checkpoint to reuse (skips step 1)")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200, help="steps of each student run and of LRC")
    args = parser.parse_args()
    out, n = args.out, args.steps
    every = [f"training.max_steps={n}", f"training.eval_every={n}", f"checkpoint.save_every={n}"]
    same = [*every, "training.warmup_steps=20"]  # the CE and the distilled student differ only in objectives
    distil = ["training=bitdistill_full", "objectives.phase=2"]

    if args.teacher:
        t_ckpt = args.teacher
        teacher = {**heldout_loss(t_ckpt, ternary=False), "steps": "(given)"}
    else:
        teacher = run(
            "teacher",
            out,
            "model.ternary=false",
            f"training.max_steps={args.teacher_steps}",
            f"training.lr={args.teacher_lr}",
            f"training.eval_every={args.teacher_steps // 4}",
        )
        t_ckpt = teacher["checkpoint"]
    scratch_ce = run("scratch_ce", out, "model=tiny", "training=base", "training.lr=3e-3", *same)
    scratch_kd = run(
        "scratch_bitdistill", out, "model=tiny", *distil, f"objectives.teacher={t_ckpt}", "training.lr=3e-3", *same
    )
    scratch_lkd = run(
        "scratch_logits_kd",
        out,
        "model=tiny",
        "training=bitdistill_full",
        "objectives.weights=ce=1,logits_kd=1",
        f"objectives.teacher={t_ckpt}",
        "training.lr=3e-3",
        *same,
    )
    ce = run("converted_ce", out, f"model={t_ckpt}", "training=base", "training.lr=1e-3", *same)
    kd = run("converted_bitdistill", out, f"model={t_ckpt}", *distil, "training.lr=1e-3", *same)
    ptq = heldout_loss(t_ckpt, ternary=True)
    print(f"== teacher ternarized without training: held-out loss {ptq['eval_loss']:.4f}", flush=True)
    ptq_lrc = run("ptq_lrc", out, f"model={t_ckpt}", "training=lrc_calibration", *every)
    ce_lrc = run(
        "converted_ce_lrc",
        out,
        f"model={ce['checkpoint']}",
        "training=lrc_calibration",
        f"objectives.teacher={t_ckpt}",
        *every,
    )

    rows = {
        "teacher (full precision)": teacher,
        "ternary student from scratch, CE only": scratch_ce,
        "ternary student from scratch, BitDistill stage 3": scratch_kd,
        "ternary student from scratch, CE + logits KD (no relation)": scratch_lkd,
        "ternary student converted from the teacher, CE only": ce,
        "ternary student converted from the teacher, BitDistill stage 3": kd,
        "teacher ternarized, no training (PTQ)": ptq,
        "PTQ + LRC calibration": ptq_lrc,
        "converted CE student + LRC calibration": ce_lrc,
    }
    print("\n| run | steps | held-out loss | perplexity | wall |\n|---|---|---|---|---|")
    for label, s in rows.items():
        print(f"| {label} | {s['steps']} | {s['eval_loss']:.4f} | {s['eval_perplexity']:.1f} | {s['wall_s']:.0f} s |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.json").write_text(
        json.dumps({k: {"eval_loss": v["eval_loss"], "steps": v["steps"]} for k, v in rows.items()}, indent=2) + "\n"
    )
    ok_kd = min(scratch_kd["eval_loss"], scratch_lkd["eval_loss"]) < scratch_ce["eval_loss"]
    ok_lrc = ptq_lrc["eval_loss"] < ptq["eval_loss"]
    base = scratch_ce["eval_loss"]
    print(
        f"\ndistillation beats CE only from scratch: {ok_kd} (stage 3: {scratch_kd['eval_loss'] < base}, "
        f"logits KD: {scratch_lkd['eval_loss'] < base}; converted from the teacher: "
        f"{kd['eval_loss'] < ce['eval_loss']}); LRC lowers the ternarized model's loss: {ok_lrc} "
        f"(the converted CE student's: {ce_lrc['eval_loss'] < ce['eval_loss']})"
    )
    raise SystemExit(0 if ok_kd and ok_lrc else 1)


if __name__ == "__main__":
    main()
