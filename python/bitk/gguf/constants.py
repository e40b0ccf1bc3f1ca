"""Every name and number of the BitNet GGUF model bitk writes (../shared/spec/formats.md).

Architectures, metadata keys, tensor names, file types and the tokenizer pre-types bitk can detect,
in one place: the packer, reader, verifier and loader import them; nothing else hard-codes them.
Tensor type ids and byte counts of the ternary types live in `bitk.formats.constants`.
"""

from __future__ import annotations

import re

from bitk.formats.constants import (
    FILE_TYPE_MOSTLY_I2_S,
    GGML_TYPE_F16,
    GGML_TYPE_F32,
    GGML_TYPE_I2_S,
    GGML_TYPE_TQ1_0,
    GGML_TYPE_TQ2_0,
)

# --------------------------------------------------------------------------- container

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # v1 (32-bit counts) predates every runtime bitk targets
ALIGNMENT = 32

# GGUF metadata value types (gguf spec; gguf.GGUFValueType).
VT_UINT8, VT_INT8, VT_UINT16, VT_INT16, VT_UINT32, VT_INT32, VT_FLOAT32 = 0, 1, 2, 3, 4, 5, 6
VT_BOOL, VT_STRING, VT_ARRAY, VT_UINT64, VT_INT64, VT_FLOAT64 = 7, 8, 9, 10, 11, 12
# struct codes of the fixed-size value types
VALUE_STRUCT = {
    VT_UINT8: "<B", VT_INT8: "<b", VT_UINT16: "<H", VT_INT16: "<h", VT_UINT32: "<I", VT_INT32: "<i",
    VT_FLOAT32: "<f", VT_BOOL: "<?", VT_UINT64: "<Q", VT_INT64: "<q", VT_FLOAT64: "<d",
}
VALUE_NUMPY = {
    VT_UINT8: "<u1", VT_INT8: "<i1", VT_UINT16: "<u2", VT_INT16: "<i2", VT_UINT32: "<u4", VT_INT32: "<i4",
    VT_FLOAT32: "<f4", VT_BOOL: "<u1", VT_UINT64: "<u8", VT_INT64: "<i8", VT_FLOAT64: "<f8",
}

# --------------------------------------------------------------------------- tensor types

# The --type choices, by the name users type -> the ggml type name.
QTYPE_CHOICES = {"i2_s": "I2_S", "tq1_0": "TQ1_0", "tq2_0": "TQ2_0", "f16": "F16", "f32": "F32"}
EMBEDDING_TYPE_CHOICES = {"f16": "F16", "f32": "F32"}
TERNARY_TYPES = ("I2_S", "TQ1_0", "TQ2_0")
FLOAT_TYPES = ("F32", "F16")
TYPE_IDS = {"F32": GGML_TYPE_F32, "F16": GGML_TYPE_F16, "TQ1_0": GGML_TYPE_TQ1_0, "TQ2_0": GGML_TYPE_TQ2_0,
            "I2_S": GGML_TYPE_I2_S}
TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}

# `general.file_type`: llama.cpp's llama_ftype (gguf.LlamaFileType) and bitnet.cpp's MOSTLY_I2_S.
FILE_TYPES = {"F32": 0, "F16": 1, "TQ1_0": 36, "TQ2_0": 37, "I2_S": FILE_TYPE_MOSTLY_I2_S}
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION, written by every quantized llama.cpp file

# --------------------------------------------------------------------------- architectures

ARCH_RELU2 = "bitnet-b1.58"  # bitnet.cpp's fork: gated ReLU^2 FFN (BitNet b1.58 2B4T)
ARCH_SILU = "bitnet"  # bitnet.cpp and upstream llama.cpp: gated SiLU FFN
ARCH_ALIASES = {"bitnet-25": ARCH_RELU2}  # the fork's other name for the ReLU^2 graph
ARCH_BY_ACTIVATION = {"relu2": ARCH_RELU2, "silu": ARCH_SILU}
ACTIVATION_BY_ARCH = {ARCH_RELU2: "relu2", "bitnet-25": "relu2", ARCH_SILU: "silu"}
ARCH_CHOICES = ("auto", ARCH_RELU2, ARCH_SILU)

# --------------------------------------------------------------------------- metadata keys

KEY_ARCHITECTURE = "general.architecture"
KEY_NAME = "general.name"
KEY_FILE_TYPE = "general.file_type"
KEY_QUANTIZATION_VERSION = "general.quantization_version"
KEY_ALIGNMENT = "general.alignment"
KEY_QUANTIZED_BY = "general.quantized_by"
KEY_BITK_VERSION = "bitk.version"
KEY_I2S_LAYOUT = "bitk.i2s_layout"  # which I2_S layout the file's I2_S tensors use (formats.md)
KEY_SOURCE_KIND = "bitk.source_kind"
KEY_CHANGES = "bitk.changes"  # what an --allow-* flag changed, one string each

