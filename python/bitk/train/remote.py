"""A run's copy in object storage (``remote=URL``): uploads in the background, resume from there.

    URL/                              output_dir's layout (any fsspec URL: gs://, s3://, file://, memory://)
      checkpoints/
        step-000300/                  the checkpoint's files, then, written last:
          _COMPLETE                   {"step": 300, "files": {"bitk.json": 1234, ...}}
        latest                        "step-000300", written after the marker
      metrics.jsonl  loss.png  model-i2_s.gguf

A remote checkpoint is complete when its `COMPLETE_MARKER` is there, and readers trust nothing
else: an upload cut short (a preempted machine, a network failure) leaves a folder without the
marker, which resume ignores and the next upload of that step replaces. `Mirror` uploads on one
background thread, so the training loop waits only for the local save; it hard-links what it
queues, so local retention may delete a checkpoint while it is on its way. Failed operations are
retried (`RETRY_DELAYS`); a checkpoint that still fails is reported once and training goes on with
the local copies. Retention (checkpoint.keep_last) applies remotely only after the newer upload is
complete, deleting the marker first. Guide: docs/distributed.md "Preemptible runs".
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .config import Config, is_url
from .distributed import DistInfo, barrier
from .metrics import METRICS_FILE
from .state import (
    CHECKPOINTS_DIR,
    LATEST_FILE,
    checkpoint_step,
    find_checkpoint,
    latest_checkpoint,
    set_latest,
)

__all__ = [
    "COMPLETE_MARKER",
    "RETRY_DELAYS",
    "Remote",
    "Mirror",
    "open_remote",
    "fetch_checkpoint",
    "find_resume",
]

COMPLETE_MARKER = "_COMPLETE"
RETRY_DELAYS = (2.0, 10.0, 30.0)
"""Seconds before each retry of a failed remote operation; after the last one it has failed for good."""
UPLOADS_DIR = ".uploads"
"""output_dir/.uploads: hard links to what waits for upload (removed at start and at the end)."""
# Protocols without real folders: their makedirs may create a bucket, so files are only written.
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl")
# Errors that another try does not fix (a missing bucket or file, refused credentials, a bad path).
PERMANENT_ERRORS = (PermissionError, FileNotFoundError, NotImplementedError, TypeError, ValueError)
_jitter = random.Random()  # not the global RNG: its state is in every checkpoint and must not move


def describe(e: BaseException) -> str:
    """``TypeName: first line of the message``."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def with_retries(action: Callable[[], Any], delays: tuple[float, ...] | None = None) -> Any:
    """``action()``, tried again after each of ``delays`` (default `RETRY_DELAYS`) while it fails transiently."""
    delays = RETRY_DELAYS if delays is None else delays
    for delay in [*delays, None]:
        try:
            return action()
        except PERMANENT_ERRORS:
            raise
        except Exception:  # network, throttling, 5xx: each backend has its own exception types
            if delay is None:
                raise
            time.sleep(delay * (1 + 0.25 * _jitter.random()))
    raise AssertionError("unreachable")


