"""A loopback Hugging Face Hub for the tests: the real `huggingface_hub` and `datasets` clients talk to it over HTTP.

Repos live in memory as a chain of commits (path -> blob). The server answers the routes those clients call:
whoami, repo create/delete/info, tree and paths-info listings, commit history, validate-yaml, preupload, the
NDJSON commit endpoint, the Git LFS batch API with basic-transfer uploads, and resolve (HEAD/GET with ETag,
X-Repo-Commit, Content-Length and byte ranges). Status codes and X-Error-Code headers follow the real Hub, because
the client maps them onto its exception classes: an unknown token is 401, a private repo is 401 without a token
and 404 with one that cannot see it, a write outside the token's namespaces is 403. Xet is not spoken: clients
must run with HF_HUB_DISABLE_XET=1, as the Hub then falls back to LFS too.

Usage: server = HubServer({"hf_alice": Account("alice")}).start(); os.environ["HF_ENDPOINT"] = server.url
       python tests/hub_server.py --port 8080 --token hf_alice:alice     (standalone, until Ctrl-C)
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores bigger files in LFS whatever their name
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.gguf",
        "*.gz",
        "*.h5",
        "*.model",
        "*.npy",
        "*.onnx",
        "*.parquet",
        "*.pickle",
        "*.pkl",
        "*.png",
        "*.jpg",
        "*.pt",
        "*.pth",
        "*.safetensors",
        "*.tar",
        "*.zip",
    )  # fmt: skip
).encode()
REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
TYPES = r"(?P<kind>model|dataset|space)s"


@dataclass(frozen=True)
class Account:
    """Who a token belongs to; a `read` token sees the namespace's private repos but cannot write."""

    name: str
    orgs: tuple[str, ...] = ()
    role: str = "write"

    def can_read(self, namespace: str) -> bool:
        return namespace in (self.name, *self.orgs)

    def can_write(self, namespace: str) -> bool:
        return self.role == "write" and self.can_read(namespace)


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()
        )

    @property
    def git_oid(self) -> str:
        """Git's blob id: of the LFS pointer for LFS files, as in a real git repo."""
        stored = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    author: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    kind: str
    repo_id: str
    private: bool
    created: str
    commits: list[Commit] = field(default_factory=list)  # oldest first

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit:
        if revision == "main":
            return self.head
        for commit in self.commits:
            if commit.oid == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _url_prefix(kind: str) -> str:
    return "" if kind == "model" else f"{kind}s/"


