"""verify(): good files pass; corrupted codes, scales, truncation, wrong sources and metadata fail."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf import GGUFWriter

from bitk.gguf import pack, read_gguf, verify
from bitk_gguf_testing import make_checkpoint, tiny_config


@pytest.fixture(scope="module")
def packed(tmp_path_factory, relu2_ckpt):
    """The relu2 checkpoint as I2_S and TQ2_0 files."""
    d = tmp_path_factory.mktemp("verify")
    return {q: pack(relu2_ckpt, d / f"{q}.gguf", q).path for q in ("i2_s", "tq2_0", "tq1_0", "f16")}


def copy(path, tmp_path):
    out = tmp_path / path.name
    shutil.copyfile(path, out)
    return out


def locate(path, name):
    """Absolute byte offset and size of tensor `name`."""
    with read_gguf(path) as f:
        t = f.tensors[name]
        return f.data_offset + t.offset, t.nbytes


def poke(path, offset, data: bytes):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def failed(report) -> dict[str, str]:
    return {c.what: c.detail for c in report.failures}


@pytest.mark.parametrize("qtype", ["i2_s", "tq2_0", "tq1_0", "f16"])
def test_good_files_pass_with_and_without_source(packed, relu2_ckpt, qtype):
    rep = verify(packed[qtype])
    assert rep.ok, failed(rep)
    assert len(rep.checks) == 1 + 2 + 2 * 11  # metadata + every tensor
    rep = verify(packed[qtype], against=relu2_ckpt)
    assert rep.ok, failed(rep)
    assert all("equal" in c.detail for c in rep.checks if c.what.startswith("blk."))


def test_i2s_code_byte_with_invalid_code_fails(packed, tmp_path):
    path = copy(packed["i2_s"], tmp_path)
    start, _ = locate(path, "blk.0.ffn_up.weight")
    poke(path, start + 3, b"\xff")  # four codes of value 3
    bad = failed(verify(path))
    assert list(bad) == ["blk.0.ffn_up.weight"] and "invalid code 3" in bad["blk.0.ffn_up.weight"]


def test_i2s_code_byte_with_another_valid_code_fails_against_the_source(packed, relu2_ckpt, tmp_path):
    path = copy(packed["i2_s"], tmp_path)
    start, _ = locate(path, "blk.1.attn_k.weight")
    with open(path, "rb") as fh:
        fh.seek(start)
        byte = fh.read(1)[0]
    poke(path, start, bytes([byte ^ 0b01000000 if (byte >> 6) != 2 else 0b01 << 6 | byte & 0x3F]))
    assert verify(path).ok  # still a valid I2_S tensor ...
    bad = failed(verify(path, against=relu2_ckpt))
    assert list(bad) == ["blk.1.attn_k.weight"] and "1 code(s) differ" in bad["blk.1.attn_k.weight"]


@pytest.mark.parametrize("scale, alone", [(np.nan, True), (-0.5, True), (0.0, True), (1.25, False)])
def test_i2s_tail_scale(packed, relu2_ckpt, tmp_path, scale, alone):
    path = copy(packed["i2_s"], tmp_path)
    start, size = locate(path, "blk.0.attn_q.weight")
    poke(path, start + size - 32, np.float32(scale).tobytes())
    rep = verify(path)
    if alone:  # not a usable scale at all
        assert list(failed(rep)) == ["blk.0.attn_q.weight"]
        assert "scale" in failed(rep)["blk.0.attn_q.weight"]
    else:
        assert rep.ok
        bad = failed(verify(path, against=relu2_ckpt))
        assert list(bad) == ["blk.0.attn_q.weight"] and "scale 1.25 differs" in bad["blk.0.attn_q.weight"]


@pytest.mark.parametrize("cut", [1, 32, 5000])
def test_truncated_file_fails(packed, tmp_path, cut):
    path = copy(packed["i2_s"], tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    bad = failed(verify(path))
    assert "blk.1.ffn_down.weight" in bad and "truncated" in bad["blk.1.ffn_down.weight"]


def test_tq_block_scale_corruption_fails(packed, relu2_ckpt, tmp_path):
    path = copy(packed["tq2_0"], tmp_path)
    start, _ = locate(path, "blk.0.ffn_gate.weight")
    poke(path, start + 64, np.float16(np.inf).tobytes())  # block 0's d
    assert "non-finite block scale" in failed(verify(path))["blk.0.ffn_gate.weight"]
    poke(path, start + 64, np.float16(0.5).tobytes())
    assert verify(path).ok
    bad = failed(verify(path, against=relu2_ckpt))
    assert list(bad) == ["blk.0.ffn_gate.weight"] and "differ from the source" in bad["blk.0.ffn_gate.weight"]


def test_float_tensor_change_fails_against_the_source(packed, relu2_ckpt, tmp_path):
    path = copy(packed["f16"], tmp_path)
    start, _ = locate(path, "token_embd.weight")
    poke(path, start + 2 * 17, np.float16(3.0).tobytes())
    bad = failed(verify(path, against=relu2_ckpt))
    assert list(bad) == ["token_embd.weight"] and "[0, 17]" in bad["token_embd.weight"]


def test_another_source_fails(packed, tmp_path):
    other = make_checkpoint(tmp_path / "other", tiny_config("relu2"), seed=99)
    rep = verify(packed["i2_s"], against=other)
    assert len(rep.failures) == 2 + 2 * 11  # every tensor but the metadata


def test_source_with_other_dims_fails_the_metadata(packed, tmp_path):
    other = make_checkpoint(tmp_path / "other", tiny_config("silu", intermediate_size=768), seed=1)
    bad = failed(verify(packed["i2_s"], against=other))
    assert (
        "evaluates relu2, the source uses silu" in bad["metadata"]
        and "ffn 512 but the source has 768" in bad["metadata"]
    )


def _minimal_gguf(path, arch="bitnet-b1.58", drop=(), extra_tensor=False):
    w = GGUFWriter(path, arch)
    keys = {
        "context_length": 16,
        "embedding_length": 128,
        "block_count": 0,
        "feed_forward_length": 256,
        "attention.head_count": 2,
    }
    for k, v in keys.items():
        if k not in drop:
            w.add_uint32(f"{arch}.{k}", v)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(4)])
    w.add_tensor("token_embd.weight", np.zeros((4, 128), np.float16))
    w.add_tensor("output_norm.weight", np.ones(128, np.float32))
    if extra_tensor:
        w.add_tensor("output.weight", np.zeros((4, 128), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_metadata_problems_fail(tmp_path):
    rep = verify(_minimal_gguf(tmp_path / "ok.gguf"))
    assert list(failed(rep)) == ["metadata"] and "without tokenizer.ggml.pre" in failed(rep)["metadata"]
    bad = failed(verify(_minimal_gguf(tmp_path / "nokey.gguf", drop=("feed_forward_length",))))
    assert "missing required metadata bitnet-b1.58.feed_forward_length" in bad["metadata"]
    bad = failed(verify(_minimal_gguf(tmp_path / "llama.gguf", arch="llama")))
    assert "not an arch bitk writes" in bad["metadata"]
    bad = failed(verify(_minimal_gguf(tmp_path / "extra.gguf", extra_tensor=True)))
    assert "unexpected output.weight" in bad["tensor set"]


def test_unparseable_file_raises(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ValueError, match="ends inside the GGUF header"):
        verify(tmp_path / "x.gguf")
