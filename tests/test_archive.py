"""`mdist fetch https://…/X.tar` and archive-backed release names: a Range-resumable download, the
md5 checked before anything is extracted, a safe extraction, sha256 recorded for later verifies;
and the registry of Mistral's CDN archives (every md5 of issue 15 in exactly one manifest)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest

from conftest import FIXTURE, REPO, run_mdist
from hubmirror import serving
from swarm import free_port, range_http_server

FILES = {p.name: p.read_bytes() for p in sorted(FIXTURE.iterdir()) if p.is_file()}


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **fields) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data if kind == tarfile.REGTYPE else None


def release_tar(files: dict[str, bytes]) -> bytes:
    """What `tar -cf X.tar -C DIR .` makes: the folder itself as `./`, then `./NAME` for each file."""
    return make_tar([entry("./", kind=tarfile.DIRTYPE)] + [entry(f"./{name}", data) for name, data in files.items()])


TINY = release_tar(FILES)
TINY_MD5 = hashlib.md5(TINY).hexdigest()


# -- a Range-capable server whose rate, bytes and answers a test controls --------------------------------
class Served:
    """files: URL path -> body; rate: bytes per second (None: at once); tamper: flip one byte in the
    middle of every body; ranges: the Range header of every GET; sent: body bytes written; per_request:
    body bytes written for each GET (a killed client's request may still count a chunk after it died)."""

    def __init__(self, files: dict[str, bytes], rate: float | None = None, tamper: bool = False,
                 honour_range: bool = True) -> None:
        self.files, self.rate, self.tamper, self.honour_range = files, rate, tamper, honour_range
        self.ranges: list[str | None] = []
        self.sent = 0
        self.per_request: list[int] = []
        self.url = ""


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:  # noqa: N802
        served = self.served
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if served.tamper:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 1]) + body[middle + 1:]
        header = self.headers.get("Range")
        served.ranges.append(header)
        served.per_request.append(0)
        index = len(served.per_request) - 1
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        start = int(match.group(1)) if match and served.honour_range else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        step, began = 64 << 10, time.monotonic()
        for offset in range(start, len(body), step):
            if served.rate:
                time.sleep(max(0.0, began + (offset - start) / served.rate - time.monotonic()))
            try:
                self.wfile.write(body[offset:offset + step])
            except (BrokenPipeError, ConnectionResetError):
                return
            served.sent += len(body[offset:offset + step])
            served.per_request[index] += len(body[offset:offset + step])

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve(served: Served) -> Iterator[Served]:
    with serving(type("Handler", (_Handler,), {"served": served})) as served.url:
        yield served


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """mdist's key (which signs the extraction record) in a folder of this test's own."""
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def model_files(folder: Path) -> list[str]:
    """Everything in folder outside mdist's own state."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if ".mdist" not in p.relative_to(folder).parts) if folder.exists() else []


def fetch(url: str, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_mdist("fetch", url, "--out", str(out), *args, timeout=120, env=env)


# -- fetching ---------------------------------------------------------------------------------------
def test_fetch_by_url_from_a_range_server(tmp_path: Path, env: dict) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "tiny.tar").write_bytes(TINY)
    out = tmp_path / "got"
    with range_http_server(tmp_path / "www") as base:
        result = fetch(base + "tiny.tar", out, "--md5", TINY_MD5.upper(), "--json", env=env)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["via"] == "archive" and payload["archive_md5"] == TINY_MD5 and payload["archive"] is None
    assert "md5 detects corruption, not a deliberate collision" in payload["verification"]
    assert model_files(out) == sorted(FILES)
    assert all((out / name).read_bytes() == data for name, data in FILES.items())
    assert (out / ".mdist" / "complete.json").is_file()
    assert not (out / ".mdist" / "archive-partial").exists()  # deleted after a verified extraction
    record = json.loads((out / ".mdist" / "extracted.json").read_text())["record"]
    assert record["md5"] == TINY_MD5
    assert record["files"] == {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in FILES.items()}


def test_keep_archive_and_a_rerun(tmp_path: Path, env: dict) -> None:
    out = tmp_path / "got"
    with serve(Served({"/m/tiny.tar": TINY})) as served:
        first = fetch(served.url + "/m/tiny.tar", out, "--md5", TINY_MD5, "--keep-archive", env=env)
        assert first.returncode == 0, first.stderr
        assert (out / "tiny.tar").read_bytes() == TINY
        second = fetch(served.url + "/m/tiny.tar", out, "--md5", TINY_MD5, env=env)
    assert second.returncode == 0, second.stderr
    assert model_files(out) == sorted([*FILES, "tiny.tar"])
    assert "verified: md5 of tiny.tar matched" in second.stdout


def test_files_already_in_out_are_never_replaced_silently(tmp_path: Path, env: dict) -> None:
    """OUT held a user's file of the same name (other content), an identical file, a link: the first
    and the last are named as replaced (stderr and --json), the identical one is not."""
    out = tmp_path / "got"
    out.mkdir()
    name, other = sorted(FILES)[0], sorted(FILES)[1]
    (out / name).write_bytes(b"my own notes")
    (out / other).write_bytes(FILES[other])
    third = sorted(FILES)[2]
    (tmp_path / "elsewhere").write_bytes(FILES[third])
    (out / third).symlink_to(tmp_path / "elsewhere")
    with serve(Served({"/tiny.tar": TINY})) as served:
        result = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replaced"] == sorted([name, third])
    assert f"tiny.tar: replaced 2 file(s) of other content already in {out}: '{min(name, third)}'" in result.stderr
    assert all((out / n).read_bytes() == data and not (out / n).is_symlink() for n, data in FILES.items())
    assert (tmp_path / "elsewhere").read_bytes() == FILES[third]


def interrupt(served: Served, process: subprocess.Popen, signum: int) -> str:
    """Send signum once a few MB went out (the transfer takes 5 s); the process's stderr."""
    try:
        deadline = time.monotonic() + 60
        while served.sent < 3 << 20:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.02)
        process.send_signal(signum)
        return process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_then_resumed(tmp_path: Path, env: dict, signum: int) -> None:
    out = tmp_path / "got"
    with serve(Served({"/tiny.tar": TINY}, rate=2 << 20)) as served:
        process = subprocess.Popen([sys.executable, "-m", "mdist", "fetch", served.url + "/tiny.tar", "--md5", TINY_MD5,
                                    "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, **env),
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        stderr = interrupt(served, process, signum)
        assert process.returncode == (-9 if signum == signal.SIGKILL else 130), stderr
        assert served.sent < len(TINY)
        assert model_files(out) == [] and not (out / ".mdist" / "complete.json").exists()
        [partial] = (out / ".mdist" / "archive-partial").iterdir()
        kept = partial.stat().st_size
        assert 0 < kept < len(TINY) and partial.name.endswith(".incomplete")

        served.rate, asked = None, len(served.ranges)
        result = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert served.ranges[asked:] == [f"bytes={kept}-"]
        assert served.per_request[asked:] == [len(TINY) - kept] == [json.loads(result.stdout)["received_bytes"]]
    assert all((out / name).read_bytes() == data for name, data in FILES.items())
    assert not (out / ".mdist" / "archive-partial").exists()


def put_partial(out: Path, url: str, data: bytes) -> Path:
    """What an earlier run left: the partial download of `url` (keyed by URL and md5)."""
    key = hashlib.sha256(f"{url}|{TINY_MD5}".encode()).hexdigest()[:16]
    partial = out / ".mdist" / "archive-partial" / f"{key}.tar.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data)
    return partial


def test_a_partial_of_another_url_or_md5_is_not_left_without_a_word(tmp_path: Path, env: dict) -> None:
    """An interrupted fetch of the same archive under another md5 (or from another URL) left its
    partial (up to the archive's size) that no later fetch resumes or removes: it is named."""
    out = tmp_path / "got"
    abandoned = put_partial(out, "http://127.0.0.1:1/elsewhere/tiny.tar", TINY[:5000])
    with serve(Served({"/tiny.tar": TINY})) as served:
        result = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, env=env)
    assert result.returncode == 0, result.stderr
    assert (f"1 partial download(s) of another archive URL or md5 (0.00 GB) remain in {abandoned.parent}"
            in result.stderr), result.stderr
    assert abandoned.read_bytes() == TINY[:5000] and model_files(out) == sorted(FILES)


@pytest.mark.parametrize("honour_range", [True, False])
def test_a_complete_partial_or_a_server_ignoring_range(tmp_path: Path, env: dict, honour_range: bool) -> None:
    """Killed after the download but before the extraction: the rerun learns from a 416 that it has
    everything and downloads nothing. A server that ignores Range sends it all again: started over."""
    out = tmp_path / "got"
    with serve(Served({"/tiny.tar": TINY}, honour_range=honour_range)) as served:
        put_partial(out, served.url + "/tiny.tar", TINY if honour_range else TINY[:5000])
        result = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert served.ranges == [f"bytes={len(TINY) if honour_range else 5000}-"]
        assert served.sent == (0 if honour_range else len(TINY))
    assert all((out / name).read_bytes() == data for name, data in FILES.items())


def test_an_altered_byte_is_exit_1_and_nothing_extracted(tmp_path: Path, env: dict) -> None:
    out = tmp_path / "got"
    with serve(Served({"/tiny.tar": TINY}, tamper=True)) as served:
        result = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, env=env)
    assert result.returncode == 1
    assert re.fullmatch(r"mdist: error: tiny\.tar: md5 mismatch \(expected [0-9a-f]{32}, got [0-9a-f]{32}\); the "
                        r"archive was removed and nothing was extracted\n", result.stderr.splitlines(True)[-1])
    assert model_files(out) == []
    state = sorted(p.name for p in (out / ".mdist").iterdir())
    assert "complete.json" not in state and "extracted.json" not in state and "archive-partial" not in state