class HubState:
    """Accounts, repos, LFS objects and pending LFS uploads, behind one lock."""

    def __init__(self, accounts: dict[str, Account]):
        self.accounts = accounts
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.upload_tickets: dict[str, tuple[str, int]] = {}
        self.lock = threading.RLock()
        self.url = ""
        self.page_size = 1000  # the Hub pages tree listings by 1000 entries; tests lower it to exercise paging
        self.commit_failures: list[int] = []  # statuses the next commits answer with, to test a push failing midway
        # route name (e.g. "lfs_upload") -> callables run once each, in order, before the next requests of that route
        # are answered; one that returns True drops the connection unanswered (a network failure mid-push)
        self.faults: dict[str, list] = {}

    def new_commit(self, repo: Repo, files: dict[str, Blob], title: str, message: str, author: str) -> Commit:
        parent = repo.head.oid if repo.commits else ""
        seed = f"{parent}\n{title}\n{len(repo.commits)}\n" + "".join(
            f"{p}:{b.git_oid}\n" for p, b in sorted(files.items())
        )
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, message, author, _now(), files)
        repo.commits.append(commit)
        return commit


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    state: HubState  # set on the subclass that HubServer builds

    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/{TYPES}/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"/api/{TYPES}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"/api/{TYPES}/{REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"/api/{TYPES}/{REPO}/commits/(?P<rev>[^/]+)", "commits"),
        ("PUT", rf"/api/{TYPES}/{REPO}/settings", "settings"),
        ("POST", rf"/api/{TYPES}/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/{TYPES}/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/(?:(?P<kind>dataset|space)s/)?{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<ticket>[\w-]+)", "lfs_upload"),
        ("POST", r"/lfs-verify/(?P<oid>[0-9a-f]{64})", "lfs_verify"),
        ("GET", rf"/(?:(?P<kind>dataset|space)s/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/(?:(?P<kind>dataset|space)s/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        try:
            body = self._read_body()
            for route_method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, parts.path)
                if route_method == method and match:
                    if self._fault(name):
                        return
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with self.state.lock:
                        return getattr(self, name)(body=body, **args)
            raise HubError(404, f"no route for {method} {parts.path}")
        except (KeyError, ValueError, TypeError) as error:  # a malformed request, as the Hub answers it
            self._send_json({"error": f"bad request: {error!r}"}, status=400)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send_json({"error": error.message}, status=error.status, headers=headers)

    def _fault(self, route: str) -> bool:
        """Run the next fault planted for `route`; True when it dropped the connection."""
        with self.state.lock:
            faults = self.state.faults.get(route)
            fault = faults.pop(0) if faults else None
        if fault is None or not fault():
            return False
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
        return True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the GET's headers and no body
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _account(self) -> Account | None:
        header = self.headers.get("Authorization")
        if not header:
            return None
        account = self.state.accounts.get(header.removeprefix("Bearer ").strip())
        if account is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return account

    def _readable(self, kind: str | None, ns: str, name: str) -> Repo:
        account = self._account()
        repo = self.state.repos.get((kind or "model", f"{ns}/{name}"))
        if repo and (not repo.private or (account and account.can_read(ns))):
            return repo
        raise HubError(401 if account is None else 404, "Repository not found", "RepoNotFound")

    def _writable(self, kind: str | None, ns: str, name: str) -> tuple[Repo, Account]:
        repo = self._readable(kind, ns, name)
        account = self._account()
        if account is None:
            raise HubError(401, "You must be authenticated to write to this repo")
        if not account.can_write(ns):
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")
        return repo, account

    def whoami(self, body: bytes) -> None:
        account = self._account()
        if account is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._send_json({
            "type": "user", "name": account.name, "fullname": account.name,
            "orgs": [{"type": "org", "name": org} for org in account.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": account.role}},
        })  # fmt: skip

    def create_repo(self, body: bytes) -> None:
        request = json.loads(body)
        kind = request.get("type") or "model"
        account = self._account()
        ns = request.get("organization") or (account.name if account else "")
        repo_id = f"{ns}/{request['name']}"
        if account is None:
            raise HubError(401, "You must be authenticated to create a repo")
        if not account.can_write(ns):
            raise HubError(403, f'You don\'t have the rights to create a {kind} under the namespace "{ns}"')
        url = f"{self.state.url}/{_url_prefix(kind)}{repo_id}"
        if (kind, repo_id) in self.state.repos:
            raise HubError(409, f"You already created this {kind} repo", headers={"X-Repo-Url": url})
        repo = Repo(kind, repo_id, request.get("visibility") == "private", _now())
        self.state.repos[(kind, repo_id)] = repo
        self.state.new_commit(repo, {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}, "initial commit", "", "hub")
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self, body: bytes) -> None:
        request = json.loads(body)
        kind = request.get("type") or "model"
        account = self._account()
        ns = request.get("organization") or (account.name if account else "")
        self._writable(kind, ns, request["name"])
        del self.state.repos[(kind, f"{ns}/{request['name']}")]
        self._send(200, b"", {})

    def settings(self, body: bytes, kind: str, ns: str, name: str) -> None:
        repo, _ = self._writable(kind, ns, name)
        visibility = json.loads(body).get("visibility")
        if visibility is not None:
            repo.private = visibility == "private"
        self._send_json({})

    def validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.DOTALL)
        try:
            yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as error:
            return self._send_json({"errors": [{"message": str(error)}]}, status=400)
        self._send_json({"errors": [], "warnings": []})

    def repo_info(self, body: bytes, kind: str, ns: str, name: str, rev: str = "main") -> None:
        repo = self._readable(kind, ns, name)
        commit = repo.at(rev)
        card = _card_data(commit)
        blobs = self.query.get("blobs") in (["True"], ["true"], ["1"])
        info = {
            "id": repo.repo_id, "author": ns, "sha": commit.oid, "private": repo.private, "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "createdAt": repo.created, "lastModified": commit.date,
            "tags": card.get("tags") or [], "cardData": card,
            "siblings": [_sibling(path, blob, blobs) for path, blob in sorted(commit.files.items())],
        }  # fmt: skip
        if kind == "model":
            info.update({k: card[k] for k in ("pipeline_tag", "library_name", "model-index") if k in card})
        self._send_json(info)

    def tree(self, body: bytes, kind: str, ns: str, name: str, rev: str, path: str = "") -> None:
        commit = self._readable(kind, ns, name).at(rev)
        recursive = self.query.get("recursive", ["False"])[0].lower() == "true"
        entries = _list_tree(commit.files, path.strip("/"), recursive)
        if entries is None:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        start = int(self.query.get("cursor", ["0"])[0])
        page = entries[start : start + self.state.page_size]
        headers = {}
        if start + self.state.page_size < len(entries):
            query = {k: v[0] for k, v in self.query.items()} | {"cursor": start + self.state.page_size}
            headers["Link"] = f'<{self.state.url}{urlsplit(self.path).path}?{urlencode(query)}>; rel="next"'
        self._send_json(page, headers=headers)

    def paths_info(self, body: bytes, kind: str, ns: str, name: str, rev: str) -> None:
        commit = self._readable(kind, ns, name).at(rev)
        form = parse_qs(body.decode())
        infos = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                infos.append(_file_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                infos.append(_folder_entry(path, commit.files))
        self._send_json(infos)

    def commits(self, body: bytes, kind: str, ns: str, name: str, rev: str) -> None:
        repo = self._readable(kind, ns, name)
        history = repo.commits[: repo.commits.index(repo.at(rev)) + 1]
        self._send_json([
            {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in reversed(history)
        ])  # fmt: skip

    def preupload(self, body: bytes, kind: str, ns: str, name: str, rev: str) -> None:
        repo, _ = self._writable(kind, ns, name)
        head = repo.at(rev)
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            mode = "lfs" if _needs_lfs(head, item["path"], item["size"], sample) else "regular"
            remote = head.files.get(item["path"])
            entry = {"path": item["path"], "uploadMode": mode, "shouldIgnore": False}
            entry["oid"] = None if remote is None else (remote.sha256 if remote.lfs else remote.git_oid)
            files.append(entry)
        self._send_json({"files": files, "commitOid": head.oid})

    def commit(self, body: bytes, kind: str, ns: str, name: str, rev: str) -> None:
        repo, account = self._writable(kind, ns, name)
        if self.state.commit_failures:
            raise HubError(self.state.commit_failures.pop(0), "the commit could not be stored, try again later")
        if rev != "main":
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, repo.head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.head.files)
        for line in lines[1:]:
            self._apply(repo.head, files, line["key"], line["value"])
        commit = self.state.new_commit(repo, files, header["summary"], header.get("description", ""), account.name)
        url = f"{self.state.url}/{_url_prefix(kind)}{repo.repo_id}/commit/{commit.oid}"
        self._send_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _apply(self, head: Commit, files: dict[str, Blob], key: str, value: dict) -> None:
        path = value["path"]
        if key == "file":
            data = base64.b64decode(value["content"])
            if data and _needs_lfs(head, path, len(data), data[:512]):
                raise HubError(400, f"Your push was rejected because {path} must be stored with Git LFS")
            files[path] = Blob(data, lfs=False)
        elif key == "lfsFile":
            if value["oid"] not in self.state.lfs_objects:
                raise HubError(422, f"LFS object {value['oid']} of {path} was never uploaded")
            files[path] = Blob(self.state.lfs_objects[value["oid"]], lfs=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for stale in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                del files[stale]
        else:
            raise HubError(400, f"unknown commit operation {key}")

    def lfs_batch(self, body: bytes, ns: str, name: str, kind: str = "model") -> None:
        request = json.loads(body)
        if request.get("operation") != "upload":
            raise HubError(400, "only the upload operation is served")
        self._writable(kind, ns, name)
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_objects:
                ticket = secrets.token_urlsafe(16)
                self.state.upload_tickets[ticket] = (obj["oid"], obj["size"])
                entry["actions"] = {
                    "upload": {"href": f"{self.state.url}/lfs-upload/{ticket}", "header": {}},
                    "verify": {"href": f"{self.state.url}/lfs-verify/{obj['oid']}"},
                }
            objects.append(entry)
        self._send_json(
            {"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"}
        )

    def lfs_upload(self, body: bytes, ticket: str) -> None:
        if ticket not in self.state.upload_tickets:
            raise HubError(403, "unknown or used upload ticket")
        oid, size = self.state.upload_tickets.pop(ticket)
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"uploaded bytes do not match oid {oid} and size {size}")
        self.state.lfs_objects[oid] = body
        self._send(200, b"", {})

    def lfs_verify(self, body: bytes, oid: str) -> None:
        stored = self.state.lfs_objects.get(oid)
        if stored is None or len(stored) != json.loads(body)["size"]:
            raise HubError(404, f"LFS object {oid} not found")
        self._send_json({"message": "ok"})

    def resolve(self, body: bytes, ns: str, name: str, rev: str, path: str, kind: str = "model") -> None:
        commit = self._readable(kind, ns, name).at(rev)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": len(blob.data)})
        status, data = _byte_range(blob.data, self.headers.get("Range"), headers)
        self._send(status, data, headers | {"Content-Length": len(data)})


def _byte_range(data: bytes, header: str | None, headers: dict) -> tuple[int, bytes]:
    """A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range as the Hub's CDN serves it (206, or 416)."""
    if not header:
        return 200, data
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or not (match.group(1) or match.group(2)):
        return 200, data
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
    else:
        start, end = max(len(data) - int(last), 0), len(data) - 1
    if start >= len(data) or start > end:
        headers["Content-Range"] = f"bytes */{len(data)}"
        return 416, b""
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return 206, data[start : end + 1]


def _card_data(commit: Commit) -> dict:
    readme = commit.files.get("README.md")
    match = re.match(r"^---\n(.*?)\n---", readme.data.decode(), re.DOTALL) if readme else None
    return (yaml.safe_load(match.group(1)) or {}) if match else {}


def _lfs_patterns(commit: Commit) -> list[str]:
    attributes = commit.files.get(".gitattributes")
    lines = attributes.data.decode().splitlines() if attributes else []
    return [line.split()[0] for line in lines if "filter=lfs" in line]


def _needs_lfs(head: Commit, path: str, size: int, sample: bytes) -> bool:
    """The Hub's rule: big files, binary files and paths that .gitattributes routes to LFS."""
    name = path.rsplit("/", 1)[-1]
    matched = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in _lfs_patterns(head))
    return size >= LFS_THRESHOLD or b"\0" in sample or matched


