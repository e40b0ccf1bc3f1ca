"""What a pack writes, decided before any byte is written: arch, tensor types, padding, fallbacks, refusals.

The rules (docs/gguf.md "What is written", "Fallbacks and refusals"): a BitNet model (SubLN) gets
the BitNet arch of its FFN activation, a Qwen3 model without SubLN the `qwen3` arch (TQ1_0/TQ2_0 for
upstream llama.cpp); norms are F32, the embedding F16 or F32, the seven projections the chosen
type. A width the type's blocks do not divide is zero-padded (`bitk.models.padding`, --pad auto)
when that makes every projection fit, else those projections fall back to F16 (said in the
summary). Whatever no runtime graph evaluates (no SubLN, q/k norms together with SubLN, attention
biases, an untied BitNet head) is refused unless an --allow-* flag accepts the change, which the
file then records. Planning reads configs and headers only (plus the head of an untied model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitk.formats.constants import I2S_LAYOUTS, I2S_ROWS_INTERLEAVED, row_multiple
from bitk.gguf.constants import (
    ACTIVATION_BY_ARCH,
    ARCH_ALIASES,
    ARCH_BY_ACTIVATION,
    ARCH_CHOICES,
    ARCH_QWEN3,
    ATTENTION_BIASES,
    EMBEDDING,
    EMBEDDING_TYPE_CHOICES,
    LM_HEAD,
    PROJECTIONS,
    QTYPE_CHOICES,
    TERNARY_TYPES,
    hf_to_gguf_names,
)
from bitk.gguf.tokenizer import GGUFVocab, read_vocab
from bitk.models.padding import PaddedSource, Padding, plan_padding, why_not_paddable
from bitk.models.sources import tensor_shapes

__all__ = ["PackOptions", "TensorPlan", "PackPlan", "plan_pack", "projection_types", "ProjectionTypes", "PAD_CHOICES"]

PAD_CHOICES = ("auto", "none")


@dataclass(frozen=True)
class PackOptions:
    """The choices of one pack (the CLI's options; see docs/gguf.md)."""

    qtype: str = "i2_s"
    """Type of the seven projections: i2_s, tq1_0, tq2_0, f16 or f32."""
    arch: str = "auto"
    """auto (by the model), bitnet-b1.58 (relu2), bitnet (silu) or qwen3; an explicit arch must match."""
    pad: str = "auto"
    """auto: zero-pad widths the type's blocks do not divide when that makes every projection
    ternary (the file computes the same function); none: such projections fall back to F16."""
    i2s_layout: str = "x86"
    """I2_S byte layout the target bitnet.cpp build reads: x86 (released builds), arm, x86-1x4."""
    embedding_type: str = "f16"
    """token_embd type: f16 or f32."""
    tokenizer_pre: str | None = None
    """llama.cpp pre-tokenizer type, instead of detecting it from tokenizer.json."""
    tokenizer: str | Path | None = None
    """Folder with tokenizer.json to use instead of the source's own."""
    allow_untied_head: bool = False
    """Drop an lm_head that differs from the embedding (the BitNet graphs use the embedding as head)."""
    allow_drop_bias: bool = False
    """Drop attention biases, which the BitNet graphs do not add."""
    name: str | None = None
    """general.name; default the source folder's name."""

    def normalized(self) -> PackOptions:
        """A copy with names canonicalised; ValueError naming a bad choice."""
        qtype = str(self.qtype).lower()
        if qtype not in QTYPE_CHOICES:
            raise ValueError(f"unknown --type {self.qtype!r}; choose one of {', '.join(QTYPE_CHOICES)}")
        emb = str(self.embedding_type).lower()
        if emb not in EMBEDDING_TYPE_CHOICES:
            raise ValueError(f"unknown --embedding-type {self.embedding_type!r}; choose f16 or f32")
        if self.arch not in ARCH_CHOICES and self.arch not in ARCH_ALIASES:
            raise ValueError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCH_CHOICES)}")
        if self.pad not in PAD_CHOICES:
            raise ValueError(f"unknown --pad {self.pad!r}; choose one of {', '.join(PAD_CHOICES)}")
        if self.i2s_layout not in I2S_LAYOUTS:
            raise ValueError(f"unknown --i2s-layout {self.i2s_layout!r}; choose one of {', '.join(I2S_LAYOUTS)}")
        return PackOptions(**{**self.__dict__, "qtype": qtype, "embedding_type": emb})


