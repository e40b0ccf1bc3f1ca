"""Scale-out (bitk.train.distributed): two gloo processes on CPU against one process, same global batch.

Part 1 (independent of the loop): _dist_worker.py trains a micro CausalLM under torchrun with DDP
and FSDP2, with AdamW and with Muon + AdamW, and resumes from saved full states; the test compares
with one process accumulating gradients over the whole global batch. Part 2: ``torchrun -m bitk.train``
against ``python -m bitk.train`` on the same micro config, losses from metrics.jsonl.
Part 3: ``data.mixture=influence`` under torchrun: the re-weighted mixture against the single
process's, and the same data state on every rank (its tolerance is derived at MIXTURE_ATOL).

Tolerances, derived. Every rank runs the same micro-batch shapes as the single process, so the
forward and backward of each micro-batch are bit-identical; what differs is only the order in
which the per-micro-batch gradients are summed (all-reduce of two partial sums, or FSDP2's
reduce-scatter, instead of one running sum) -- about one float32 ulp (eps = 1.2e-7) per gradient
element. AdamW's update m / sqrt(v) turns that into a relative change of the same order, so
losses and gradient norms agree to a few ulps: we allow 1e-5 relative (about 20 ulps at loss 5.5).
That is 20x tighter than what a legitimate change of the accumulation split gives here (micro-batch
1 vs 2 in one process: ~2e-4), and a wrong shard (other data) or a missing gradient average (norm
x2) is off by far more. Muon orthogonalizes in bfloat16 (and, under FSDP2, with sharded DTensor
matmuls): one ulp in a gradient can round a bf16 value differently (2^-8 relative), and the ternary
weights and int8 activations then amplify it. For Muon the bound is therefore derived from the
single process itself: twice the spread between its two accumulation splits (micro-batch 1 vs 2),
the noise of an exactly equivalent computation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitk.train import distributed as D

HERE = Path(__file__).parent
WORKER = HERE / "_dist_worker.py"
ADAMW_RTOL = 1e-5
ADAMW_PARAM_ATOL = 1e-5  # lr 3e-3 x 4 steps moves weights by up to 1.2e-2; rounding moves them by ~1e-7


def _load_worker():
    spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchrun(args: list[str], *, cwd: Path, timeout: float = 300, env: dict | None = None) -> str:
    """Run ``torchrun --standalone --nproc_per_node 2 ARGS`` (a free port is picked); its output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def _rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (a, b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def _max_param_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), set(a) ^ set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --------------------------------------------------------------------------- one process


def test_single_process_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(3, 2)
    assert D.wrap_model(model, info, "fsdp") is model
    t = torch.tensor([1.5])
    assert D.all_reduce_mean(t, info) is t
    with D.no_sync(model, info, last_micro_step=False):
        pass
    D.barrier(info)
    D.cleanup(info)


def test_bad_arguments_are_rejected(monkeypatch):
    info = D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, enabled=False)
    with pytest.raises(ValueError, match="distributed must be one of auto, ddp, fsdp"):
        D.wrap_model(torch.nn.Linear(2, 2), info, "zero3")
    with pytest.raises(ValueError, match="device must be"):
        D.init_distributed("tpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="under torchrun each process takes the GPU of its local rank"):
        D.init_distributed("cuda:1")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="inconsistent"):
        D.init_distributed("cpu")
    with pytest.raises(ValueError, match="optimizers"):
        D.optimizer_list(object())