def _file_entry(path: str, blob: Blob) -> dict:
    entry = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return entry


def _folder_entry(path: str, files: dict[str, Blob]) -> dict:
    inside = "".join(f"{p}:{b.git_oid}\n" for p, b in sorted(files.items()) if p.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1(inside.encode()).hexdigest(), "size": 0, "path": path}


def _sibling(path: str, blob: Blob, with_blobs: bool) -> dict:
    if not with_blobs:
        return {"rfilename": path}
    sibling = {"rfilename": path, "size": len(blob.data), "blobId": blob.git_oid}
    if blob.lfs:
        sibling["lfs"] = {"sha256": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return sibling


def _list_tree(files: dict[str, Blob], folder: str, recursive: bool) -> list[dict] | None:
    """Entries under `folder` (None when it does not exist): direct children, or everything below if recursive."""
    prefix = f"{folder}/" if folder else ""
    below = [p for p in files if p.startswith(prefix)]
    if folder and not below:
        return None
    folders, entries = set(), []
    for path in below:
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        folders.update(prefix + "/".join(parts[: i + 1]) for i in range(min(depth, len(parts) - 1)))
        if recursive or len(parts) == 1:
            entries.append(_file_entry(path, files[path]))
    entries += [_folder_entry(path, files) for path in folders]
    return sorted(entries, key=lambda entry: entry["path"])


class HubServer:
    """The loopback Hub on a free port of 127.0.0.1, served from a daemon thread."""

    def __init__(self, accounts: dict[str, Account], port: int = 0):
        self.state = HubState(accounts)
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = self.state.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> HubServer:
        threading.Thread(target=self.httpd.serve_forever, name="loopback-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def repo(self, repo_id: str, kind: str = "model") -> Repo | None:
        with self.state.lock:
            return self.state.repos.get((kind, repo_id))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Serve an in-memory Hub on 127.0.0.1 (HF_ENDPOINT=http://127.0.0.1:PORT)."
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--token", action="append", metavar="TOKEN:USER", help="a write token and its user (repeatable)"
    )
    tokens = [item.split(":", 1) for item in parser.parse_args().token or ["hf_local:alice"]]
    server = HubServer({token: Account(user) for token, user in tokens}, port=parser.parse_args().port)
    print(f"loopback Hub at {server.url}, tokens: {', '.join(f'{t} ({u})' for t, u in tokens)}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