@dataclass
class TensorPlan:
    """One tensor of the output file."""

    name: str
    """GGUF name."""
    source: str
    """Hugging Face name in the source."""
    role: str
    """'embedding', 'norm' or 'projection'."""
    shape: tuple[int, ...]
    """numpy shape [out, in] (ggml ne is the reverse)."""
    type: str
    """ggml type name written: F32, F16, I2_S, TQ1_0, TQ2_0."""
    fallback: str | None = None
    """Why the tensor is not in the requested type, if it is not."""


@dataclass
class PackPlan:
    arch: str
    qtype: str
    """ggml name of the requested projection type."""
    options: PackOptions
    ternary: bool
    """Projections are ternarized (ternary source) or written as they are (full precision + SubLN)."""
    tensors: list[TensorPlan]
    vocab: GGUFVocab
    changes: list[str] = field(default_factory=list)
    """What an --allow-* flag changed in the model's function (recorded in the file)."""
    notes: list[str] = field(default_factory=list)
    """Fallbacks and other facts the summary reports."""
    source: Any = None
    """What the tensors are read from: the source, or its zero-padded view (`PaddedSource`)."""
    padding: Padding | None = None
    """The zero-padding applied, if any."""

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.shape)) for t in self.tensors)


def _layer_names(patterns: tuple[str, ...], layers: int) -> list[str]:
    return [p.format(i=i) for i in range(layers) for p in patterns]


def _fits(qtype: str, layout: str, shape: tuple[int, ...]) -> str | None:
    """None if a [out, in] weight can be stored as `qtype`, else why not."""
    rows, cols = shape
    multiple = row_multiple(qtype)
    if cols % multiple:
        return f"{qtype} needs in_features % {multiple} == 0, got {cols}"
    if qtype == "I2_S" and layout == "x86-1x4" and rows % I2S_ROWS_INTERLEAVED:
        return f"I2_S x86-1x4 needs out_features % {I2S_ROWS_INTERLEAVED} == 0, got {rows}"
    return None


def _arch(c: Any, qtype: str, opts: PackOptions, where: str) -> str:
    """The GGUF architecture of a model, or ValueError saying why no runtime graph evaluates it."""
    ways_out = (
        "Ways out: convert Qwen3 without sub-norms (model.subln=false when training; "
        "bitk.load_model(..., subln=False)), which upstream llama.cpp runs as arch qwen3 with "
        "--type tq1_0 or tq2_0; or run this checkpoint with bitk's own inference (bitk.load_model, "
        "python -m bitk.eval)"
    )
    if c.qk_norm and c.subln:
        raise ValueError(
            f"{where}: the model has both Qwen3's q/k norms and BitNet's sub-norms (attn_sub_norm, "
            f"ffn_sub_norm); no runtime has a graph with both (bitnet.cpp's BitNet graphs have no q/k "
            f"norms, llama.cpp's qwen3 graph no sub-norms), so a GGUF file of it would run nowhere. {ways_out}"
        )
    if c.qk_norm:
        if opts.arch not in ("auto", ARCH_QWEN3):
            raise ValueError(f"--arch {opts.arch} has no q/k norms; a Qwen3 model without sub-norms is arch qwen3")
        if qtype == "I2_S":
            raise ValueError(
                f"{where}: I2_S is read only by bitnet.cpp, which has no qwen3 architecture; write this "
                "model with --type tq1_0 or tq2_0 (upstream llama.cpp runs them as arch qwen3) or f16/f32"
            )
        if c.hidden_act != "silu":
            raise ValueError(f"{where}: arch qwen3 has a SiLU FFN; the model uses {c.hidden_act}")
        return ARCH_QWEN3
    if not c.subln:
        raise ValueError(
            f"{where}: the model has no SubLN (attn_sub_norm / ffn_sub_norm), which every BitNet GGUF graph "
            "applies; a plain Llama model is not a BitNet model. Convert it with bitk first "
            "(bitk.load_model inserts SubLN with gain 1) and pack that checkpoint"
        )
    arch_for_act = ARCH_BY_ACTIVATION[c.hidden_act]
    if opts.arch == "auto":
        return arch_for_act
    arch = ARCH_ALIASES.get(opts.arch, opts.arch)
    if arch == ARCH_QWEN3:
        raise ValueError(f"--arch qwen3 needs Qwen3's q/k norms and no sub-norms; {where} is a BitNet model")
    if ACTIVATION_BY_ARCH[arch] != c.hidden_act:
        raise ValueError(
            f"--arch {opts.arch} evaluates a {ACTIVATION_BY_ARCH[arch]} FFN but the model uses {c.hidden_act}; "
            f"the matching arch is {arch_for_act} (or --arch auto)"
        )
    return opts.arch


