"""bitk's GGUF reader: every metadata value type, the same tensor table as gguf-py, I2_S, bad headers."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from bitk.gguf import pack, read_gguf
from bitk.gguf.reader import tensor_nbytes


def write_all_value_types(path):
    w = GGUFWriter(path, "test")
    w.add_uint8("v.u8", 250)
    w.add_int8("v.i8", -5)
    w.add_uint16("v.u16", 65000)
    w.add_int16("v.i16", -30000)
    w.add_uint32("v.u32", 4_000_000_000)
    w.add_int32("v.i32", -2_000_000_000)
    w.add_float32("v.f32", 0.1)
    w.add_uint64("v.u64", 2**63 + 5)
    w.add_int64("v.i64", -(2**62))
    w.add_float64("v.f64", 0.1)
    w.add_bool("v.bool", True)
    w.add_string("v.str", "héllo \u2581 Ġ")
    w.add_array("v.arr_str", ["a", "bc", "", "é"])
    w.add_key_value("v.arr_i32", [1, -2, 3], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_key_value("v.arr_f32", [0.5, 1.5], GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
    w.add_key_value("v.arr_bool", [True, False], GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    w.add_key_value("v.arr_arr", [[1, 2], [3]], GGUFValueType.ARRAY)
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.add_tensor("b", np.ones((5,), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_every_value_type_and_custom_alignment(tmp_path):
    path = tmp_path / "v.gguf"
    write_all_value_types(path)
    with read_gguf(path) as f:
        m = f.metadata
        assert m["general.architecture"] == "test" and f.version == 3
        assert (m["v.u8"], m["v.i8"], m["v.u16"], m["v.i16"]) == (250, -5, 65000, -30000)
        assert (m["v.u32"], m["v.i32"], m["v.u64"], m["v.i64"]) == (4_000_000_000, -2_000_000_000, 2**63 + 5, -(2**62))
        assert m["v.f32"] == np.float32(0.1) and m["v.f64"] == 0.1 and m["v.bool"] is True
        assert m["v.str"] == "héllo \u2581 Ġ"
        assert m["v.arr_str"] == ["a", "bc", "", "é"]
        assert m["v.arr_i32"].tolist() == [1, -2, 3] and m["v.arr_i32"].dtype == np.int32
        assert m["v.arr_f32"].tolist() == [0.5, 1.5]
        assert m["v.arr_bool"].tolist() == [True, False]
        assert [a.tolist() for a in m["v.arr_arr"]] == [[1, 2], [3]]
        assert f.alignment == 64 and f.data_offset % 64 == 0
        np.testing.assert_array_equal(f.tensor_data("a").view("<f4").reshape(2, 3), np.arange(6).reshape(2, 3))
        assert f.tensors["a"].ne == (3, 2) and f.tensors["a"].shape == (2, 3) and f.tensors["b"].offset == 64


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0", "f16"])
def test_same_table_as_gguf_py(tmp_path, relu2_ckpt, qtype):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", qtype).path
    ref = GGUFReader(path)
    with read_gguf(path) as f:
        assert [t.name for t in ref.tensors] == list(f.tensors)
        for t in ref.tensors:
            ours = f.tensors[t.name]
            assert ours.type_id == int(t.tensor_type) and ours.ne == tuple(int(d) for d in t.shape)
            assert ours.nbytes == int(t.n_bytes) and f.data_offset + ours.offset == int(t.data_offset)
            np.testing.assert_array_equal(f.tensor_data(t.name), np.asarray(t.data).reshape(-1).view(np.uint8))
        assert f.metadata["tokenizer.ggml.tokens"] == [
            str(bytes(ref.fields["tokenizer.ggml.tokens"].parts[i]), "utf-8")
            for i in ref.fields["tokenizer.ggml.tokens"].data
        ]


def test_i2s_tensors_are_sized_with_their_tail(tmp_path, relu2_ckpt):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s").path
    with pytest.raises(ValueError):  # why bitk has its own reader
        GGUFReader(path)
    with read_gguf(path) as f:
        t = f.tensors["blk.0.attn_q.weight"]
        assert t.type_name == "I2_S" and t.type_id == 36 and t.nbytes == 256 * 256 // 4 + 32
        assert f.tensor_data(t.name).size == t.nbytes
    assert tensor_nbytes(36, (256, 4)) == 256 + 32 and tensor_nbytes(35, (100, 2)) is None
    assert tensor_nbytes(999, (256,)) is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "ends inside the GGUF header"),
        (b"GGML\x03\x00\x00\x00", "not a GGUF file"),
        (b"GGUF\x01\x00\x00\x00" + bytes(16), "version 1 is not supported"),
        (b"GGUF\x03\x00\x00\x00" + (0).to_bytes(8, "little") + (1).to_bytes(8, "little") + b"\x05", "ends inside"),
    ],
)
def test_malformed_headers(tmp_path, data, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_gguf(path)


def test_truncated_header_names_where(tmp_path, relu2_ckpt):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s").path
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:3000])  # inside the token list
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        read_gguf(tmp_path / "cut.gguf")
    with pytest.raises(ValueError, match="no such GGUF file"):
        read_gguf(tmp_path / "missing.gguf")


def test_data_past_the_end_is_reported_not_read(tmp_path, relu2_ckpt):
    path = pack(relu2_ckpt, tmp_path / "m.gguf", "i2_s").path
    path.write_bytes(path.read_bytes()[:-100])
    with read_gguf(path) as f:
        assert f.data_problem("token_embd.weight") is None
        assert "truncated" in f.data_problem("blk.1.ffn_down.weight")
        with pytest.raises(ValueError, match="100 missing"):
            f.tensor_data("blk.1.ffn_down.weight")
        with pytest.raises(ValueError, match="no tensor named"):
            f.tensor_data("nope")
