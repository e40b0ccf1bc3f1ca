"""describe(): the metadata and tensor rows `bitk-pack inspect` prints, for files gguf-py cannot read."""

from __future__ import annotations

import pytest

from bitk.gguf import describe, pack
from bitk.gguf.inspect import format_value


def test_describe_an_i2s_file(tmp_path, relu2_ckpt):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s").path
    d = describe(path)
    meta = {k: (t, v) for k, t, v in d.metadata}
    assert meta["general.architecture"] == ("str", "'bitnet-b1.58'")
    assert meta["bitk.i2s_layout"] == ("str", "'x86'")
    assert meta["tokenizer.ggml.tokens"][0] == "arr[str]" and meta["tokenizer.ggml.tokens"][1].startswith("[320] ")
    assert meta["tokenizer.ggml.token_type"][0] == "arr[int32]"
    rows = {t.name: t for t in d.tensors}
    q = rows["blk.0.attn_q.weight"]
    assert (q.type, q.shape, q.nbytes, q.problem) == ("I2_S", (256, 256), 256 * 256 // 4 + 32, None)
    assert q.bits_per_weight == pytest.approx(2.0 + 8 * 32 / 256**2)
    assert rows["token_embd.weight"].bits_per_weight == 16.0
    assert d.n_params == sum(t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1) for t in d.tensors)
    assert d.file_size == path.stat().st_size and d.alignment == 32


def test_describe_reports_truncation_per_tensor(tmp_path, relu2_ckpt):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "tq2_0").path
    path.write_bytes(path.read_bytes()[:-10])
    rows = {t.name: t.problem for t in describe(path).tensors}
    assert rows["token_embd.weight"] is None and "truncated" in rows["blk.1.ffn_down.weight"]


def test_format_value_summarises_long_values():
    assert format_value(list("abcdefgh"), 9) == "[8] 'a', 'b', 'c', 'd', 'e', 'f', ..."
    assert format_value("x" * 200, 8).endswith("...") and len(format_value("x" * 200, 8)) == 80
    assert format_value(3, 4) == "3"
