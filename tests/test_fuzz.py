"""Fuzzing the readers of untrusted files and the codec entry points, with a fixed budget.

Mutated bytes of a small valid GGUF and safetensors file, random config.json objects and random
bytes and shapes for `bitk.formats.dequantize` (both backends): each call may succeed or raise
ValueError (the documented contract), nothing else, and never hang. Derandomized, so CI runs the
same examples every time; each test takes a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BUDGET = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def small_gguf() -> bytes:
    """A valid GGUF with one KV of each kind the reader parses and three small tensors."""
    from gguf import GGUFValueType, GGUFWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.gguf"
        w = GGUFWriter(path, "bitnet-b1.58")
        w.add_uint32("bitnet-b1.58.block_count", 1)
        w.add_float32("v.f32", 0.5)
        w.add_string("v.str", "name")
        w.add_array("v.arr_str", ["a", "bc"])
        w.add_key_value("v.arr_i32", [1, -2, 3], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
        w.add_key_value("v.arr_arr", [[1, 2], [3]], GGUFValueType.ARRAY)
        w.add_tensor("blk.0.attn_norm.weight", np.ones(8, np.float32))
        w.add_tensor("token_embd.weight", np.ones((4, 8), np.float16))
        w.add_tensor("blk.0.ffn_up.weight", np.zeros((2, 32), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


GGUF = small_gguf()


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with a few bytes overwritten (header bytes most often), truncated or extended."""

    @st.composite
    def mutate(draw) -> bytes:
        out = bytearray(data)
        header_end = min(len(out), 400)
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, header_end - 1) | st.integers(0, len(out) - 1))
            out[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x09, 0x01]) | st.integers(0, 255))
        cut = draw(st.none() | st.integers(0, len(out)))
        if cut is not None:
            out = out[:cut]
        return bytes(out) + draw(st.binary(max_size=8))

    return mutate()


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="bitk-fuzz-") as tmp:
        yield Path(tmp)


@BUDGET
@given(data=mutations(GGUF))
def test_gguf_reader_and_inspect(scratch, data):
    from bitk.gguf import describe, read_gguf
    from bitk.gguf.verifier import block_problem, model_dims

    path = scratch / "f.gguf"
    path.write_bytes(data)
    try:
        with read_gguf(path) as f:
            for name in f.tensors:
                if f.data_problem(name) is None:
                    f.tensor_data(name)
            with contextlib.suppress(ValueError):
                block_problem(model_dims(f.metadata), f.tensors)
        describe(path)
    except ValueError:
        pass


def small_safetensors() -> bytes:
    from safetensors.numpy import save

    return save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)})


@BUDGET
@given(data=mutations(small_safetensors()))
def test_safetensors_reader(scratch, data):
    from bitk.models.sources import read_safetensors

    path = scratch / "f.safetensors"
    path.write_bytes(data)
    with contextlib.suppress(ValueError):
        read_safetensors(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
HF_KEYS = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rms_norm_eps",
    "tie_word_embeddings",
    "attention_bias",
    "bos_token_id",
    "eos_token_id",
]
VALID = {
    "model_type": "llama",
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


@BUDGET
@given(
    changes=st.dictionaries(st.sampled_from(HF_KEYS), json_values | st.integers(-4, 64), max_size=4),
    model_type=st.sampled_from(["llama", "qwen3", "bitnet", "gpt2", None]),
)
def test_config_json(changes, model_type):
    from bitk.models.sources import config_from_hf

    hf = {**VALID, "model_type": model_type, **changes}
    with contextlib.suppress(ValueError):
        config_from_hf(json.loads(json.dumps(hf, allow_nan=True)), "fuzz")


backends = pytest.mark.parametrize("backend", ["numpy", "cpp"])


@backends
@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    data=st.binary(max_size=600),
    rows=st.integers(-2, 6) | st.integers(-(2**64), 2**64),
    cols=st.sampled_from([0, 1, 128, 256, 512]) | st.integers(-(2**64), 2**64),
    qtype=st.sampled_from(["I2_S", "TQ1_0", "TQ2_0", "i2_s", "Q4_0"]),
    layout=st.sampled_from([None, "x86", "arm", "x86-1x4"]),
)
def test_dequantize(backend, data, rows, cols, qtype, layout):
    import bitk.formats as fmt

    if backend == "cpp" and "cpp" not in fmt.available_backends():
        pytest.skip("the C++ codecs are not built")
    if qtype.upper() == "I2_S" and cols in (128, 256, 512) and 0 < rows <= 6:
        data = data[: rows * cols // 4 + 32].ljust(rows * cols // 4 + 32, b"\0")  # often the right size
    with fmt.use_backend(backend):
        try:
            out = fmt.dequantize(data, (rows, cols), qtype, layout)
        except ValueError:
            return
    assert out.shape == (rows, cols) and out.dtype == np.float32
