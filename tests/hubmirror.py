"""Hub servers for tests: olah (a real mirror, offline) serving a local git repo with LFS objects, a
proxy that alters bodies on their way through, and FakeHub, a small server of our own whose listing
and bytes a test controls (olah recomputes hashes from what it serves, so it cannot lie)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

from swarm import free_port, wait_for_port

LFS_SUFFIXES = (".safetensors", ".model", ".pth", ".bin")


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", GIT_AUTHOR_DATE="2026-01-01T00:00:00", GIT_COMMITTER_DATE="2026-01-01T00:00:00")
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


def build_mirror_repo(mirrors: Path, org: str, name: str, files_from: Path) -> tuple[Path, str]:
    """A git repo at mirrors/models/ORG/NAME holding files_from's files; big ones as LFS pointers
    with their objects under .git/lfs/objects (the layout git-lfs uses). Returns (repo, commit)."""
    repo = mirrors / "models" / org / name
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for source in sorted(files_from.iterdir()):
        if not source.is_file():
            continue
        data = source.read_bytes()
        if source.suffix in LFS_SUFFIXES:
            oid = hashlib.sha256(data).hexdigest()
            objects = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4]
            objects.mkdir(parents=True, exist_ok=True)
            (objects / oid).write_bytes(data)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
            (repo / source.name).write_text(pointer)
        else:
            shutil.copy(source, repo / source.name)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "model")
    return repo, git(repo, "rev-parse", "HEAD")


@contextmanager
def olah_server(mirrors: Path, workdir: Path) -> Iterator[str]:
    """olah on 127.0.0.1 with offline = true; yields its endpoint URL."""
    port = free_port()
    config = workdir / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{workdir / "repos"}"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    exe = Path(sys.executable).parent / "olah-cli"
    log = open(workdir / "olah.log", "w")
    proc = subprocess.Popen([str(exe), "-c", str(config)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        time.sleep(0.1)


def flip_middle_byte(body: bytes) -> bytes:
    """Same length, different bytes: a size check cannot tell."""
    altered = bytearray(body)
    altered[len(altered) // 2] ^= 0x01
    return bytes(altered)


class _LyingProxy(BaseHTTPRequestHandler):
    """Forwards to a real mirror, but alters the body of every file `tamper(path)` selects.
    Headers (sizes, ETags, the LFS oid) stay the mirror's: the hashes still advertise the original."""

    upstream = ""
    tamper: Callable[[str], bool] = staticmethod(lambda path: False)

    def _forward(self, method: str) -> None:
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "range")}
        conn.request(method, self.path, headers=headers)
        response = conn.getresponse()
        body = response.read() if method == "GET" else b""
        if method == "GET" and "/resolve/" in self.path and self.tamper(self.path) and body:
            body = flip_middle_byte(body)
        self.send_response(response.status)
        mine = f"127.0.0.1:{self.server.server_address[1]}"
        for key, value in response.getheaders():
            if key.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            self.send_header(key, value.replace(target.netloc, mine))
        length = response.getheader("Content-Length") if method == "HEAD" else str(len(body))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._forward("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._forward("HEAD")

    def log_message(self, *args) -> None:
        pass


@contextmanager
def lying_proxy(upstream: str, tamper: Callable[[str], bool]) -> Iterator[str]:
    """A proxy in front of `upstream` that flips a byte of each file tamper(request path) selects."""
    handler = type("Proxy", (_LyingProxy,), {"upstream": upstream, "tamper": staticmethod(tamper)})
    with serving(handler) as url:
        yield url


def listing_entry(path: str, data: bytes, lfs: bool | None = None) -> dict:
    """A file as the hub's tree API lists it: git blob id, size, and for LFS files the sha256."""
    lfs = path.endswith(LFS_SUFFIXES) if lfs is None else lfs
    if not lfs:
        return {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
    oid = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
    return {"type": "file", "oid": git_blob_id(pointer), "size": len(data), "path": path,
            "lfs": {"oid": oid, "size": len(data), "pointerSize": len(pointer)}}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class FakeHub:
    """What a hub (or a lying mirror) answers for one repo; every request is recorded.

    listings: the tree listing for each successive tree request (the last one repeats).
    served: bytes served for a path instead of files[path], under files[path]'s hashes.
    sha: what the revision API says the commit is (default: commit).
    delays: seconds to wait before answering a GET of a path.
    rates: bytes per second at which a GET of a path is sent (a slow transfer to interrupt).
    honour_range: answer `Range: bytes=N-` with 206 and the rest (False: always the whole file, like olah).
    ranges: (path, Range header or None) of every GET of a file; sent: body bytes written per path.
    """

    def __init__(self, repo: str, commit: str, files: dict[str, bytes], *, listings: list[list[dict]] | None = None,
                 served: dict[str, bytes] | None = None, sha: str | None = None,
                 delays: dict[str, float] | None = None, rates: dict[str, float] | None = None,
                 honour_range: bool = True) -> None:
        self.repo, self.commit, self.files = repo, commit, files
        self.listings = listings or [[listing_entry(p, d) for p, d in files.items()]]
        self.served = served or {}
        self.sha = commit if sha is None else sha
        self.delays = delays or {}
        self.rates = rates or {}
        self.honour_range = honour_range
        self.requests: list[str] = []
        self.ranges: list[tuple[str, str | None]] = []
        self.sent: dict[str, int] = {}
        self.endpoint = ""
        self._tree_calls = 0

    def listing(self) -> list[dict]:
        listing = self.listings[min(self._tree_calls, len(self.listings) - 1)]
        self._tree_calls += 1
        return listing

    def downloads(self) -> list[str]:
        return [r for r in self.requests if "/resolve/" in r]

    def entry(self, path: str) -> dict | None:
        for listing in self.listings:
            for entry in listing:
                if entry.get("path") == path:
                    return entry
        return None


class _FakeHubHandler(BaseHTTPRequestHandler):
    hub: FakeHub

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        hub = self.hub
        hub.requests.append(f"{self.command} {self.path}")
        path = unquote(urlsplit(self.path).path)
        api = f"/api/models/{hub.repo}/"
        resolve = f"/{hub.repo}/resolve/"
        if path.startswith(api + "revision/"):
            return self._json({"id": hub.repo, "sha": hub.sha, "siblings": []})
        if path.startswith(api + "tree/"):
            return self._json(hub.listing())
        if path.startswith(resolve):
            return self._file(path[len(resolve):].partition("/")[2], head)
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, name: str, head: bool) -> None:
        hub = self.hub
        entry = hub.entry(name)
        if entry is None or name not in hub.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = hub.served.get(name, hub.files[name])
        start = 0 if head else self._range_start(name, len(body))
        if start is None:
            return
        if not head:
            time.sleep(hub.delays.get(name, 0.0))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", hub.commit)
        lfs = entry.get("lfs")
        self.send_header("ETag", f'"{(lfs or {}).get("oid") or entry.get("oid") or "none"}"')
        if lfs:
            self.send_header("X-Linked-Etag", f'"{lfs.get("oid")}"')
            self.send_header("X-Linked-Size", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if not head:
            self._send_body(name, memoryview(body)[start:])

    def _range_start(self, name: str, size: int) -> int | None:
        """Where the body starts: 0, or N for `Range: bytes=N-` when the hub honours ranges (None: 416 sent)."""
        header = self.headers.get("Range")
        self.hub.ranges.append((name, header))
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if not (self.hub.honour_range and match):
            return 0
        start = int(match.group(1))
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return start

    def _send_body(self, name: str, body: memoryview) -> None:
        """Write the body, at hub.rates[name] bytes per second if set; a client that goes away ends it."""
        rate = self.hub.rates.get(name)
        step = 64 << 10
        started = time.monotonic()
        for offset in range(0, len(body), step):
            if rate:
                time.sleep(max(0.0, started + offset / rate - time.monotonic()))
            try:
                self.wfile.write(body[offset:offset + step])
            except (BrokenPipeError, ConnectionResetError):
                return
            self.hub.sent[name] = self.hub.sent.get(name, 0) + len(body[offset:offset + step])

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 from a thread (over TLS with `tls` = (cert, key) PEM files, which a
    client trusts through SSL_CERT_FILE); yields the base URL (no trailing slash)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def fake_hub(hub: FakeHub) -> Iterator[FakeHub]:
    """Serve `hub` on 127.0.0.1; hub.endpoint is its URL."""
    with serving(type("Handler", (_FakeHubHandler,), {"hub": hub})) as hub.endpoint:
        yield hub
