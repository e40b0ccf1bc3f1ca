"""Models by name: presets -> hub repos, hub ids and revisions through the Hugging Face cache, the errors.

Everything runs against the session's offline cache (tests/conftest.py `hub_cache`); the hub's
error answers (gated, unknown repo or revision) come from a real HTTP server on 127.0.0.1 that
answers as the hub does (status and X-Error-Code header), reached by a subprocess whose
HF_ENDPOINT points there.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from bitk.models import PRESET_REPOS, PRESETS, load_model, resolve_model
from bitk.models.hub import download_command, hub_cache_dir, is_hub_id
from bitk_testing import build_hub_repo


def test_every_preset_but_tiny_names_a_hub_repo(hub_cache):
    assert set(PRESET_REPOS) == set(PRESETS) - {"tiny"}
    for preset, repo in PRESET_REPOS.items():
        location = resolve_model(preset)
        assert (location.path, location.repo_id, location.preset) == (hub_cache[repo], repo, preset)
        assert location.revision == hub_cache[repo].name  # the snapshot's commit
        assert repo in location.describe() and location.revision[:12] in location.describe()


def test_hub_ids_and_local_folders(hub_cache, tmp_path):
    folder = hub_cache["Qwen/Qwen3-0.6B"]
    assert resolve_model("Qwen/Qwen3-0.6B").path == folder
    local = resolve_model(str(folder))
    assert local.path == folder and local.repo_id is None and local.describe() == str(folder)
    with pytest.raises(ValueError, match="model.revision='main' applies to hub repos; .* is a local folder"):
        resolve_model(str(folder), "main")
    with pytest.raises(ValueError, match="objectives.teacher=tiny is a preset without pretrained weights"):
        resolve_model("tiny", what="objectives.teacher")
    with pytest.raises(ValueError, match="no such file or folder, and neither a preset .* nor a Hugging Face hub id"):
        resolve_model(str(tmp_path / "missing"))
    assert is_hub_id("Qwen/Qwen3-0.6B") and is_hub_id("a-b/c.d_e")
    assert not any(is_hub_id(t) for t in ("x", "./a/b", "/a/b", "a/b/c", "a/../b", "a/config.json", "~/x"))


def test_load_model_by_name_converts_what_the_folder_holds(hub_cache):
    by_name = load_model("smollm2_135m")
    by_folder = load_model(hub_cache["HuggingFaceTB/SmolLM2-135M"])
    assert by_name.config == by_folder.config and by_name.config.ternary and by_name.config.subln
    for (name, a), b in zip(by_name.state_dict().items(), by_folder.state_dict().values()):
        assert torch.equal(a, b), name
    assert by_name.tokenizer_dir == hub_cache["HuggingFaceTB/SmolLM2-135M"]
    qwen = load_model("qwen3_0_6b", ternary=False)  # full precision: exactly the stored model
    assert qwen.config.vocab_size == 512 and qwen.config.qk_norm and not qwen.config.subln


def test_a_revision_pins_a_commit(hub_cache):
    old = build_hub_repo("bitk-tests/pinned", "llama", seed=11, commit="a" * 40)
    new = build_hub_repo("bitk-tests/pinned", "llama", seed=12, commit="b" * 40)  # refs/main -> b
    assert resolve_model("bitk-tests/pinned").path == new
    assert resolve_model("bitk-tests/pinned", "a" * 40).path == old
    w_old = load_model("bitk-tests/pinned", revision="a" * 40).model.embed_tokens.weight
    w_new = load_model("bitk-tests/pinned").model.embed_tokens.weight
    assert not torch.equal(w_old, w_new)
    with pytest.raises(ValueError, match="bitk-tests/pinned at revision 'c+' is not in the Hugging Face cache"):
        resolve_model("bitk-tests/pinned", "c" * 40)


def test_not_cached_while_offline_names_the_repo_the_cache_and_the_fixes():
    with pytest.raises(ValueError) as info:
        resolve_model("bitk-tests/not-cached")
    message = str(info.value)
    assert "bitk-tests/not-cached is not in the Hugging Face cache" in message
    assert str(hub_cache_dir()) in message and "offline mode is set (HF_HUB_OFFLINE)" in message
    assert download_command("bitk-tests/not-cached") in message and "model=PATH" in message
    assert "\n" not in message


def test_an_unsupported_model_type_is_refused_by_name(hub_cache):
    import json

    folder = build_hub_repo("bitk-tests/gpt2-like", "llama", seed=13)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; bitk reads llama, qwen3, bitnet"):
        load_model("bitk-tests/gpt2-like")


# --------------------------------------------------------------------------- a hub on 127.0.0.1


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers as the Hugging Face hub does, for the few endpoints `snapshot_download` uses.

    Repos in ``served`` (repo id -> folder) are served at commit ``COMMIT``: repo info, file tree,
    and files with the commit and ETag headers. For repos named ORG/gated, ORG/missing, ORG/badrev
    and ORG/broken every request gets the hub's answer for that failure (status, X-Error-Code).
    """

    COMMIT = "5eedc0de" * 5
    served: dict[str, object] = {}
    failures = {
        "gated": (403, "GatedRepo"),
        "missing": (404, "RepoNotFound"),
        "badrev": (404, "RevisionNotFound"),
        "broken": (500, None),
    }

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self) -> None:
        import hashlib
        import json

        parts = self.path.split("?")[0].strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo = "/".join(parts[2:4] if api else parts[:2])
        folder = self.served.get(repo)
        if folder is None:
            status, code = self.failures.get(repo.rpartition("/")[2], (404, "RepoNotFound"))
            return self._send(status, b'{"error": "test hub"}', {"X-Error-Code": code} if code else {})
        files = sorted(p for p in folder.iterdir() if p.is_file())
        json_type = {"Content-Type": "application/json"}
        if api and len(parts) > 4 and parts[4] == "tree":
            tree = [
                {
                    "type": "file",
                    "path": p.name,
                    "size": p.stat().st_size,
                    "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                }
                for p in files
            ]
            return self._send(200, json.dumps(tree).encode(), json_type)
        if api:
            info = {"id": repo, "sha": self.COMMIT, "siblings": [{"rfilename": p.name} for p in files]}
            return self._send(200, json.dumps(info).encode(), json_type)
        data = (folder / "/".join(parts[4:])).read_bytes()
        self._send(200, data, {"X-Repo-Commit": self.COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    _Hub.served = {}


def online_env(endpoint: str, hf_home) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def test_a_hub_id_downloads_once_then_trains_offline(hub_server, hub_cache, tmp_path):
    """The real download path (huggingface_hub against a hub on 127.0.0.1), then the cache alone."""
    _Hub.served = {"bitk-tests/served": hub_cache["HuggingFaceTB/SmolLM2-135M"]}
    hf_home = tmp_path / "hf"
    run = [
        sys.executable,
        "-m",
        "bitk.train",
        "model=bitk-tests/served",
        "training.max_steps=1",
        "data.block_size=32",
        "training.eval_every=0",
        "export_gguf=none",
        "logging.progress=false",
    ]
    proc = subprocess.run(
        [*run, f"output_dir={tmp_path / 'a'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=online_env(hub_server, hf_home),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    snapshot = hf_home / "hub" / "models--bitk-tests--served" / "snapshots" / _Hub.COMMIT
    assert (snapshot / "model.safetensors").read_bytes() == (
        hub_cache["HuggingFaceTB/SmolLM2-135M"] / "model.safetensors"
    ).read_bytes()
    assert f"model: bitk-tests/served@{_Hub.COMMIT[:12]}" in proc.stdout
    _Hub.served = {}  # the hub knows it no more; offline, the cache serves
    proc = subprocess.run(
        [*run, f"output_dir={tmp_path / 'b'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**online_env(hub_server, hf_home), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "repo, extra, expected",
    [
        pytest.param(
            "bitk-tests/gated",
            [],
            "bitk-tests/gated is a gated repository: accept its terms at "
            "https://huggingface.co/bitk-tests/gated and log in",
            marks=pytest.mark.slow,
        ),
        ("bitk-tests/missing", [], "bitk-tests/missing: no such repository on the Hugging Face hub"),
        pytest.param(
            "bitk-tests/badrev", ["model.revision=v9"], "bitk-tests/badrev has no revision 'v9'", marks=pytest.mark.slow
        ),
        pytest.param(
            "bitk-tests/broken", [], "bitk-tests/broken is not in the Hugging Face cache", marks=pytest.mark.slow
        ),
    ],
)
def test_hub_failures_are_one_line_and_exit_2(hub_server, tmp_path, repo, extra, expected):
    env = online_env(hub_server, tmp_path / "hf")
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitk.train",
            f"model={repo}",
            *extra,
            f"output_dir={tmp_path / 'run'}",
            "logging.progress=false",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bitk.train: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    if repo.endswith("broken"):
        assert "the hub cannot be reached (" in errors[0] and "500" in errors[0]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / "checkpoints").exists()
