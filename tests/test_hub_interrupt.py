"""Ctrl-C and SIGTERM during `mdist fetch hf://…`: a prompt stop with 130 / 143 and nothing that
looks complete; a rerun resumes from the bytes already on disk (FakeHub records every Range asked
for and every byte sent, which olah cannot: it ignores Range) and leaves no partial file behind."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_mdist
from hubmirror import FakeHub, fake_hub

REPO = "org/big-model"
COMMIT = hashlib.sha1(b"big commit").hexdigest()
BIG = "model.safetensors"
SIZE = 64 << 20
RATE = 4 << 20  # the whole file takes 16 s at this rate: far longer than stopping may take
CONFIG = b'{"dim": 64}\n'


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(0).randbytes(SIZE)


def throttled(data: bytes, **kwargs) -> FakeHub:
    return FakeHub(REPO, COMMIT, {BIG: data, "config.json": CONFIG}, rates={BIG: RATE}, **kwargs)


def start_fetch(hub: FakeHub, *args: str, env: dict | None = None) -> subprocess.Popen:
    # a background job of a non-interactive shell ignores SIGINT: restore the default for the child
    return subprocess.Popen([sys.executable, "-m", "mdist", "fetch", f"hf://{REPO}", "--endpoint", hub.endpoint,
                             *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_mid_transfer(hub: FakeHub, process: subprocess.Popen, signum: int) -> tuple[float, str]:
    """Send signum once a few MB of BIG have gone out; (seconds until the process ended, its stderr)."""
    try:
        deadline = time.monotonic() + 60
        while hub.sent.get(BIG, 0) < 4 << 20:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.05)
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        return time.monotonic() - sent, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".incomplete"))


def rerun(hub: FakeHub, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    result = run_mdist("fetch", f"hf://{REPO}", "--endpoint", hub.endpoint, *args, "--json", timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    return result, json.loads(result.stdout)


def big_ranges(hub: FakeHub, since: int) -> list[str | None]:
    return [header for path, header in hub.ranges[since:] if path == BIG]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_promptly_and_the_rerun_resumes(data: bytes, tmp_path: Path, signum: int, code: int) -> None:
    out = tmp_path / "got"
    with fake_hub(throttled(data)) as hub:
        stopped_after, stderr = interrupt_mid_transfer(hub, start_fetch(hub, "--out", str(out)), signum)
        assert hub.sent[BIG] < SIZE
        assert stopped_after < 5, stopped_after  # generous on a loaded 2-core machine; the transfer needs 16 s
        assert "mdist: error" not in stderr and "interrupted" in stderr, stderr
        assert not (out / BIG).exists() and not (out / ".mdist" / "complete.json").exists()
        [partial] = partials(out)
        kept = partial.stat().st_size
        assert 0 < kept < SIZE

        hub.rates.clear()
        asked, sent = len(hub.ranges), hub.sent[BIG]
        _, payload = rerun(hub, "--out", str(out))
        assert big_ranges(hub, asked) == [f"bytes={kept}-"]
        assert hub.sent[BIG] - sent == SIZE - kept
        assert not any(path == "config.json" for path, _ in hub.ranges[asked:])  # complete before: not fetched again
    assert (out / BIG).read_bytes() == data and (out / "config.json").read_bytes() == CONFIG
    assert "sha256 of 1 LFS files" in payload["verification"]
    assert (out / ".mdist" / "complete.json").is_file()
    assert partials(out) == []


def test_interrupt_and_resume_in_the_hf_cache(data: bytes, tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    env = {"HF_HOME": str(home)}
    storage = home / "hub" / "models--org--big-model"
    sha256 = hashlib.sha256(data).hexdigest()
    with fake_hub(throttled(data)) as hub:
        stopped_after, stderr = interrupt_mid_transfer(hub, start_fetch(hub, "--to-hf-cache", env=env), signal.SIGINT)
        assert stopped_after < 5, stopped_after
        assert not (storage / "blobs" / sha256).exists()
        assert not (storage / "snapshots" / COMMIT / BIG).exists() and not (storage / "refs" / "main").exists()
        [partial] = partials(home)
        kept = partial.stat().st_size

        leftover = storage / "blobs" / f"{sha256}.0a1b2c3d.incomplete"  # huggingface_hub's, from before
        leftover.write_bytes(data[:1 << 20])
        hub.rates.clear()
        asked = len(hub.ranges)
        rerun(hub, "--to-hf-cache", env=env)
        assert big_ranges(hub, asked) == [f"bytes={kept}-"]
        assert not leftover.exists()
    assert (storage / "snapshots" / COMMIT / BIG).read_bytes() == data
    assert (storage / "snapshots" / COMMIT / BIG).resolve() == (storage / "blobs" / sha256).resolve()
    assert (storage / "refs" / "main").read_text() == COMMIT
    assert partials(home) == []


def test_resume_from_a_server_that_ignores_range(data: bytes, tmp_path: Path) -> None:
    """Like olah: the answer is the whole file (200); the partial is started over, never appended to."""
    out = tmp_path / "got"
    with fake_hub(throttled(data)) as hub:
        interrupt_mid_transfer(hub, start_fetch(hub, "--out", str(out)), signal.SIGINT)
        hub.rates.clear()
        hub.honour_range = False
        sent = hub.sent[BIG]
        rerun(hub, "--out", str(out))
        assert hub.sent[BIG] - sent == SIZE
    assert (out / BIG).read_bytes() == data
    assert partials(out) == []


def test_a_partial_with_wrong_bytes_is_never_trusted(data: bytes, tmp_path: Path) -> None:
    """Bytes a lying mirror sent before the interrupt: the resumed file does not match, so it is
    downloaded once more from the start, and only the verified file is kept."""
    out = tmp_path / "got"
    altered = bytearray(data)
    altered[1000] ^= 0x01
    with fake_hub(throttled(data, served={BIG: bytes(altered)})) as hub:
        interrupt_mid_transfer(hub, start_fetch(hub, "--out", str(out)), signal.SIGINT)
        [partial] = partials(out)
        kept = partial.stat().st_size
        hub.rates.clear()
        hub.served.clear()
        asked = len(hub.ranges)
        result, _ = rerun(hub, "--out", str(out))
        assert big_ranges(hub, asked) == [f"bytes={kept}-", None]
    assert "did not match" in result.stderr and "from the start" in result.stderr, result.stderr
    assert (out / BIG).read_bytes() == data
    assert partials(out) == []


def test_a_lying_mirror_leaves_no_partial(data: bytes, tmp_path: Path) -> None:
    """A complete download that does not match is removed, partial included: nothing to resume from."""
    out = tmp_path / "got"
    altered = bytearray(data)
    altered[-1] ^= 0x01
    with fake_hub(FakeHub(REPO, COMMIT, {BIG: data}, served={BIG: bytes(altered)})) as hub:
        result = run_mdist("fetch", f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out), timeout=180)
    assert result.returncode == 1, result.stderr
    assert "sha256 mismatch" in result.stderr and "removed" in result.stderr
    assert not (out / BIG).exists() and partials(out) == []


def test_leftovers_of_huggingface_hub_are_resumed_then_removed(data: bytes, tmp_path: Path) -> None:
    """What an interrupted huggingface_hub download left in OUT/.cache/huggingface/download/ (the
    way mdist fetched before) is resumed from, and removed once the file is verified."""
    out = tmp_path / "got"
    sha256 = hashlib.sha256(data).hexdigest()
    short = base64.urlsafe_b64encode(hashlib.sha1(f"{BIG}.metadata".encode()).digest()).decode()
    download = out / ".cache" / "huggingface" / "download"
    download.mkdir(parents=True)
    (download / f"{short}.{sha256}.0a1b2c3d.incomplete").write_bytes(data[:10 << 20])
    (download / f"{short}.{sha256}.4e5f6a7b.incomplete").write_bytes(data[:3 << 20])
    (download / f"{BIG}.{sha256}.incomplete").write_bytes(data[:1 << 20])
    (download / f"{BIG}.index.json.{hashlib.sha1(b'x').hexdigest()}.incomplete").write_bytes(b"another file's")
    with fake_hub(FakeHub(REPO, COMMIT, {BIG: data})) as hub:
        rerun(hub, "--out", str(out))
        assert big_ranges(hub, 0) == [f"bytes={10 << 20}-"]
    assert (out / BIG).read_bytes() == data
    assert [p.name for p in partials(out)] == [f"{BIG}.index.json.{hashlib.sha1(b'x').hexdigest()}.incomplete"]


def test_leftovers_in_the_hf_cache_are_resumed_then_removed(data: bytes, tmp_path: Path) -> None:
    """huggingface_hub 2.x leaves blobs/<sha256>.<8 hex>.incomplete when killed mid-download."""
    home = tmp_path / "hf-home"
    sha256 = hashlib.sha256(data).hexdigest()
    blobs = home / "hub" / "models--org--big-model" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha256}.0a1b2c3d.incomplete").write_bytes(data[:7 << 20])
    with fake_hub(FakeHub(REPO, COMMIT, {BIG: data})) as hub:
        rerun(hub, "--to-hf-cache", env={"HF_HOME": str(home)})
        assert big_ranges(hub, 0) == [f"bytes={7 << 20}-"]
    assert (blobs / sha256).read_bytes() == data
    assert partials(home) == []


def test_resume_through_a_requests_session(data: bytes, tmp_path: Path, monkeypatch) -> None:
    """huggingface_hub before 1.0 hands out a requests session, not an httpx client: the same
    resumed, verified download through it."""
    import huggingface_hub.utils
    import requests

    from mdist.sources.hub import HubOptions, fetch_hub
    from mdist.sources.torrent_fetch import SilentReporter

    monkeypatch.setattr(huggingface_hub.utils, "get_session", requests.Session)
    out = tmp_path / "got"
    sha256 = hashlib.sha256(data).hexdigest()
    download = out / ".cache" / "huggingface" / "download"
    download.mkdir(parents=True)
    (download / f"{BIG}.{sha256}.incomplete").write_bytes(data[:5 << 20])
    with fake_hub(FakeHub(REPO, COMMIT, {BIG: data, "config.json": CONFIG})) as hub:
        result = fetch_hub(REPO, None, HubOptions(out=out, endpoint=hub.endpoint, quiet=True), SilentReporter())
        assert big_ranges(hub, 0) == [f"bytes={5 << 20}-"]
    assert result["files"] == ["config.json", BIG]
    assert (out / BIG).read_bytes() == data and (out / "config.json").read_bytes() == CONFIG
    assert partials(out) == []


def test_a_listed_file_the_server_does_not_serve(data: bytes, tmp_path: Path) -> None:
    """A 404 for one file is one line naming it; nothing is marked complete."""
    from hubmirror import listing_entry

    listing = [listing_entry(BIG, data[:1000]), listing_entry("config.json", CONFIG)]
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, {"config.json": CONFIG}, listings=[listing])) as hub:
        result = run_mdist("fetch", f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out), timeout=180)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("mdist: error: download of 'model.safetensors'") and "404" in line, line
    assert not (out / BIG).exists() and not (out / ".mdist" / "complete.json").exists()


def test_stopping_while_another_process_holds_the_blob_lock_is_a_clean_cancel(tmp_path: Path) -> None:
    """Ctrl-C while huggingface_hub (another process) holds a blob's lock: Cancelled, not NameError."""
    import threading

    from filelock import FileLock

    from mdist.sources import hub
    from mdist.verify.hashing import Cancelled

    lock = tmp_path / ".locks" / "models--o--r" / "blob.lock"
    lock.parent.mkdir(parents=True)
    placement = hub.Placement(remote=None, root=tmp_path, final=tmp_path / "blob", partial=tmp_path / "part",
                              lock=lock)
    held = FileLock(str(lock))
    held.acquire()
    try:
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            with hub._blob_lock(placement, cancel):
                pass
    finally:
        held.release()