class Remote:
    """The file system behind a URL (fsspec) and the run layout's reads and writes, paths relative to the URL."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.protocol = self.url.split("://", 1)[0]
        try:  # a fresh instance: fsspec's cache would keep an endpoint or credentials read earlier
            self.fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
        except ImportError as e:
            raise ValueError(f"{self.url}: {describe(e)}") from e
        except Exception as e:  # the backend's constructor: credential files, project settings
            raise ValueError(f"{self.url}: cannot open it ({describe(e)}); {self.hint()}") from e
        self.root = root.rstrip("/")
        self.has_folders = self.protocol not in OBJECT_STORES

    def hint(self) -> str:
        if self.protocol in ("s3", "s3a"):
            return (
                "check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE), "
                "AWS_ENDPOINT_URL for an S3-compatible store (MinIO, R2), and that the bucket exists"
            )
        if self.protocol in ("gs", "gcs"):
            return (
                "check the Google credentials (gcloud auth application-default login, or "
                "GOOGLE_APPLICATION_CREDENTIALS) and that the bucket exists"
            )
        return "check that the location exists and is writable"

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def where(self, rel: str = "") -> str:
        """The URL of ``rel``, for messages."""
        return f"{self.url}/{rel}" if rel else self.url

    # ------------------------------------------------------------------ single operations, retried

    def put(self, local: Path, rel: str) -> None:
        def action() -> None:
            if self.has_folders:
                self.fs.makedirs(self.path(str(PurePosixPath(rel).parent)), exist_ok=True)
            self.fs.put_file(str(local), self.path(rel))

        with_retries(action)

    def write(self, rel: str, data: bytes) -> None:
        def action() -> None:
            if self.has_folders:
                self.fs.makedirs(self.path(str(PurePosixPath(rel).parent)), exist_ok=True)
            self.fs.pipe_file(self.path(rel), data)

        with_retries(action)

    def read(self, rel: str) -> bytes:
        return with_retries(lambda: self.fs.cat_file(self.path(rel)))

    def get(self, rel: str, local: Path) -> None:
        with_retries(lambda: self.fs.get_file(self.path(rel), str(local)))

    def remove(self, rel: str, *, recursive: bool = False) -> None:
        """Delete a file (or a folder with ``recursive``); one that is not there is no error."""
        with contextlib.suppress(FileNotFoundError):
            with_retries(lambda: self.fs.rm(self.path(rel), recursive=recursive))

    def probe(self) -> None:
        """Write and delete a small file, once: ValueError (one line) for missing credentials or a wrong bucket."""
        rel = f".bitk-probe-{uuid.uuid4().hex[:12]}"
        try:
            if self.has_folders:
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(self.path(rel), b"bitk write probe\n")
            self.fs.rm_file(self.path(rel))
        except Exception as e:  # whatever the backend raises, the run must not start
            raise ValueError(f"remote={self.url}: cannot write there ({describe(e)}); {self.hint()}") from e

    # ------------------------------------------------------------------ checkpoints

    def checkpoints(self) -> dict[str, bool]:
        """Every checkpoint folder under checkpoints/ (step-NNNNNN) -> whether it is complete (has its marker)."""
        base = self.path(CHECKPOINTS_DIR)
        self.fs.invalidate_cache()  # listings are cached per instance; another process may have written since
        try:
            files = with_retries(lambda: self.fs.find(base))
        except FileNotFoundError:
            return {}
        found: dict[str, bool] = {}
        for f in files:
            parts = f[len(base) + 1 :].split("/") if f.startswith(base + "/") else []
            if len(parts) >= 2 and checkpoint_step(parts[0]) is not None:
                found[parts[0]] = found.get(parts[0], False) or parts[1:] == [COMPLETE_MARKER]
        return found

    def complete_checkpoints(self) -> list[str]:
        """The complete checkpoints' names, oldest first."""
        return sorted((n for n, complete in self.checkpoints().items() if complete), key=checkpoint_step)

    def newest_complete(self) -> str | None:
        """The checkpoint `latest` names if complete, else the newest complete one, else None."""
        names = self.complete_checkpoints()
        if not names:
            return None
        try:
            pointer = self.read(f"{CHECKPOINTS_DIR}/{LATEST_FILE}").decode(errors="replace").strip()
        except FileNotFoundError:
            pointer = None
        return pointer if pointer in names else names[-1]

    def download_checkpoint(self, name: str, output_dir: Path) -> Path:
        """Complete checkpoint ``name`` into output_dir/checkpoints/name (atomically; sizes checked), `latest` to it."""
        from bitk.models.checkpoint import atomic_directory, is_checkpoint

        folder = f"{CHECKPOINTS_DIR}/{name}"
        marker = json.loads(self.read(f"{folder}/{COMPLETE_MARKER}"))
        files = marker.get("files") if isinstance(marker, dict) else None
        if not isinstance(files, dict) or not files:
            raise ValueError(f"{self.where(folder)}/{COMPLETE_MARKER} lists no files")
        dest = Path(output_dir) / CHECKPOINTS_DIR / name
        with atomic_directory(dest, owned=is_checkpoint, what="training checkpoint") as tmp:
            for rel, size in files.items():
                parts = PurePosixPath(rel).parts
                if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
                    raise ValueError(f"{self.where(folder)}/{COMPLETE_MARKER} names a file outside the folder: {rel!r}")
                local = tmp.joinpath(*parts)
                local.parent.mkdir(parents=True, exist_ok=True)
                self.get(f"{folder}/{rel}", local)
                if local.stat().st_size != size:
                    raise ValueError(
                        f"{self.where(folder)}/{rel}: {local.stat().st_size} bytes, its marker says {size}"
                    )
        set_latest(output_dir, name)
        return dest