def projection_types(config: Any, qtype: str, options: PackOptions | None = None) -> ProjectionTypes:
    """The ggml type of every projection of a model of `config` packed as `qtype`, and the padding.

    `qtype`: a --type choice (i2_s, tq1_0, ...) or ggml name. What `plan_pack` writes, decided from
    the config alone (also what `bitk.gguf.runtime_numerics` reads to predict the runtime).
    """
    opts = (options or PackOptions()).normalized()
    qtype = QTYPE_CHOICES.get(str(qtype).lower(), qtype)
    names = [n for n in tensor_shapes(config) if n.endswith("_proj.weight")]

    def why_not(c: Any) -> dict[str, str]:
        if qtype not in TERNARY_TYPES:
            return {}
        shapes = tensor_shapes(c)
        return {n: why for n in names if (why := _fits(qtype, opts.i2s_layout, shapes[n])) is not None}

    misfits = why_not(config)
    padding, note = None, None
    if misfits and opts.pad == "auto":
        padding = plan_padding(config, lambda shape: _fits(qtype, opts.i2s_layout, shape) is None)
        if padding is not None:
            misfits = why_not(padding.padded)
        else:
            why = why_not_paddable(config)
            note = "no zero-padding makes every projection fit" + (
                f" ({why})" if why else " (none within 4x the attention heads)"
            )
    types = {n: ("F16" if n in misfits else qtype) for n in names}
    return ProjectionTypes(types, misfits, padding, note)


@dataclass
class ProjectionTypes:
    types: dict[str, str]
    """HF projection name -> ggml type written."""
    fallbacks: dict[str, str]
    """HF projection name -> why it is F16 instead of the requested type."""
    padding: Padding | None
    """The zero-padding that makes every projection fit, if one is applied."""
    note: str | None = None
    """Why no padding helps, when some projection falls back under --pad auto."""


