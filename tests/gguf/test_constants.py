"""bitk.gguf.constants: what gguf-py has comes from it, with the values bitk has always written.

What bitk defines itself (I2_S, bitnet.cpp's arch names, the bitk.* keys) is what gguf-py lacks; the
tensor-name map is a bijection between bitk's (Hugging Face) names and the GGUF names (docs/gguf.md).
"""

from __future__ import annotations

import struct

import gguf
import numpy as np
from gguf.constants import (
    GGML_QUANT_SIZES,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSORS,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    LlamaFileType,
    TokenType,
)
from gguf.gguf_reader import GGUFReader
from gguf.gguf_writer import GGUFWriter

import bitk.formats.constants as fc
import bitk.gguf.constants as c
from bitk.gguf.constants import gguf_to_hf_name, hf_to_gguf_names
from bitk.gguf.reader import tensor_nbytes
from bitk.models.config import ModelConfig
from bitk.models.sources import tensor_shapes


def test_names_round_trip_and_cover_the_model():
    names = hf_to_gguf_names(12)
    assert len(set(names.values())) == len(names) == 2 + 12 * 11
    assert all(gguf_to_hf_name(gg) == hf for hf, gg in names.items())
    # exactly the tensors of a tied SubLN model, nothing more
    config = ModelConfig(num_hidden_layers=12, subln=True, tie_word_embeddings=True)
    assert set(names) == set(tensor_shapes(config))
    assert names["model.layers.11.self_attn.attn_sub_norm.weight"] == "blk.11.attn_sub_norm.weight"
    assert names["model.layers.3.mlp.ffn_sub_norm.weight"] == "blk.3.ffn_sub_norm.weight"
    assert names["model.layers.0.post_attention_layernorm.weight"] == "blk.0.ffn_norm.weight"


def test_unknown_gguf_names():
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"  # a qwen3 file's untied head
    for name in ("blk.0.attn_q.bias", "blk.x.attn_q.weight", "rope_freqs.weight"):
        assert gguf_to_hf_name(name) is None


# ------------------------------------------------------------------ re-exported from gguf-py, values pinned


def test_container_constants_come_from_gguf_py():
    assert c.GGUF_MAGIC == b"GGUF" == struct.pack("<I", gguf.GGUF_MAGIC)
    assert c.GGUF_VERSIONS == (2, 3) and c.GGUF_VERSIONS[-1] == gguf.GGUF_VERSION
    assert c.ALIGNMENT == 32 == gguf.GGUF_DEFAULT_ALIGNMENT
    assert c.QUANTIZATION_VERSION == 2 == gguf.GGML_QUANT_VERSION


VALUE_TYPES = {
    "UINT8": 0,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 3,
    "UINT32": 4,
    "INT32": 5,
    "FLOAT32": 6,
    "BOOL": 7,
    "STRING": 8,
    "ARRAY": 9,
    "UINT64": 10,
    "INT64": 11,
    "FLOAT64": 12,
}


def test_value_types_come_from_gguf_py():
    for name, vt in VALUE_TYPES.items():
        ours = getattr(c, f"VT_{name}")
        assert type(ours) is int and ours == vt == GGUFValueType[name], name
    # bitk's decoding tables agree with gguf-py's writer (struct codes) and reader (numpy scalar types)
    packing = GGUFWriter._simple_value_packing
    assert set(c.VALUE_STRUCT) == set(packing) == set(c.VALUE_NUMPY) == set(GGUFReader.gguf_scalar_to_np)
    for vt, code in c.VALUE_STRUCT.items():
        assert code == "<" + packing[vt]
        ours, theirs = np.dtype(c.VALUE_NUMPY[vt]), np.dtype(GGUFReader.gguf_scalar_to_np[vt])
        assert ours.itemsize == theirs.itemsize == struct.calcsize(code)
        assert ours.kind == theirs.kind or (vt == c.VT_BOOL and ours == np.dtype("<u1") and theirs.kind == "b")


def test_type_ids_file_types_and_block_sizes_come_from_gguf_py():
    assert c.TYPE_IDS == {"F32": 0, "F16": 1, "TQ1_0": 34, "TQ2_0": 35, "I2_S": 36}
    assert all(type(v) is int for v in c.TYPE_IDS.values())
    assert c.TYPE_NAMES == {0: "F32", 1: "F16", 34: "TQ1_0", 35: "TQ2_0", 36: "I2_S"}
    for name in ("F32", "F16", "TQ1_0", "TQ2_0"):
        assert c.TYPE_IDS[name] == GGMLQuantizationType[name]
    assert c.TYPE_IDS == fc.GGML_TYPE_IDS  # bitk.formats keeps its own ids (numpy only); they agree
    assert {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()} == c.QUANT_SIZES
    assert c.QUANT_SIZES[0] == (1, 4) and c.QUANT_SIZES[1] == (1, 2)
    assert c.QUANT_SIZES[34] == (fc.QK_K, fc.TQ1_0_BLOCK_BYTES) == (256, 54)
    assert c.QUANT_SIZES[35] == (fc.QK_K, fc.TQ2_0_BLOCK_BYTES) == (256, 66)
    assert c.FILE_TYPES == {"F32": 0, "F16": 1, "TQ1_0": 36, "TQ2_0": 37, "I2_S": 40}
    assert all(type(v) is int for v in c.FILE_TYPES.values())
    assert c.FILE_TYPES["F32"] == LlamaFileType.ALL_F32 and c.FILE_TYPES["F16"] == LlamaFileType.MOSTLY_F16
    assert c.FILE_TYPES["TQ1_0"] == LlamaFileType.MOSTLY_TQ1_0
    assert c.FILE_TYPES["TQ2_0"] == LlamaFileType.MOSTLY_TQ2_0


