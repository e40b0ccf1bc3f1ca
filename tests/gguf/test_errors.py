"""The CLI exception contract on bitk-pack, python -m bitk.eval and python -m bitk.generate.

A user's mistake (bad content, a missing or unwritable file) ends with one line on stderr naming
the file and what is wrong, a non-zero status and no traceback; --debug or BITK_DEBUG=1 shows the
traceback instead. The library raises ValueError or OSError for the same inputs.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from bitk.gguf import pack
from bitk_gguf_testing import make_hf_folder, random_tensors, tiny_config


def cli(which: str, *args, capsys) -> tuple[int, str]:
    """Run a CLI's main in-process: (status, stderr). SystemExit (argparse) counts as a status."""
    if which == "pack":
        from bitk.gguf.cli import main
    elif which == "eval":
        from bitk.eval.cli import main
    else:
        from bitk.generate.cli import main
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def assert_one_line(status, err: str, *fragments: str, code: int | None = None) -> None:
    assert status != 0, err
    if code is not None:
        assert status == code, (status, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def no_partials(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    config = tiny_config("relu2")
    return make_hf_folder(tmp_path_factory.mktemp("errors") / "hf", config, "bitnet", random_tensors(config, 3))


@pytest.fixture(scope="module")
def packed(relu2_ckpt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("errors-gguf") / "m.gguf"
    pack(relu2_ckpt, path, "i2_s")
    return path


def edited(hf_folder: Path, tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "src"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


# --------------------------------------------------------------------------- the library


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"max_position_embeddings": 2**33}, "context_length"),
        ({"rope_theta": 1e39}, "rope.freq_base"),
    ],
)
def test_pack_refuses_metadata_its_type_cannot_hold(hf_folder, tmp_path, change, fragment):
    src = edited(hf_folder, tmp_path, **change)
    with pytest.raises(ValueError, match=fragment):
        pack(src, tmp_path / "m.gguf", "i2_s")
    assert not (tmp_path / "m.gguf").exists()
    no_partials(tmp_path)


def test_load_turns_a_shape_torch_refuses_into_value_error(packed, monkeypatch):
    """Tensors the model does not fit never reach torch's load_state_dict (RuntimeError there).

    The verifier's checks stop such a file first; switched off here, with a metadata FFN width
    the tensors do not have, the model's own check must still name the tensors.
    """
    import bitk.gguf.verifier as verifier
    from bitk.gguf import load

    model_dims = verifier.model_dims
    monkeypatch.setattr(verifier, "model_dims", lambda meta: {**model_dims(meta), "ffn": 576})
    monkeypatch.setattr(verifier, "model_problems", lambda *a: [])
    with pytest.raises(ValueError, match=r"mis-shaped tensor\(s\) .*mlp"):
        load(packed)


# --------------------------------------------------------------------------- bitk-pack