def test_single_process_state_round_trip():
    """One process saves in the same format as many (DCP, parameter names as keys) and resumes exactly."""
    from types import SimpleNamespace

    from bitk.models import CausalLM, ModelConfig
    from bitk.train.optim import build_optimizer

    info = D.init_distributed("cpu")
    config = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    opt_cfg = SimpleNamespace(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))

    def step(model, optimizer):
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = D.wrap_model(CausalLM(config), info, "auto")
        opt_a = build_optimizer(a, opt_cfg)
        step(a, opt_a)
        model_sd, optim_sd = D.state_dict_for_save(a, opt_a, info)
        assert "model.embed_tokens.weight" in model_sd and "model.embed_tokens.weight" in optim_sd["state"]
        model_sd = {k: v.clone() for k, v in model_sd.items()}
        optim_sd = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, optim_sd)
        expected = step(a, opt_a)
        torch.manual_seed(1)
        b = D.wrap_model(CausalLM(config), info, "auto")
        opt_b = build_optimizer(b, opt_cfg)
        D.load_state_for_resume(b, opt_b, model_sd, optim_sd, info)
        assert step(b, opt_b) == expected
    with pytest.raises(ValueError, match="no model/optimizer state"):
        D.load_state_for_resume(b, opt_b, None, None, info)


# --------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """Single-process references (in this process, one thread like the torchrun workers) and the
    two-process results of _dist_worker.py."""
    worker = _load_worker()
    out = tmp_path_factory.mktemp("dist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            refs = {opt: worker.reference(opt) for opt in worker.OPTIMIZERS}
            worker.MICRO_BATCH = 2  # the same global batch split differently: the spread of equivalent runs
            try:
                split2 = {opt: worker.reference(opt) for opt in worker.OPTIMIZERS}
            finally:
                worker.MICRO_BATCH = 1
    finally:
        torch.set_num_threads(threads)
    torch.save({opt: {"model": r["model"], "optim": r["optim"]} for opt, r in refs.items()}, out / "ref.pt")
    _torchrun([str(WORKER), str(out), str(out / "ref.pt")], cwd=HERE)
    results = torch.load(out / "results.pt", weights_only=True)
    return worker, refs, split2, results


def _bounds(opt: str, ref: dict, split2: dict) -> tuple[float, float, float]:
    """(loss rtol, grad-norm rtol, parameter atol) for optimizer ``opt`` (module doc)."""
    if opt == "adamw":
        return ADAMW_RTOL, ADAMW_RTOL, ADAMW_PARAM_ATOL
    return (
        2 * max(_rel(split2["losses"], ref["losses"]), ADAMW_RTOL),
        2 * max(_rel(split2["norms"], ref["norms"]), ADAMW_RTOL),
        2 * max(_max_param_diff(split2["model"], ref["model"]), ADAMW_PARAM_ATOL),
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_two_processes_match_one(worker_results, strategy, opt):
    worker, refs, split2, results = worker_results
    ref, got = refs[opt], results[f"{strategy}-{opt}"]
    steps = worker.STEPS
    loss_tol, norm_tol, param_tol = _bounds(opt, ref, split2[opt])
    assert got["losses"][0] == pytest.approx(ref["losses"][0], rel=ADAMW_RTOL)  # same weights, same batch
    assert _rel(got["losses"], ref["losses"][:steps]) <= loss_tol, (got["losses"], ref["losses"])
    assert _rel(got["norms"], ref["norms"][:steps]) <= norm_tol, (got["norms"], ref["norms"])
    assert _max_param_diff(got["model"], ref["model"]) <= param_tol
    assert ref["losses"][steps - 1] < ref["losses"][0] - 0.05  # the run learns: the comparison means something
    assert got["others_empty"], "the full state is gathered on rank 0 only"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_resume_from_single_process_state(worker_results, strategy, opt):
    """A single-process checkpoint, read by every rank, continues exactly where the single process went."""
    worker, refs, _, results = worker_results
    resumed = results[f"resume-{strategy}-{opt}-from-single"]
    assert resumed == pytest.approx(refs[opt]["losses"][worker.STEPS :], rel=ADAMW_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(("src", "dst"), [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_resume_across_strategies_from_rank0(worker_results, src, dst):
    """DDP's state held by rank 0 alone (broadcast on load) resumes under FSDP2, and back."""
    worker, refs, _, results = worker_results
    resumed = results[f"resume-{dst}-adamw-from-{src}"]
    assert resumed == pytest.approx(refs["adamw"]["losses"][worker.STEPS :], rel=ADAMW_RTOL)


# --------------------------------------------------------------------------- the trainer itself