def test_i2s_is_bitks_own():
    # gguf-py has no type 36 and no sizes for it: the id and the layout are bitnet.cpp's, defined in bitk
    assert fc.GGML_TYPE_I2_S == 36 not in {int(t) for t in GGMLQuantizationType}
    assert 36 not in c.QUANT_SIZES
    assert fc.FILE_TYPE_MOSTLY_I2_S == 40  # bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S
    assert (fc.I2S_TAIL_BYTES, fc.I2S_ROW_MULTIPLE, fc.I2S_ROWS_INTERLEAVED) == (32, 128, 4)
    assert fc.I2S_LAYOUTS == ("x86", "arm", "x86-1x4") and fc.I2S_BLOCK == {"x86": 128, "arm": 64}
    assert fc.nbytes("I2_S", 4, 256) == tensor_nbytes(36, (256, 4)) == 256 + 32
    assert fc.row_multiple("I2_S") == 128 and fc.row_multiple("TQ2_0") == fc.QK_K == gguf.QK_K


KEYS = {
    "KEY_ARCHITECTURE": ("general.architecture", Keys.General.ARCHITECTURE),
    "KEY_NAME": ("general.name", Keys.General.NAME),
    "KEY_FILE_TYPE": ("general.file_type", Keys.General.FILE_TYPE),
    "KEY_QUANTIZATION_VERSION": ("general.quantization_version", Keys.General.QUANTIZATION_VERSION),
    "KEY_ALIGNMENT": ("general.alignment", Keys.General.ALIGNMENT),
    "KEY_QUANTIZED_BY": ("general.quantized_by", Keys.General.QUANTIZED_BY),
    "KEY_TOKENIZER_MODEL": ("tokenizer.ggml.model", Keys.Tokenizer.MODEL),
    "KEY_TOKENIZER_PRE": ("tokenizer.ggml.pre", Keys.Tokenizer.PRE),
    "KEY_TOKENS": ("tokenizer.ggml.tokens", Keys.Tokenizer.LIST),
    "KEY_TOKEN_TYPE": ("tokenizer.ggml.token_type", Keys.Tokenizer.TOKEN_TYPE),
    "KEY_SCORES": ("tokenizer.ggml.scores", Keys.Tokenizer.SCORES),
    "KEY_MERGES": ("tokenizer.ggml.merges", Keys.Tokenizer.MERGES),
    "KEY_BOS_ID": ("tokenizer.ggml.bos_token_id", Keys.Tokenizer.BOS_ID),
    "KEY_EOS_ID": ("tokenizer.ggml.eos_token_id", Keys.Tokenizer.EOS_ID),
    "KEY_UNK_ID": ("tokenizer.ggml.unknown_token_id", Keys.Tokenizer.UNK_ID),
    "KEY_PAD_ID": ("tokenizer.ggml.padding_token_id", Keys.Tokenizer.PAD_ID),
    "KEY_ADD_BOS": ("tokenizer.ggml.add_bos_token", Keys.Tokenizer.ADD_BOS),
    "KEY_ADD_EOS": ("tokenizer.ggml.add_eos_token", Keys.Tokenizer.ADD_EOS),
    "KEY_CHAT_TEMPLATE": ("tokenizer.chat_template", Keys.Tokenizer.CHAT_TEMPLATE),
}
ARCH_KEYS = {
    "context_length": ("{arch}.context_length", Keys.LLM.CONTEXT_LENGTH),
    "embedding_length": ("{arch}.embedding_length", Keys.LLM.EMBEDDING_LENGTH),
    "block_count": ("{arch}.block_count", Keys.LLM.BLOCK_COUNT),
    "feed_forward_length": ("{arch}.feed_forward_length", Keys.LLM.FEED_FORWARD_LENGTH),
    "head_count": ("{arch}.attention.head_count", Keys.Attention.HEAD_COUNT),
    "head_count_kv": ("{arch}.attention.head_count_kv", Keys.Attention.HEAD_COUNT_KV),
    "rms_eps": ("{arch}.attention.layer_norm_rms_epsilon", Keys.Attention.LAYERNORM_RMS_EPS),
    "key_length": ("{arch}.attention.key_length", Keys.Attention.KEY_LENGTH),
    "value_length": ("{arch}.attention.value_length", Keys.Attention.VALUE_LENGTH),
    "rope_freq_base": ("{arch}.rope.freq_base", Keys.Rope.FREQ_BASE),
    "rope_dimension_count": ("{arch}.rope.dimension_count", Keys.Rope.DIMENSION_COUNT),
    "vocab_size": ("{arch}.vocab_size", Keys.LLM.VOCAB_SIZE),
}