def truncated(packed: Path, tmp_path: Path) -> Path:
    """The file cut in the middle of its tensor data (the header and metadata intact)."""
    data = packed.read_bytes()
    out = tmp_path / "cut.gguf"
    out.write_bytes(data[: len(data) - len(data) // 4])
    return out


def test_pack_metadata_overflow_is_one_line(hf_folder, tmp_path, capsys):
    src = edited(hf_folder, tmp_path, max_position_embeddings=2**33)
    status, err = cli("pack", "pack", src, "-o", tmp_path / "m.gguf", "-q", capsys=capsys)
    assert_one_line(status, err, str(src), "context_length", code=1)
    no_partials(tmp_path)


@pytest.mark.parametrize(
    "case",
    ["non-utf8 config", "config is a folder", "weights are a folder", "corrupt weights", "src is a file"],
)
def test_pack_bad_source_is_one_line(hf_folder, tmp_path, capsys, case):
    src = tmp_path / "src"
    shutil.copytree(hf_folder, src)
    if case == "non-utf8 config":
        (src / "config.json").write_bytes(b'{"model_type": "bitnet\\xff\\xfe"}'.replace(b"\\\\", b"\\\\") + b"\xff")
    elif case == "config is a folder":
        (src / "config.json").unlink()
        (src / "config.json").mkdir()
    elif case == "weights are a folder":
        (src / "model.safetensors").unlink()
        (src / "model.safetensors").mkdir()
    elif case == "corrupt weights":
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        src = src / "config.json"
    status, err = cli("pack", "pack", src, "-o", tmp_path / "m.gguf", "-q", capsys=capsys)
    assert_one_line(status, err, code=1)
    assert not (tmp_path / "m.gguf").exists()
    no_partials(tmp_path)


@pytest.mark.parametrize("case", ["missing folder", "output is a folder", "read-only folder"])
def test_pack_bad_output_is_one_line(hf_folder, tmp_path, capsys, monkeypatch, case):
    if case == "missing folder":
        out = tmp_path / "nowhere" / "m.gguf"
    elif case == "output is a folder":
        out = tmp_path / "m.gguf"
        out.mkdir()
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        out = folder / "m.gguf"
        if os.access(folder, os.W_OK):  # root writes into read-only folders: the OS answer, made by hand
            refuse = PermissionError(errno.EACCES, "Permission denied", str(folder))
            monkeypatch.setattr("tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(refuse))
    status, err = cli("pack", "pack", hf_folder, "-o", out, "-q", capsys=capsys)
    assert_one_line(status, err, code=1)


@pytest.mark.parametrize("command", ["inspect", "verify"])
@pytest.mark.parametrize("case", ["folder", "missing", "unreadable"])
def test_inspect_and_verify_bad_file_is_one_line(packed, tmp_path, capsys, monkeypatch, command, case):
    if case == "folder":
        path = tmp_path / "m.gguf"
        path.mkdir()
    elif case == "missing":
        path = tmp_path / "none.gguf"
    else:
        path = tmp_path / "m.gguf"
        shutil.copy(packed, path)
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads files of mode 000: the OS answer, made by hand
            real_open, refused = builtins.open, str(path)

            def no_read(file, *args, **kwargs):
                if str(file) == refused:
                    raise PermissionError(errno.EACCES, "Permission denied", refused)
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", no_read)
    status, err = cli("pack", command, path, capsys=capsys)
    assert_one_line(status, err, str(path), code=1)


def test_inspect_and_verify_report_a_truncated_file(packed, tmp_path, capsys):
    """A file cut mid-tensor-data is a finding of the report (its rows say so), not a crash."""
    path = truncated(packed, tmp_path)
    status, err = cli("pack", "inspect", path, capsys=capsys)
    assert status == 0 and "Traceback" not in err
    status, err = cli("pack", "verify", path, "-q", capsys=capsys)
    assert status == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(hf_folder, tmp_path, capsys, monkeypatch):
    src = edited(hf_folder, tmp_path, max_position_embeddings=2**33)
    for argv in (
        ["--debug", "pack", src, "-o", tmp_path / "m.gguf"],
        ["pack", src, "-o", tmp_path / "m.gguf", "--debug"],
    ):
        with pytest.raises(ValueError, match="context_length"):
            cli("pack", *argv, capsys=capsys)
    monkeypatch.setenv("BITK_DEBUG", "1")
    with pytest.raises(ValueError, match="context_length"):
        cli("pack", "pack", src, "-o", tmp_path / "m.gguf", capsys=capsys)
    monkeypatch.setenv("BITK_DEBUG", "0")
    status, err = cli("pack", "pack", src, "-o", tmp_path / "m.gguf", capsys=capsys)
    assert_one_line(status, err, "context_length", code=1)
    no_partials(tmp_path)


# --------------------------------------------------------------------------- eval and generate


@pytest.mark.parametrize("which", ["eval", "generate"])
@pytest.mark.parametrize("case", ["gguf is a folder", "truncated gguf", "json into a folder", "json is a folder"])
def test_eval_and_generate_bad_files_are_one_line(packed, tmp_path, capsys, which, case):
    source, extra = packed, []
    if case == "gguf is a folder":
        source = tmp_path / "m.gguf"
        source.mkdir()
    elif case == "truncated gguf":
        source = truncated(packed, tmp_path)
    elif case == "json into a folder":
        extra = ["--json", tmp_path / "none" / "r.json"]
    else:
        extra = ["--json", tmp_path]
    args = [source, "--prompt", "hi", "--max-new-tokens", "2"] if which == "generate" else [source, "--seq-len", "8"]
    status, err = cli(which, *args, *extra, capsys=capsys)
    assert_one_line(status, err, code=2)


@pytest.mark.parametrize("which", ["eval", "generate"])
def test_eval_and_generate_debug_shows_the_traceback(packed, tmp_path, capsys, which):
    source = truncated(packed, tmp_path)
    args = [source, "--prompt", "hi"] if which == "generate" else [source]
    with pytest.raises((ValueError, OSError)):
        cli(which, *args, "--debug", capsys=capsys)


def test_pack_os_error_is_one_line_naming_the_file(hf_folder, tmp_path, capsys, monkeypatch):
    """An OSError while writing (a full disk, a read-only folder) is `FILE: what` and leaves no partial file."""
    import bitk.gguf.writer as writer

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(writer.os, "replace", refuse)
    status, err = cli("pack", "pack", hf_folder, "-o", tmp_path / "m.gguf", "-q", capsys=capsys)
    assert_one_line(status, err, f"{tmp_path / 'm.gguf'}: permission denied", code=1)
    no_partials(tmp_path)
    assert not (tmp_path / "m.gguf").exists()
