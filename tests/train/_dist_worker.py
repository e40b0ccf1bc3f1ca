"""Data-parallel parity worker for test_distributed.py (not a test module itself).

Trains a micro CausalLM for a few optimizer steps on a fixed sequence of global batches, either in
one process with gradient accumulation (`reference`, imported by the test) or under torchrun with
`bitk.train.distributed` (``torchrun --nproc_per_node 2 _dist_worker.py OUT REF``): DDP and FSDP2,
with the trainer's chunked next-token loss (several chunks per sequence), each with AdamW and with
Muon + AdamW (`bitk.train.optim.build_optimizer`), then resumes through
`state_dict_for_save` / `load_state_for_resume`. Rank 0 writes what it saw to OUT/results.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from bitk.models import CausalLM, ModelConfig
from bitk.objectives.chunked import chunked_next_token_ce
from bitk.train import distributed as D
from bitk.train.optim import build_optimizer

CONFIG = ModelConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    ternary=True,
)
STEPS = 4  # optimizer steps compared (the reference runs one more: the resumed step)
GLOBAL_BATCH = 4  # sequences per optimizer step, whatever the number of processes
MICRO_BATCH = 1  # sequences per forward/backward
BLOCK = 32  # tokens per sequence
OPTIMIZERS = ("adamw", "muon")
CASES = [(strategy, opt) for strategy in ("ddp", "fsdp") for opt in OPTIMIZERS]


def batches(steps: int) -> torch.Tensor:
    """[steps, GLOBAL_BATCH, BLOCK + 1] token ids: input and shifted target of every step.

    Arithmetic progressions mod vocab (random start, stride 1..3): learnable, so the loss moves.
    """
    g = torch.Generator().manual_seed(1234)
    start = torch.randint(0, CONFIG.vocab_size, (steps, GLOBAL_BATCH, 1), generator=g)
    stride = torch.randint(1, 4, (steps, GLOBAL_BATCH, 1), generator=g)
    return (start + stride * torch.arange(BLOCK + 1)) % CONFIG.vocab_size


def build(seed: int, info: D.DistInfo, strategy: str, optimizer: str):
    torch.manual_seed(seed)
    model = D.wrap_model(CausalLM(CONFIG), info, strategy)
    assert isinstance(D.unwrap_model(model), CausalLM)
    cfg = SimpleNamespace(optimizer=optimizer, lr=3e-3, muon_lr=0.02, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    return model, build_optimizer(model, cfg)


def train_steps(model, optimizer, data: torch.Tensor, info: D.DistInfo) -> tuple[list[float], list[float]]:
    """One optimizer step per data[i] on this rank's contiguous share of it; (losses, gradient norms)."""
    per_rank = GLOBAL_BATCH // info.world_size
    accum = per_rank // MICRO_BATCH
    losses, norms = [], []
    for rows in data:
        mine = rows[info.rank * per_rank : (info.rank + 1) * per_rank]
        total = torch.zeros(())
        for i in range(accum):
            chunk = mine[i * MICRO_BATCH : (i + 1) * MICRO_BATCH]
            with D.no_sync(model, info, last_micro_step=i == accum - 1):
                # the trainer's loss, in chunks of 8 tokens: the head's gradients come from its forward
                out = model(chunk, logits=False)
                loss = chunked_next_token_ce(out.last_hidden, out.head, chunk, rows=8) / accum
                loss.backward()
            total += loss.detach()
        # The averaged gradient's norm: AdamW is blind to a gradient's scale, the norm is not.
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        norms.append((norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(D.all_reduce_mean(total, info).item())
    return losses, norms


def reference(optimizer: str) -> dict:
    """Single process, gradient accumulation over the whole global batch: STEPS + 1 steps."""
    info = D.init_distributed("cpu")
    assert not info.enabled
    model, opt = build(0, info, "ddp", optimizer)
    data = batches(STEPS + 1)
    losses, norms = train_steps(model, opt, data[:STEPS], info)
    model_sd, optim_sd = D.state_dict_for_save(model, opt, info)
    state = {k: v.clone() for k, v in model_sd.items()}
    optim_sd = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, optim_sd)
    more, more_norms = train_steps(model, opt, data[STEPS:], info)
    return {"losses": losses + more, "norms": norms + more_norms, "model": state, "optim": optim_sd}


def main(out: Path, ref_file: Path) -> None:
    info = D.init_distributed("cpu")
    assert info.enabled and info.world_size == 2, info
    data = batches(STEPS + 1)
    results: dict = {"world_size": info.world_size}
    saved = {}
    for strategy, opt_name in CASES:
        case = f"{strategy}-{opt_name}"
        model, optimizer = build(0, info, strategy, opt_name)
        results[case] = dict(zip(("losses", "norms"), train_steps(model, optimizer, data[:STEPS], info)))
        saved[case] = D.state_dict_for_save(model, optimizer, info)
        results[case]["model"] = {k: v.clone() for k, v in saved[case][0].items()}
        empty = torch.tensor([int(not saved[case][0] and not saved[case][1]) if info.rank else 0])
        torch.distributed.all_reduce(empty)
        results[case]["others_empty"] = bool(empty.item())  # rank 1 got no state
        del model, optimizer

    refs = torch.load(ref_file, weights_only=True)
    # Every rank reads the single-process state (a shared file), into models built from another seed.
    for strategy, opt_name in CASES:
        model, optimizer = build(99, info, strategy, opt_name)
        ref = refs[opt_name]
        D.load_state_for_resume(model, optimizer, ref["model"], ref["optim"], info)
        results[f"resume-{strategy}-{opt_name}-from-single"] = train_steps(model, optimizer, data[STEPS:], info)[0]
    # Rank 0 alone holds the state (broadcast): DDP's state into FSDP2 and back.
    for src, dst in (("ddp", "fsdp"), ("fsdp", "ddp")):
        model, optimizer = build(99, info, dst, "adamw")
        m_sd, o_sd = saved[f"{src}-adamw"]
        D.load_state_for_resume(model, optimizer, m_sd if info.is_main else None, o_sd if info.is_main else None, info)
        results[f"resume-{dst}-adamw-from-{src}"] = train_steps(model, optimizer, data[STEPS:], info)[0]

    if info.is_main:
        torch.save(results, out / "results.pt")
    D.barrier(info)
    D.cleanup(info)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