def test_metadata_keys_come_from_gguf_py():
    for name, (value, theirs) in KEYS.items():
        assert getattr(c, name) == value == theirs, name
    assert c.SPECIAL_ID_KEYS == {
        "bos": Keys.Tokenizer.BOS_ID,
        "eos": Keys.Tokenizer.EOS_ID,
        "unk": Keys.Tokenizer.UNK_ID,
        "pad": Keys.Tokenizer.PAD_ID,
    }
    assert list(c.ARCH_KEYS) == list(ARCH_KEYS)
    for what, (value, theirs) in ARCH_KEYS.items():
        assert c.ARCH_KEYS[what] == value == theirs, what
    assert c.arch_key("bitnet-b1.58", "rms_eps") == "bitnet-b1.58.attention.layer_norm_rms_epsilon"
    # bitk's own keys: gguf-py has no bitk.* namespace
    assert (c.KEY_BITK_VERSION, c.KEY_I2S_LAYOUT, c.KEY_SOURCE_KIND, c.KEY_CHANGES) == (
        "bitk.version",
        "bitk.i2s_layout",
        "bitk.source_kind",
        "bitk.changes",
    )


def test_token_types_and_tokenizer_models_come_from_gguf_py():
    ours = (c.TOKEN_NORMAL, c.TOKEN_UNKNOWN, c.TOKEN_CONTROL, c.TOKEN_USER_DEFINED, c.TOKEN_UNUSED, c.TOKEN_BYTE)
    assert ours == (1, 2, 3, 4, 5, 6) and all(type(t) is int for t in ours)
    assert ours == tuple(TokenType[t] for t in ("NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE"))
    assert (c.TOKENIZER_GPT2, c.TOKENIZER_LLAMA) == ("gpt2", "llama")
    assert gguf.BpeVocab.tokenizer_model == c.TOKENIZER_GPT2
    assert c.TOKENIZER_LLAMA == gguf.SentencePieceVocab.tokenizer_model == gguf.LlamaHfVocab.tokenizer_model


def test_arch_names():
    assert c.ARCH_SILU == "bitnet" == MODEL_ARCH_NAMES[MODEL_ARCH.BITNET]
    assert c.ARCH_RELU2 == "bitnet-b1.58" and c.ARCH_ALIASES == {"bitnet-25": "bitnet-b1.58"}
    assert c.ACTIVATION_BY_ARCH == {"bitnet-b1.58": "relu2", "bitnet-25": "relu2", "bitnet": "silu", "qwen3": "silu"}
    assert c.ARCH_CHOICES == ("auto", "bitnet-b1.58", "bitnet", "qwen3")
    assert c.ARCH_QWEN3 == "qwen3" == MODEL_ARCH_NAMES[MODEL_ARCH.QWEN3]
    # bitnet.cpp's fork names, which bitk defines because gguf-py has no such arch name (if this fails,
    # gguf-py gained one: take it from there)
    assert not {"bitnet-b1.58", "bitnet-25"} & set(MODEL_ARCH_NAMES.values())


GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
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


def test_tensor_names_come_from_gguf_py():
    assert list(c.GLOBAL_TENSORS.items()) == list(GLOBAL_TENSORS.items())  # file order too
    assert list(c.BLOCK_TENSORS.items()) == list(BLOCK_TENSORS.items())
    # exactly the tensors of gguf-py's BITNET architecture, by gguf-py's names
    theirs = {TENSOR_NAMES[t].format(bid="{i}") + ".weight" for t in MODEL_TENSORS[MODEL_ARCH.BITNET]}
    assert theirs == {*c.GLOBAL_TENSORS.values(), *c.BLOCK_TENSORS.values()}
    # gguf-py's HF -> GGUF map agrees wherever it knows bitk's HF name (its sub-norms are 1bitLLM's names)
    name_map = gguf.get_tensor_name_map(MODEL_ARCH.BITNET, 2)
    for hf, gg in hf_to_gguf_names(2).items():
        mapped = name_map.get_name(hf, try_suffixes=(".weight",))
        assert mapped == gg or (mapped is None and "_sub_norm." in hf), hf
    assert c.EMBEDDING == "model.embed_tokens.weight" and c.LM_HEAD == "lm_head.weight"
    assert len(c.PROJECTIONS) == 7
