"""Every name and number of the BitNet GGUF model bitk writes (docs/gguf.md "What is written", docs/formats.md).

Architectures, metadata keys, tensor names, file types and the tokenizer pre-types bitk can detect,
in one place: the packer, reader, verifier and loader import them; nothing else hard-codes them.
Whatever gguf-py (the `gguf` package) defines is taken from it: the container's magic, version and
alignment, the metadata keys, value types, ggml type ids and block sizes, file types, token types,
tensor names and the `bitnet` architecture. bitk defines only what gguf-py has no name for: I2_S
(bitnet.cpp's type 36; its byte layout lives in `bitk.formats.constants`), bitnet.cpp's arch names,
the `bitk.*` keys, llama.cpp's pre-tokenizer names and regexes, and the HF side of the tensor map.
"""

from __future__ import annotations

import re

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_VERSION,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    LlamaFileType,
    TokenType,
)
from gguf.constants import GGUF_MAGIC as _GGUF_MAGIC_U32  # the u32 0x46554747
from gguf.vocab import BpeVocab, SentencePieceVocab

from bitk.formats.constants import FILE_TYPE_MOSTLY_I2_S, GGML_TYPE_I2_S

# --------------------------------------------------------------------------- container

GGUF_MAGIC = _GGUF_MAGIC_U32.to_bytes(4, "little")  # b"GGUF"
GGUF_VERSIONS = (2, GGUF_VERSION)  # v1 (32-bit counts) predates every runtime bitk targets
ALIGNMENT = GGUF_DEFAULT_ALIGNMENT

# GGUF metadata value types (gguf.GGUFValueType), as plain ints.
VT_UINT8 = int(GGUFValueType.UINT8)
VT_INT8 = int(GGUFValueType.INT8)
VT_UINT16 = int(GGUFValueType.UINT16)
VT_INT16 = int(GGUFValueType.INT16)
VT_UINT32 = int(GGUFValueType.UINT32)
VT_INT32 = int(GGUFValueType.INT32)
VT_FLOAT32 = int(GGUFValueType.FLOAT32)
VT_BOOL = int(GGUFValueType.BOOL)
VT_STRING = int(GGUFValueType.STRING)
VT_ARRAY = int(GGUFValueType.ARRAY)
VT_UINT64 = int(GGUFValueType.UINT64)
VT_INT64 = int(GGUFValueType.INT64)
VT_FLOAT64 = int(GGUFValueType.FLOAT64)
# struct codes / numpy dtypes bitk's reader decodes the fixed-size value types with (gguf-py's counterparts
# live inside GGUFWriter / GGUFReader; tests/gguf/test_constants.py checks they agree)
VALUE_STRUCT = {
    VT_UINT8: "<B",
    VT_INT8: "<b",
    VT_UINT16: "<H",
    VT_INT16: "<h",
    VT_UINT32: "<I",
    VT_INT32: "<i",
    VT_FLOAT32: "<f",
    VT_BOOL: "<?",
    VT_UINT64: "<Q",
    VT_INT64: "<q",
    VT_FLOAT64: "<d",
}
VALUE_NUMPY = {
    VT_UINT8: "<u1",
    VT_INT8: "<i1",
    VT_UINT16: "<u2",
    VT_INT16: "<i2",
    VT_UINT32: "<u4",
    VT_INT32: "<i4",
    VT_FLOAT32: "<f4",
    VT_BOOL: "<u1",
    VT_UINT64: "<u8",
    VT_INT64: "<i8",
    VT_FLOAT64: "<f8",
}

# --------------------------------------------------------------------------- tensor types

# The --type choices, by the name users type -> the ggml type name.
QTYPE_CHOICES = {"i2_s": "I2_S", "tq1_0": "TQ1_0", "tq2_0": "TQ2_0", "f16": "F16", "f32": "F32"}
EMBEDDING_TYPE_CHOICES = {"f16": "F16", "f32": "F32"}
TERNARY_TYPES = ("I2_S", "TQ1_0", "TQ2_0")
FLOAT_TYPES = ("F32", "F16")
# ggml type ids: gguf.GGMLQuantizationType, and I2_S (36), which only bitnet.cpp's fork knows.
TYPE_IDS = {**{t: int(GGMLQuantizationType[t]) for t in ("F32", "F16", "TQ1_0", "TQ2_0")}, "I2_S": GGML_TYPE_I2_S}
TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}
# (values per block, bytes per block) by ggml type id, for every type gguf-py knows (gguf.GGML_QUANT_SIZES).
# I2_S has no blocks of its own: n/4 bytes of codes and a 32-byte tail per tensor (bitk.formats.constants).
QUANT_SIZES = {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()}