def plan_pack(src, options: PackOptions | None = None) -> PackPlan:
    """Decide everything about packing `src` (a bitk.models.sources.ModelSource); ValueError if refused."""
    opts = (options or PackOptions()).normalized()
    c = src.config
    where = str(src.path)
    qtype = QTYPE_CHOICES[opts.qtype]
    changes: list[str] = []
    notes: list[str] = []

    # --- what the runtimes' graphs can evaluate
    if c.lrc_rank_ratio:
        raise ValueError(
            f"{where}: the model has low-rank correction factors (LRC, lrc_rank_ratio={c.lrc_rank_ratio}), which "
            "no GGUF graph evaluates: the packed model would lose the correction. Keep the bitk checkpoint "
            "for LRC models (python -m bitk.eval runs it)"
        )
    if not c.ternary and qtype in TERNARY_TYPES:
        raise ValueError(
            f"{where}: the model is full precision (ternary=false); writing it as {qtype} would ternarize weights "
            "it was not trained as ternary. Use --type f16 or --type f32, or train/convert it to ternary first"
        )
    arch = _arch(c, qtype, opts, where)
    qwen3 = arch == ARCH_QWEN3
    if ACTIVATION_BY_ARCH[arch] == "relu2" and qtype != "I2_S":
        notes.append(
            f"only bitnet.cpp runs this file: upstream llama.cpp has no architecture for a ReLU^2 FFN "
            f"(it refuses arch {arch}); its {qtype} loads in bitnet.cpp's llama.cpp"
        )
    if not qwen3 and c.q_size != c.hidden_size:
        raise ValueError(
            f"{where}: the attention width num_attention_heads*head_dim = {c.q_size} differs from hidden_size "
            f"{c.hidden_size}; the BitNet graphs size attn_sub_norm by hidden_size, so no runtime loads the file"
        )
    if c.attention_bias:
        if not opts.allow_drop_bias:
            raise ValueError(
                f"{where}: the model has attention biases (q/k/v/o_proj.bias), which the {arch} graph "
                "does not add; pass --allow-drop-bias to drop them anyway"
            )
        changes.append(f"dropped the q/k/v/o biases of {c.num_hidden_layers} layers (--allow-drop-bias)")
    untied = False
    if not c.tie_word_embeddings:
        same = np.array_equal(src.tensor(LM_HEAD), src.tensor(EMBEDDING))
        if same:
            notes.append("lm_head equals the embedding: written tied")
        elif qwen3:
            untied = True
        elif not opts.allow_untied_head:
            raise ValueError(
                f"{where}: the model has its own output head (lm_head differs from the embedding); the BitNet "
                "GGUF graphs use the token embedding as the head and ignore output.weight. Pass "
                "--allow-untied-head to drop lm_head and use the embedding"
            )
        else:
            changes.append("dropped lm_head (--allow-untied-head): the token embedding is the output head")

    # --- widths: zero-padding where it makes every projection fit the type's blocks
    decided = projection_types(c, qtype, opts)
    padding = decided.padding
    if padding is not None:
        src = PaddedSource(src, padding)
        c = src.config
        notes.append(
            f"zero-padded ({padding.describe()}) so every projection is {qtype}: the file computes "
            "the same logits as the model (its own dimensions are recorded as bitk.unpadded.*)"
        )
    elif decided.note is not None:
        notes.append(decided.note)

    # --- tensors and their types
    names = hf_to_gguf_names(c.num_hidden_layers, arch, untied_head=untied)
    present = set(src.names())
    dropped = set(_layer_names(ATTENTION_BIASES, c.num_hidden_layers)) | {LM_HEAD}
    unknown = sorted(present - set(names) - dropped)
    if unknown:
        raise ValueError(f"{where}: tensor(s) {', '.join(unknown[:6])} have no place in a GGUF model of arch {arch}")
    projections = set(_layer_names(PROJECTIONS, c.num_hidden_layers))
    emb_type = opts.embedding_type.upper()
    tensors: list[TensorPlan] = []
    fallbacks: dict[str, list[str]] = {}
    for hf, gg in names.items():
        if hf not in present:
            raise ValueError(f"{where}: tensor {hf} is missing")
        shape = tuple(src.shape(hf))
        if hf in (EMBEDDING, LM_HEAD):
            tensors.append(TensorPlan(gg, hf, "embedding", shape, emb_type))
        elif hf in projections:
            why = decided.fallbacks.get(hf)
            if why is not None:
                fallbacks.setdefault(why, []).append(gg)
            tensors.append(TensorPlan(gg, hf, "projection", shape, decided.types[hf], why))
        else:
            tensors.append(TensorPlan(gg, hf, "norm", shape, "F32"))
    for why, which in fallbacks.items():
        kinds = sorted({w.split(".", 2)[2].removesuffix(".weight") for w in which})
        notes.append(
            f"{len(which)} projection(s) ({', '.join(kinds)}) written as F16: {why}; the runtime computes them "
            "with float16 activations and no int8 quantization (bitk predicts it with numerics f16)"
        )

    # --- vocabulary
    tok_dir = Path(opts.tokenizer) if opts.tokenizer is not None else src.tokenizer_dir
    if tok_dir is None:
        raise ValueError(
            f"{where}: no tokenizer files (tokenizer.json); the runtimes need the vocabulary inside the GGUF. "
            "Put the tokenizer next to the weights or pass --tokenizer DIR (tokenizer= in Python)"
        )
    vocab = read_vocab(
        tok_dir,
        c.vocab_size,
        pre=opts.tokenizer_pre,
        fallback_ids={"bos": c.bos_token_id, "eos": c.eos_token_id, "pad": c.pad_token_id},
    )
    notes.extend(vocab.notes)
    return PackPlan(
        arch=arch,
        qtype=qtype,
        options=opts,
        ternary=c.ternary,
        tensors=tensors,
        vocab=vocab,
        changes=changes,
        notes=notes,
        source=src,
        padding=padding,
    )
