"""Hugging Face BitNet folders: bf16 master weights, and the offline-packed form with weight_scale.

The packed form's scale direction follows quantization_config.linear_class exactly as
transformers computes (docs/gguf.md "Usage"): "bitlinear" divides the output by weight_scale, "autobitlinear"
multiplies. Checked both ways against transformers' own layers (run eagerly: their methods are
torch.compile'd), so a converter that flips the direction in either case fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.integrations.bitnet import ActQuant, AutoBitLinear, BitLinear, pack_weights, unpack_weights

from bitk.gguf import pack, read_gguf, verify
from bitk.gguf.verifier import decode
from bitk.models.sources import PROJECTIONS
from bitk_gguf_testing import make_hf_folder, random_tensors, tiny_config, to_bf16_bits

SCALES = (0.5, 2.0, 3.0, 0.375, 1.5, 0.75, 2.5)  # bfloat16-exact, one per projection


def bf16(x: float) -> float:
    return float((to_bf16_bits(np.array([x], np.float32)).astype(np.uint32) << 16).view(np.float32)[0])


def packed_folder(tmp_path, linear_class: str):
    """A 2-block relu2 BitNet folder with pre-quantized projections (codes + weight_scale)."""
    cfg = tiny_config("relu2", rope_theta=500000.0)
    tensors = random_tensors(cfg, seed=11)
    rng = np.random.default_rng(12)
    codes = {}
    for i in range(cfg.num_hidden_layers):
        for j, p in enumerate(PROJECTIONS):
            name = f"model.layers.{i}.{p}.weight"
            c = rng.integers(-1, 2, tensors[name].shape).astype(np.int8)
            codes[name] = c
            if linear_class == "bitlinear":
                tensors[name] = pack_weights(torch.from_numpy(c.astype(np.float32))).numpy()
            else:
                tensors[name] = c.astype(np.float32)  # AutoBitLinear offline: the ternary values themselves
            tensors[name[: -len("weight")] + "weight_scale"] = np.array([SCALES[j]], np.float32)
    qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}
    folder = make_hf_folder(
        tmp_path / linear_class,
        cfg,
        "bitnet",
        tensors,
        bf16=True,
        quantization_config=qc,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
    )
    return folder, tensors, codes


def test_bf16_master_weights_are_ternarized(tmp_path):
    cfg = tiny_config("relu2")
    folder = make_hf_folder(
        tmp_path / "hf",
        cfg,
        "bitnet",
        random_tensors(cfg, seed=10),
        bf16=True,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
    )
    out = tmp_path / "m.gguf"
    res = pack(folder, out, "i2_s")
    assert res.arch == "bitnet-b1.58"
    rep = verify(out, against=folder)
    assert rep.ok, [c.detail for c in rep.failures]
    with read_gguf(out) as f:
        assert f.metadata["bitnet-b1.58.rope.freq_base"] == 500000.0  # rope_parameters, not a 10000 fallback
        assert f.metadata["bitk.source_kind"] == "bitnet"


@pytest.mark.parametrize("linear_class", ["bitlinear", "autobitlinear"])
@pytest.mark.parametrize("qtype", ["i2_s", "f32"])
def test_packed_form_keeps_codes_and_follows_transformers_scale_direction(tmp_path, linear_class, qtype):
    folder, tensors, codes = packed_folder(tmp_path, linear_class)
    out = tmp_path / "m.gguf"
    pack(folder, out, qtype)
    assert verify(out, against=folder).ok
    torch.manual_seed(0)
    x = torch.randn(5, 256)
    with read_gguf(out) as f, torch._dynamo.config.patch(disable=True):
        for p in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):
            name = f"model.layers.1.{p}.weight"
            gg = {
                "self_attn.q_proj": "blk.1.attn_q.weight",
                "mlp.gate_proj": "blk.1.ffn_gate.weight",
                "mlp.down_proj": "blk.1.ffn_down.weight",
            }[p]
            values, got_codes, _ = decode(f, gg)
            ws = bf16(SCALES[PROJECTIONS.index(p)])
            stored = tensors[name]
            out_f, in_f = codes[name].shape
            xin = x if in_f == 256 else torch.randn(5, in_f)
            if linear_class == "bitlinear":
                layer = BitLinear(in_f, out_f, bias=False, dtype=torch.float32)
                layer.weight.copy_(torch.from_numpy(stored))
                unpacked = unpack_weights(layer.weight, torch.float32)
                np.testing.assert_array_equal(unpacked.numpy(), codes[name])  # transformers' unpacking
            else:
                layer = AutoBitLinear(in_f, out_f, bias=False, dtype=torch.float32)
                with torch.no_grad():
                    layer.weight.copy_(torch.from_numpy(stored))
            layer.weight_scale.fill_(ws)
            if got_codes is not None:
                np.testing.assert_array_equal(got_codes, codes[name])
            # transformers' output vs the same quantized activations times the GGUF's weights
            y_tf = layer(xin)
            y_gguf = ActQuant.apply(xin) @ torch.from_numpy(values).T
            scale_ok = torch.allclose(y_tf, y_gguf, rtol=1e-5, atol=1e-5 * y_tf.abs().max().item())
            assert scale_ok, (linear_class, p, (y_tf / y_gguf).flatten()[:4])
            expected_scale = 1.0 / ws if linear_class == "bitlinear" else ws
            nz = values[values != 0]
            assert np.all(np.abs(nz) == np.float32(expected_scale))
