"""A small Hugging Face Hub on loopback: enough of its API for huggingface_hub to list
and download model repositories (``HF_ENDPOINT=hub.url``).

    GET       /api/models/{org}/{name}[/revision/{rev}]   model info, ``siblings`` with sizes
    HEAD|GET  /{org}/{name}/resolve/{rev}/{path}          a file: ETag, X-Repo-Commit,
                                                          Content-Length, Range (resumes
                                                          and header reads)

Unknown repositories and files answer 404 with the ``X-Error-Code`` the real hub
sends; a repository with a ``token`` answers 401 without it. ``cut_after`` drops the
connection after that many bytes of a file's first GET to its end, so a client must
resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CHUNK = 1 << 20


@dataclass
class Repo:
    files: dict[str, bytes | Path]  # path in the repository -> content, or a file to serve
    token: str | None = None  # when set, requests need "Authorization: Bearer <token>"

    @property
    def sha(self) -> str:
        names = "\n".join(f"{name}:{self.size(name)}" for name in sorted(self.files))
        return hashlib.sha1(names.encode()).hexdigest()

    def size(self, name: str) -> int:
        content = self.files[name]
        return content.stat().st_size if isinstance(content, Path) else len(content)

    def etag(self, name: str) -> str:
        return hashlib.sha256(f"{self.sha}/{name}".encode()).hexdigest()

    def read(self, name: str, start: int, stop: int) -> bytes:
        content = self.files[name]
        if isinstance(content, Path):
            with content.open("rb") as file:
                file.seek(start)
                return file.read(stop - start)
        return content[start:stop]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class HubServer:
    repos: dict[str, Repo]
    cut_after: int | None = None
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cut: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def seen(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._answer(self, head=False)

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

        return Handler

    # -- routes ----------------------------------------------------------------------

    def _answer(self, http: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(http.path).path)
        headers = {key.lower(): value for key, value in http.headers.items()}
        self.requests.append(Request(http.command, path, headers))
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if info:
            return self._model_info(http, info[1])
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            return self._file(http, resolve[1], resolve[3], head)
        return _send(http, 404, {"error": "no such route"}, {})

    def _repo(self, http: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (
            repo.token and http.headers.get("Authorization") != f"Bearer {repo.token}"
        ):
            status = 401 if repo is not None else 404
            headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            _send(http, status, {"error": "Repository not found"}, headers)
            return None
        return repo

    def _model_info(self, http: BaseHTTPRequestHandler, repo_id: str) -> None:
        repo = self._repo(http, repo_id)
        if repo is None:
            return
        siblings = [
            {"rfilename": name, "size": repo.size(name), "blobId": repo.etag(name)[:40]}
            for name in sorted(repo.files)
        ]
        body = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False}
        _send(http, 200, {**body, "siblings": siblings}, {})

    def _file(self, http: BaseHTTPRequestHandler, repo_id: str, name: str, head: bool) -> None:
        repo = self._repo(http, repo_id)
        if repo is None:
            return
        if name not in repo.files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha}
            return _send(http, 404, {"error": "Entry not found"}, headers)
        size = repo.size(name)
        start, stop = 0, size
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", http.headers.get("Range", ""))
        if wanted:  # "start-" (a resume) or "start-last" (a header read)
            start = int(wanted[1])
            stop = min(size, int(wanted[2]) + 1) if wanted[2] else size
        headers = {
            "ETag": f'"{repo.etag(name)}"',
            "X-Repo-Commit": repo.sha,
            "Accept-Ranges": "bytes",
            "Content-Length": str(stop - start),
        }
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        http.send_response(206 if wanted else 200)
        for key, value in headers.items():
            http.send_header(key, value)
        http.end_headers()
        if head:
            return
        content = repo.read(name, start, stop)
        key = f"{repo_id}/{name}"
        if self.cut_after is not None and key not in self._cut and stop == size:
            self._cut.add(key)
            http.wfile.write(content[: self.cut_after])
            http.wfile.flush()
            http.close_connection = True
            return
        for offset in range(0, len(content), _CHUNK):
            http.wfile.write(content[offset : offset + _CHUNK])


def _send(http: BaseHTTPRequestHandler, status: int, body: dict, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    http.send_response(status)
    http.send_header("Content-Type", "application/json")
    http.send_header("Content-Length", str(len(data)))
    for key, value in headers.items():
        http.send_header(key, value)
    http.end_headers()
    if http.command != "HEAD":
        http.wfile.write(data)
