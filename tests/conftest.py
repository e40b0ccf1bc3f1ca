"""Test-wide settings: hypothesis runs derandomized under CI; Triton interprets kernels without a GPU;
no test reaches the Hugging Face hub: HF_HOME is a fresh folder, offline, that `hub_cache` fills
with small random models under the repo ids of bitk's presets."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub (it reads these once): the session's own, offline cache.
_HF_HOME = tempfile.mkdtemp(prefix="bitk-test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "TRANSFORMERS_CACHE"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be switched on
# before any module defining a kernel is imported (docs/kernels.md).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# BitLinear's CPU backward runs in bf16 where the CPU has bf16 dot products ("auto"), in float32
# elsewhere. The suite pins float32, the reference's formulas, so that its results are the same on
# every machine; the bf16 backward has its own tests, which force it (tests/nn).
os.environ.setdefault("BITK_CPU_BACKWARD", "float32")

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
# Test modules import these as `bitk_testing`. Tolerances are derived as CONTRIBUTING.md "Style" says:
# against a float64 reference, an implementation may err at most about twice as much as torch
# doing the same computation in the same low precision.
sys.modules["bitk_testing"] = sys.modules[__name__]


def assert_same_bits(got, want) -> None:
    """Each tensor of ``got`` equals its partner in ``want`` bit for bit (NaN where it has NaN);
    None where it has None."""
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


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


# --------------------------------------------------------------------------- a Hugging Face cache, offline
# Small random models saved in the hub cache's layout ($HF_HOME/hub/models--ORG--NAME/refs/main and
# snapshots/<commit>/) under the repo ids of bitk's presets, each with a tokenizer shaped like the
# real one (pre-tokenizer, special tokens, tokenizer_config.json), trained on the embedded corpus.

HUB_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
}
# tokenizer family -> (special tokens in id order, tokenizer_config.json roles)
TOKENIZER_FAMILIES = {
    "smollm": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>"],
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    ),
    "qwen2": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    ),
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
    ),
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(family: str, vocab_size: int):
    """A byte-level BPE shaped like a real family's tokenizer.json ("smollm", "qwen2", "llama3")."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from bitk.data import default_corpus
    from bitk.gguf.constants import REGEX_LLAMA3, REGEX_QWEN2

    specials, _ = TOKENIZER_FAMILIES[family]
    tok = Tokenizer(models.BPE())
    if family == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        regex = REGEX_QWEN2 if family == "qwen2" else REGEX_LLAMA3
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        if family == "qwen2":
            tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    first = family == "smollm"  # SmolLM2's special tokens take the first ids; Qwen's and Llama 3's follow the BPE
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - (0 if first else len(specials)),
        show_progress=False,
        special_tokens=specials if first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(default_corpus("train"), trainer=trainer)
    if not first:
        tok.add_special_tokens(specials)
    if family == "llama3":
        bos = specials[0]
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
                ),
            ]
        )
    return tok


def build_hub_repo(
    repo_id: str,
    kind: str,
    *,
    seed: int = 0,
    vocab_rows: int | None = None,
    tokens: int = 400,
    commit: str | None = None,
    config_changes: dict | None = None,
) -> Path:
    """Save a random bitk model as a Hugging Face repo snapshot in the session's hub cache; returns the folder.

    kind: "llama" (SmolLM2-like), "qwen3" (q/k norm, vocab rows padded past the tokenizer) or
    "bitnet" (ternary with SubLN, ReLU^2, a Llama-3 tokenizer that adds BOS), saved with
    `bitk.models.export_hf`, so the folder is what transformers writes.
    """
    import hashlib

    from bitk.models import CausalLM, ModelConfig, export_hf

    family = {"llama": "smollm", "qwen3": "qwen2", "bitnet": "llama3"}[kind]
    tok = make_tokenizer(family, tokens)
    _, roles = TOKENIZER_FAMILIES[family]
    ids = {role: tok.token_to_id(t) if t else None for role, t in roles.items()}
    config = ModelConfig(
        vocab_size=vocab_rows or tok.get_vocab_size(),
        **HUB_DIMS,
        hidden_act="relu2" if kind == "bitnet" else "silu",
        qk_norm=kind == "qwen3",
        ternary=kind == "bitnet",
        subln=kind == "bitnet",
        rope_theta=100000.0,
        bos_token_id=ids.get("bos_token") if ids.get("bos_token") is not None else ids.get("pad_token"),
        eos_token_id=ids["eos_token"],
        pad_token_id=ids.get("pad_token"),
    ).replace(**(config_changes or {}))
    torch.manual_seed(seed)
    model = CausalLM(config)
    scramble(model, seed)
    commit = commit or hashlib.sha1(f"{repo_id}:{kind}:{seed}".encode()).hexdigest()
    repo = Path(_HF_HOME) / "hub" / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / commit
    if folder.exists():
        shutil.rmtree(folder)
    export_hf(model, folder, dtype="bfloat16" if kind == "bitnet" else "float32", tokenizer=tok)
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_position_embeddings,
        **roles,
    }
    if family == "qwen2":
        tok_config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return folder


# repo id -> (kind, seed)
HUB_REPOS = {
    "HuggingFaceTB/SmolLM2-135M": ("llama", 1),
    "HuggingFaceTB/SmolLM2-360M": ("llama", 2),
    "Qwen/Qwen3-0.6B": ("qwen3", 3),
    "Qwen/Qwen3-4B": ("qwen3", 4),
    "microsoft/bitnet-b1.58-2B-4T-bf16": ("bitnet", 5),
}


@pytest.fixture(scope="session")
def hub_cache():
    """The session's offline Hugging Face cache holding every preset's repo (repo id -> snapshot folder).

    Qwen3 repos pad the vocabulary past the tokenizer (512 rows, 400 tokens), as Qwen3 does.
    """
    folders = {}
    for repo_id, (kind, seed) in HUB_REPOS.items():
        folder = Path(_HF_HOME) / "hub" / f"models--{repo_id.replace('/', '--')}"
        ref = folder / "refs" / "main"
        if ref.is_file():
            folders[repo_id] = folder / "snapshots" / ref.read_text().strip()
        else:
            folders[repo_id] = build_hub_repo(repo_id, kind, seed=seed, vocab_rows=512 if kind == "qwen3" else None)
    return folders