# `general.file_type`: llama.cpp's llama_ftype (gguf.LlamaFileType) and bitnet.cpp's MOSTLY_I2_S, which gguf-py
# lacks (its 40 is upstream's later MOSTLY_Q1_0; the field is informational in both runtimes).
FILE_TYPES = {
    "F32": int(LlamaFileType.ALL_F32),
    "F16": int(LlamaFileType.MOSTLY_F16),
    "TQ1_0": int(LlamaFileType.MOSTLY_TQ1_0),
    "TQ2_0": int(LlamaFileType.MOSTLY_TQ2_0),
    "I2_S": FILE_TYPE_MOSTLY_I2_S,
}
QUANTIZATION_VERSION = GGML_QUANT_VERSION  # ggml's GGML_QNT_VERSION, written by every quantized llama.cpp file

# --------------------------------------------------------------------------- architectures

# bitnet.cpp's fork: gated ReLU^2 FFN (BitNet b1.58 2B4T). gguf-py has no such arch name.
ARCH_RELU2 = "bitnet-b1.58"
ARCH_SILU = MODEL_ARCH_NAMES[MODEL_ARCH.BITNET]  # "bitnet": bitnet.cpp and upstream llama.cpp, gated SiLU FFN
# The fork's other name for the ReLU^2 graph; gguf-py has no such arch name either.
ARCH_ALIASES = {"bitnet-25": ARCH_RELU2}
ARCH_BY_ACTIVATION = {"relu2": ARCH_RELU2, "silu": ARCH_SILU}
# Upstream llama.cpp's Qwen3 graph (q/k norms, gated SiLU FFN, no sub-norms, NEOX RoPE): the arch of a
# ternary Qwen3 converted without SubLN, written with TQ1_0/TQ2_0 (bitnet.cpp's fork has no qwen3).
ARCH_QWEN3 = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN3]
ACTIVATION_BY_ARCH = {ARCH_RELU2: "relu2", "bitnet-25": "relu2", ARCH_SILU: "silu", ARCH_QWEN3: "silu"}
ARCH_CHOICES = ("auto", ARCH_RELU2, ARCH_SILU, ARCH_QWEN3)

# --------------------------------------------------------------------------- metadata keys

KEY_ARCHITECTURE = Keys.General.ARCHITECTURE
KEY_NAME = Keys.General.NAME
KEY_FILE_TYPE = Keys.General.FILE_TYPE
KEY_QUANTIZATION_VERSION = Keys.General.QUANTIZATION_VERSION
KEY_ALIGNMENT = Keys.General.ALIGNMENT
KEY_QUANTIZED_BY = Keys.General.QUANTIZED_BY
# bitk's own keys (gguf-py has none of these).
KEY_BITK_VERSION = "bitk.version"
KEY_I2S_LAYOUT = "bitk.i2s_layout"  # which I2_S layout the file's I2_S tensors use (docs/formats.md)
KEY_SOURCE_KIND = "bitk.source_kind"
KEY_CHANGES = "bitk.changes"  # what an --allow-* flag changed, one string each
# A zero-padded file (bitk.models.padding) records the model's own dimensions under these keys.
KEY_UNPADDED = {
    "hidden_size": "bitk.unpadded.embedding_length",
    "intermediate_size": "bitk.unpadded.feed_forward_length",
    "num_attention_heads": "bitk.unpadded.head_count",
    "num_key_value_heads": "bitk.unpadded.head_count_kv",
}

# Per-architecture keys (gguf.Keys.LLM / Attention / Rope): the format string takes the arch.
ARCH_KEYS = {
    "context_length": Keys.LLM.CONTEXT_LENGTH,
    "embedding_length": Keys.LLM.EMBEDDING_LENGTH,
    "block_count": Keys.LLM.BLOCK_COUNT,
    "feed_forward_length": Keys.LLM.FEED_FORWARD_LENGTH,
    "head_count": Keys.Attention.HEAD_COUNT,
    "head_count_kv": Keys.Attention.HEAD_COUNT_KV,
    "rms_eps": Keys.Attention.LAYERNORM_RMS_EPS,
    "key_length": Keys.Attention.KEY_LENGTH,
    "value_length": Keys.Attention.VALUE_LENGTH,
    "rope_freq_base": Keys.Rope.FREQ_BASE,
    "rope_dimension_count": Keys.Rope.DIMENSION_COUNT,
    "vocab_size": Keys.LLM.VOCAB_SIZE,
}
# Keys the runtimes cannot load a model without (docs/gguf.md "What is written").
REQUIRED_ARCH_KEYS = (
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "head_count",
    "rms_eps",
)


