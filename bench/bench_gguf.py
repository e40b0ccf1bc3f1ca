"""GGUF export throughput (pytest-benchmark): bf16 safetensors at BitNet 2B4T widths -> I2_S, end to end.

A few blocks of 2B4T (hidden 2560, ffn 6912, 20/5 heads, vocab kept at 4096 to save memory) are
written as a bf16 Hugging Face BitNet folder and packed with `bitk.gguf.pack` (read + bf16 decode +
absmean ternarization + I2_S packing + GGUF writing). The floor it is compared with is merely
reading the input file and writing as many bytes as the output has, timed in the same process
(on shared machines only ratios from one run compare). Target: export within 2x of that floor. `measure_export` is reusable by bench/gate.py.

    pytest bench/bench_gguf.py --benchmark-only        # or: python bench/bench_gguf.py [LAYERS]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2560, 6912, 20, 5, 4096


def _bf16_bytes(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> bytes:
    x = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).view(np.uint32)
    return ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16).tobytes()  # round to nearest even


def write_source(folder: Path, layers: int, seed: int = 0) -> int:
    """A bf16 BitNet folder (config.json, model.safetensors, a byte-level tokenizer); returns its params."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    head_dim = HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,),
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
                p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.attn_sub_norm.weight": (HIDDEN,),
                p + "mlp.gate_proj.weight": (FFN, HIDDEN),
                p + "mlp.up_proj.weight": (FFN, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, FFN),
                p + "mlp.ffn_sub_norm.weight": (FFN,),
            }
        )
    rng = np.random.default_rng(seed)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for shape in shapes.values():
            f.write(_bf16_bytes(rng, shape, 0.02 if len(shape) == 2 else 1.0))
    config = {
        "model_type": "bitnet",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "relu2",
        "max_position_embeddings": 4096,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    vocab = {f"t{i}": i for i in range(VOCAB - 256)}
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab.update({ch: VOCAB - 256 + i for i, ch in enumerate(sorted(alphabet))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(folder / "tokenizer.json"))
    return sum(int(np.prod(s)) for s in shapes.values())


def _read_and_write(src: Path, out: Path, out_bytes: int) -> None:
    """The floor: read every input byte, write as many bytes as the GGUF has."""
    data = np.fromfile(src, dtype=np.uint8)
    with open(out, "wb") as f:
        f.write(memoryview(data)[: min(out_bytes, data.size)])
        if out_bytes > data.size:
            f.write(bytes(out_bytes - data.size))
    del data


def measure_export(tmpdir: str | Path, layers: int = 2, rounds: int = 5) -> dict:
    """Time pack(bf16 2B4T-wide folder -> I2_S) against read-input + write-output, alternately.

    Returns params, the minimum time of each (seconds; minimums vary least on these shared
    machines), G params/s of the export and the ratio export / floor (target: <= 2).
    """
    from bitk.gguf import pack

    tmp = Path(tmpdir)
    src = tmp / "src"
    params = write_source(src, layers)
    out, floor_out = tmp / "m.gguf", tmp / "floor.bin"
    pack(src, out, "i2_s")  # warm-up: page cache, codecs
    out_bytes = out.stat().st_size
    export_s, floor_s = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        pack(src, out, "i2_s")
        export_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        _read_and_write(src / "model.safetensors", floor_out, out_bytes)
        floor_s.append(time.perf_counter() - t)
    e, f = min(export_s), min(floor_s)
    return {
        "layers": layers,
        "params": params,
        "input_bytes": (src / "model.safetensors").stat().st_size,
        "output_bytes": out_bytes,
        "export_s": e,
        "floor_s": f,
        "gparams_per_s": params / e / 1e9,
        "ratio_to_io": e / f,
    }


def bench_export_i2s(benchmark, tmp_path):
    from bitk.gguf import pack

    src = tmp_path / "src"
    params = write_source(src, layers=2)
    out = tmp_path / "m.gguf"
    benchmark.group = "gguf export 2B4T widths, 2 blocks, bf16 -> I2_S"
    benchmark.extra_info["params"] = params
    benchmark.pedantic(lambda: pack(src, out, "i2_s"), rounds=3, iterations=1, warmup_rounds=1)
    stats = measure_export(tmp_path / "ratio", layers=2, rounds=3)
    benchmark.extra_info.update(stats)
    assert stats["ratio_to_io"] > 0  # informational here; the gate holds the threshold


def bench_read_write_floor(benchmark, tmp_path):
    src = tmp_path / "src"
    write_source(src, layers=2)
    out_bytes = (src / "model.safetensors").stat().st_size // 8  # I2_S is about 1/8 of bf16
    benchmark.group = "gguf export 2B4T widths, 2 blocks, bf16 -> I2_S"
    benchmark.pedantic(
        lambda: _read_and_write(src / "model.safetensors", tmp_path / "f.bin", out_bytes),
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        print(json.dumps(measure_export(d, n), indent=2))
