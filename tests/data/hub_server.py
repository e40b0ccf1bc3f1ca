"""A tiny stand-in for the Hugging Face hub: one dataset repo served over HTTP on 127.0.0.1.

`hub_server(repo_id, files)` starts it in a thread and yields it; point ``HF_ENDPOINT`` at its
``url`` and `datasets` / `huggingface_hub` read the repo from it as from huggingface.co. It answers
just the requests they make for a dataset repo (each one is logged in ``requests``):

    GET       /api/datasets/{repo}[/revision/{rev}]            repo info: commit sha, file list
    GET       /api/datasets/{repo}/tree/{rev}[/{folder}]       folder listing (?recursive=true: all below)
    GET/HEAD  /datasets/{repo}/resolve/{rev}/{path}            file bytes (Range requests honoured)
    POST      /api/datasets/{repo}/paths-info/{rev}            info on the form's ``paths`` (HfFileSystem;
                                                               datasets 5.2 streaming does not ask)

Anything else is answered 404 with the ``X-Error-Code`` the hub gives (EntryNotFound inside the repo,
RepoNotFound elsewhere), and logged, so a failing test shows what a new version asks for.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "hub_server"]

SHA = "0123456789abcdef0123456789abcdef01234567"  # the repo's one commit
DATE = "2024-01-01T00:00:00.000Z"


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, repo_id: str, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repo_id, self.files = repo_id, dict(files)
        self.requests: list[str] = []  # "METHOD /path?query [(Range)]" of every request, in order
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    # -- the repo's content as the hub API shows it ---------------------------------------------
    def entry(self, path: str) -> dict | None:
        """The tree / paths-info entry of a file or folder, None when there is none."""
        if path in self.files:
            data = self.files[path]
            return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if path == "" or any(f.startswith(path + "/") for f in self.files):
            return {"type": "directory", "path": path, "oid": SHA}
        return None

    def tree(self, folder: str, recursive: bool) -> list[dict] | None:
        """Entries below ``folder`` ("" = the root): its children, or everything below when ``recursive``."""
        if self.entry(folder) is None or folder in self.files:
            return None
        prefix = folder + "/" if folder else ""
        paths = set()
        for f in self.files:
            if f.startswith(prefix):
                parts = f[len(prefix) :].split("/")
                for depth in range(1, len(parts) + 1 if recursive else 2):
                    paths.add(prefix + "/".join(parts[:depth]))
        return [self.entry(p) for p in sorted(paths)]

    def info(self) -> dict:
        return {
            "_id": "0" * 24,
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": SHA,
            "lastModified": DATE,
            "createdAt": DATE,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": {},
            "siblings": [{"rfilename": f} for f in sorted(self.files)],
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries its Content-Length
    server: HubServer

    def log_message(self, format, *args) -> None:  # quiet: the requests are kept in server.requests
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def do_POST(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        hub = self.server
        asked = self.headers.get("Range")
        hub.requests.append(f"{self.command} {self.path}" + (f" ({asked})" if asked else ""))
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        api, files = f"/api/datasets/{hub.repo_id}", f"/datasets/{hub.repo_id}/resolve/"
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if re.fullmatch(re.escape(api) + r"/paths-info/[^/]+", path):
                entries = [hub.entry(p.strip("/")) for p in form.get("paths", [])]
                return self._json([e for e in entries if e is not None], body)
        elif path == api or re.fullmatch(re.escape(api) + r"/revision/[^/]+", path):
            return self._json(hub.info(), body)
        elif m := re.fullmatch(re.escape(api) + r"/tree/([^/]+)(?:/(.*))?", path):
            entries = hub.tree((m[2] or "").strip("/"), query.get("recursive", ["false"])[0].lower() == "true")
            if entries is not None:
                return self._json(entries, body)
        elif path.startswith(files):
            name = path[len(files) :].partition("/")[2]  # after the revision
            if name in hub.files:
                return self._file(hub.files[name], body)
        # What the hub says of a missing file or folder / an unknown repo; huggingface_hub reads the code.
        in_repo = path.startswith((api + "/", files)) or path == api
        code = "EntryNotFound" if in_repo else "RepoNotFound"
        self._send(404, json.dumps({"error": code}).encode(), "application/json", body, {"X-Error-Code": code})

    def _json(self, value, body: bool) -> None:
        self._send(200, json.dumps(value).encode(), "application/json", body)

    def _file(self, data: bytes, body: bool) -> None:
        """The bytes of a file, or the part a ``Range: bytes=a-b`` header asks for (206)."""
        headers = {
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
            "X-Repo-Commit": SHA,
            "Accept-Ranges": "bytes",
        }
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if m and data:
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            else:  # bytes=-n: the last n bytes
                start, end = max(0, len(data) - int(m[2])), len(data) - 1
            if start > end:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", "application/octet-stream", body, headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], "application/octet-stream", body, headers)
        self._send(200, data, "application/octet-stream", body, headers)

    def _send(self, status: int, data: bytes, content_type: str, body: bool, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@contextmanager
def hub_server(repo_id: str, files: dict[str, bytes]) -> Iterator[HubServer]:
    """A `HubServer` for the dataset repo ``repo_id`` holding ``files`` (repo path -> bytes),
    serving in a background thread until the block ends."""
    server = HubServer(repo_id, files)
    thread = threading.Thread(target=server.serve_forever, name="hub-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