# Per-architecture keys: the format string takes the arch.
ARCH_KEYS = {
    "context_length": "{arch}.context_length",
    "embedding_length": "{arch}.embedding_length",
    "block_count": "{arch}.block_count",
    "feed_forward_length": "{arch}.feed_forward_length",
    "head_count": "{arch}.attention.head_count",
    "head_count_kv": "{arch}.attention.head_count_kv",
    "rms_eps": "{arch}.attention.layer_norm_rms_epsilon",
    "key_length": "{arch}.attention.key_length",
    "value_length": "{arch}.attention.value_length",
    "rope_freq_base": "{arch}.rope.freq_base",
    "rope_dimension_count": "{arch}.rope.dimension_count",
    "vocab_size": "{arch}.vocab_size",
}
# Keys the runtimes cannot load a model without (formats.md, "Required metadata").
REQUIRED_ARCH_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length", "head_count",
                      "rms_eps")


def arch_key(arch: str, what: str) -> str:
    """The metadata key `what` (a key of ARCH_KEYS) of architecture `arch`."""
    return ARCH_KEYS[what].format(arch=arch)


KEY_TOKENIZER_MODEL = "tokenizer.ggml.model"
KEY_TOKENIZER_PRE = "tokenizer.ggml.pre"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_BOS_ID = "tokenizer.ggml.bos_token_id"
KEY_EOS_ID = "tokenizer.ggml.eos_token_id"
KEY_UNK_ID = "tokenizer.ggml.unknown_token_id"
KEY_PAD_ID = "tokenizer.ggml.padding_token_id"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_CHAT_TEMPLATE = "tokenizer.chat_template"
SPECIAL_ID_KEYS = {"bos": KEY_BOS_ID, "eos": KEY_EOS_ID, "unk": KEY_UNK_ID, "pad": KEY_PAD_ID}

# --------------------------------------------------------------------------- tokenizer

TOKENIZER_GPT2 = "gpt2"  # byte-level BPE: tokens, token_type, merges, pre
TOKENIZER_LLAMA = "llama"  # SentencePiece: tokens, scores, token_type, all 256 <0xXX> byte tokens

# llama.cpp's token types (gguf.TokenType).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
PAD_TOKEN_FORMAT = "[PAD{}]"  # convert_hf_to_gguf's filler for ids the tokenizer does not use
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# The splitting regexes of the pre-tokenizers llama.cpp implements (llama-vocab.cpp), as
# tokenizer.json spells them in its Split pre-tokenizer.
REGEX_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
REGEX_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
REGEX_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_GPT2 = "gpt-2"
PRE_LLAMA3 = "llama-bpe"
PRE_SMOLLM = "smollm"
PRE_QWEN2 = "qwen2"
PRE_DEFAULT = "default"  # SentencePiece (llama) vocabularies: no regex pre-tokenizer
# Names --pre accepts: llama.cpp's pre-types (llama-vocab.cpp) for byte-level BPE.
KNOWN_PRE_TYPES = (
    PRE_DEFAULT, PRE_GPT2, PRE_LLAMA3, PRE_SMOLLM, PRE_QWEN2, "deepseek-llm", "deepseek-coder", "deepseek-v3",
    "falcon", "mpt", "starcoder", "refact", "command-r", "olmo", "dbrx", "smaug-bpe", "poro-chat",
    "stablelm2", "jais", "tekken", "chatglm-bpe", "viking", "bloom", "gpt3-finnish", "exaone", "phi-2",
    "chameleon", "minerva-7b", "gpt-4o", "superbpe", "trillion", "bailingmoe", "llama4", "pixtral", "seed-coder",
    "kimi-k2", "hunyuan", "grok-2",
)

# --------------------------------------------------------------------------- tensors

# Hugging Face (bitk) name -> GGUF name, formats.md "Tensors". {i} is the block index.
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
}
BLOCK_TENSORS = {
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.attn_sub_norm.weight": "blk.{i}.attn_sub_norm.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.ffn_sub_norm.weight": "blk.{i}.ffn_sub_norm.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
# The seven BitLinear projections of a block (HF name patterns).
PROJECTIONS = tuple(k for k in BLOCK_TENSORS if k.endswith("_proj.weight"))
# Tensors a BitNet GGUF graph has no place for (formats.md): bitk refuses them unless told to drop them.
QK_NORMS = ("model.layers.{i}.self_attn.q_norm.weight", "model.layers.{i}.self_attn.k_norm.weight")
ATTENTION_BIASES = tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkvo")


def hf_to_gguf_names(num_layers: int) -> dict[str, str]:
    """Every HF tensor name of a `num_layers`-block BitNet model -> its GGUF name, in file order."""
    names = dict(GLOBAL_TENSORS)
    for i in range(num_layers):
        names.update({hf.format(i=i): gg.format(i=i) for hf, gg in BLOCK_TENSORS.items()})
    return names


_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_to_hf_name(name: str) -> str | None:
    """A GGUF tensor name -> its HF name, or None if bitk's BitNet model has no such tensor."""
    for hf, gg in GLOBAL_TENSORS.items():
        if name == gg:
            return hf
    m = _GGUF_BLOCK.match(name)
    if m:
        for hf, gg in BLOCK_TENSORS.items():
            if gg.format(i="{i}").split(".", 2)[2] == m.group(2):
                return hf.format(i=int(m.group(1)))
    return None
