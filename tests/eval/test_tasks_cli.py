"""`python -m bitk.eval CHECKPOINT --tasks ...`: local lm-evaluation-harness tasks end to end, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from bitk.eval import cli, harness

pytestmark = pytest.mark.usefixtures("local_tasks_only")


def test_tasks_json_on_stdout_and_the_table(checkpoint, task_dir, capsys):
    args = [checkpoint, "--tasks", "sentiment_tiny,rolling_tiny", "--include-path", task_dir, "--limit", 6]
    assert cli.main([*map(str, args), "--batch-size", "4", "--numerics", "i2s", "--threads", "1", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)  # stdout is the JSON alone; lm-eval's table goes to stderr
    assert record["model"] == str(checkpoint) and record["numerics"] == "i2s"
    assert record["numerics_detail"] == "i2s (as its I2_S GGUF runs)" and record["limit"] == 6
    assert 0 <= record["results"]["sentiment_tiny"]["acc,none"] <= 1
    assert record["results"]["sentiment_tiny"]["sample_len"] == 6
    assert record["results"]["rolling_tiny"]["bits_per_byte,none"] > 0
    assert set(record) >= {"versions", "n-shot", "configs"}
    assert "sentiment_tiny" in err and "rolling_tiny" in err and "acc" in err
    assert "Traceback" not in err


def test_tasks_json_file_and_few_shot(checkpoint, task_dir, tmp_path, capsys):
    out = tmp_path / "tasks.json"
    args = [checkpoint, "--tasks", "sentiment_tiny", "--include-path", task_dir, "--limit", 3, "--num-fewshot", 2]
    assert cli.main([*map(str, args), "--json", str(out), "--threads", "1"]) == 0
    record = json.loads(out.read_text())
    assert record["numerics"] == "train" and record["n-shot"]["sentiment_tiny"] == 2
    assert 0 <= record["results"]["sentiment_tiny"]["acc,none"] <= 1
    assert "sentiment_tiny" in capsys.readouterr().out  # the table on stdout when JSON goes to a file


def expect_error(capsys, monkeypatch, args, message):
    """Exit status 2 with one line naming the problem (after argparse's usage, for its own checks), and
    the model weights never loaded."""

    def refuse(*a, **k):
        pytest.fail("the model loaded before the bad input was seen")

    monkeypatch.setattr(harness, "BitkLM", refuse)
    monkeypatch.setattr(cli, "_load_model", refuse)
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    return err


def test_unknown_tasks_are_named_with_close_matches(capsys, monkeypatch, checkpoint, task_dir):
    err = expect_error(
        capsys,
        monkeypatch,
        [checkpoint, "--tasks", "sentiment_tiny,sentiment_tinyy,copy_tiniest,zzz", "--include-path", task_dir],
        "python -m bitk.eval: error: unknown tasks: sentiment_tinyy (did you mean sentiment_tiny",
    )
    assert "copy_tiniest (did you mean copy_tiny?); zzz (lm-eval's task list" in err


def test_bad_task_options(capsys, monkeypatch, checkpoint, task_dir, tmp_path):
    expect_error(
        capsys, monkeypatch, [checkpoint, "--tasks", "sst2", "--include-path", tmp_path / "no"], "no such folder"
    )
    expect_error(capsys, monkeypatch, [checkpoint, "--tasks", "sst2", "--limit", 0], "expected a positive integer")
    expect_error(capsys, monkeypatch, [checkpoint, "--tasks", ","], "--tasks names no task")
    expect_error(
        capsys, monkeypatch, [checkpoint, "--tasks", "sst2", "--seq-len", 64], "--seq-len applies to perplexity"
    )
    expect_error(capsys, monkeypatch, [checkpoint, "--limit", 5], "--limit applies to --tasks")
    expect_error(
        capsys,
        monkeypatch,
        [tmp_path / "nope", "--tasks", "sentiment_tiny", "--include-path", task_dir],
        "no such checkpoint",
    )


def test_numerics_on_a_full_precision_model_is_refused(capsys, small_model, tmp_path, task_dir):
    from bitk.data import default_tokenizer
    from bitk.models import CausalLM

    full = CausalLM(small_model.config.replace(ternary=False)).save(tmp_path / "full", tokenizer=default_tokenizer())
    for mode in (["--tasks", "sentiment_tiny", "--include-path", str(task_dir)], ["--max-tokens", "100"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([str(full), "--full-precision", "--numerics", "i2s", *mode])
        assert exc.value.code == 2
        assert "numerics 'i2s' needs a ternary model" in capsys.readouterr().err


def test_missing_lm_eval_is_one_line_with_the_install_hint(capsys, monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    expect_error(
        capsys,
        monkeypatch,
        [checkpoint, "--tasks", "sst2"],
        'python -m bitk.eval: error: --tasks needs lm-evaluation-harness: pip install "bitk[eval]"',
    )


def test_the_documented_local_task_runs_offline(checkpoint, tmp_path, monkeypatch, capsys):
    """docs/eval.md "Local tasks, offline": its YAML, its data lines and its command, as written."""
    import re
    import shlex
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "eval.md").read_text()
    section = doc.split("### Local tasks, offline", 1)[1].split("\n### ", 1)[0]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S))
    yaml_path = blocks["yaml"].splitlines()[0].removeprefix("# ")
    (tmp_path / yaml_path).parent.mkdir(parents=True)
    (tmp_path / yaml_path).write_text(blocks["yaml"])
    (tmp_path / "my_tasks" / "sentiment.jsonl").write_text(blocks["jsonl"])
    env, command = blocks["shell"].strip().split(" ", 1)
    assert env == "HF_DATASETS_OFFLINE=1"
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "bitk.eval", "ckpt/"]
    monkeypatch.chdir(tmp_path)  # data_files paths are relative to the working directory
    assert cli.main([str(checkpoint), *argv[4:]]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["results"]["my_sentiment"]["sample_len"] == 4
    assert 0 <= record["results"]["my_sentiment"]["acc,none"] <= 1


def test_importing_bitk_eval_leaves_lm_eval_out():
    code = "import sys, bitk.eval, bitk.eval.cli, bitk.train.loop; print('lm_eval' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
