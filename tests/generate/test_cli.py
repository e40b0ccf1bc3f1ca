"""python -m bitk.generate: streamed text, the JSON record, a GGUF file against its checkpoint, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitk.generate.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_streams_the_text_and_writes_the_json_record(capsys, checkpoint, tmp_path):
    record_path = tmp_path / "out.json"
    status, out, err = run(
        capsys, checkpoint, "--prompt", "Once upon a time", "--max-new-tokens", "6", "--seed", "3",
        "--json", record_path,
    )  # fmt: skip
    assert status == 0, err
    record = json.loads(record_path.read_text())
    assert out == record["text"] + "\n"
    assert len(record["ids"]) == record["tokens"] == 6 and record["finish_reason"] == "length"
    assert record["seed"] == 3 and record["numerics"] == "train" and not record["greedy"]
    assert record["tokens_per_s"] > 0 and record["prompt_tokens"] == len(record["prompt_ids"])
    assert len(err.strip().splitlines()) == 1 and "tokens/s" in err and "numerics train" in err


def test_json_on_stdout_sends_the_text_to_stderr(capsys, checkpoint):
    status, out, err = run(capsys, checkpoint, "--prompt", "Hello", "--max-new-tokens", "3", "--greedy", "--json", "-")
    assert status == 0, err
    record = json.loads(out)
    assert err.startswith(record["text"] + "\n") and record["seed"] is None and record["greedy"]


def test_a_gguf_file_generates_the_checkpoints_i2s_ids(capsys, checkpoint, gguf_file, tmp_path):
    def ids(*argv):
        path = tmp_path / "r.json"
        status, _, err = run(capsys, *argv, "--prompt", "The fox", "--max-new-tokens", "10", "--greedy",
                             "--stop", "never-here", "--json", path)  # fmt: skip
        assert status == 0, err
        record = json.loads(path.read_text())
        return record["prompt_ids"], record["ids"], record

    prompt_ckpt, from_ckpt, record = ids(checkpoint, "--numerics", "i2s")
    assert record["numerics_detail"].startswith("i2s (as its I2_S GGUF runs")
    prompt_gguf, from_gguf, record = ids(gguf_file)
    assert record["numerics"] == "file" and "i2s" in record["numerics_detail"]
    assert prompt_gguf == prompt_ckpt and from_gguf == from_ckpt and len(from_ckpt) == 10
    _, no_cache, _ = ids(gguf_file, "--no-cache")
    assert no_cache == from_gguf


def test_chat_renders_the_checkpoints_template(capsys, chat_checkpoint, tokenizer):
    status, out, err = run(capsys, chat_checkpoint, "--prompt", "Hi", "--chat", "--max-new-tokens", "2", "--json", "-")
    assert status == 0, err
    expected = tokenizer.encode("<|endoftext|>user: Hi\nassistant:", add_special_tokens=False).ids
    assert json.loads(out)["prompt_ids"] == expected


def test_chat_renders_a_gguf_files_template(capsys, chat_checkpoint, tmp_path):
    from bitk.gguf import pack

    path = tmp_path / "chat.gguf"
    pack(chat_checkpoint, path, "i2_s", embedding_type="f32")
    argv = ["--prompt", "Hi", "--chat", "--greedy", "--max-new-tokens", "2", "--json", "-"]
    status, out, err = run(capsys, path, *argv)
    assert status == 0, err
    status, expected, err = run(capsys, chat_checkpoint, *argv, "--numerics", "i2s")
    assert status == 0, err
    assert json.loads(out)["prompt_ids"] == json.loads(expected)["prompt_ids"]
    assert json.loads(out)["ids"] == json.loads(expected)["ids"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        (["--prompt", "x", "--temperature", "-1"], "--temperature must be >= 0"),
        (["--prompt", "x", "--top-p", "0"], r"--top-p must be in \(0, 1\]"),
        (["--prompt", "x", "--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
        (["--prompt", "x", "--json", "no/such/folder/out.json"], "no such folder"),
        (["--prompt", "x", "--chat"], "has no chat template"),
        (["--prompt", "word " * 70], "leaves no room for a new token"),
    ],
    ids=["empty_prompt", "max_new_tokens", "temperature", "top_p_zero", "top_p_big", "json_folder", "chat", "long"],
)
def test_bad_input_is_one_line_and_status_2(capsys, checkpoint, argv, message):
    status, out, err = run(capsys, checkpoint, *argv)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("python -m bitk.generate: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_a_cpu_setting_this_machine_cannot_run_is_one_line_and_status_2(capsys, monkeypatch, checkpoint):
    monkeypatch.setenv("BITK_CPU_BACKWARD", "fp8")
    status, out, err = run(capsys, checkpoint, "--prompt", "x")
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("python -m bitk.generate: error: BITK_CPU_BACKWARD='fp8' is not one of"), err


def test_bad_sources_are_one_line_and_status_2(capsys, tmp_path, full_precision_checkpoint):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    cases = [
        ([tmp_path / "missing"], "no such checkpoint"),
        ([tmp_path / "missing.gguf"], "no such GGUF file"),
        ([bad], str(bad)),
        ([full_precision_checkpoint, "--full-precision", "--numerics", "i2s"], "needs a ternary model"),
    ]
    for argv, message in cases:
        status, out, err = run(capsys, *argv, "--prompt", "x")
        assert status == 2 and out == "", (argv, err)
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_as_a_module_a_bad_input_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bitk.generate", str(tmp_path / "nothing"), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr.startswith("python -m bitk.generate: error: no such checkpoint") and "Traceback" not in proc.stderr
    )
