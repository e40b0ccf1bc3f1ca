"""The remote copy (remote=URL): uploads, the completeness marker, retention, retries, resume from there.

The S3 tests talk through s3fs to a real S3 server in this process (moto's, on 127.0.0.1 with a
free port), which can be told to fail requests (`FaultyS3Server.faults`); the credentials are
dummies and nothing leaves the machine. The cheaper tests of the mirror itself use memory:// and
file:// URLs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from bitk.train import loop, remote
from bitk.train.__main__ import main
from bitk.train.config import parse_args
from bitk.train.metrics import read_metrics
from bitk.train.remote import COMPLETE_MARKER, Mirror, Remote, fetch_checkpoint
from bitk.train.state import checkpoint_name, latest_checkpoint, list_checkpoints, load_state
from bitk_train_testing import start_training

RUN = ("training.eval_every=0",)


def losses(output_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(Path(output_dir) / "metrics.jsonl") if r["kind"] == "train"]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """The retry policy as it is, with short waits."""
    monkeypatch.setattr(remote, "RETRY_DELAYS", (0.01, 0.01))


# --------------------------------------------------------------------------- an S3 server in this process


class FaultyS3Server:
    """moto's S3 server on 127.0.0.1 (a free port), which answers ``status`` to a request while a fault says so.

    ``faults``: callables (method, path) -> an HTTP status to answer instead, or None; ``requests``:
    every (method, path) it received.
    """

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app

        self.faults: list = []
        self.requests: list[tuple[str, str]] = []
        app = DomainDispatcherApplication(create_backend_app)
        server = self

        def faulty_app(environ, start_response):
            request = (environ["REQUEST_METHOD"], environ["PATH_INFO"])
            server.requests.append(request)
            for fault in list(server.faults):
                status = fault(*request)
                if status is not None:
                    start_response(f"{status} Injected", [("Content-Type", "application/xml")])
                    return [b"<Error><Code>InternalError</Code><Message>injected fault</Message></Error>"]
            return app(environ, start_response)

        class Threaded(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.server import MotoRequestHandler
                from werkzeug.serving import make_server

                self._server = make_server(
                    self._ip_address, self._port, faulty_app, True, request_handler=MotoRequestHandler
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        self._threaded = Threaded(ip_address="127.0.0.1", port=0, verbose=False)
        self._threaded.start()
        host, port = self._threaded.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._threaded.stop()


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in a failure's report
    server = FaultyS3Server()
    yield server
    server.stop()


class S3:
    """One test's bucket on the server, and the environment that points s3fs at it."""

    def __init__(self, server: FaultyS3Server, env: dict[str, str]) -> None:
        import fsspec

        self.server, self.env = server, env
        self.bucket = f"bitk-{uuid.uuid4().hex[:12]}"
        self.fs = fsspec.filesystem("s3", skip_instance_cache=True)
        self.fs.mkdir(self.bucket)

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def complete(self, name: str) -> list[str]:
        return Remote(self.url(name)).complete_checkpoints()

    def puts(self, key_part: str) -> int:
        """Upload requests this test's bucket received for keys containing ``key_part``."""
        return sum(
            1
            for method, path in self.server.requests
            if method == "PUT" and path.startswith(f"/{self.bucket}/") and key_part in path
        )


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """Dummy credentials, the server's endpoint, no retries inside botocore (bitk's own retries are tested),
    no credential files or instance metadata of this machine."""
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3_server.faults.clear()
    yield S3(s3_server, env)
    s3_server.faults.clear()


# --------------------------------------------------------------------------- training through S3