def arch_key(arch: str, what: str) -> str:
    """The metadata key `what` (a key of ARCH_KEYS) of architecture `arch`."""
    return ARCH_KEYS[what].format(arch=arch)


KEY_TOKENIZER_MODEL = Keys.Tokenizer.MODEL
KEY_TOKENIZER_PRE = Keys.Tokenizer.PRE
KEY_TOKENS = Keys.Tokenizer.LIST
KEY_TOKEN_TYPE = Keys.Tokenizer.TOKEN_TYPE
KEY_SCORES = Keys.Tokenizer.SCORES
KEY_MERGES = Keys.Tokenizer.MERGES
KEY_BOS_ID = Keys.Tokenizer.BOS_ID
KEY_EOS_ID = Keys.Tokenizer.EOS_ID
KEY_UNK_ID = Keys.Tokenizer.UNK_ID
KEY_PAD_ID = Keys.Tokenizer.PAD_ID
KEY_ADD_BOS = Keys.Tokenizer.ADD_BOS
KEY_ADD_EOS = Keys.Tokenizer.ADD_EOS
KEY_CHAT_TEMPLATE = Keys.Tokenizer.CHAT_TEMPLATE
SPECIAL_ID_KEYS = {"bos": KEY_BOS_ID, "eos": KEY_EOS_ID, "unk": KEY_UNK_ID, "pad": KEY_PAD_ID}

# --------------------------------------------------------------------------- tokenizer

# `tokenizer.ggml.model`, as gguf-py's vocab classes write it.
TOKENIZER_GPT2 = BpeVocab.tokenizer_model  # "gpt2", byte-level BPE: tokens, token_type, merges, pre
TOKENIZER_LLAMA = SentencePieceVocab.tokenizer_model  # "llama", SentencePiece: tokens, scores, token_type, <0xXX>

# llama.cpp's token types (gguf.TokenType), as plain ints.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = int(TokenType.NORMAL), int(TokenType.UNKNOWN), int(TokenType.CONTROL)
TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = int(TokenType.USER_DEFINED), int(TokenType.UNUSED), int(TokenType.BYTE)
PAD_TOKEN_FORMAT = "[PAD{}]"  # convert_hf_to_gguf's filler for ids the tokenizer does not use (not in gguf-py)
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# The splitting regexes of the pre-tokenizers llama.cpp implements (llama-vocab.cpp), as
# tokenizer.json spells them in its Split pre-tokenizer. gguf-py has neither these nor the pre-type names.
REGEX_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
REGEX_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
REGEX_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_GPT2 = "gpt-2"
PRE_LLAMA3 = "llama-bpe"
PRE_SMOLLM = "smollm"
PRE_QWEN2 = "qwen2"
PRE_DEFAULT = "default"  # SentencePiece (llama) vocabularies: no regex pre-tokenizer
# Names --pre accepts: llama.cpp's pre-types (llama-vocab.cpp) for byte-level BPE.
KNOWN_PRE_TYPES = (
    PRE_DEFAULT,
    PRE_GPT2,
    PRE_LLAMA3,
    PRE_SMOLLM,
    PRE_QWEN2,
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "mpt",
    "starcoder",
    "refact",
    "command-r",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "stablelm2",
    "jais",
    "tekken",
    "chatglm-bpe",
    "viking",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "phi-2",
    "chameleon",
    "minerva-7b",
    "gpt-4o",
    "superbpe",
    "trillion",
    "bailingmoe",
    "llama4",
    "pixtral",
    "seed-coder",
    "kimi-k2",
    "hunyuan",
    "grok-2",
)

# --------------------------------------------------------------------------- tensors


def _weight(tensor: MODEL_TENSOR) -> str:
    """gguf-py's name of `tensor`'s weight, "{i}" for the block index: "blk.{i}.attn_q.weight"."""
    return TENSOR_NAMES[tensor].format(bid="{i}") + ".weight"


