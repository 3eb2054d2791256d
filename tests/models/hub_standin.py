"""A local stand-in for the Hugging Face Hub's HTTP endpoints: a fake of a remote service these machines cannot reach.

It answers exactly what huggingface_hub 0.36 asks for a pinned-revision download (read from its file_download.py,
hf_api.py and utils/_http.py), the way the Hub answers:

* `GET /api/models/{repo}/revision/{revision}[?blobs=true]`: the model info: `sha` (the commit), `gated`, and
  `siblings` with `size`, `blobId` (git blob id) and, for LFS files, `lfs` {sha256, size, pointerSize}. The metadata
  of a gated repository is public, as on the Hub.
* `HEAD`/`GET /{repo}/resolve/{revision}/{path}`: a small file answers 200 with `X-Repo-Commit`, `ETag` (its git blob
  id) and `Content-Length`; an LFS file (weights) answers 302 to the "CDN" with `X-Repo-Commit`, `X-Linked-Etag` (the
  sha256), `X-Linked-Size` and a `Location` on another host name (`localhost` instead of `127.0.0.1`), so
  huggingface_hub drops the Authorization header for it as it does for the Hub's CDN.
* `GET /cdn/{sha256}`: the content, honouring `Range: bytes=N-` (206 with `Content-Range`).
* Refusals with the Hub's error headers: a gated repository without a token is 401 and with a token lacking access
  403, both `X-Error-Code: GatedRepo`; a token it does not know is 401 "Invalid credentials in Authorization header";
  an unknown revision 404 `RevisionNotFound`, an unknown file 404 `EntryNotFound`, an unknown repository 401
  `RepoNotFound` (the Hub does not tell private from absent).

Faults for the tests: `cut(path, after)` closes the connection once after that many bytes of the file's content;
`stall(path, after)` sends that many bytes, then holds the connection until `release()`. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# What the Hub's default .gitattributes stores with LFS.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index", ".onnx")
BLOCK = 1 << 16


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str
    source: Path
    size: int
    sha256: str
    lfs: bool

    @staticmethod
    def of(path: str, source: Path) -> HubFile:
        data = source.read_bytes()
        lfs = path.endswith(LFS_SUFFIXES) or len(data) > 10_000_000
        return HubFile(path, source, len(data), hashlib.sha256(data).hexdigest(), lfs)

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    def git_id(self) -> str:
        """The git blob id of what git stores: the LFS pointer for an LFS file, else the content."""
        return git_blob_id(self.pointer() if self.lfs else self.source.read_bytes())

    def sibling(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path, "size": self.size, "blobId": self.git_id()}
        if self.lfs:
            entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": len(self.pointer())}
        return entry


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    gated: bool = False
    # Tokens whose account accepted the gate's terms.
    granted: frozenset[str] = frozenset()

    @staticmethod
    def from_folder(repo_id: str, commit: str, folder: Path, **extra: Any) -> HubRepo:
        files = {
            p.relative_to(folder).as_posix(): HubFile.of(p.relative_to(folder).as_posix(), p)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return HubRepo(repo_id, commit, files, **extra)

    def resolve(self, revision: str) -> str | None:
        return self.commit if revision in (self.commit, "main") else None


@dataclass
class Fault:
    after: int
    stall: bool
    released: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str
    authorized: bool


class HubStandIn:
    """The stand-in on a free loopback port; `url` is what HF_ENDPOINT gets."""

    def __init__(self, repos: list[HubRepo], tokens: frozenset[str] = frozenset()) -> None:
        self.repos = {repo.repo_id: repo for repo in repos}
        # Tokens the Hub knows (valid accounts); a gated repository also needs the token in its `granted`.
        self.tokens = tokens | {token for repo in repos for token in repo.granted}
        self.blobs = {f.sha256: f for repo in repos for f in repo.files.values()}
        self.requests: list[Request] = []
        self.faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for fault in self.faults.values():
            fault.released.set()
        self._server.shutdown()
        self._server.server_close()

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def mark(self) -> int:
        """The number of requests so far, for `since`."""
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        with self._lock:
            return self.requests[mark:]

    def cut(self, repo_id: str, path: str, after: int) -> Fault:
        fault = Fault(after, stall=False)
        self.faults[self.repos[repo_id].files[path].sha256] = fault
        return fault

    def stall(self, repo_id: str, path: str, after: int) -> Fault:
        fault = Fault(after, stall=True)
        self.faults[self.repos[repo_id].files[path].sha256] = fault
        return fault

    def cdn_url(self, blob: HubFile) -> str:
        return f"http://localhost:{self.port}/cdn/{blob.sha256}"


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
API_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<revision>[^/]+)$")


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            hub.log(Request(self.command, path, self.headers.get("Range", ""), bool(token)))
            if token and token not in hub.tokens:
                return self._error(401, "", "Invalid credentials in Authorization header")
            if match := API_INFO.match(path):
                return self._info(match["repo"], match["revision"])
            if match := RESOLVE.match(path):
                return self._resolve(match["repo"], match["revision"], match["path"], token, head)
            if path.startswith("/cdn/") and (blob := hub.blobs.get(path.removeprefix("/cdn/"))):
                return self._content(blob, head)
            self._error(404, "", "Not found")

        def _repo(self, repo_id: str, revision: str) -> tuple[HubRepo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
                return None
            return repo, commit

        def _info(self, repo_id: str, revision: str) -> None:
            found = self._repo(repo_id, revision)
            if found is None:
                return
            repo, commit = found
            body = {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": [f.sibling() for f in repo.files.values()],
            }
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _resolve(self, repo_id: str, revision: str, path: str, token: str, head: bool) -> None:
            found = self._repo(repo_id, revision)
            if found is None:
                return
            repo, commit = found
            if repo.gated and token not in repo.granted:
                if not token:
                    message = (
                        f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                        "to access it. Please log in."
                    )
                    return self._error(401, "GatedRepo", message, {"X-Repo-Commit": commit})
                message = (
                    f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                    f"Visit https://huggingface.co/{repo_id} to ask for access."
                )
                return self._error(403, "GatedRepo", message, {"X-Repo-Commit": commit})
            blob = repo.files.get(path)
            if blob is None:
                return self._error(
                    404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": commit}
                )
            if blob.lfs:
                headers = {
                    "X-Repo-Commit": commit,
                    "ETag": f'"{blob.git_id()}"',
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(blob.size),
                    "Location": hub.cdn_url(blob),
                }
                return self._send(302, b"", headers, head=head)
            self._send(200, blob.source.read_bytes(), {"X-Repo-Commit": commit, "ETag": f'"{blob.git_id()}"'}, head)

        def _content(self, blob: HubFile, head: bool) -> None:
            start = 0
            if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = min(int(match[1]), blob.size)
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Length", str(blob.size - start))
            self.send_header("ETag", f'"{blob.sha256}"')
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{blob.size - 1}/{blob.size}")
            self.end_headers()
            if head:
                return
            fault = hub.faults.pop(blob.sha256, None)
            limit = blob.size if fault is None else max(start, fault.after)
            with blob.source.open("rb") as source:
                source.seek(start)
                sent = start
                while sent < limit and (data := source.read(min(BLOCK, limit - sent))):
                    self.wfile.write(data)
                    sent += len(data)
            self.wfile.flush()
            if fault is None:
                return
            fault.reached.set()
            if fault.stall:
                fault.released.wait(60)
            # The connection goes away mid-body, as a dropped link would make it.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
            headers = {"X-Error-Message": message, "Content-Type": "application/json", **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler
