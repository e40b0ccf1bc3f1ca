"""`python -m bitk.eval`: a real run on a small checkpoint, the JSON record, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from bitk.data import default_corpus, default_tokenizer, encode_documents, packed_length
from bitk.eval import cli

FIELDS = {
    "checkpoint",
    "data",
    "numerics",
    "numerics_detail",
    "tokens",
    "loss",
    "perplexity",
    "tokens_per_s",
    "seconds",
    "seq_len",
    "batch_size",
    "torch_threads",
    "date",
}


def run_cli(*args, env_cache):
    env = {**os.environ, "BITK_CACHE_DIR": str(env_cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bitk.eval", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_module_run_prints_json(checkpoint, bitk_cache_dir):
    proc = run_cli(
        checkpoint,
        "--max-tokens",
        300,
        "--seq-len",
        64,
        "--batch-size",
        2,
        "--numerics",
        "i2s",
        "--threads",
        1,
        "--json",
        "-",
        env_cache=bitk_cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # stdout is the JSON alone; table and progress go to stderr
    assert set(record) == FIELDS
    assert record["checkpoint"] == str(checkpoint) and record["data"] == "default:heldout"
    assert record["numerics"] == "i2s" and record["seq_len"] == 64 and record["batch_size"] == 2
    assert record["torch_threads"] == 1
    # 300 tokens in rows of 64: 5 rows, each row's first token unscored
    assert record["tokens"] == 300 - 5
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
    assert 4096 / 4 < record["perplexity"] < 4096 * 4  # a random-init model is about uniform
    assert record["tokens_per_s"] > 0 and record["seconds"] > 0
    assert "perplexity" in proc.stderr  # the rich table
    assert "Traceback" not in proc.stderr


def test_default_run_scores_the_whole_held_out_split(checkpoint, tmp_path, capsys):
    out = tmp_path / "result.json"
    # one thread: on a busy 2-core machine two torch threads can be 10x slower than one
    assert cli.main([str(checkpoint), "--json", str(out), "--threads", "1"]) == 0
    record = json.loads(out.read_text())
    assert set(record) == FIELDS
    length = packed_length(encode_documents(default_corpus("heldout"), default_tokenizer()))
    rows = -(-length // 128)  # default seq len: min(512, max_position_embeddings = 128)
    assert record["seq_len"] == 128 and record["batch_size"] == 1 and record["numerics"] == "train"
    assert record["torch_threads"] == 1
    assert record["tokens"] == length - rows
    assert "perplexity" in capsys.readouterr().out  # the table on stdout when JSON goes to a file


def test_data_file_and_tokenizer_option(checkpoint, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "def f(x):\\n    return x"}\n{"text": "print(1)"}\n')
    out = tmp_path / "r.json"
    assert (
        cli.main(
            [
                str(checkpoint),
                "--data",
                str(data),
                "--tokenizer",
                "default",
                "--json",
                str(out),
                "--numerics",
                "float",
                "--seq-len",
                "8",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    length = packed_length(encode_documents(["def f(x):\n    return x", "print(1)"], default_tokenizer()))
    assert record["data"] == str(data) and record["numerics"] == "float"
    assert record["tokens"] == length - (-(-length // 8))


def expect_error(capsys, monkeypatch, args, message):
    """Exit status 2 with one line naming the problem, and the model weights never loaded."""
    monkeypatch.setattr(cli, "_load_model", lambda a: pytest.fail("the model loaded before the bad input was seen"))
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_bad_checkpoint(capsys, monkeypatch, tmp_path):
    expect_error(capsys, monkeypatch, [tmp_path / "nope"], "no such checkpoint")
    (tmp_path / "empty").mkdir()
    expect_error(capsys, monkeypatch, [tmp_path / "empty"], "neither a bitk checkpoint")


def test_bad_data(capsys, monkeypatch, checkpoint, tmp_path):
    expect_error(capsys, monkeypatch, [checkpoint, "--data", tmp_path / "missing.txt"], "no such file or folder")
    (tmp_path / "empty.txt").write_text("")
    expect_error(capsys, monkeypatch, [checkpoint, "--data", tmp_path / "empty.txt"], "is empty")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    expect_error(capsys, monkeypatch, [checkpoint, "--data", tmp_path / "blank.jsonl"], "has no usable text")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    expect_error(capsys, monkeypatch, [checkpoint, "--data", "someone/data"], "not a local path; no hub access")
    expect_error(capsys, monkeypatch, [checkpoint, "--split", "test"], "unknown split 'test'")


def test_bad_options(capsys, monkeypatch, checkpoint, tmp_path):
    expect_error(
        capsys, monkeypatch, [checkpoint, "--seq-len", 129], "exceeds the model's max_position_embeddings (128)"
    )
    expect_error(capsys, monkeypatch, [checkpoint, "--seq-len", 1], "--seq-len must be at least 2")
    expect_error(capsys, monkeypatch, [checkpoint, "--numerics", "int4"], "invalid choice: 'int4'")
    expect_error(capsys, monkeypatch, [checkpoint, "--batch-size", 0], "expected a positive integer, got 0")
    expect_error(capsys, monkeypatch, [checkpoint, "--max-tokens", 2], "at least 3")
    expect_error(capsys, monkeypatch, [checkpoint, "--json", tmp_path / "no" / "r.json"], "no such folder")
    expect_error(capsys, monkeypatch, [checkpoint, "--tokenizer", tmp_path], "no tokenizer at")


def test_a_cpu_setting_this_machine_cannot_run(capsys, monkeypatch, checkpoint):
    monkeypatch.setenv("BITK_CPU_KERNEL", "avx9")
    expect_error(
        capsys, monkeypatch, [checkpoint], "BITK_CPU_KERNEL='avx9' is not one of scalar, avx2, avx_vnni, avx512_vnni"
    )


def test_checkpoint_without_tokenizer(capsys, monkeypatch, small_model, tmp_path):
    bare = small_model.save(tmp_path / "bare")
    expect_error(capsys, monkeypatch, [bare], "holds no tokenizer; pass --tokenizer")
    big = tmp_path / "big"
    big.mkdir()
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"w{i}": i for i in range(5000)}, unk_token="w0")).save(str(big / "tokenizer.json"))
    expect_error(capsys, monkeypatch, [bare, "--tokenizer", big], "more than the model's vocab_size 4096")


def test_bad_input_from_the_command_line(bitk_cache_dir, tmp_path):
    """The message and status as a user sees them: no traceback."""
    proc = run_cli(tmp_path / "missing_ckpt", env_cache=bitk_cache_dir)
    assert proc.returncode == 2
    assert "python -m bitk.eval: error: no such checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """A ternary model 192 wide (3 heads of 64, 1 KV head): I2_S needs it zero-padded (to 384)."""
    import torch

    from bitk.data import default_tokenizer
    from bitk.gguf import export
    from bitk.models import CausalLM, ModelConfig

    torch.manual_seed(0)
    tok = default_tokenizer()
    config = ModelConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=3,
        num_key_value_heads=1,
        hidden_act="silu",
        max_position_embeddings=128,
    )
    model = CausalLM(config)
    folder = tmp_path_factory.mktemp("narrow")
    ckpt = model.save(folder / "ckpt", tokenizer=tok)
    files = {}
    for pad in ("auto", "none"):
        files[pad] = folder / f"{pad}.gguf"
        export(model, files[pad], "i2_s", tokenizer=tok, embedding_type="f32", pad=pad)
    return ckpt, files


def eval_record(tmp_path, *args) -> dict:
    out = tmp_path / "r.json"
    assert cli.main([*map(str, args), "--max-tokens", "300", "--seq-len", "64", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_gguf_file_is_scored_as_its_runtime_computes_it(narrow, tmp_path):
    ckpt, files = narrow
    padded = eval_record(tmp_path, files["auto"])
    assert padded["numerics"] == "file" and padded["numerics_detail"] == "as the file runs (i2s)"
    fallback = eval_record(tmp_path, files["none"])
    assert fallback["numerics_detail"] == "as the file runs (f16+i2s)"
    # the checkpoint in --numerics i2s predicts each file: exact for the padded one, F16 layers for the other
    predicted = eval_record(tmp_path, ckpt, "--numerics", "i2s")
    assert predicted["numerics_detail"] == "i2s (as its I2_S GGUF runs)"
    assert predicted["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    unpadded = eval_record(tmp_path, ckpt, "--numerics", "i2s", "--pad", "none")
    assert unpadded["numerics_detail"] == "i2s (as its I2_S GGUF runs; 6 F16 fallback projection(s))"
    assert unpadded["loss"] == pytest.approx(fallback["loss"], rel=1e-6)
    assert abs(fallback["loss"] - padded["loss"]) > 1e-4  # the fallback file computes another model