# Hugging Face (bitk) name -> GGUF name (gguf.TENSOR_NAMES), docs/gguf.md "What is written". {i} is the block index.
# The HF side is bitk's (BitNet b1.58 2B4T's names); gguf-py's TensorNameMap knows the older
# 1bitLLM sub-norm names only. Order is file order.
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": _weight(MODEL_TENSOR.TOKEN_EMBD),
    "model.norm.weight": _weight(MODEL_TENSOR.OUTPUT_NORM),
}
BLOCK_TENSORS = {
    "model.layers.{i}.input_layernorm.weight": _weight(MODEL_TENSOR.ATTN_NORM),
    "model.layers.{i}.self_attn.q_proj.weight": _weight(MODEL_TENSOR.ATTN_Q),
    "model.layers.{i}.self_attn.k_proj.weight": _weight(MODEL_TENSOR.ATTN_K),
    "model.layers.{i}.self_attn.v_proj.weight": _weight(MODEL_TENSOR.ATTN_V),
    "model.layers.{i}.self_attn.attn_sub_norm.weight": _weight(MODEL_TENSOR.ATTN_SUB_NORM),
    "model.layers.{i}.self_attn.o_proj.weight": _weight(MODEL_TENSOR.ATTN_OUT),
    "model.layers.{i}.post_attention_layernorm.weight": _weight(MODEL_TENSOR.FFN_NORM),
    "model.layers.{i}.mlp.gate_proj.weight": _weight(MODEL_TENSOR.FFN_GATE),
    "model.layers.{i}.mlp.up_proj.weight": _weight(MODEL_TENSOR.FFN_UP),
    "model.layers.{i}.mlp.ffn_sub_norm.weight": _weight(MODEL_TENSOR.FFN_SUB_NORM),
    "model.layers.{i}.mlp.down_proj.weight": _weight(MODEL_TENSOR.FFN_DOWN),
}
# Qwen3 (arch qwen3): the q/k norms instead of the two sub-norms, and the untied head when there is one.
QWEN3_BLOCK_TENSORS = {
    **{k: v for k, v in BLOCK_TENSORS.items() if "sub_norm" not in k},
    "model.layers.{i}.self_attn.q_norm.weight": _weight(MODEL_TENSOR.ATTN_Q_NORM),
    "model.layers.{i}.self_attn.k_norm.weight": _weight(MODEL_TENSOR.ATTN_K_NORM),
}
OUTPUT = _weight(MODEL_TENSOR.OUTPUT)
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
# The seven BitLinear projections of a block (HF name patterns).
PROJECTIONS = tuple(k for k in BLOCK_TENSORS if k.endswith("_proj.weight"))
# Tensors no GGUF graph bitk writes has a place for (docs/gguf.md "Fallbacks and refusals"): refused
# unless --allow-drop-bias drops them.
ATTENTION_BIASES = tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkvo")


def block_tensors(arch: str) -> dict[str, str]:
    """HF -> GGUF names of one block ({i} = its index) of architecture `arch`."""
    return QWEN3_BLOCK_TENSORS if arch == ARCH_QWEN3 else BLOCK_TENSORS


def hf_to_gguf_names(num_layers: int, arch: str = ARCH_RELU2, untied_head: bool = False) -> dict[str, str]:
    """Every HF tensor name of a `num_layers`-block model of `arch` -> its GGUF name, in file order.

    `untied_head`: the model's own lm_head is written as output.weight (the qwen3 graph reads it;
    the BitNet graphs always use the token embedding as the head).
    """
    names = dict(GLOBAL_TENSORS)
    if untied_head:
        names[LM_HEAD] = OUTPUT
    for i in range(num_layers):
        names.update({hf.format(i=i): gg.format(i=i) for hf, gg in block_tensors(arch).items()})
    return names


_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_to_hf_name(name: str) -> str | None:
    """A GGUF tensor name -> its HF name, or None if bitk's models have no such tensor."""
    for hf, gg in GLOBAL_TENSORS.items():
        if name == gg:
            return hf
    if name == OUTPUT:
        return LM_HEAD
    m = _GGUF_BLOCK.match(name)
    if m:
        for hf, gg in {**BLOCK_TENSORS, **QWEN3_BLOCK_TENSORS}.items():
            if gg.format(i="{i}").split(".", 2)[2] == m.group(2):
                return hf.format(i=int(m.group(1)))
    return None
