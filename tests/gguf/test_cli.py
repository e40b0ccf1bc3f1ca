"""`python -m bitk.gguf` (= bitk-pack) end to end, in subprocesses: output, exit codes, bad input.

Bad input must end with `bitk-pack: error: ...`, a non-zero status, no traceback, no output file
and nothing overwritten.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bitk_gguf_testing import make_checkpoint, make_hf_folder, random_tensors, run_cli, smol_config, tiny_config


def assert_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert proc.stderr.startswith("bitk-pack: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def test_pack_inspect_verify(tmp_path, relu2_ckpt):
    out = tmp_path / "m.gguf"
    proc = run_cli("pack", relu2_ckpt, "-o", out, "--type", "I2_S", check=True)
    assert "bitnet-b1.58, projections I2_S" in proc.stdout and "blk.*.ffn_down.weight" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    proc = run_cli("inspect", out, check=True)
    assert "bitk.i2s_layout" in proc.stdout and "blk.1.ffn_down.weight" in proc.stdout and "I2_S" in proc.stdout
    proc = run_cli("verify", out, "--against", relu2_ckpt, check=True)
    assert "OK: 25 checks passed" in proc.stdout and "codes and scale equal the source" in proc.stdout


def test_pack_and_inspect_import_no_torch(tmp_path, relu2_ckpt):
    code = (
        "import sys\n"
        "import bitk.gguf.cli as cli\n"
        f"assert cli.main(['pack', {str(relu2_ckpt)!r}, '-o', {str(tmp_path / 'm.gguf')!r}, '-q']) == 0\n"
        f"assert cli.main(['inspect', {str(tmp_path / 'm.gguf')!r}]) == 0\n"
        f"assert cli.main(['verify', {str(tmp_path / 'm.gguf')!r}, '--against', {str(relu2_ckpt)!r}]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'triton')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_verify_failure_exits_non_zero(tmp_path, relu2_ckpt):
    out = tmp_path / "m.gguf"
    run_cli("pack", relu2_ckpt, "-o", out, "-q", check=True)
    out.write_bytes(out.read_bytes()[:-64])
    proc = run_cli("verify", out, "-q")
    assert proc.returncode == 1 and "FAIL" in proc.stdout and "truncated" in proc.stdout
    assert "FAILED: 1 of 25 checks" in proc.stdout  # the last tensor lost its tail


def test_nonexistent_source(tmp_path):
    proc = run_cli("pack", tmp_path / "nope", "-o", tmp_path / "m.gguf")
    assert_error(proc, "no such file or directory")
    assert not (tmp_path / "m.gguf").exists()


def test_truncated_safetensors_leaves_existing_output_untouched(tmp_path, relu2_ckpt):
    bad = make_checkpoint(tmp_path / "bad", tiny_config("relu2"), seed=1)
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    assert_error(run_cli("pack", bad, "-o", out), "truncated")
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "m.gguf"]


def test_nan_weight(tmp_path):
    cfg = tiny_config("relu2")
    tensors = random_tensors(cfg, seed=3)
    tensors["model.layers.0.self_attn.v_proj.weight"][3, 5] = np.nan
    bad = make_checkpoint(tmp_path / "bad", cfg, tensors=tensors)
    assert_error(run_cli("pack", bad, "-o", tmp_path / "m.gguf"), "model.layers.0.self_attn.v_proj.weight", "NaN")
    assert not (tmp_path / "m.gguf").exists()


def test_unknown_model_type(tmp_path):
    cfg = tiny_config("silu")
    folder = make_hf_folder(tmp_path / "gpt", cfg, "gpt_neox", random_tensors(cfg))
    assert_error(
        run_cli("pack", folder, "-o", tmp_path / "m.gguf"),
        "model_type 'gpt_neox' is not supported",
        "llama, qwen3, bitnet",
    )


def test_untied_head_refused_then_accepted_with_flag(tmp_path):
    cfg = tiny_config("relu2", tie_word_embeddings=False)
    ckpt = make_checkpoint(tmp_path / "untied", cfg, seed=4)
    out = tmp_path / "m.gguf"
    assert_error(run_cli("pack", ckpt, "-o", out), "--allow-untied-head")
    assert not out.exists()
    proc = run_cli("pack", ckpt, "-o", out, "--allow-untied-head", check=True)
    assert "changed: dropped lm_head (--allow-untied-head)" in proc.stdout


def test_qwen3_with_sub_norms_is_refused_with_the_ways_out(tmp_path):
    cfg = tiny_config("silu", qk_norm=True)
    ckpt = make_checkpoint(tmp_path / "qwen", cfg, seed=5)
    assert_error(
        run_cli("pack", ckpt, "-o", tmp_path / "m.gguf", "--type", "tq2_0"),
        "q/k norms",
        "sub-norms",
        "model.subln=false",
        "bitk.load_model",
    )
    assert not (tmp_path / "m.gguf").exists()
    proc = run_cli("pack", ckpt, "-o", tmp_path / "m.gguf", "--allow-drop-qk-norm")
    assert proc.returncode == 2 and "unrecognized arguments: --allow-drop-qk-norm" in proc.stderr


def test_smollm2_dims_fall_back_with_a_summary_line(tmp_path):
    ckpt = make_checkpoint(tmp_path / "smol", smol_config(num_hidden_layers=1), seed=6)
    proc = run_cli("pack", ckpt, "-o", tmp_path / "m.gguf", "--type", "tq2_0", "--pad", "none", check=True)
    assert (
        "note: 6 projection(s) (attn_k, attn_output, attn_q, attn_v, ffn_gate, ffn_up) written as F16: "
        "TQ2_0 needs in_features % 256 == 0, got 576; the runtime computes them with float16 activations"
    ) in proc.stdout
    assert "TQ2_0 needs in_features % 256 == 0, got 576" in proc.stdout.split("note:")[0]  # the table's note column


def test_unknown_tokenizer_pre_names_the_option(tmp_path):
    cfg = tiny_config("relu2")
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg, seed=7)
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    assert_error(run_cli("pack", ckpt, "-o", tmp_path / "m.gguf"), "--pre NAME")
    proc = run_cli("pack", ckpt, "-o", tmp_path / "m.gguf", "--pre", "gpt-2", check=True)
    assert "given by --pre" in proc.stdout
    proc = run_cli("pack", ckpt, "-o", tmp_path / "m2.gguf", "--tokenizer-pre", "gpt-2", check=True)  # earlier name
    assert "given by --pre" in proc.stdout


def test_usage_errors_and_bad_files(tmp_path):
    proc = run_cli("pack", "x", "-o", tmp_path / "m.gguf", "--type", "q4_0")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    assert_error(run_cli("inspect", tmp_path / "junk.gguf"), "not a GGUF file")
    assert_error(run_cli("verify", tmp_path / "missing.gguf"), "no such GGUF file")


@pytest.mark.parametrize("emb", ["f16", "f32"])
def test_embedding_type_option(tmp_path, silu_ckpt, emb):
    proc = run_cli("pack", silu_ckpt, "-o", tmp_path / "m.gguf", "--embedding-type", emb, "--type", "f32", check=True)
    row = next(line for line in proc.stdout.splitlines() if "token_embd.weight" in line)
    assert emb.upper() in row
