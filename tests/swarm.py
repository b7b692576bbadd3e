"""Loopback swarm helpers for tests: mdist seeders, a tiny HTTP tracker, a Range-capable web seed."""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_to_bytes

import libtorrent as lt
import pytest


@pytest.fixture(autouse=True)
def machine_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """mdist's machine key (mdist.derived), this test's own, for mdist in-process and in subprocesses:
    what one test signed no other test (or the user's real key) vouches for. Imported by the torrent
    test modules, where it applies to every test."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def start_seeder(directory: Path, *args: str, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start `mdist seed` in its own process; return it and its magnet link (first stdout line).
    Stop it with `stop`; its stderr can be read after that."""
    proc = subprocess.Popen([sys.executable, "-m", "mdist", "seed", str(directory), "--listen", "127.0.0.1:0",
                             "--no-dht", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("magnet:"):
        stop(proc)
        raise RuntimeError(f"seeder did not start: {line!r} {proc.stderr.read()}")
    return proc, line


@contextmanager
def mdist_seeder(directory: Path, *args: str, timeout: float = 60.0) -> Iterator[str]:
    """Run `mdist seed` in its own process; yield its magnet link (first stdout line)."""
    proc, magnet = start_seeder(directory, *args, timeout=timeout)
    try:
        yield magnet
    finally:
        stop(proc)


def peer_of(magnet: str) -> str:
    """HOST:PORT of the seeder a magnet names with x.pe."""
    return magnet.rsplit("x.pe=", 1)[1].split("&")[0]


def info_hashes(magnet: str) -> tuple[str | None, str | None]:
    """(btih, btmh) named by a magnet link."""
    found = dict(part.split(":", 2)[1:] for part in magnet.split("?", 1)[1].split("&")
                 if part.startswith("xt=urn:"))
    return found.get("btih"), found.get("btmh")


def aria2(*args: str) -> list[str]:
    """aria2c (Debian's BitTorrent client) with every discovery off: loopback only."""
    return ["aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--enable-peer-exchange=false", "--console-log-level=warn", "--summary-interval=0", *args]


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C, then SIGKILL if it has not ended within 30 s: on Ctrl-C mdist saves resume data (bounded
    at 10 s) and libtorrent closes its session, which took more than 15 s on the loaded 2-core machine."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def strip_peers(magnet: str) -> str:
    return "&".join(part for part in magnet.split("&") if not part.startswith("x.pe="))


def copy_release(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


def corrupt_every_piece(path: Path, piece: int = 256 << 10) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(100, len(data), piece):
        data[offset] ^= 0xFF
    with open(path, "r+b") as handle:  # in place: the seeder keeps serving the same inode
        handle.write(bytes(data))
        handle.flush()
        os.fsync(handle.fileno())


class _Tracker(BaseHTTPRequestHandler):
    swarms: dict[bytes, dict[tuple[str, int], float]] = {}
    announces: list[bytes] = []

    def do_GET(self) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        if path != "/announce":
            self.send_error(404)
            return
        params: dict[str, bytes] = {}
        for pair in query.split("&"):
            key, _, value = pair.partition("=")
            params[key] = unquote_to_bytes(value)
        info_hash = params.get("info_hash", b"")
        port = int(params.get("port", b"0"))
        swarm = self.swarms.setdefault(info_hash, {})
        self.announces.append(info_hash)
        if params.get("event") == b"stopped":
            swarm.pop((self.client_address[0], port), None)
        else:
            swarm[(self.client_address[0], port)] = time.time()
        peers = b"".join(socket.inet_aton(host) + port.to_bytes(2, "big") for host, port in swarm
                         if (host, port) != (self.client_address[0], port_of(params)))
        body = lt.bencode({"interval": 2, "min interval": 1, "peers": peers})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def port_of(params: dict[str, bytes]) -> int:
    return int(params.get("port", b"0"))


@contextmanager
def http_tracker() -> Iterator[str]:
    """A minimal BitTorrent HTTP tracker on 127.0.0.1; yields its announce URL."""
    _Tracker.swarms = {}
    _Tracker.announces = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tracker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/announce"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def range_http_server(directory: Path) -> Iterator[str]:
    """rangehttpserver (Range-capable, unlike http.server) serving directory; yields the base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "RangeHTTPServer", "-b", "127.0.0.1", str(port)], cwd=directory,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.kill()
        proc.wait(timeout=10)


# -- hand-made (hostile) torrents, which libtorrent's create_torrent refuses to make ---------------
def hand_made_torrent(name: bytes, entries: list[tuple[list[bytes], bytes, dict]], *, v2: bool = False,
                      piece: int = 16384) -> bytes:
    """A bencoded .torrent from (path elements, content, extra keys) entries, with correct hashes.

    v1: a `files` list hashed as one stream; v2: a `file tree` (each file below one piece, so its
    pieces root is the SHA-256 of its content and no piece layers are needed)."""
    if v2:
        tree: dict = {}
        for parts, data, extra in entries:
            assert len(data) <= piece
            node = tree
            for part in parts:
                node = node.setdefault(part, {})
            leaf = {b"length": len(data), **extra}
            if data:
                leaf[b"pieces root"] = hashlib.sha256(data).digest()
            node[b""] = leaf
        info = {b"name": name, b"piece length": piece, b"meta version": 2, b"file tree": tree}
    else:
        blob = b"".join(data for _, data, _ in entries)
        pieces = b"".join(hashlib.sha1(blob[i:i + piece]).digest() for i in range(0, len(blob), piece))
        files = [{b"length": len(data), b"path": parts, **extra} for parts, data, extra in entries]
        info = {b"name": name, b"piece length": piece, b"pieces": pieces, b"files": files}
    return lt.bencode({b"info": info})


def seed_folder(torrent: bytes, entries: list[tuple[list[bytes], bytes, dict]], directory: Path) -> Path:
    """Write each entry's content where libtorrent (after sanitising the names) will look for it."""
    if b"files" not in lt.bdecode(torrent)[b"info"]:  # v2: the file tree is walked in sorted order
        entries = sorted(entries, key=lambda entry: entry[0])
    layout = lt.torrent_info(torrent).layout()
    data = iter(content for _, content, _ in entries)
    for index in range(layout.num_files()):
        flags = layout.file_flags(index)
        if flags & layout.flag_pad_file:
            continue
        content = next(data)
        if not flags & layout.flag_symlink:
            target = directory / layout.file_path(index)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return directory


@contextmanager
def raw_seeder(torrent: Path, directory: Path, timeout: float = 30.0) -> Iterator[str]:
    """Seed any .torrent that libtorrent loads, from a plain libtorrent session in its own process;
    yield its magnet link, which names the seeder with x.pe=127.0.0.1:PORT."""
    proc = subprocess.Popen([sys.executable, __file__, "seed-raw", str(torrent), str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().strip() if ready else ""
        if not line.startswith("magnet:"):
            proc.kill()
            raise RuntimeError(f"raw seeder did not start: {line!r} {proc.stderr.read()}")
        yield line
    finally:
        stop(proc)


def _seed_raw(torrent: str, directory: str) -> None:
    session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
                          "enable_upnp": False, "enable_natpmp": False, "allow_multiple_connections_per_ip": True})
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(Path(torrent).read_bytes())
    params.save_path = directory
    params.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    session.add_torrent(params)
    deadline = time.monotonic() + 10
    while not session.listen_port() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"{lt.make_magnet_uri(params.ti)}&x.pe=127.0.0.1:{session.listen_port()}", flush=True)
    try:
        while True:
            session.pop_alerts()
            session.wait_for_alert(500)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["seed-raw"]:
        _seed_raw(*sys.argv[2:4])
