"""A stand-in for the Hugging Face Hub's HTTP API: what huggingface_hub's `snapshot_download` calls, and no more.

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: the model info (`sha`, `siblings`);
  404 with `X-Error-Code: RepoNotFound` / `RevisionNotFound`, which huggingface_hub turns into its exceptions.
- `GET /api/models/{repo}/tree/{rev}?recursive=...`: the file listing, in one page.
- `HEAD` and `GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag` (the sha256 of LFS files, the git blob id
  of others, as the hub), `Content-Length`, `Accept-Ranges`; a GET honours `Range: bytes=N-` (206).
  A gated repository answers 401 `GatedRepo` without `Authorization: Bearer {token}`.

Faults, for resume tests: `fail(repo, path, "500", "truncate")` makes the next GETs of that file answer 500, or
send all of the body but its last 64 KiB and close the connection, once each and in that order. Every request
is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".msgpack")


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str  # the commit every revision names
    revisions: tuple[str, ...] = ("main",)
    token: str | None = None  # gated: the token that opens it

    def commit(self, revision: str | None) -> str | None:
        return self.sha if revision is None or revision in (self.sha, *self.revisions) else None


@dataclass(frozen=True)
class Request:
    method: str
    repo: str
    path: str  # the repository file for resolve requests, else the API route
    range: str | None
    authorization: str | None


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _etag(path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else _git_blob_id(data)


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, repo_id: str, files: dict[str, bytes], **kwargs: Any) -> Repo:
        sha = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = Repo(files, sha, **kwargs)
        return self.repos[repo_id]

    def fail(self, repo_id: str, path: str, *faults: str) -> None:
        self.faults[(repo_id, path)] = list(faults)

    def seen(self, repo_id: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.repo == repo_id and method in (None, r.method)]

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects
    fake: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/api/models/"):
            org, name, *rest = path.removeprefix("/api/models/").split("/")
            self._api(method, f"{org}/{name}", [unquote(p) for p in rest])
            return
        parts = path.lstrip("/").split("/")  # ORG/NAME/resolve/REVISION/PATH (the revision is quoted whole)
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "EntryNotFound", "no such route")
            return
        self._resolve(method, f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:])))

    def _record(self, method: str, repo: str, path: str) -> None:
        self.fake.requests.append(Request(method, repo, path, self.headers.get("Range"),
                                          self.headers.get("Authorization")))

    def _api(self, method: str, repo_id: str, rest: list[str]) -> None:
        self._record(method, repo_id, "/".join(["api", *rest]))
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        route, revision = (rest[0], "/".join(rest[1:])) if rest else ("info", None)
        commit = repo.commit(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        elif route in ("info", "revision"):
            siblings = [{"rfilename": p} for p in sorted(repo.files)]
            self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                        "gated": "manual" if repo.token else False, "siblings": siblings})
        elif route == "tree":
            self._json(_tree(repo.files))
        else:
            self._error(404, "EntryNotFound", "no such route")

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        self._record(method, repo_id, path)
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                                          "and be authenticated to access it. Please log in.")
            return
        commit, data = repo.commit(revision), repo.files.get(path)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if data is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            return
        headers = {"X-Repo-Commit": commit, "ETag": f'"{_etag(path, data)}"', "Accept-Ranges": "bytes"}
        if method == "HEAD":
            self._send(200, headers | {"Content-Length": str(len(data))}, b"")
            return
        fault = self._next_fault(repo_id, path)
        if fault == "500":
            self._error(500, "", "Internal Error")
            return
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers.get("Range") else 0
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self.send_response(206 if start else 200)
        for key, value in (headers | {"Content-Length": str(len(data) - start)}).items():
            self.send_header(key, value)
        self.end_headers()
        body = data[start:]
        if fault == "truncate":  # all but the last 64 KiB, then hang up: the client sees an incomplete response
            self.wfile.write(body[: len(body) - min(65536, len(body) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _next_fault(self, repo_id: str, path: str) -> str | None:
        queue = self.fake.faults.get((repo_id, path))
        return queue.pop(0) if queue else None

    def _json(self, data: Any) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(data).encode())

    def _error(self, status: int, code: str, message: str) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _tree(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """The recursive listing: folders, then files (LFS ones with their sha256), as the hub's tree API."""
    folders = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
    entries: list[dict[str, Any]] = [{"type": "directory", "path": f, "oid": _git_blob_id(f.encode()), "size": 0}
                                     for f in folders]
    for path, data in sorted(files.items()):
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": _git_blob_id(data)}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries.append(entry)
    return entries
