"""Scale-out (bitk.train.distributed): two gloo processes on CPU against one process, same global batch.

Part 1 (independent of the loop): _dist_worker.py trains a micro CausalLM under torchrun with DDP
and FSDP2, with AdamW and with Muon + AdamW, and resumes from saved full states; the test compares
with one process accumulating gradients over the whole global batch. Part 2: ``torchrun -m bitk.train``
against ``python -m bitk.train`` on the same micro config, losses from metrics.jsonl.

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