# A micro run of `python -m bitk.train`: the tiny preset cut down, micro-batch 1 on every process so
# the single process and each rank run the same shapes (module doc); 4 sequences per step.
TRAIN_ARGS = [
    "model.num_hidden_layers=2",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "data.block_size=32",
    "data.max_eval_tokens=32",
    "training.max_steps=4",
    "training.warmup_steps=1",
    "training.global_batch_size=4",
    "training.micro_batch_size=1",
    "logging.log_every=1",
    "checkpoint.save_every=2",
    "training.eval_every=0",
    "export_gguf=none",
    "logging.progress=false",
]


def _train_losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """`bitk.train` in this process (one thread, like each torchrun worker): 4 steps, checkpoints at 2 and 4."""
    from bitk.train import parse_args, train

    out = tmp_path_factory.mktemp("train") / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            train(parse_args([*TRAIN_ARGS, f"output_dir={out}"]))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_trainer_ddp_matches_single_process(single_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m bitk.train distributed=ddp` logs the single process's losses."""
    out = tmp_path / "ddp"
    _torchrun(["-m", "bitk.train", *TRAIN_ARGS, "distributed=ddp", f"output_dir={out}"], cwd=tmp_path)
    expected, got = _train_losses(single_run), _train_losses(out)
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in got] == pytest.approx([expected[s] for s in got], rel=ADAMW_RTOL)
    assert expected[4] < expected[1]


@pytest.mark.slow
def test_trainer_fsdp_resumes_a_single_process_checkpoint(single_run, tmp_path):
    """FSDP2 on two processes resumes the single process's step-2 checkpoint and logs its steps 3 and 4."""
    out = tmp_path / "fsdp"
    checkpoint = single_run / "checkpoints" / "step-000002"
    assert checkpoint.is_dir()
    _torchrun(
        ["-m", "bitk.train", *TRAIN_ARGS, "distributed=fsdp", f"resume={checkpoint}", f"output_dir={out}"], cwd=tmp_path
    )
    expected, got = _train_losses(single_run), _train_losses(out)
    assert sorted(got) == [3, 4]
    assert [got[s] for s in (3, 4)] == pytest.approx([expected[s] for s in (3, 4)], rel=ADAMW_RTOL)
    final = out / "checkpoints" / "step-000004"
    assert (final / "model.safetensors").is_file()  # the gathered full state, written by rank 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_trainer_runs_a_curriculum_under_torchrun(tmp_path, strategy):
    """The unified recipe (CE, then CE + DLM in one forward) on two processes: objectives averaged over ranks."""
    out = tmp_path / strategy
    _torchrun(
        [
            "-m",
            "bitk.train",
            *TRAIN_ARGS,
            "training=unified",
            "objectives.weights=0:ce=1;0.5:ce=1,dlm=1",
            f"distributed={strategy}",
            f"output_dir={out}",
        ],
        cwd=tmp_path,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in records if r["kind"] == "train"]
    assert [sorted(r["objectives"]) for r in train] == [["ce"], ["ce"], ["ce", "dlm"], ["ce", "dlm"]]
    for r in train:
        assert r["loss"] == pytest.approx(sum(r["objectives"].values()), rel=1e-5)


# --------------------------------------------------------------------------- data.mixture=influence

# Three local sources (even, odd: halves of the embedded corpus; noise: random letters) re-weighted
# by the influence mixture every 2 steps against the default probe, 6 steps of the micro run: the
# mixture records come at steps 0, 2 and 4.
MIXTURE_SOURCES = ("even", "odd", "noise")
MIXTURE_STEPS, MIXTURE_EVERY = 6, 2
# The alignment scores are ratios of float32 dot products over the compared gradients (~1.6e5
# elements), gradients whose per-micro-batch parts are summed in another order on two processes
# (module doc), and under FSDP2 the dot products are summed shard by shard. These runs train the
# float model with AdamW's eps at 1e-3, so the weights move continuously with the gradients: over
# training.seed=0..12 the scores (0.01-0.10 in magnitude) and weights differed from the single
# process's by 5e-8 at most, under DDP and FSDP2. 1e-5 is above that noise by 200x, and 200x below
# the smallest real movement of a weight here (2.2e-3 off 1/3).
# With bitk's defaults the same comparison is discontinuous. Ternary rounding is a step function of
# the weights: a summation-order difference of 1e-8 that carries a weight across a rounding
# boundary changes its code, and the later scores with it (4 of the 13 seeds differed by 4e-6 to
# 1.6e-3, the others by 8e-8 at most). AdamW divides by sqrt(v) + eps: with eps 1e-8 the weights
# whose gradients are near 0 take steps of ~lr whatever the gradients' size (float model, eps 1e-8:
# one seed at 2.4e-6, the others within 4e-7). Ternary training on two processes is compared with
# one process by the tests above.
MIXTURE_ATOL = 1e-5
MIXTURE_CONTINUOUS = ("model.ternary=false", "training.eps=0.001")

# `torchrun THIS_SCRIPT ARGS`: `python -m bitk.train`, and each rank appends the data state it holds
# at each checkpoint (`TrainData.state_dict()`: plain JSON values) to $BITK_TEST_RANK_STATES/rank-R.jsonl.
RANK_STATES_SCRIPT = """
import json, os, sys
from pathlib import Path

from bitk.train import loop
from bitk.train.__main__ import main

save = loop.Run.save


def save_and_record(self):
    path = save(self)
    out = Path(os.environ["BITK_TEST_RANK_STATES"]) / f"rank-{self.info.rank}.jsonl"
    with out.open("a") as f:
        f.write(json.dumps({"step": self.step, "data": self.data.state_dict()}) + "\\n")
    return path


loop.Run.save = save_and_record
sys.exit(main())
"""


def _write_mixture_sources(folder: Path) -> list[str]:
    """The three sources as jsonl files of {"text": ...} rows (the corpus's first 24 training documents)."""
    import random

    from bitk.data import default_corpus

    folder.mkdir(parents=True, exist_ok=True)
    docs = default_corpus("train")[:24]
    rng = random.Random(0)
    noise = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,") for _ in range(600)) for _ in range(12)]
    paths = []
    for name, texts in zip(MIXTURE_SOURCES, (docs[0::2], docs[1::2], noise)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths.append(str(path))
    return paths


def _mixture_args(sources: list[str], output_dir: Path) -> list[str]:
    """The micro run (conftest.py; global batch 4 = micro-batch 2 x 2 processes or x 2 accumulation)."""
    from bitk_train_testing import micro_args

    return micro_args(
        output_dir,
        f"data.sources=[{','.join(sources)}]",
        "data.mixture=influence",
        "data.probe=default",
        f"data.mixture_every={MIXTURE_EVERY}",
        "data.probe_tokens=128",
        f"training.max_steps={MIXTURE_STEPS}",
        *MIXTURE_CONTINUOUS,
    )


def _records(output_dir: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in records if r["kind"] == kind]


def _saved_data_state(output_dir: Path, step: int) -> dict:
    path = output_dir / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt"
    return torch.load(path, weights_only=False)["data"]


@pytest.fixture(scope="module")
def mixture_single(tmp_path_factory):
    """The influence mixture in this process (one thread, like each torchrun worker): (sources, output_dir)."""
    from bitk.train import parse_args, train

    root = tmp_path_factory.mktemp("mixture")
    sources = _write_mixture_sources(root / "sources")
    out = root / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            train(parse_args(_mixture_args(sources, out)))
    finally:
        torch.set_num_threads(threads)
    return sources, out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_influence_mixture_under_torchrun(mixture_single, tmp_path, strategy):
    """data.mixture=influence on two processes sets the single process's weights, the same on every rank."""
    sources, single = mixture_single
    out, rank_states = tmp_path / strategy, tmp_path / "rank-states"
    rank_states.mkdir()
    script = tmp_path / "train_recording_rank_states.py"
    script.write_text(RANK_STATES_SCRIPT)
    _torchrun(
        [str(script), *_mixture_args(sources, out), f"distributed={strategy}"],
        cwd=tmp_path,
        env={"BITK_TEST_RANK_STATES": str(rank_states)},
    )
    assert (out / "checkpoints" / f"step-{MIXTURE_STEPS:06d}" / "model.safetensors").is_file()

    def weights(r: dict) -> list[float]:
        return [r[f"mixture/{n}"] for n in MIXTURE_SOURCES]

    def scores(r: dict) -> list[float]:
        return [r[f"alignment/{n}"] for n in MIXTURE_SOURCES]

    expected, got = _records(single, "mixture"), _records(out, "mixture")
    steps = list(range(0, MIXTURE_STEPS, MIXTURE_EVERY))  # 0: the start; 2, 4: before steps 3 and 5 train
    assert [r["step"] for r in expected] == [r["step"] for r in got] == steps
    assert weights(expected[0]) == weights(got[0]) == [1 / 3] * 3
    assert not any(k.startswith("alignment/") for k in (*expected[0], *got[0]))
    for e, g in zip(expected[1:], got[1:]):
        # every source drew rows in these steps, so each has a score
        assert None not in scores(e) and None not in scores(g), (e, g)
        assert scores(g) == pytest.approx(scores(e), rel=0, abs=MIXTURE_ATOL), (g, e)
        assert weights(g) == pytest.approx(weights(e), rel=0, abs=MIXTURE_ATOL), (g, e)
        assert sum(weights(g)) == pytest.approx(1.0, abs=1e-12)
        assert min(weights(g)) >= 0.1 / 3  # data.mixture_floor's share
        assert max(abs(w - 1 / 3) for w in weights(e)) > 100 * MIXTURE_ATOL  # the weights moved: the check can fail
    assert weights(expected[2]) != weights(expected[1])

    # Every rank holds the same data state, bit for bit, and it is what rank 0 saved: the same weights
    # (the latest re-weighting's), the same change count and position, the same blocks taken per source.
    last_weights = {4: weights(got[1]), 6: weights(got[2])}  # checkpoint 4 precedes the re-weighting at 4
    per_rank = [
        [json.loads(line) for line in (rank_states / f"rank-{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)
    ]
    assert [s["step"] for s in per_rank[0]] == [s["step"] for s in per_rank[1]] == [4, 6]
    for s0, s1 in zip(*per_rank):
        saved = _saved_data_state(out, s0["step"])
        assert s0["data"] == s1["data"] == saved
        assert saved["weights"] == last_weights[s0["step"]]
        assert saved["mixture_version"] == len(steps) - 1 - (s0["step"] == 4)
        # The weights differ from the single process's by ~1e-8 (not bitwise), far too little to move a
        # seeded source choice (a uniform draw within 1e-8 of a bound of the cumulative weights): the
        # same blocks, so the same per-source counts, and the losses agree to the summation order.
        assert saved["sources"] == _saved_data_state(single, s0["step"])["sources"]

    train_e, train_g = _records(single, "train"), _records(out, "train")
    assert [r["step"] for r in train_g] == list(range(1, MIXTURE_STEPS + 1))
    counts = [{k: v for k, v in r.items() if k.startswith("tokens/")} for r in train_g]
    assert counts == [{k: v for k, v in r.items() if k.startswith("tokens/")} for r in train_e]
    # the steps that re-weight first (3 and 5) drew 4 blocks from 3 sources: one source drew a single
    # block, so one rank had none of its rows and took part with a zero-weight pass (collectives in step)
    for step in (s + 1 for s in steps[1:]):
        drawn = [counts[step - 1][f"tokens/{n}"] - counts[step - 2][f"tokens/{n}"] for n in MIXTURE_SOURCES]
        assert sum(drawn) == 4 * 32 and 32 in drawn, drawn
    assert [r["loss"] for r in train_g] == pytest.approx([r["loss"] for r in train_e], rel=ADAMW_RTOL)
    assert all("probe_loss" in r for r in _records(out, "eval"))
