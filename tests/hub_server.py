"""A local stand-in for the Hugging Face Hub: an HTTP server over a folder laid out like it.

``root/OWNER/NAME/...`` is the ``main`` branch of the model repository OWNER/NAME and
``root/OWNER/NAME/.revisions/REV/...`` any other branch or tag. The server answers the
few endpoints huggingface_hub calls to download a snapshot and to create a repository
and a commit, with the Hub's headers and error codes, so saekit's Hub code runs for real
(huggingface_hub's own requests, cache and error handling) without the network.

Each revision's commit id is the SHA-1 of its files, so it changes when a commit does.
Every request is recorded in ``HubServer.requests`` for the tests to inspect.

As the Hub does: with ``token`` set, a request without it is anonymous, and an
anonymous read of a missing repository gets 401 with ``RepoNotFound`` while an
anonymous write gets 401; a repository holding a ``.gated`` file answers reads with
``GatedRepo``; a README.md whose metadata block is not closed is refused (400).

Not modelled (huggingface_hub's own code, not saekit's): LFS/Xet uploads (every file is
sent inline, "regular"), pagination of long listings, redirects to a CDN, and the
Hub's case-insensitive names. Each path is checked to stay inside ``root``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REVISIONS = ".revisions"


class HubServer:
    def __init__(self, root: Path, token: str | None = None):
        self.root = root
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the repositories on disk
    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def inside(self, folder: Path, rel: str) -> Path | None:
        """``folder / rel`` if it stays inside ``folder`` (no ``..`` escapes), else None."""
        target = (folder / rel).resolve()
        return target if target.is_relative_to(folder.resolve()) else None

    def revision_folder(self, repo_id: str, revision: str) -> Path | None:
        repo = self.repo(repo_id)
        if revision == "main":
            return repo
        if (repo / REVISIONS / revision).is_dir():
            return repo / REVISIONS / revision
        for name in ["main", *(p.name for p in (repo / REVISIONS).glob("*"))]:
            folder = repo if name == "main" else repo / REVISIONS / name
            if revision == self.commit(folder):
                return folder
        return None

    @staticmethod
    def files(folder: Path) -> list[str]:
        return sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")
        )

    @staticmethod
    def blob(path: Path) -> str:
        return hashlib.sha1(path.read_bytes()).hexdigest()

    def commit(self, folder: Path) -> str:
        digest = hashlib.sha1()
        for name in self.files(folder):
            digest.update(f"{name}\0{self.blob(folder / name)}\0".encode())
        return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    # -- replies
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _resolve(self, repo_id: str, revision: str, head: bool = False) -> Path | None:
        if not self.hub.inside(self.hub.root, repo_id) or not self.hub.repo(repo_id).is_dir():
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head)
            return None
        if (self.hub.repo(repo_id) / ".gated").exists():
            self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted", head)
            return None
        folder = self.hub.revision_folder(repo_id, revision)
        if folder is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return folder

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # -- routes
    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        with self.hub.lock:
            self.hub.requests.append((method, url.path))
        query = parse_qs(url.query)
        if self.hub.token and self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            if method == "POST":
                return self._error(401, "", "Invalid credentials in Authorization header")
            repo_id = "/".join(parts[2:4] if parts[0] == "api" else parts[:2])
            if not self.hub.inside(self.hub.root, repo_id) or not self.hub.repo(repo_id).is_dir():
                return self._error(401, "RepoNotFound", "Repository not found", head=method == "HEAD")
        if parts[:2] == ["api", "models"] and len(parts) == 4 and method == "GET":
            return self._repo_info("/".join(parts[2:4]), "main", "", query)
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, revision, rest = "/".join(parts[2:4]), parts[4], parts[5], "/".join(parts[6:])
            handler = {("GET", "revision"): self._repo_info, ("GET", "tree"): self._tree,
                       ("POST", "preupload"): self._preupload, ("POST", "commit"): self._commit}.get((method, action))
            if handler is not None:
                return handler(repo_id, revision, rest, query)
        if method == "POST" and url.path == "/api/repos/create":
            return self._create_repo()
        if method == "POST" and url.path == "/api/validate-yaml":
            content = json.loads(self._body())["content"]
            if content.startswith("---") and "\n---" not in content[3:]:
                return self._error(400, "", "Invalid metadata in README.md: the YAML block is not closed")
            return self._json({})
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head=method == "HEAD")
        self._error(404, "NotFound", f"no route for {method} {url.path}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _repo_info(self, repo_id: str, revision: str, rest: str, query) -> None:
        folder = self._resolve(repo_id, revision)
        if folder is not None:
            self._json({"id": repo_id, "sha": self.hub.commit(folder), "private": False,
                        "siblings": [{"rfilename": f} for f in self.hub.files(folder)]})

    def _tree(self, repo_id: str, revision: str, rest: str, query) -> None:
        folder = self._resolve(repo_id, revision)
        if folder is None:
            return
        base = self.hub.inside(folder, rest)
        if base is None or not base.is_dir():
            return self._error(404, "EntryNotFound", f"{rest} does not exist on {revision}")
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        entries = base.rglob("*") if recursive else base.iterdir()
        out = []
        for p in sorted(entries):
            rel = p.relative_to(folder).as_posix()
            if rel.split("/")[0].startswith("."):
                continue
            if p.is_file():
                out.append({"type": "file", "oid": self.hub.blob(p), "size": p.stat().st_size, "path": rel})
            else:
                out.append({"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel})
        self._json(out)

    def _file(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        folder = self._resolve(repo_id, revision, head)
        if folder is None:
            return
        target = self.hub.inside(folder, path)
        if target is None or not target.is_file() or path.split("/")[0].startswith("."):
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", head)
        blob = self.hub.blob(target)
        self._send(200, target.read_bytes(), {"ETag": f'"{blob}"', "X-Repo-Commit": self.hub.commit(folder),
                                              "Content-Type": "application/octet-stream"}, head=head)

    def _create_repo(self) -> None:
        payload = json.loads(self._body())
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repo = self.hub.repo(repo_id)
        if self.hub.inside(self.hub.root, repo_id) is None:
            return self._error(400, "", f"invalid repository name {repo_id}")
        if repo.is_dir():  # the Hub's 409 also carries the url, which exist_ok=True reads
            return self._send(409, json.dumps({"error": "You already created this model repo",
                                               "url": f"{self.hub.url}/{repo_id}"}).encode(),
                              {"Content-Type": "application/json"})
        repo.mkdir(parents=True)
        self._json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def _preupload(self, repo_id: str, revision: str, rest: str, query) -> None:
        payload = json.loads(self._body())
        if self._resolve(repo_id, revision) is not None:
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                  for f in payload["files"]]})

    def _commit(self, repo_id: str, revision: str, rest: str, query) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        folder = self._resolve(repo_id, revision)
        if folder is None:
            return
        for item in lines:
            if item["key"] == "header":
                continue
            target = self.hub.inside(folder, item["value"]["path"])
            if target is None:
                return self._error(400, "", f"path {item['value']['path']!r} leaves the repository")
            if item["key"] == "file":
                value = item["value"]
                content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            elif item["key"] == "deletedFile":
                if not target.is_file():
                    return self._error(404, "EntryNotFound", "A file with this name doesn't exist")
                target.unlink()
            else:
                return self._error(400, "BadRequest", f"the stand-in does not handle {item['key']!r} entries")
        sha = self.hub.commit(folder)
        self._json({"commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})
