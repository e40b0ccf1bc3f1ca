"""What a pack writes, decided before any byte is written: arch, tensor types, fallbacks, refusals.

The rules (docs/gguf.md "What is written", "Fallbacks and refusals"): the arch follows the FFN activation; norms are F32, the
embedding F16 or F32, the seven projections the chosen type unless a dimension does not fit it
(then F16, said in the summary); whatever a BitNet GGUF graph cannot evaluate (no SubLN, q/k norms,
attention biases, an untied head) is refused unless an --allow-* flag accepts the change, which
the file then records. Planning reads configs and headers only (plus the head of an untied model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitk.formats.constants import I2S_LAYOUTS, I2S_ROWS_INTERLEAVED, row_multiple
from bitk.gguf.constants import (
    ACTIVATION_BY_ARCH,
    ARCH_ALIASES,
    ARCH_BY_ACTIVATION,
    ARCH_CHOICES,
    ATTENTION_BIASES,
    EMBEDDING,
    EMBEDDING_TYPE_CHOICES,
    LM_HEAD,
    PROJECTIONS,
    QK_NORMS,
    QTYPE_CHOICES,
    TERNARY_TYPES,
    hf_to_gguf_names,
)
from bitk.gguf.tokenizer import GGUFVocab, read_vocab

__all__ = ["PackOptions", "TensorPlan", "PackPlan", "plan_pack"]


@dataclass(frozen=True)
class PackOptions:
    """The choices of one pack (the CLI's options; see docs/gguf.md)."""

    qtype: str = "i2_s"
    """Type of the seven projections: i2_s, tq1_0, tq2_0, f16 or f32."""
    arch: str = "auto"
    """auto (by FFN activation), bitnet-b1.58 (relu2) or bitnet (silu); an explicit arch must match."""
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
    allow_drop_qk_norm: bool = False
    """Drop Qwen3-style q/k norms, which no BitNet graph evaluates."""
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


def plan_pack(src, options: PackOptions | None = None) -> PackPlan:
    """Decide everything about packing `src` (a bitk.models.sources.ModelSource); ValueError if refused."""
    opts = (options or PackOptions()).normalized()
    c = src.config
    where = str(src.path)
    qtype = QTYPE_CHOICES[opts.qtype]
    changes: list[str] = []
    notes: list[str] = []

    # --- what the BitNet graphs can evaluate
    if c.lrc_rank_ratio:
        raise ValueError(
            f"{where}: the model has low-rank correction factors (LRC, lrc_rank_ratio={c.lrc_rank_ratio}), which "
            "no BitNet GGUF graph evaluates: the packed model would lose the correction. Keep the bitk checkpoint "
            "for LRC models (python -m bitk.eval runs it)"
        )
    if not c.subln:
        raise ValueError(
            f"{where}: the model has no SubLN (attn_sub_norm / ffn_sub_norm), which every BitNet GGUF graph "
            "applies; a plain Llama/Qwen3 model is not a BitNet model. Convert it with bitk first "
            "(bitk.models.load_model inserts SubLN with gain 1) and pack that checkpoint"
        )
    if not c.ternary and qtype in TERNARY_TYPES:
        raise ValueError(
            f"{where}: the model is full precision (ternary=false); writing it as {qtype} would ternarize weights "
            "it was not trained as ternary. Use --type f16 or --type f32, or train/convert it to ternary first"
        )
    if c.qk_norm:
        if not opts.allow_drop_qk_norm:
            raise ValueError(
                f"{where}: the model normalizes queries and keys per head (Qwen3 q_norm/k_norm); no BitNet GGUF "
                "graph evaluates them, so the packed model would compute something else. Pass "
                "--allow-drop-qk-norm to drop them anyway"
            )
        changes.append(
            f"dropped q_norm/k_norm of {c.num_hidden_layers} layers (--allow-drop-qk-norm): "
            "queries and keys are no longer normalized"
        )
    if c.attention_bias:
        if not opts.allow_drop_bias:
            raise ValueError(
                f"{where}: the model has attention biases (q/k/v/o_proj.bias), which the BitNet GGUF graphs "
                "do not add; pass --allow-drop-bias to drop them anyway"
            )
        changes.append(f"dropped the q/k/v/o biases of {c.num_hidden_layers} layers (--allow-drop-bias)")
    if not c.tie_word_embeddings:
        same = np.array_equal(src.tensor(LM_HEAD), src.tensor(EMBEDDING))
        if same:
            notes.append("lm_head equals the embedding: written tied")
        elif not opts.allow_untied_head:
            raise ValueError(
                f"{where}: the model has its own output head (lm_head differs from the embedding); the BitNet "
                "GGUF graphs use the token embedding as the head and ignore output.weight. Pass "
                "--allow-untied-head to drop lm_head and use the embedding"
            )
        else:
            changes.append("dropped lm_head (--allow-untied-head): the token embedding is the output head")

    # --- arch by activation
    arch_for_act = ARCH_BY_ACTIVATION[c.hidden_act]
    if opts.arch == "auto":
        arch = arch_for_act
    else:
        arch = opts.arch
        if ACTIVATION_BY_ARCH[arch] != c.hidden_act:
            raise ValueError(
                f"--arch {arch} evaluates a {ACTIVATION_BY_ARCH[arch]} FFN but the model uses {c.hidden_act}; "
                f"the matching arch is {arch_for_act} (or --arch auto)"
            )

    # --- tensors and their types
    names = hf_to_gguf_names(c.num_hidden_layers)
    present = set(src.names())
    dropped = set(_layer_names(QK_NORMS + ATTENTION_BIASES, c.num_hidden_layers)) | {LM_HEAD}
    unknown = sorted(present - set(names) - dropped)
    if unknown:
        raise ValueError(f"{where}: tensor(s) {', '.join(unknown[:6])} have no place in a BitNet GGUF model")
    projections = set(_layer_names(PROJECTIONS, c.num_hidden_layers))
    emb_type = opts.embedding_type.upper()
    tensors: list[TensorPlan] = []
    fallbacks: dict[str, list[str]] = {}
    for hf, gg in names.items():
        if hf not in present:
            raise ValueError(f"{where}: tensor {hf} is missing")
        shape = tuple(src.shape(hf))
        if hf == EMBEDDING:
            tensors.append(TensorPlan(gg, hf, "embedding", shape, emb_type))
        elif hf in projections:
            ttype, why = qtype, None
            if qtype in TERNARY_TYPES:
                why = _fits(qtype, opts.i2s_layout, shape)
                if why is not None:
                    ttype = "F16"
                    fallbacks.setdefault(why, []).append(gg)
            tensors.append(TensorPlan(gg, hf, "projection", shape, ttype, why))
        else:
            tensors.append(TensorPlan(gg, hf, "norm", shape, "F32"))
    for why, which in fallbacks.items():
        kinds = sorted({w.split(".", 2)[2].removesuffix(".weight") for w in which})
        notes.append(f"{len(which)} projection(s) ({', '.join(kinds)}) written as F16: {why}")

    # --- vocabulary
    tok_dir = Path(opts.tokenizer) if opts.tokenizer is not None else src.tokenizer_dir
    if tok_dir is None:
        raise ValueError(
            f"{where}: no tokenizer files (tokenizer.json); bitnet.cpp needs the vocabulary inside the GGUF. "
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
    )