def open_remote(cfg: Config, info: DistInfo) -> Remote | None:
    """The run's remote (main process only), probed: bad credentials or a wrong bucket stop the run here.

    Also refuses resume=none when the remote already holds another run's checkpoints.
    """
    if cfg.remote is None or not info.is_main:
        return None
    remote = Remote(cfg.remote)
    remote.probe()
    if cfg.resume == "none" and _listing(remote.complete_checkpoints, remote.url):
        raise ValueError(
            f"remote {remote.url} already holds checkpoints of another run; resume=auto continues it, or "
            "choose another remote (or delete that one) to start afresh"
        )
    return remote


def fetch_checkpoint(url: str, output_dir: Path, *, required: bool, say: Any) -> Path | None:
    """Download the checkpoint ``url`` names into output_dir; returns its local folder.

    ``url``: a checkpoint (URL/checkpoints/step-NNNNNN) or a run's remote (its `latest`, else its
    newest complete checkpoint). A run's remote without a complete checkpoint gives None, or
    ValueError when ``required``. output_dir's metrics.jsonl comes along when it has none, so the
    resumed run's metrics hold the whole run.
    """
    url = url.rstrip("/")
    head, _, last = url.rpartition("/")
    if checkpoint_step(last) is not None:
        if not head.endswith(f"/{CHECKPOINTS_DIR}"):
            raise ValueError(f"resume={url}: a remote checkpoint's URL ends in /{CHECKPOINTS_DIR}/step-NNNNNN")
        remote, name = Remote(head.removesuffix(f"/{CHECKPOINTS_DIR}")), last
        if name not in remote.complete_checkpoints():
            raise ValueError(
                f"resume={url}: not a complete checkpoint (no {COMPLETE_MARKER} marker: missing, or an upload that "
                f"did not finish); complete ones there: {', '.join(remote.complete_checkpoints()) or 'none'}"
            )
    else:
        remote = Remote(head if last == CHECKPOINTS_DIR else url)
        name = remote.newest_complete()
        if name is None:
            if required:
                raise ValueError(f"resume={url}: no complete checkpoint there")
            say(f"remote: no complete checkpoint in {remote.url} yet: starting afresh", flush=True)
            return None
    started = time.perf_counter()
    say(f"remote: downloading {name} from {remote.where(CHECKPOINTS_DIR)}", flush=True)
    path = remote.download_checkpoint(name, output_dir)
    metrics = Path(output_dir) / METRICS_FILE
    if not metrics.exists():
        tmp = metrics.with_name(f".{METRICS_FILE}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            remote.get(METRICS_FILE, tmp)
            tmp.replace(metrics)
        except FileNotFoundError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    say(f"remote: downloaded {name} ({size / 2**20:,.1f} MiB in {time.perf_counter() - started:.1f} s)", flush=True)
    return path


def find_resume(cfg: Config, out: Path, info: DistInfo, say: Any) -> Path | None:
    """What the run resumes from: `find_checkpoint` for resume=auto / none / PATH; for resume=URL, that
    checkpoint downloaded; for resume=auto with no checkpoint in output_dir and a remote, the remote's
    newest complete one downloaded (if any).

    Under torchrun each node's local rank 0 downloads (output_dir may be a node's own disk) while
    the others wait; every process goes through the same one barrier.
    """
    url = cfg.resume if is_url(cfg.resume) else None
    found = None if url else find_checkpoint(cfg.resume, out)
    if url is None and cfg.resume == "auto" and found is None and cfg.remote is not None:
        url = cfg.remote
    fetched = None
    if url is not None and info.local_rank == 0:
        fetched = _listing(lambda: fetch_checkpoint(url, out, required=is_url(cfg.resume), say=say), url)
    barrier(info)
    if url is None:
        return found
    return fetched if info.local_rank == 0 else latest_checkpoint(out)


def _listing(action: Callable[[], Any], url: str) -> Any:
    """``action()``, a read of the remote at start: what the backend raises becomes one ValueError line."""
    try:
        return action()
    except ValueError:
        raise
    except Exception as e:  # after the retries: the run cannot know where it stands
        raise ValueError(f"cannot read the checkpoints in {url} ({describe(e)})") from e


# --------------------------------------------------------------------------- the uploader


@dataclass
class _Job:
    key: str
    """"checkpoint", or the file's path in output_dir: a newer job replaces a waiting one of the same key."""
    name: str
    """What messages call it: step-000300, metrics.jsonl."""
    source: Path
    """The local file or folder, or its snapshot in output_dir/.uploads (``owned``)."""
    rel: str
    """Where it goes, relative to the URL."""
    owned: bool = False
    if_missing: bool = False
    """Upload only when the remote has no complete copy (a local checkpoint a crash kept from the remote)."""


class Mirror:
    """Uploads checkpoints and files of output_dir to a `Remote` on one background thread (main process only).

    `checkpoint` and `file` return at once; `close` finishes what is queued and returns what did not
    reach the remote. Messages (uploads, warnings) go to ``say``.
    """

    def __init__(self, remote: Remote, output_dir: Path, *, keep_last: int, say: Callable[[str], None]) -> None:
        self.remote = remote
        self.out = Path(output_dir)
        self.keep_last = keep_last
        self.say = say
        self.staging = self.out / UPLOADS_DIR
        shutil.rmtree(self.staging, ignore_errors=True)  # the snapshots of a run that was killed
        self.newest: str | None = None
        """The newest checkpoint this mirror completed remotely."""
        self.missing: dict[str, str] = {}
        """key -> name of what failed and has not been uploaded since."""
        self._jobs: deque[_Job] = deque()
        self._busy: _Job | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="bitk-remote-upload", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ queueing (the training thread)

    def checkpoint(self, path: Path, *, if_missing: bool = False) -> None:
        """Queue checkpoint folder ``path``; a queued, not yet started, older checkpoint is dropped."""
        source, owned = self._snapshot(path)
        self._queue(_Job("checkpoint", path.name, source, f"{CHECKPOINTS_DIR}/{path.name}", owned, if_missing))

    def file(self, path: Path, *, copy: bool = False) -> None:
        """Queue a file of output_dir; ``copy`` snapshots one that is still being written (metrics.jsonl)."""
        try:
            rel = path.resolve().relative_to(self.out.resolve()).as_posix()
        except ValueError:
            rel = path.name
        source, owned = self._snapshot(path, copy=copy)
        self._queue(_Job(rel, rel, source, rel, owned))

    def pending(self) -> list[str]:
        """What is queued or on its way, by name."""
        with self._cond:
            return [j.name for j in ([self._busy] if self._busy else []) + list(self._jobs)]

    def wait(self) -> None:
        """Until everything queued so far is uploaded (or has failed)."""
        with self._cond:
            while self._jobs or self._busy is not None:
                self._cond.wait(timeout=0.5)

    def close(self) -> list[str]:
        """Finish the queued uploads and stop; returns the names of what is not on the remote.

        A second Ctrl-C interrupts the wait (KeyboardInterrupt, after saying what is left).
        """
        pending = self.pending()
        if pending:
            self.say(
                f"remote: finishing the upload of {', '.join(pending)} to {self.remote.url} "
                "(a second Ctrl-C or SIGTERM stops at once)"
            )
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            self.say(
                f"warning: uploads interrupted, not on {self.remote.url}: {', '.join(self.pending())}; "
                + self.newest_text()
            )
            raise
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.missing:
            self.say(
                f"warning: not on {self.remote.url}: {', '.join(self.missing.values())} (the local copies are "
                f"in {self.out}); " + self.newest_text()
            )
        return list(self.missing.values())

    def _snapshot(self, path: Path, *, copy: bool = False) -> tuple[Path, bool]:
        """A hard-linked (or, with ``copy``, copied) snapshot in output_dir/.uploads, or ``path`` itself
        where the filesystem has no hard links (then a checkpoint deleted by keep_last is skipped)."""
        dest = self.staging / f"{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, dest, copy_function=os.link)
            elif copy:
                shutil.copyfile(path, dest)
            else:
                os.link(path, dest)
        except OSError:
            _remove(dest)
            return path, False
        return dest, True

    def _queue(self, job: _Job) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the remote mirror is closed")
            for old in [j for j in self._jobs if j.key == job.key]:
                self._jobs.remove(old)
                if old.owned:
                    _remove(old.source)
            self._jobs.append(job)
            self._cond.notify_all()

    # ------------------------------------------------------------------ uploading (the background thread)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._busy = self._jobs.popleft()
            try:
                if job.key == "checkpoint":
                    self._upload_checkpoint(job)
                else:
                    self.remote.put(job.source, job.rel)
                self.missing.pop(job.key, None)
            except Exception as e:  # reported, never raised: training goes on with the local copies
                self._failed(job, e)
            finally:
                if job.owned:
                    _remove(job.source)
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _upload_checkpoint(self, job: _Job) -> None:
        remote, folder = self.remote, job.rel
        if job.if_missing and job.name in remote.complete_checkpoints():
            return
        started = time.perf_counter()
        files = sorted(p for p in job.source.rglob("*") if p.is_file())
        sizes = {p.relative_to(job.source).as_posix(): p.stat().st_size for p in files}
        # an earlier upload of this step (cut short, or of another attempt) stops counting before it is overwritten
        remote.remove(f"{folder}/{COMPLETE_MARKER}")
        for rel in sizes:
            remote.put(job.source / rel, f"{folder}/{rel}")
        marker = {"step": checkpoint_step(job.name), "files": sizes}
        remote.write(f"{folder}/{COMPLETE_MARKER}", json.dumps(marker, indent=1).encode())
        remote.write(f"{CHECKPOINTS_DIR}/{LATEST_FILE}", f"{job.name}\n".encode())
        self.newest = job.name
        self.say(
            f"remote: uploaded {job.name} to {remote.where(folder)} ({sum(sizes.values()) / 2**20:,.1f} MiB in "
            f"{time.perf_counter() - started:.1f} s)"
        )
        if self.keep_last:
            try:
                self._retain(checkpoint_step(job.name))
            except Exception as e:  # old checkpoints left behind cost space, not correctness
                self.say(
                    f"warning: could not delete old checkpoints in {remote.where(CHECKPOINTS_DIR)} ({describe(e)})"
                )

    def _retain(self, step: int) -> None:
        """Keep the newest keep_last complete checkpoints; drop older ones and older leftovers without a marker."""
        found = self.remote.checkpoints()
        keep = sorted((n for n, complete in found.items() if complete), key=checkpoint_step)[-self.keep_last :]
        for name, complete in found.items():
            if name in keep or checkpoint_step(name) >= step:
                continue
            if complete:  # the marker first: a reader never takes a half-deleted folder for a checkpoint
                self.remote.remove(f"{CHECKPOINTS_DIR}/{name}/{COMPLETE_MARKER}")
            self.remote.remove(f"{CHECKPOINTS_DIR}/{name}", recursive=True)

    def _failed(self, job: _Job, e: Exception) -> None:
        with self._cond:
            superseded = any(j.key == job.key for j in self._jobs)
        if isinstance(e, FileNotFoundError) and not job.source.exists() and superseded:
            return  # keep_last deleted it (no hard links here) and a newer one is queued
        first = job.key not in self.missing
        self.missing[job.key] = job.name
        tries = 1 if isinstance(e, PERMANENT_ERRORS) else len(RETRY_DELAYS) + 1
        if job.key == "checkpoint" or first:  # once per checkpoint; a file's warning once until it uploads again
            self.say(
                f"warning: {job.name} was not uploaded to {self.remote.where(job.rel)} ({describe(e)}; "
                f"{tries} {'try' if tries == 1 else 'tries'}); training goes on with the local copy; "
                + self.newest_text()
            )

    def newest_text(self) -> str:
        if self.newest is None:
            return "no checkpoint of this run is complete there yet"
        return f"the remote's newest complete checkpoint is {self.newest}"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