def test_a_resumed_partial_with_wrong_bytes_is_downloaded_again(tmp_path: Path, env: dict) -> None:
    """Bytes of an earlier run (another mirror, a crash) that spoil the md5 are not trusted: once
    more from the start, then the md5 matches."""
    out = tmp_path / "got"
    with serve(Served({"/tiny.tar": TINY})) as served:
        put_partial(out, served.url + "/tiny.tar", b"\0" * 4096)
        result = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, env=env)
        assert served.ranges == ["bytes=4096-", None]
    assert result.returncode == 0, result.stderr
    assert "downloading it again from the start" in result.stderr
    assert all((out / name).read_bytes() == data for name, data in FILES.items())


def test_unreachable_archive_falls_back_to_the_hub(tmp_path: Path, env: dict) -> None:
    """A release with an archive and a hub repository: a CDN that cannot be reached sends the fetch
    to the hub (here FakeHub through --endpoint); --source hub goes there directly."""
    from hubmirror import FakeHub, fake_hub

    manifest = tmp_path / "both.json"
    manifest.write_text(json.dumps({
        "schema": "mdist-manifest/1", "name": "both", "title": "both", "files_complete": False, "files": {},
        "archives": [{"name": "tiny.tar", "url": f"http://127.0.0.1:{free_port()}/tiny.tar", "md5": TINY_MD5}],
        "sources": {"hub": {"repo": "org/tiny"}}, "provenance": [{"fields": ["archives"], "source": "test"}]}))
    with fake_hub(FakeHub("org/tiny", hashlib.sha1(b"c").hexdigest(), dict(FILES))) as hub:
        result = run_mdist("fetch", str(manifest), "--out", str(tmp_path / "got"), "--endpoint", hub.endpoint,
                           "--json", timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["via"] == "hub" and "falling back to the hub" in result.stderr
    assert all((tmp_path / "got" / name).read_bytes() == data for name, data in FILES.items())


def test_a_release_name_brings_its_md5(tmp_path: Path, env: dict) -> None:
    with serve(Served({"/tiny.tar": TINY}, tamper=True)) as served:
        manifest = tmp_path / "tiny-archive.json"
        manifest.write_text(json.dumps({
            "schema": "mdist-manifest/1", "name": "tiny-archive", "title": "t", "files_complete": False, "files": {},
            "archives": [{"name": "tiny.tar", "url": served.url + "/tiny.tar", "md5": TINY_MD5}],
            "provenance": [{"fields": ["archives"], "source": "test"}]}))
        wrong = run_mdist("fetch", str(manifest), "--out", str(tmp_path / "a"), "--md5", "0" * 32, env=env)
        assert wrong.returncode == 2 and "differs from the published md5" in wrong.stderr
        served.tamper = True
        bad = run_mdist("fetch", str(manifest), "--out", str(tmp_path / "b"), env=env)
        assert bad.returncode == 1 and "md5 mismatch" in bad.stderr and model_files(tmp_path / "b") == []
        served.tamper = False
        good = run_mdist("fetch", str(manifest), "--out", str(tmp_path / "c"), "--json", env=env)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["manifest"] == "tiny-archive"


@pytest.mark.parametrize("args, message", [
    (("magnet:?xt=urn:btih:" + "a" * 40, "--md5", "0" * 32), "--md5 applies to archive sources only"),
    (("hf://org/model", "--keep-archive"), "--keep-archive applies to archive sources only"),
    (("http://127.0.0.1:9/x.tar", "--peer", "127.0.0.1:1"), "--peer applies to BitTorrent sources only"),
    (("http://127.0.0.1:9/x.tar", "--include", "*"), "--include applies to hf:// sources only"),
    (("http://127.0.0.1:9/x.tar", "--md5", "xyz"), "--md5: expected 32 hex digits"),
    (("http://127.0.0.1:9/x.tar.gz",), "expected an uncompressed .tar archive"),
    (("ftp://127.0.0.1/x.tar",), "mdist fetches archives by URL (http:// or https://)"),
    (("http://user:pw@127.0.0.1:9/x.tar",), "user name or password is refused"),
    (("tiny-mistral", "--source", "archive"), "has no archive"),
])
def test_options_that_do_not_apply(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_mdist("fetch", *args, "--out", str(tmp_path / "x"), timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- hostile archives -------------------------------------------------------------------------------
def many_entries(count: int) -> bytes:
    """A tar of `count` empty files, made fast: one header, renamed and re-summed."""
    template = bytes(tarfile.TarInfo("f0000000").tobuf(tarfile.USTAR_FORMAT))
    out = bytearray()
    for i in range(count):
        header = bytearray(template)
        header[0:8] = b"f%07d" % i
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        out += header
    return bytes(out + b"\0" * 1024)


HOSTILE = {
    "dotdot": [entry("../evil", b"x")],
    "dotdot-inside": [entry("a/../../evil", b"x")],
    "absolute": [entry("/tmp/evil", b"x")],
    "symlink": [entry("link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
    "symlink-then-file": [entry("d", kind=tarfile.SYMTYPE, linkname=".."), entry("d/evil", b"x")],
    "hardlink": [entry("a", b"x"), entry("b", kind=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "char-device": [entry("dev", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "block-device": [entry("dev", kind=tarfile.BLKTYPE, devmajor=8, devminor=0)],
    "fifo": [entry("pipe", kind=tarfile.FIFOTYPE)],
    "mdist-state": [entry("params.json", b"{}"), entry(".mdist/complete.json", b"{}")],
    "mdist-state-case": [entry(".MDIST/extracted.json", b"{}")],
    "git": [entry(".git/config", b"[core]")],
    "duplicate": [entry("a", b"x"), entry("a", b"y")],
    "case-twins": [entry("Model.pth", b"x"), entry("model.pth", b"y")],
    "case-folders": [entry("a/x", b"x"), entry("A/y", b"y")],
    "case-folder-entry": [entry("Sub", kind=tarfile.DIRTYPE), entry("sub/x", b"x")],
    "case-deep": [entry("m/Tok/a", b"x"), entry("m/tok/b", b"y")],
    "nfd-twins": [entry("caf\u00e9.json", b"x"), entry("cafe\u0301.json", b"y")],
    "nfd-folders": [entry("caf\u00e9/x", b"x"), entry("cafe\u0301/y", b"y")],
    "file-and-folder": [entry("a", b"x"), entry("a", kind=tarfile.DIRTYPE)],
    "empty": [entry("d", kind=tarfile.DIRTYPE)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused(tmp_path: Path, case: str) -> None:
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import Limits, extract_checked

    tar = tmp_path / "x.tar"
    tar.write_bytes(make_tar(HOSTILE[case]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeContentError):
        extract_checked(tar, dest, Limits())
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "x.tar"]


def test_entry_count_and_size_are_bounded(tmp_path: Path) -> None:
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import Limits, extract_checked

    tar = tmp_path / "many.tar"
    tar.write_bytes(many_entries(100_000))
    started = time.monotonic()
    with pytest.raises(UnsafeContentError, match="more than 4096 entries"):
        extract_checked(tar, tmp_path, Limits())
    assert time.monotonic() - started < 5
    tar.write_bytes(make_tar([entry("a", b"x" * 100), entry("b", b"y" * 100)]))
    with pytest.raises(UnsafeContentError, match="more than 150 bytes"):
        extract_checked(tar, tmp_path, Limits(total=150))
    with pytest.raises(UnsafeContentError, match="not a file of the release"):
        extract_checked(tar, tmp_path, Limits(names=frozenset({"a"})))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.tar"]


def test_modes_and_owners_of_the_tar_are_not_applied(tmp_path: Path) -> None:
    from mdist.sources.archive import Limits, extract_checked

    tar = tmp_path / "x.tar"
    tar.write_bytes(make_tar([entry("./sub", kind=tarfile.DIRTYPE, mode=0o777),
                              entry("./sub/run.sh", b"#!/bin/sh\n", mode=0o4777, uid=0, gid=0)]))
    dest = tmp_path / "dest"
    dest.mkdir()
    files = extract_checked(tar, dest, Limits())
    assert files == {"sub/run.sh": (10, hashlib.sha256(b"#!/bin/sh\n").hexdigest())}
    assert (dest / "sub" / "run.sh").stat().st_mode & 0o7777 == 0o644 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


SPELT_TWICE = {  # case: (first path, second path, the name they spell two ways)
    "case-twins": ("Model.pth", "model.pth", None),
    "case-folders": ("a/x", "A/y", "a"),
    "case-folder-entry": ("Sub", "sub/x", "Sub"),
    "case-deep": ("m/Tok/a", "m/tok/b", "m/Tok"),
    "nfd-twins": ("caf\u00e9.json", "cafe\u0301.json", None),
    "nfd-folders": ("caf\u00e9/x", "cafe\u0301/y", "caf\u00e9"),
}


@pytest.mark.parametrize("case", sorted(SPELT_TWICE))
def test_names_one_file_system_would_merge_are_refused_naming_both(tmp_path: Path, case: str) -> None:
    """Two paths that differ only in case or Unicode normalisation, of a file or of a folder on the
    way: one line naming both, before anything is written."""
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import Limits, extract_checked

    first, second, folder = SPELT_TWICE[case]
    tar = tmp_path / "x.tar"
    tar.write_bytes(make_tar(HOSTILE[case]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeContentError) as raised:
        extract_checked(tar, dest, Limits())
    shown = [repr(p).encode("ascii", "backslashreplace").decode("ascii") for p in (first, second)]
    message = str(raised.value)
    if folder is None:  # whole file names: mdist.paths' rule says it (names escaped as UTF-8 bytes)
        assert re.fullmatch(r"x\.tar: '[^']+' and '[^']+' name the same file; refused", message), message
    else:
        spelt = repr(folder).encode("ascii", "backslashreplace").decode("ascii")
        assert message.startswith(f"x.tar: {shown[0]} and {shown[1]} spell {spelt} differently (case or Unicode "
                                  f"normalisation)"), message
    assert "\n" not in message and list(dest.iterdir()) == []


@pytest.mark.parametrize("case", ["dotdot", "symlink-then-file", "mdist-state", "case-folders", "nfd-folders"])
def test_a_hostile_archive_with_the_right_md5_is_refused(tmp_path: Path, env: dict, case: str) -> None:
    """The published md5 matching says nothing of what the tar holds: still refused, exit 1, nothing
    written in OUT or next to it."""
    body = make_tar(HOSTILE[case])
    out = tmp_path / "work" / "got"
    with serve(Served({"/x.tar": body})) as served:
        result = fetch(served.url + "/x.tar", out, "--md5", hashlib.md5(body).hexdigest(), env=env)
    assert result.returncode == 1 and "refused" in result.stderr, result.stderr
    assert model_files(out) == [] and sorted(p.name for p in (tmp_path / "work").iterdir()) == ["got"]
    assert sorted(p.name for p in (out / ".mdist").iterdir()) == ["archive.lock"]


# -- servers that send without end, archives that end early or do not start -----------------------
class _Endless(BaseHTTPRequestHandler):
    """HTTP/1.1 200, `Transfer-Encoding: chunked`, no length: `prefix`, then zeros until the client
    goes away (or `cap` bytes, then a proper end: a test never waits on it for ever)."""

    protocol_version = "HTTP/1.1"
    prefix = b""
    cap = 256 << 20
    sent: list[int]

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body, zeros = self.prefix, b"\0" * (64 << 10)
        try:
            while self.sent[0] < self.cap:
                chunk = body or zeros
                body = b""
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.sent[0] += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@contextmanager
def endless(prefix: bytes = b"") -> Iterator[tuple[str, list[int]]]:
    sent = [0]
    with serving(type("Handler", (_Endless,), {"prefix": prefix, "sent": sent})) as url:
        yield url, sent


def archive_manifest(tmp_path: Path, url: str, **archive) -> Path:
    manifest = tmp_path / "sized.json"
    manifest.write_text(json.dumps({
        "schema": "mdist-manifest/1", "name": "sized", "title": "t", "files_complete": False, "files": {},
        "archives": [{"name": "tiny.tar", "url": url, "md5": TINY_MD5, **archive}],
        "provenance": [{"fields": ["archives"], "source": "test"}]}))
    return manifest


def test_an_endless_body_stops_at_the_published_size(tmp_path: Path, env: dict) -> None:
    """The manifest gives the archive's size: a chunked body without a length that goes on is cut
    there, exit 1, and its partial goes (a rerun would otherwise resume after it)."""
    out = tmp_path / "got"
    with endless(TINY) as (url, sent):
        manifest = archive_manifest(tmp_path, url + "/tiny.tar", size=len(TINY))
        result = run_mdist("fetch", str(manifest), "--out", str(out), timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()[-1:]
    assert f"sent more than the {len(TINY)} bytes of tiny.tar; refused; the partial download was removed" in line
    assert sent[0] < len(TINY) + (64 << 20)
    assert model_files(out) == [] and not (out / ".mdist" / "archive-partial").exists()


def test_a_length_that_contradicts_the_published_size_is_refused_before_writing(tmp_path: Path, env: dict) -> None:
    """A resumed request answered with the right Content-Range but a longer Content-Length: refused
    before a byte is written, and the partial goes."""
    class Lying(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(TINY) - 1}/{len(TINY)}")
            self.send_header("Content-Length", str(len(TINY) - start + 4096))
            self.end_headers()
            self.wfile.write(TINY[start:] + b"\0" * 4096)

    out = tmp_path / "got"
    with serving(Lying) as url:
        partial = put_partial(out, url + "/tiny.tar", TINY[:5120])
        manifest = archive_manifest(tmp_path, url + "/tiny.tar", size=len(TINY))
        key = hashlib.sha256(f"{url}/tiny.tar|{TINY_MD5}".encode()).hexdigest()[:16]
        assert partial.name == f"{key}.tar.incomplete"
        result = run_mdist("fetch", str(manifest), "--out", str(out), timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"mdist: error: 127.0.0.1 sends {len(TINY) - 5120 + 4096} bytes of tiny.tar from byte 5120; "
        f"{len(TINY) - 5120} were expected (the archive has {len(TINY)}); refused; the partial download was removed")
    assert not partial.exists() and model_files(out) == []


NO_ROOM = """
import collections, shutil, sys
from mdist.sources import archive
Usage = collections.namedtuple("Usage", "total used free")
shutil.disk_usage = lambda path: Usage(1 << 42, 0, archive.FREE_SPACE_MARGIN + (8 << 20))  # 8 MiB above the margin
from mdist.cli import main
main(args=sys.argv[1:], prog_name="mdist")
"""


def test_an_endless_body_of_unknown_size_stops_before_the_disk_is_full(tmp_path: Path, env: dict) -> None:
    """No size published or announced: the download stops while the disk (here said to have 8 MiB
    above mdist's margin) still holds the partial and as much again for its extraction: exit 2, one
    line, no partial left to grow on the next run."""
    out = tmp_path / "got"
    with endless() as (url, sent):
        result = subprocess.run([sys.executable, "-c", NO_ROOM, "fetch", url + "/x.tar", "--out", str(out)],
                                capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()[-1:]
    assert re.fullmatch(r"mdist: error: 127\.0\.0\.1 sends x\.tar without announcing its size and has sent 0\.0\d GB; "
                        r"stopped: the free space in .* would not hold more and its extracted files with 1\.1 GB to "
                        r"spare; the partial download was removed", line), line
    assert sent[0] < 64 << 20
    assert not (out / ".mdist" / "archive-partial").exists() and model_files(out) == []


def cut_tar() -> dict[str, bytes]:
    """Two-member tars that tarfile alone would read as one member, without a word."""
    whole = make_tar([entry("m/a", b"A" * 10), entry("m/b", b"B" * 10)])
    garbled = bytearray(whole)
    garbled[1024:1536] = b"\xff" * 512  # m/b's header
    hidden = make_tar([entry("m/a", b"A" * 10)])[:1024] + b"\0" * 512 + make_tar([entry("m/b", b"B" * 10)])
    return {"garbled-header": bytes(garbled), "cut-at-a-header": whole[:1024], "cut-in-the-end-blocks": whole[:2560],
            "member-after-one-zero-block": hidden, "cut-at-a-header-512": whole[:1024] + b"\0" * 512}


@pytest.mark.parametrize("case", sorted(cut_tar()))
def test_an_archive_that_does_not_end_as_tar_ends_is_refused(tmp_path: Path, env: dict, case: str) -> None:
    """tarfile reads an unreadable header after the first as the end: the rest would be dropped
    and the fetch succeed with the md5 matching. The end must be zero blocks, at least two."""
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import Limits, extract_checked

    body = cut_tar()[case]
    tar = tmp_path / "x.tar"
    tar.write_bytes(body)
    with pytest.raises(UnsafeContentError, match=r"^x\.tar (has an unreadable tar header at byte 1024|ends at byte)"):
        extract_checked(tar, tmp_path, Limits())
    out = tmp_path / "got"
    with serve(Served({"/x.tar": body})) as served:
        result = fetch(served.url + "/x.tar", out, "--md5", hashlib.md5(body).hexdigest(), env=env)
    assert result.returncode == 1, result.stderr
    assert re.fullmatch(r"mdist: error: x\.tar (has an unreadable tar header|ends at byte) .*; refused\n",
                        result.stderr.splitlines(True)[-1])
    assert model_files(out) == [] and not (out / ".mdist" / "archive-partial").exists()


def test_the_end_blocks_of_tar_and_of_python_are_accepted(tmp_path: Path) -> None:
    """Two zero blocks, or a 10240-byte record padded with zeros (GNU tar, Python), end an archive."""
    from mdist.sources.archive import Limits, extract_checked

    for body in (make_tar([entry("a", b"x")])[:2048], make_tar([entry("a", b"x")]),
                 make_tar([entry("a", b"x")])[:1024] + b"\0" * 20480):
        assert len(body) in (2048, 10240, 21504)
        tar = tmp_path / "x.tar"
        tar.write_bytes(body)
        dest = tmp_path / f"d{len(body)}"
        dest.mkdir()
        assert extract_checked(tar, dest, Limits()) == {"a": (1, hashlib.sha256(b"x").hexdigest())}


def pax_first(headers: dict[str, str]) -> bytes:
    """A pax header with `headers` before the first (and only) member `a`."""
    info = tarfile.TarInfo("a")
    info.size = 1
    info.pax_headers = headers
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


NOT_TAR = {
    "html": b"<html><body>Not Found</body></html>\n",
    "random": bytes(range(256)) * 40,
    "empty": b"",
    "pax-negative-size": pax_first({"size": "-5"}),
    "pax-gnu-sparse-1.0": pax_first({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "a",
                                     "GNU.sparse.realsize": "1000000000"}),
}


@pytest.mark.parametrize("case", sorted(NOT_TAR))
def test_an_unreadable_first_header_is_one_refusal(tmp_path: Path, env: dict, case: str) -> None:
    """tarfile.open() reads the first header: what it raises there is a refusal of the archive
    (exit 1, one line naming it), never an internal error, and the download goes."""
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import Limits, extract_checked

    tar = tmp_path / "x.tar"
    tar.write_bytes(NOT_TAR[case])
    with pytest.raises(UnsafeContentError, match=r"^x\.tar"):
        extract_checked(tar, tmp_path, Limits())
    out = tmp_path / "got"
    with serve(Served({"/x.tar": NOT_TAR[case]})) as served:
        result = fetch(served.url + "/x.tar", out, "--md5", hashlib.md5(NOT_TAR[case]).hexdigest(), env=env)
    assert result.returncode == 1, result.stderr
    assert re.fullmatch(r"mdist: error: x\.tar.*; refused\n", result.stderr.splitlines(True)[-1]), result.stderr
    assert model_files(out) == [] and sorted(p.name for p in (out / ".mdist").iterdir()) == ["archive.lock"]


def extended_headers() -> dict[str, tuple[bytes, str]]:
    """Tars whose extended headers tarfile would parse without bound (memory: a header's whole
    claimed size read at once; time: pax regexes quadratic on crafted records; RecursionError:
    one recursion per header in a row), each with the cause its refusal names."""
    def header(name: str, kind: bytes, data: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data)
        return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)

    member = header("a", tarfile.REGTYPE, b"x") + b"\0" * 1024
    return {
        "pax-chain": (header("p", tarfile.XHDTYPE, b"11 foo=bar\n") * 3000 + member, "extended headers in a row"),
        "long-name-chain": (header("L", tarfile.GNUTYPE_LONGNAME, b"a\0") * 3000 + member, "extended headers in a row"),
        "huge-long-name": (header("L", tarfile.GNUTYPE_LONGNAME, b"a" * (1 << 20)) + member, "a long name header of"),
        "huge-pax": (header("p", tarfile.XHDTYPE, b"1048586 comment=" + b"a" * (1048586 - 17) + b"\n") + member,
                     "a pax header of"),
        "quadratic-pax": (header("p", tarfile.XHDTYPE, b"2 " * 30000 + b"=x\n") + member, "malformed pax record"),
        "digit-run": (header("p", tarfile.XHDTYPE, b"10018 comment=" + b"1" * 10003 + b"\n") + member,
                      "run of more than 64 digits"),
        "pax-sparse-map": (header("p", tarfile.XHDTYPE, b"24 GNU.sparse.map=0,0,0\n") + member, "GNU sparse"),
        "gnu-sparse": (header("a", tarfile.GNUTYPE_SPARSE, b"") + b"\0" * 1024, "GNU sparse"),
    }


@pytest.mark.parametrize("case", sorted(extended_headers()))
def test_extended_headers_are_bounded_before_tarfile_parses_them(tmp_path: Path, env: dict, case: str) -> None:
    from mdist.errors import UnsafeContentError
    from mdist.sources.archive import Limits, extract_checked

    body, cause = extended_headers()[case]
    tar = tmp_path / "x.tar"
    tar.write_bytes(body)
    started = time.monotonic()
    with pytest.raises(UnsafeContentError, match=r"^x\.tar is not a valid tar archive .*" + re.escape(cause)):
        extract_checked(tar, tmp_path, Limits())
    assert time.monotonic() - started < 2
    out = tmp_path / "got"
    with serve(Served({"/x.tar": body})) as served:
        result = fetch(served.url + "/x.tar", out, env=env)
    assert result.returncode == 1, result.stderr
    assert re.fullmatch(r"mdist: error: x\.tar is not a valid tar archive .*; refused\n",
                        result.stderr.splitlines(True)[-1]), result.stderr
    assert cause in result.stderr
    assert model_files(out) == [] and sorted(p.name for p in (out / ".mdist").iterdir()) == ["archive.lock"]


def test_pax_and_long_names_as_tar_writes_them_are_read(tmp_path: Path) -> None:
    """What the bounds above must not refuse: pax records of GNU tar and Python, GNU long names."""
    from mdist.sources.archive import Limits, extract_checked

    long = "d" * 150 + "/" + "e" * 150 + "/params.json"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            for name in (long, "ünï.json"):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = 2, 1700000000.123456
                archive.addfile(info, io.BytesIO(b"{}"))
        tar = tmp_path / f"{fmt}.tar"
        tar.write_bytes(buffer.getvalue())
        dest = tmp_path / f"d{fmt}"
        dest.mkdir()
        assert sorted(extract_checked(tar, dest, Limits())) == [long, "ünï.json"]


def test_a_refusal_names_the_archive_not_the_partial_file(tmp_path: Path, env: dict) -> None:
    body = make_tar(HOSTILE["dotdot"])
    out = tmp_path / "got"
    with serve(Served({"/dotdot.tar": body})) as served:
        result = fetch(served.url + "/dotdot.tar", out, "--md5", hashlib.md5(body).hexdigest(), env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("mdist: error: dotdot.tar: "), result.stderr
    assert "incomplete" not in result.stderr


# -- later verifies rest on sha256 ------------------------------------------------------------------
def test_verify_uses_the_recorded_sha256(tmp_path: Path, env: dict) -> None:
    """A folder no release describes, fetched from an archive whose md5 matched, verifies against
    mdist's signed record; an edited file fails; a record from another machine's key counts for nothing."""
    files = {"params.json": b'{"dim": 8}', "weights.safetensors": os.urandom(4096)}
    body = release_tar(files)
    out = tmp_path / "got"
    with serve(Served({"/own.tar": body})) as served:
        assert fetch(served.url + "/own.tar", out, "--md5", hashlib.md5(body).hexdigest(), env=env).returncode == 0
    result = run_mdist("verify", str(out), "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["report"]["manifest"] == "extracted from own.tar"
    assert {r["path"]: r["status"] for r in outcome["report"]["files"]} == {"params.json": "ok",
                                                                              "weights.safetensors": "ok"}
    assert all(r["detail"].startswith("sha256 recorded when mdist extracted") for r in outcome["report"]["files"])

    other_key = run_mdist("verify", str(out), "--json", env={"XDG_STATE_HOME": str(tmp_path / "elsewhere")})
    assert other_key.returncode == 1 and json.loads(other_key.stdout)["report"]["manifest"] is None

    with open(out / "weights.safetensors", "r+b") as handle:
        handle.write(b"\xff")
    edited = run_mdist("verify", str(out), "--json", env=env)
    assert edited.returncode == 1
    assert {r["path"]: r["status"] for r in json.loads(edited.stdout)["report"]["files"]}["weights.safetensors"] \
        == "mismatch"


@pytest.mark.parametrize("files", [{"params.json": 5}, {"params.json": []}, {"params.json": None},
                                   {"params.json": "x"}, []])
def test_a_hand_made_extraction_record_counts_for_nothing(tmp_path: Path, env: dict, files) -> None:
    """The record is parsed before its MAC is checked: an entry that is not an object was an
    internal error (AttributeError) in verify; any record mdist did not write is ignored."""
    folder = tmp_path / "m"
    (folder / ".mdist").mkdir(parents=True)
    (folder / "params.json").write_text('{"dim": 8}')
    (folder / ".mdist" / "extracted.json").write_text(json.dumps(
        {"record": {"archive": "http://x/a.tar", "md5": "0" * 32, "release": None, "files": files}, "mac": "0" * 64}))
    from mdist.verify.extracted import read_record

    assert read_record(folder) is None
    result = run_mdist("verify", str(folder), "--json", env=env)
    assert result.returncode == 1 and "internal error" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["report"]["manifest"] is None


def test_verify_says_what_md5_does_not_prove(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"tok")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"schema": "mdist-manifest/1", "name": "m", "title": "m", "files_complete": True,
                                    "files": {"tokenizer.model": {"md5": hashlib.md5(b"tok").hexdigest()}},
                                    "provenance": [{"fields": ["files"], "source": "test"}]}))
    result = run_mdist("verify", str(folder), "--manifest", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "md5 is the only check of tokenizer.model: it detects corruption, not a deliberate collision" in text


# -- the registry -----------------------------------------------------------------------------------
TABLE = {  # issue 15: Mistral's mistral-inference README and docs
    "mistral-7b-v0-1/mistral-7B-v0.1.tar": "37dab53973db2d56b2da0a033a15307f",
    "mistral-7b-v0-2/Mistral-7B-v0.2-Instruct.tar": "fbae55bc038f12f010b4251326e73d39",
    "mistral-7b-v0-3/mistral-7B-v0.3.tar": "0663b293810d7571dad25dae2f2a5806",
    "mistral-7b-v0-3/mistral-7B-Instruct-v0.3.tar": "80b71fcb6416085bcb4efad86dfb4d52",
    "mixtral-8x7b-v0-1/Mixtral-8x7B-v0.1-Instruct.tar": "8e2d3930145dc43d3084396f49d38a3f",
    "mixtral-8x22b-v0-3/mixtral-8x22B-v0.3.tar": "a2fa75117174f87d1197e3a4eb50371a",
    "mixtral-8x22b-v0-3/mixtral-8x22B-Instruct-v0.3.tar": "471a02a6902706a2f1e44a693813855b",
    "codestral-22b-v0-1/codestral-22B-v0.1.tar": "1ea95d474a1d374b1d1b20a8e0159de3",
    "mathstral-7b-v0-1/mathstral-7B-v0.1.tar": "5f05443e94489c261462794b1016f10b",
    "codestral-mamba-7b-v0-1/codestral-mamba-7B-v0.1.tar": "d3993e4024d1395910c55db0d11db163",
    "mistral-nemo-2407/mistral-nemo-base-2407.tar": "c5d079ac4b55fc1ae35f51f0a3c0eb83",
}
OLD_CODESTRAL = "a5661f2f6c6ee4d6820a2f68db934c5d"
MAGNET_8X22B = "0535902c85ddbb04d4bebbf4371c6341"
MANIFESTS = {p.name: json.loads(p.read_text()) for p in sorted((REPO / "checksums").glob("*.json"))}


def test_every_manifest_validates_against_the_schema() -> None:
    import jsonschema

    from mdist.verify.manifest import load_registry

    schema = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    for name, document in MANIFESTS.items():
        jsonschema.validate(document, schema)
    assert len(load_registry()) == len(MANIFESTS) >= 16


@pytest.mark.parametrize("md5", [*TABLE.values(), OLD_CODESTRAL, MAGNET_8X22B])
def test_each_published_md5_is_in_exactly_one_manifest_with_its_provenance(md5: str) -> None:
    holding = {name: doc for name, doc in MANIFESTS.items() if md5 in json.dumps(doc.get("archives", []))}
    assert len(holding) == 1, sorted(holding)
    [document] = holding.values()
    [archive] = [a for a in document["archives"] if a["md5"] == md5]
    sources = [p["source"] for p in document["provenance"] if "archives" in p["fields"]]
    assert sources and all("mistral-inference README" in s for s in sources)
    if md5 in TABLE.values():
        path = next(path for path, value in TABLE.items() if value == md5)
        assert archive["url"] == "https://models.mistralcdn.com/" + path and archive.get("current", True)
    elif md5 == OLD_CODESTRAL:
        assert archive["current"] is False and "older revision of the README" in archive["note"]
        assert document["name"] == "codestral-22b-v0.1"
    else:
        assert "url" not in archive and "without saying of which file" in archive["note"]
        assert document["name"] == "mixtral-8x22b-v0.1"


def test_release_names_resolve_to_their_archive() -> None:
    from mdist.sources.resolve import resolve_source

    for path, md5 in TABLE.items():
        name = next(doc["name"] for doc in MANIFESTS.values() if md5 in json.dumps(doc.get("archives", [])))
        source = resolve_source(name)
        archive = source if source.kind == "archive" else source.archive
        assert archive is not None and archive.target.endswith(path) and archive.md5 == md5, name
    codestral = resolve_source("codestral-22b-v0.1")
    assert codestral.md5 == TABLE["codestral-22b-v0-1/codestral-22B-v0.1.tar"]
    assert codestral.hub_fallback is not None and codestral.hub_fallback.target == "mistralai/Codestral-22B-v0.1"
    url = resolve_source("https://models.mistralcdn.com/mistral-nemo-2407/mistral-nemo-base-2407.tar")
    assert url.manifest is not None and url.manifest.name == "mistral-nemo-base-2407"


def test_releases_lists_each_source() -> None:
    listing = run_mdist("releases").stdout
    assert re.search(r"^mistral-7b-v0\.1 .*\[magnet, archive, hub\]$", listing, re.M)
    assert re.search(r"^mixtral-8x22b-v0\.3 .*\[archive\]$", listing, re.M)
    assert re.search(r"^mistral-7b-v0\.3 .*\[archive, hub\]$", listing, re.M)
    releases = {r["name"]: r for r in json.loads(run_mdist("releases", "--json").stdout)}
    assert releases["mathstral-7b-v0.1"]["via"] == ["archive", "hub"]
    assert releases["mathstral-7b-v0.1"]["archive"]["md5"] == TABLE["mathstral-7b-v0-1/mathstral-7B-v0.1.tar"]


# -- redirects: http -> https followed, https -> http refused --------------------------------------------
@pytest.mark.parametrize("source, target, refused", [
    ("https://cdn.example/a.tar", "http://cdn.example/a.tar", "a redirect from https:// to http:// is refused"),
    ("HTTPS://cdn.example/a.tar", "HTTP://mirror.example/b.tar", "a redirect from https:// to http:// is refused"),
    ("https://cdn.example/a.tar", "ftp://cdn.example/a.tar", "only http:// and https:// redirects are followed"),
    ("http://cdn.example/a.tar", "file:///etc/passwd", "only http:// and https:// redirects are followed"),
    ("http://cdn.example/a.tar", "https://cdn.example/a.tar", None),
    ("http://cdn.example/a.tar", "http://mirror.example/a.tar", None),
    ("https://cdn.example/a.tar", "https://mirror.example/a.tar", None),
])
def test_the_redirect_policy(source: str, target: str, refused: str | None) -> None:
    from mdist.errors import InputError
    from mdist.sources.http_download import check_redirect

    if refused is None:
        check_redirect(source, target)
        return
    with pytest.raises(InputError) as raised:
        check_redirect(source, target)
    assert str(raised.value).startswith(f"{source} redirects to {target}: {refused}")
    assert "\n" not in str(raised.value) and raised.value.exit_code == 2


class _Redirect(BaseHTTPRequestHandler):
    """302 to `location` for every GET; `asked` counts the GETs."""

    location = ""
    asked: list[str]

    def do_GET(self) -> None:  # noqa: N802
        self.asked.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def tls_serving(handler: type[BaseHTTPRequestHandler], cert: Path, key: Path) -> Iterator[str]:
    """`handler` over TLS on 127.0.0.1 with `cert` (a client trusts it through SSL_CERT_FILE)."""
    from hubmirror import serving

    with serving(handler, tls=(cert, key)) as url:
        yield url


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (subjectAltName IP), signed by its own key: (cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_a_redirect_within_http_is_followed(tmp_path: Path, env: dict) -> None:
    out = tmp_path / "got"
    with serve(Served({"/m/tiny.tar": TINY})) as served:
        asked: list[str] = []
        handler = type("Handler", (_Redirect,), {"location": served.url + "/m/tiny.tar", "asked": asked})
        with serving(handler) as url:
            result = fetch(url + "/tiny.tar", out, "--md5", TINY_MD5, env=env)
    assert result.returncode == 0, result.stderr
    assert asked == ["/tiny.tar"] and served.ranges == [None]
    assert all((out / name).read_bytes() == data for name, data in FILES.items())


def test_https_to_http_is_refused_and_https_to_https_followed(tmp_path: Path, env: dict) -> None:
    """Over real TLS (a self-signed certificate the client trusts through SSL_CERT_FILE): a direct
    https download and an https -> https redirect work, so the refusal of https -> http is the
    policy's, not a TLS failure: one line naming both URLs, exit 2, the http server never asked,
    nothing in OUT."""
    cert, key = self_signed(tmp_path)
    tls_env = {**env, "SSL_CERT_FILE": str(cert)}

    class Archive(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(TINY)))
            self.end_headers()
            self.wfile.write(TINY)

        def log_message(self, *args) -> None:
            pass

    with serve(Served({"/tiny.tar": TINY})) as plain, tls_serving(Archive, cert, key) as secure:
        downgrade = type("Handler", (_Redirect,), {"location": plain.url + "/tiny.tar", "asked": []})
        upgrade = type("Handler", (_Redirect,), {"location": secure + "/tiny.tar", "asked": []})
        with tls_serving(downgrade, cert, key) as down, tls_serving(upgrade, cert, key) as up:
            direct = fetch(secure + "/tiny.tar", tmp_path / "direct", "--md5", TINY_MD5, env=tls_env)
            followed = fetch(up + "/tiny.tar", tmp_path / "followed", "--md5", TINY_MD5, env=tls_env)
            refused = fetch(down + "/tiny.tar", tmp_path / "refused", "--md5", TINY_MD5, env=tls_env)
    assert direct.returncode == 0, direct.stderr
    assert followed.returncode == 0 and upgrade.asked == ["/tiny.tar"], followed.stderr
    assert model_files(tmp_path / "followed") == sorted(FILES)
    assert refused.returncode == 2 and downgrade.asked == ["/tiny.tar"], refused.stderr
    assert refused.stderr.splitlines() == [
        f"mdist: error: {down}/tiny.tar redirects to {plain.url}/tiny.tar: a redirect from https:// to http:// is "
        f"refused (the download would no longer be encrypted or authenticated); give the http:// URL yourself to "
        f"fetch from it"]
    assert plain.ranges == [] and model_files(tmp_path / "refused") == []


# -- --keep-archive never replaces another file ----------------------------------------------------------
@pytest.mark.parametrize("case", ["other content", "same size", "no md5", "folder", "link"])
def test_keep_archive_refuses_to_replace_another_file(tmp_path: Path, env: dict, case: str) -> None:
    """OUT/NAME.tar holds something else: refused before a byte is asked (exit 2, one line saying how
    to go on), the file untouched, nothing extracted."""
    out = tmp_path / "got"
    out.mkdir()
    kept = out / "tiny.tar"
    if case == "folder":
        kept.mkdir()
    elif case == "link":
        (tmp_path / "elsewhere").write_bytes(TINY)
        kept.symlink_to(tmp_path / "elsewhere")
    else:
        kept.write_bytes(b"x" * len(TINY) if case == "same size" else b"my own tar")
    before = kept.read_bytes() if kept.is_file() else None
    md5 = () if case == "no md5" else ("--md5", TINY_MD5)
    with serve(Served({"/tiny.tar": TINY})) as served:
        result = fetch(served.url + "/tiny.tar", out, *md5, "--keep-archive", env=env)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    cause = {"other content": f"exists with other content than this archive (md5 {TINY_MD5})",
             "same size": f"exists with other content than this archive (md5 {TINY_MD5})",
             "no md5": "exists and no md5 is known to tell whether it is this archive",
             "folder": "is a folder", "link": "is a symbolic link or special file"}[case]
    assert line.startswith(f"mdist: error: {kept} {cause}") and "remove or rename it, or fetch without " \
           "--keep-archive" in line, line
    assert served.ranges == [] and model_files(out) == ["tiny.tar"]
    assert (kept.read_bytes() if kept.is_file() else None) == before
    assert kept.is_symlink() == (case == "link")


def test_keep_archive_again_over_the_same_archive(tmp_path: Path, env: dict) -> None:
    """OUT/NAME.tar is this archive (a rerun with --keep-archive): it stays, and the fetch succeeds."""
    out = tmp_path / "got"
    with serve(Served({"/tiny.tar": TINY})) as served:
        first = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, "--keep-archive", env=env)
        second = fetch(served.url + "/tiny.tar", out, "--md5", TINY_MD5, "--keep-archive", "--json", env=env)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert f"{out / 'tiny.tar'} is already this archive (md5 matched); it stays" in second.stderr
    assert json.loads(second.stdout)["archive"] == str(out / "tiny.tar") and (out / "tiny.tar").read_bytes() == TINY