def test_a_run_is_mirrored_with_retention(micro_config, tmp_path, s3):
    out = tmp_path / "run"
    url = s3.url("run")
    summary = loop.train(
        micro_config(
            *RUN,
            "training.max_steps=4",
            "checkpoint.save_every=1",
            "checkpoint.keep_last=2",
            "export_gguf=i2_s",
            f"remote={url}",
        )
    )
    assert summary["remote_checkpoint"] == "step-000004" and summary["remote_missing"] == []
    # the same layout as output_dir; retention applied remotely too, once each newer upload was complete.
    # (Which older one is kept depends on timing: a checkpoint still waiting when the next one is saved
    # is dropped from the queue, never half-uploaded.)
    assert [p.name for p in list_checkpoints(out)] == ["step-000003", "step-000004"]
    complete = s3.complete("run")
    assert len(complete) == 2 and complete[-1] == "step-000004"
    assert sorted(s3.fs.ls(f"{s3.bucket}/run/checkpoints")) == sorted(
        [f"{s3.bucket}/run/checkpoints/{name}" for name in ("latest", *complete)]
    )
    assert s3.fs.cat_file(f"{s3.bucket}/run/checkpoints/latest") == b"step-000004\n"
    for name in ("metrics.jsonl", "loss.png", "model-i2_s.gguf", "checkpoints/step-000004/model.safetensors"):
        assert s3.fs.cat_file(f"{s3.bucket}/run/{name}") == (out / name).read_bytes(), name
    marker = json.loads(s3.fs.cat_file(f"{s3.bucket}/run/checkpoints/step-000004/{COMPLETE_MARKER}"))
    local = out / "checkpoints" / "step-000004"
    assert marker == {"step": 4, "files": {p.name: p.stat().st_size for p in sorted(local.iterdir())}}
    assert not (out / ".uploads").exists()  # the snapshots are gone once uploaded


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("training.optimizer=muon", "training.schedule=wsd", "training.clip=norm", "training.quant_warmup_steps=5"),
        ("training=unified", "objectives.weights=0:ce=1;0.25:ce=1,dlm=1"),  # DLM masks drawn across the resume
    ],
    ids=["adamw-zclip", "muon-wsd-quantwarmup", "unified-dlm"],
)
def test_resume_from_the_remote_reproduces_the_losses_bit_for_bit(micro_config, tmp_path, s3, extra):
    """A preempted run: its disk is gone and its last upload was cut short. resume=auto on a fresh machine
    (an empty output_dir, the same remote) continues from the newest complete remote checkpoint."""
    url = s3.url("run")
    steps = ("training.max_steps=8", *RUN, *extra)
    straight = loop.train(
        micro_config(
            *steps,
            "checkpoint.save_every=4",
            "checkpoint.keep_last=0",
            f"remote={url}",
            output_dir=tmp_path / "straight",
        )
    )
    assert s3.complete("run") == ["step-000004", "step-000008"]
    # the step-8 upload was cut short: its weights and marker never arrived
    for name in (COMPLETE_MARKER, "model.safetensors"):
        s3.fs.rm(f"{s3.bucket}/run/checkpoints/step-000008/{name}")
    assert s3.complete("run") == ["step-000004"]

    fresh = tmp_path / "fresh"
    resumed = loop.train(micro_config(*steps, "checkpoint.save_every=0", f"remote={url}", output_dir=fresh))
    assert resumed["steps"] == 8
    assert load_state(fresh / "checkpoints" / "step-000004")[2]["step"] == 4  # downloaded, then resumed
    assert losses(fresh) == losses(tmp_path / "straight")  # exact floats, steps 1..8, no duplicates
    a, b = load_state(straight["checkpoint"])[1], load_state(resumed["checkpoint"])[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert s3.complete("run") == ["step-000004", "step-000008"]  # the resumed run uploaded step 8 again

    if extra:
        return
    # resume=URL: a given remote checkpoint, into an output_dir without a remote of its own
    other = tmp_path / "other"
    again = loop.train(
        micro_config(*steps, "checkpoint.save_every=0", f"resume={url}/checkpoints/step-000004", output_dir=other)
    )
    assert again["steps"] == 8 and losses(other) == losses(tmp_path / "straight")


def test_an_upload_failing_midway_leaves_the_previous_checkpoint(micro_argv, tmp_path, s3, capsys):
    """The server fails every upload of step 4's weights: one warning, training goes on, step 2 stays the
    remote's checkpoint, and a fresh machine resumes from it."""
    url = s3.url("run")
    s3.server.faults.append(lambda method, path: 500 if method == "PUT" and "step-000004/model" in path else None)
    args = micro_argv(
        *RUN, "training.max_steps=4", "checkpoint.save_every=2", "checkpoint.keep_last=0", f"remote={url}"
    )
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("warning: step-000004 was not uploaded") == 1, text
    assert "InternalError" in text or "injected" in text
    assert "not uploaded: step-000004" in text  # the summary says so too
    assert s3.puts("step-000004/model.safetensors") == 1 + len(remote.RETRY_DELAYS)  # retried, then given up
    assert latest_checkpoint(tmp_path / "run").name == "step-000004"  # the local copy is whole
    # remotely: step 4 is a folder without a marker, which readers ignore
    assert s3.fs.exists(f"{s3.bucket}/run/checkpoints/step-000004/bitk.json")
    assert s3.complete("run") == ["step-000002"]
    assert s3.fs.cat_file(f"{s3.bucket}/run/checkpoints/latest") == b"step-000002\n"

    s3.server.faults.clear()
    fresh = tmp_path / "fresh"
    assert (
        main(micro_argv(*RUN, "training.max_steps=4", "checkpoint.save_every=2", f"remote={url}", output_dir=fresh))
        == 0
    )
    text = capsys.readouterr().out
    assert "downloading step-000002" in text and "resumed from" in text
    assert [s for s, _ in losses(fresh)] == [1, 2, 3, 4]
    assert s3.complete("run") == ["step-000002", "step-000004"]


def test_transient_errors_are_retried(micro_config, s3, capsys):
    url = s3.url("run")
    failures = {"left": 2}

    def two_503s(method, path):
        if method == "PUT" and "step-000002/trainer_state.pt" in path and failures["left"]:
            failures["left"] -= 1
            return 503
        return None

    s3.server.faults.append(two_503s)
    summary = loop.train(micro_config(*RUN, "training.max_steps=2", "checkpoint.save_every=2", f"remote={url}"))
    assert "warning" not in capsys.readouterr().out
    assert summary["remote_missing"] == [] and s3.complete("run") == ["step-000002"]
    assert s3.puts("step-000002/trainer_state.pt") == 3


@pytest.mark.parametrize("fault", ["wrong endpoint", "no such bucket", "no credentials"])
def test_a_bad_remote_stops_the_run_before_the_first_step(micro_argv, tmp_path, s3, monkeypatch, capsys, fault):
    url = s3.url("run")
    if fault == "wrong endpoint":
        import socket

        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    elif fault == "no such bucket":
        url = f"s3://{s3.bucket}-missing/run"
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    out = tmp_path / "run"
    assert main(micro_argv(*RUN, "training.max_steps=2", f"remote={url}")) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bitk.train: error: remote={url}: cannot write there ("), lines
    assert {
        "wrong endpoint": "Could not connect",
        "no such bucket": "bucket does not exist",
        "no credentials": "Unable to locate credentials",
    }[fault] in lines[0]
    assert "step " not in captured.out and not (out / "metrics.jsonl").exists() and not list_checkpoints(out)


@pytest.mark.slow
def test_sigterm_saves_and_finishes_the_upload(micro_argv, tmp_path, run_env, s3):
    """A preemption notice: the step finishes, the checkpoint is saved and uploaded before the process exits."""
    out, url = tmp_path / "run", s3.url("run")
    args = micro_argv("training.max_steps=100000", "checkpoint.save_every=0", *RUN, f"remote={url}")
    proc = start_training(args, {**run_env, **s3.env})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step ") and "/100000" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    name = latest_checkpoint(out).name
    assert f"remote: uploaded {name}" in text and "stopped by SIGTERM" in text
    assert s3.complete("run") == [name]
    assert s3.fs.cat_file(f"{s3.bucket}/run/metrics.jsonl") == (out / "metrics.jsonl").read_bytes()


@pytest.mark.slow
def test_torchrun_resumes_from_the_remote_on_a_fresh_disk(micro_argv, tmp_path):
    """Two processes: rank 0 uploads; on a fresh output_dir each node's local rank 0 downloads while the other
    rank waits, and every rank resumes from the same checkpoint."""
    import os
    import shutil

    url = f"file://{tmp_path / 'bucket' / 'run'}"
    first, second = tmp_path / "first", tmp_path / "second"

    def torchrun(output_dir: Path, steps: int) -> str:
        args = micro_argv(
            *RUN, f"training.max_steps={steps}", "checkpoint.save_every=2", f"remote={url}", output_dir=output_dir
        )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "bitk.train",
            *args,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        return proc.stdout + proc.stderr

    torchrun(first, 2)
    assert Remote(url).complete_checkpoints() == ["step-000002"]
    shutil.rmtree(first)  # the machine is gone
    text = torchrun(second, 4)
    assert "downloading step-000002" in text and "resumed from" in text
    assert [s for s, _ in losses(second)] == [1, 2, 3, 4]
    assert Remote(url).complete_checkpoints() == ["step-000002", "step-000004"]


# --------------------------------------------------------------------------- the mirror on memory:// and file://


def fake_checkpoint(output_dir: Path, step: int) -> Path:
    """A folder with a checkpoint's file names (the mirror copies bytes; it does not read them)."""
    path = output_dir / "checkpoints" / checkpoint_name(step)
    path.mkdir(parents=True)
    for name in ("bitk.json", "model.safetensors", "trainer_state.pt"):
        (path / name).write_bytes(f"{name} of step {step}\n".encode() * step)
    return path


def memory_url() -> str:
    return f"memory://bitk-tests/{uuid.uuid4().hex[:12]}"


def test_the_mirror_completes_each_checkpoint_then_applies_retention(tmp_path):
    out, url = tmp_path / "run", memory_url()
    said: list[str] = []
    mirror = Mirror(Remote(url), out, keep_last=2, say=said.append)
    for step in (1, 2, 3):
        mirror.checkpoint(fake_checkpoint(out, step))
        mirror.wait()
    assert mirror.close() == []
    r = Remote(url)
    assert r.complete_checkpoints() == ["step-000002", "step-000003"]
    assert r.checkpoints() == {"step-000002": True, "step-000003": True}  # step 1 deleted, marker and all
    assert r.newest_complete() == "step-000003" and mirror.newest == "step-000003"
    assert (
        r.read("checkpoints/step-000003/model.safetensors")
        == (out / "checkpoints/step-000003/model.safetensors").read_bytes()
    )
    assert sum("remote: uploaded" in line for line in said) == 3


def test_a_queued_checkpoint_survives_local_retention(tmp_path):
    """keep_last may delete a local checkpoint whose upload has not started: the mirror uploads its hard links."""
    import shutil

    out, url = tmp_path / "run", memory_url()
    path = fake_checkpoint(out, 7)
    expected = {p.name: p.read_bytes() for p in path.iterdir()}
    mirror = Mirror(Remote(url), out, keep_last=0, say=lambda line: None)
    mirror.checkpoint(path)
    shutil.rmtree(path)
    assert mirror.close() == []
    r = Remote(url)
    assert r.complete_checkpoints() == ["step-000007"]
    assert {name: r.read(f"checkpoints/step-000007/{name}") for name in expected} == expected


def test_resume_trusts_the_marker_alone(tmp_path):
    url = memory_url()
    r = Remote(url)
    src = tmp_path / "src"
    mirror = Mirror(r, src, keep_last=0, say=lambda line: None)
    for step in (1, 2):
        mirror.checkpoint(fake_checkpoint(src, step))
        mirror.wait()
    mirror.close()
    # step 3: every file there, but no marker (an upload cut short just before the end)
    for p in fake_checkpoint(src, 3).iterdir():
        r.put(p, f"checkpoints/step-000003/{p.name}")
    r.write("checkpoints/latest", b"step-000003\n")  # a pointer to it is not trusted either
    assert r.checkpoints() == {"step-000001": True, "step-000002": True, "step-000003": False}
    assert r.newest_complete() == "step-000002"
    say = lambda *a, **k: None  # noqa: E731
    got = fetch_checkpoint(url, tmp_path / "a", required=True, say=say)
    assert got == tmp_path / "a" / "checkpoints" / "step-000002" == latest_checkpoint_dir(tmp_path / "a")
    assert (got / "model.safetensors").read_bytes() == (src / "checkpoints/step-000002/model.safetensors").read_bytes()
    assert not (got / COMPLETE_MARKER).exists()
    with pytest.raises(ValueError, match="step-000003: not a complete checkpoint .*step-000001, step-000002"):
        fetch_checkpoint(f"{url}/checkpoints/step-000003", tmp_path / "b", required=True, say=say)
    assert (
        fetch_checkpoint(f"{url}/checkpoints/step-000001", tmp_path / "c", required=True, say=say).name == "step-000001"
    )
    # a file whose size is not the marker's: refused, and nothing is left in output_dir
    r.write("checkpoints/step-000002/model.safetensors", b"truncated")
    with pytest.raises(ValueError, match="its marker says"):
        fetch_checkpoint(url, tmp_path / "d", required=True, say=say)
    assert not (tmp_path / "d" / "checkpoints" / "step-000002").exists()
    # a marker naming a file outside its folder
    r.write("checkpoints/step-000001/_COMPLETE", json.dumps({"step": 1, "files": {"../../x": 1}}).encode())
    with pytest.raises(ValueError, match="outside the folder"):
        fetch_checkpoint(f"{url}/checkpoints/step-000001", tmp_path / "e", required=True, say=say)
    # an empty remote: nothing to resume (resume=auto), or an error (resume=URL)
    assert fetch_checkpoint(memory_url(), tmp_path / "f", required=False, say=say) is None
    with pytest.raises(ValueError, match="no complete checkpoint there"):
        fetch_checkpoint(memory_url(), tmp_path / "g", required=True, say=say)


def latest_checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints" / (output_dir / "checkpoints" / "latest").read_text().strip()


def test_a_file_remote_run_and_its_refusals(micro_config, tmp_path):
    url = f"file://{tmp_path / 'bucket' / 'run'}"
    loop.train(micro_config(*RUN, "training.max_steps=2", f"remote={url}"))
    assert Remote(url).complete_checkpoints() == ["step-000002"]
    # a new output_dir with resume=none would mix two runs in one remote
    with pytest.raises(ValueError, match="already holds checkpoints of another run"):
        loop.train(
            micro_config(*RUN, "training.max_steps=2", f"remote={url}", "resume=none", output_dir=tmp_path / "new")
        )
    # already complete there: resume=auto downloads it, and there is nothing left to train
    summary = loop.train(micro_config(*RUN, "training.max_steps=2", f"remote={url}", output_dir=tmp_path / "new2"))
    assert summary["steps"] == 2 and list_checkpoints(tmp_path / "new2")[0].name == "step-000002"


# --------------------------------------------------------------------------- configuration


def test_remote_keys_and_the_gcs_spelling(tmp_path):
    import importlib.util

    cfg = parse_args(["remote=memory://b/run", "resume=memory://b/run/checkpoints/step-000004"])
    assert cfg.remote == "memory://b/run" and cfg.resume.endswith("step-000004")
    assert parse_args([]).remote is None
    for args, message in [
        (["remote=bucket/run"], "remote must be a URL"),
        (["remote=nosuch://b/run"], "fsspec knows no protocol 'nosuch'"),
        (["remote=s3://"], "names no bucket"),
        ([f"output_dir={tmp_path}/run", f"remote=file://{tmp_path}/run/copy"], "lies inside output_dir"),
        (["gcs.enabled=true"], "needs gcs.bucket=NAME"),
        (["gcs.enabled=maybe", "gcs.bucket=b"], "gcs.enabled must be true or false"),
        (["gcs.region=eu", "gcs.bucket=b"], "unknown key 'gcs.region'; valid keys of gcs: gcs.enabled, gcs.bucket"),
        (["gcs.enabled=true", "gcs.bucket=b", "remote=memory://x/y"], "keep one"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_args(args)
    assert parse_args(["gcs.enabled=false", "gcs.bucket=b"]).remote is None
    args = ["gcs.enabled=true", "gcs.bucket=my-bucket", f"output_dir={tmp_path}/runs/smollm2-1"]
    if importlib.util.find_spec("gcsfs") is None:  # the gcs extra is optional: the error names it
        with pytest.raises(ValueError, match=r"remote=gs://my-bucket/smollm2-1 needs the gcsfs package.*\[gcs\]"):
            parse_args(args)
    else:
        assert parse_args(args).remote == "gs://my-bucket/smollm2-1"


def test_the_skypilot_task_survives_preemption():
    """docs/examples/skypilot-train.yaml: a managed spot job whose run keeps its copy in a bucket and resumes from it."""
    import re
    import shlex

    import yaml

    task = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs/examples/skypilot-train.yaml").read_text())
    assert task["resources"]["use_spot"] is True and task["resources"]["job_recovery"]["strategy"]
    assert all("name" not in mount for mount in task["file_mounts"].values())  # no checkpoint bucket mount
    assert '".[gcs]"' in task["setup"]
    env = {**{k: str(v) for k, v in task["envs"].items()}, "HOME": "/home/sky"}
    command = task["run"].replace("\\\n", " ").split("-m bitk.train", 1)[1]
    args = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], a) for a in shlex.split(command)]
    settings = dict(a.split("=", 1) for a in args)
    assert settings["remote"] == f"gs://{env['BUCKET']}/{env['RUN']}" and settings["resume"] == "auto"
    assert settings["output_dir"] == f"/home/sky/bitk-runs/{env['RUN']}"  # the node's own disk
    # every key is one the trainer knows (gcsfs and the data bucket are the cloud machine's)
    settings.update(remote="memory://bucket/run", **{"data.sources": "[default]"})
    parse_args([f"{k}={v}" for k, v in settings.items()])
