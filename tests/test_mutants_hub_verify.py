"""Hub verification in process: mdist.verify.hub_cache, and the functions of mdist.sources.hub that
check what a hub sends (the commit, the listing's hashes, each file before it is kept, the release).

Written for mutation testing (bench/mutation.py, docs/testing.md). tests/test_hub*.py and
tests/test_hf_cache.py drive the same code end to end through a mirror; these pin each check and
message. Digests are compared with hashlib and `git hash-object`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from mdist.errors import InputError, UnsafeContentError, VerificationError
from mdist.sources import hub
from mdist.sources.hub import Placement, RemoteFile
from mdist.verify import hub_cache
from mdist.verify.manifest import FileEntry, Manifest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(path: Path) -> str:
    if shutil.which("git"):
        return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
    data = path.read_bytes()
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def message(caught) -> str:
    return str(caught.value)


# -- hub_cache.cached_snapshot ---------------------------------------------------------------------

@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    (cache / "models--org--m" / "snapshots" / COMMIT).mkdir(parents=True)
    (cache / "models--org--m" / "refs").mkdir()
    (cache / "models--org--m" / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_cached_snapshot_by_ref_and_by_commit(hf_cache: Path) -> None:
    repo = hf_cache / "models--org--m"
    assert hub_cache.cached_snapshot("org/m", None) == (repo / "snapshots" / COMMIT, COMMIT)
    (repo / "refs" / "v1").write_text(f"  {COMMIT}\n")
    assert hub_cache.cached_snapshot("org/m", "v1") == (repo / "snapshots" / COMMIT, COMMIT)
    (repo / "refs" / "main").write_text("not read")  # a commit asked for is taken as it is
    assert hub_cache.cached_snapshot("org/m", COMMIT) == (repo / "snapshots" / COMMIT, COMMIT)


def test_cached_snapshot_refusals(hf_cache: Path) -> None:
    repo = hf_cache / "models--org--m"
    with pytest.raises(InputError) as caught:
        hub_cache.cached_snapshot("org/other", None)
    assert message(caught) == f"org/other is not in the Hugging Face cache ({hf_cache})"
    with pytest.raises(InputError) as caught:
        hub_cache.cached_snapshot("org/m", OTHER)
    assert message(caught) == f"org/m@{OTHER} (commit {OTHER}) has no snapshot in the cache"
    (repo / "refs" / "v2").write_text(OTHER)
    with pytest.raises(InputError) as caught:
        hub_cache.cached_snapshot("org/m", "v2")
    assert message(caught) == f"org/m@v2 (commit {OTHER}) has no snapshot in the cache"
    for content in (COMMIT.upper().encode(), COMMIT[:39].encode(), b"\xff" * 40, b""):
        (repo / "refs" / "bad").write_bytes(content)
        with pytest.raises(InputError) as caught:
            hub_cache.cached_snapshot("org/m", "bad")
        assert message(caught) == f"{repo / 'refs' / 'bad'} does not hold a commit"
    (repo / "refs" / "big").write_text(COMMIT + " " * 23 + "\n")  # 64 bytes: read
    assert hub_cache.cached_snapshot("org/m", "big")[1] == COMMIT
    (repo / "refs" / "big").write_text(COMMIT + " " * 24 + "\n")  # 65 bytes: refused
    with pytest.raises(InputError) as caught:
        hub_cache.cached_snapshot("org/m", "big")
    assert message(caught) == "org/m's cached ref big is larger than 64 bytes"
    with pytest.raises(InputError) as caught:
        hub_cache.cached_snapshot("org/m", "missing")
    assert message(caught) == "org/m's cached ref missing is missing"
    real = repo / "snapshots" / OTHER
    real.rename(repo / "elsewhere") if real.exists() else None
    (repo / "elsewhere").mkdir(exist_ok=True)
    real.symlink_to(repo / "elsewhere")
    with pytest.raises(InputError) as caught:
        hub_cache.cached_snapshot("org/m", OTHER)
    assert message(caught) == f"org/m@{OTHER} (commit {OTHER}) has no snapshot in the cache"


# -- hub_cache.verify_cached -----------------------------------------------------------------------

def fake_verify(monkeypatch, statuses: list[str], ok: bool = True) -> list[tuple]:
    from mdist.verify import pipeline

    calls: list[tuple] = []

    def verify_command(folder, manifest, **kwargs):
        calls.append((folder, manifest, kwargs))
        return {"ok": ok, "notes": ["from verify"],
                "report": {"files": [{"path": f"f{i}", "status": s} for i, s in enumerate(statuses)]}}

    monkeypatch.setattr(pipeline, "verify_command", verify_command)
    return calls


def fake_hub(monkeypatch, answer) -> list[tuple]:
    calls: list[tuple] = []

    def check(*args):
        calls.append(args)
        return answer

    monkeypatch.setattr(hub_cache, "_hub_check", check)
    return calls


def test_verify_cached_passes_its_options_on(hf_cache: Path, monkeypatch) -> None:
    calls = fake_verify(monkeypatch, ["ok"])
    hubs = fake_hub(monkeypatch, None)
    progress = object()
    outcome = hub_cache.verify_cached("org/m", None, "http://e", strict=True, quiet=False, progress=progress)
    snapshot = hf_cache / "models--org--m" / "snapshots" / COMMIT
    assert calls == [(snapshot, None, {"strict": True, "quiet": False, "progress": progress})]
    assert hubs == [("org/m", COMMIT, snapshot, "http://e")]
    assert outcome["snapshot"] == str(snapshot) and outcome["commit"] == COMMIT
    assert outcome["hub"] is None and outcome["ok"] is True
    assert outcome["notes"] == ["from verify", "hub not reachable: checked against blob names (and checksums/ where "
                                               "it knows the files) only"]
    hub_cache.verify_cached("org/m", None, None)
    assert calls[-1][2] == {"strict": False, "quiet": True, "progress": None}


def test_verify_cached_never_hands_refused_files_to_the_hub(hf_cache: Path, monkeypatch) -> None:
    fake_verify(monkeypatch, ["ok", "refused", "refused"])
    hubs = fake_hub(monkeypatch, {"never": "used"})
    outcome = hub_cache.verify_cached("org/m", None, None)
    assert hubs == [] and outcome["hub"] is None and outcome["ok"] is False
    assert outcome["notes"] == ["from verify", "hub check skipped: f1 is refused (a link out of the cache's blobs/ or "
                                               "a plain file in the snapshot)"]


def published(mismatches=(), missing=(), extra=()) -> dict:
    return {"endpoint": "http://e", "checked": 7, "mismatches": list(mismatches), "missing": list(missing),
            "extra": list(extra)}


def test_verify_cached_reports_what_the_hub_publishes(hf_cache: Path, monkeypatch) -> None:
    fake_verify(monkeypatch, ["ok", "ok"])
    fake_hub(monkeypatch, published())
    outcome = hub_cache.verify_cached("org/m", None, None)
    assert outcome["ok"] is True and outcome["hub"] == published()
    assert outcome["notes"] == ["from verify", f"hub http://e: all 7 files match what it publishes for commit "
                                               f"{COMMIT[:12]}"]
    bad = published([{"path": "a", "algorithm": "sha256", "expected": "e1", "actual": "a1"}], ["b"], ["c"])
    fake_hub(monkeypatch, bad)
    outcome = hub_cache.verify_cached("org/m", None, None)
    assert outcome["ok"] is False
    assert outcome["notes"] == ["from verify", "hub: a: sha256 expected e1 got a1", "hub: b: published but not in "
                                "the cache", "hub: c: in the cache, not published for this commit"]
    fake_hub(monkeypatch, published(missing=["b"]))
    assert hub_cache.verify_cached("org/m", None, None)["ok"] is False


def test_files_the_hub_does_not_publish_fail_only_when_strict(hf_cache: Path, monkeypatch) -> None:
    fake_verify(monkeypatch, ["ok"])
    fake_hub(monkeypatch, published(extra=["c"]))
    outcome = hub_cache.verify_cached("org/m", None, None)
    assert outcome["ok"] is True and outcome["notes"] == ["from verify", "hub: c: in the cache, not published for "
                                                                         "this commit"]
    assert hub_cache.verify_cached("org/m", None, None, strict=True)["ok"] is False
    fake_verify(monkeypatch, ["ok"], ok=False)  # the local check failed: the hub's answer does not undo that
    fake_hub(monkeypatch, published())
    assert hub_cache.verify_cached("org/m", None, None)["ok"] is False


# -- hub_cache._hub_check, _reachable --------------------------------------------------------------

class FakeApi:
    calls: list[tuple] = []
    raises: BaseException | None = None

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def verify_repo_checksums(self, repo, **kwargs):
        FakeApi.calls.append((self.endpoint, repo, kwargs))
        if FakeApi.raises is not None:
            raise FakeApi.raises
        return SimpleNamespace(checked_count=3, mismatches=({"path": "a"},), missing_paths=("b",),
                               extra_paths=("c",))


@pytest.fixture
def api(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.raises = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub_cache, "_reachable", lambda endpoint: True)
    return FakeApi


def test_hub_check_asks_the_endpoint_about_the_commit(api, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / COMMIT
    result = hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e:1/")
    assert result == {"endpoint": "http://e:1", "checked": 3, "mismatches": [{"path": "a"}], "missing": ["b"],
                      "extra": ["c"]}
    assert api.calls == [("http://e:1", "org/m", {"revision": COMMIT, "cache_dir": tmp_path / "hub", "token": False})]
    monkeypatch.setenv("HF_ENDPOINT", "http://env/")
    assert hub_cache._hub_check("org/m", COMMIT, snapshot, None)["endpoint"] == "http://env"
    assert hub_cache._hub_check("org/m", COMMIT, snapshot, "http://given")["endpoint"] == "http://given"
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub_cache._hub_check("org/m", COMMIT, snapshot, None)["endpoint"] == constants.ENDPOINT.rstrip("/")
    monkeypatch.setattr(hub_cache, "_reachable", lambda endpoint: False)
    api.calls.clear()
    assert hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e") is None and api.calls == []


def test_hub_check_errors(api, tmp_path: Path) -> None:
    from huggingface_hub import errors

    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / COMMIT
    api.raises = errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)
    with pytest.raises(InputError) as caught:
        hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e")
    assert message(caught) == "http://e does not know org/m"
    api.raises = errors.RevisionNotFoundError.__new__(errors.RevisionNotFoundError)
    with pytest.raises(InputError) as caught:
        hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e")
    assert message(caught) == f"http://e does not know commit {COMMIT} of org/m"
    for offline in (OSError("refused"), ValueError("bad"), errors.HfHubHTTPError.__new__(errors.HfHubHTTPError)):
        api.raises = offline
        assert hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e") is None
    api.raises = RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e")


def test_reachable(monkeypatch) -> None:
    import socket

    seen: list[tuple] = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout):
        seen.append((address, timeout))
        if address[0] == "down":
            raise OSError("refused")
        return Connection()

    monkeypatch.setattr(socket, "create_connection", connect)
    assert hub_cache._reachable("https://hub.example") is True
    assert hub_cache._reachable("http://hub.example") is True
    assert hub_cache._reachable("http://hub.example:8080/x", timeout=1.5) is True
    assert hub_cache._reachable("http://down") is False
    assert hub_cache._reachable("no-scheme") is False and hub_cache._reachable("") is False
    assert seen == [(("hub.example", 443), 5.0), (("hub.example", 80), 5.0), (("hub.example", 8080), 1.5),
                    (("down", 80), 5.0)]


# -- hub: the commit and the listing -----------------------------------------------------------------

def test_git_blob_sha1(tmp_path: Path) -> None:
    for data in (b"", b"x", b"hello\n" * 1000):
        (tmp_path / "f").write_bytes(data)
        assert hub.git_blob_sha1(tmp_path / "f") == git_sha1(tmp_path / "f")


def test_check_commit() -> None:
    assert hub._check_commit(COMMIT, "org/m", None, "http://e") == COMMIT
    assert hub._check_commit(COMMIT, "org/m", "main", "http://e") == COMMIT
    assert hub._check_commit(COMMIT, "org/m", COMMIT, "http://e") == COMMIT
    for sha, revision in (("", None), (None, "v1")):
        with pytest.raises(InputError) as caught:
            hub._check_commit(sha, "org/m", revision, "http://e")
        assert message(caught) == f"http://e did not say which commit org/m@{revision or 'main'} is"
        assert not isinstance(caught.value, UnsafeContentError)
    for sha in (COMMIT.upper(), COMMIT[:39], COMMIT + "0", 12345, "../" + COMMIT[3:]):
        with pytest.raises(UnsafeContentError) as caught:
            hub._check_commit(sha, "org/m", "v1", "http://e")
        assert message(caught) == (f"http://e answered {hub.quoted(sha)} as the commit of org/m@v1, not a 40-hex "
                                   f"commit id; refused")
    with pytest.raises(UnsafeContentError) as caught:
        hub._check_commit("bad", "org/m", None, "http://e")
    assert message(caught) == "http://e answered 'bad' as the commit of org/m@main, not a 40-hex commit id; refused"
    with pytest.raises(UnsafeContentError) as caught:
        hub._check_commit(OTHER, "org/m", COMMIT, "http://e")
    assert message(caught) == f"asked http://e for commit {COMMIT} of org/m, it answered with commit {OTHER}; refused"


def entry(path="a.bin", size=3, blob_id=COMMIT, lfs=None):
    return SimpleNamespace(path=path, size=size, blob_id=blob_id, lfs=lfs)


def test_remote_file() -> None:
    digest = "ab" * 32
    assert hub._remote_file(entry(), "http://e") == RemoteFile("a.bin", 3, None, COMMIT)
    assert hub._remote_file(entry(size=0, lfs=SimpleNamespace(sha256=digest)), "http://e") == RemoteFile(
        "a.bin", 0, digest, COMMIT)
    where = "the file listing from http://e: 'a.bin'"
    for size in (-1, None, True, 3.0, "3"):
        with pytest.raises(UnsafeContentError) as caught:
            hub._remote_file(entry(size=size), "http://e")
        assert message(caught) == f"{where} has no valid size ({hub.quoted(size)}); refused"
    for blob in (None, COMMIT.upper(), COMMIT[:39], 7):
        with pytest.raises(UnsafeContentError) as caught:
            hub._remote_file(entry(blob_id=blob), "http://e")
        assert message(caught) == f"{where} has no valid git blob id ({hub.quoted(blob)}); refused"
    for sha in (None, digest.upper(), digest[:63], 5):
        with pytest.raises(UnsafeContentError) as caught:
            hub._remote_file(entry(lfs=SimpleNamespace(sha256=sha)), "http://e")
        assert message(caught) == f"{where} is an LFS file without a valid sha256 ({hub.quoted(sha)}); refused"


# -- hub: each file before it is kept ----------------------------------------------------------------

def test_digests_and_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"content\n")
    blob, full = git_sha1(path), sha256(b"content\n")
    small = RemoteFile("f", 8, None, blob)
    lfs = RemoteFile("f", 8, full, blob)
    cancel = threading.Event()
    assert hub._digests(path, small, cancel) == {"sha256": full, "git-sha1": blob}
    assert hub._digests(path, lfs, cancel) == {"sha256": full}
    assert hub._mismatch(small, {"sha256": full, "git-sha1": blob}) is None
    assert hub._mismatch(lfs, {"sha256": full}) is None
    assert hub._mismatch(small, {"sha256": full, "git-sha1": "0" * 40}) == ("git blob sha1", blob, "0" * 40)
    assert hub._mismatch(lfs, {"sha256": "1" * 64, "git-sha1": blob}) == ("sha256", full, "1" * 64)
    assert hub._mismatch(RemoteFile("f", 8, None, None), {"sha256": full, "git-sha1": ""}) == ("git blob sha1", "", "")
    assert hub._mismatch(RemoteFile("f", 8, "", ""), {"sha256": "", "git-sha1": ""}) == ("git blob sha1", "", "")
    cancel.set()
    with pytest.raises(hub.Cancelled) as caught:
        hub._digests(path, small, cancel)
    assert str(caught.value) == str(path)  # what was being hashed when it stopped


def test_hash_regular_never_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert hub._hash_regular(tmp_path / "real", ("sha256",)) == {"sha256": sha256(b"x")}
    with pytest.raises(UnsafeContentError) as caught:
        hub._hash_regular(tmp_path / "link", ("sha256",))
    assert message(caught) == f"{tmp_path / 'link'} is a symbolic link; refusing to follow it (remove it first)"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafeContentError) as caught:
        hub._hash_regular(tmp_path / "fifo", ("sha256",))
    assert "is not a regular file" in message(caught)


def placement(tmp_path: Path, data: bytes, lfs: bool = True) -> Placement:
    final = tmp_path / "out" / "w.bin"
    final.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "partial").mkdir(exist_ok=True)
    (tmp_path / "x").write_bytes(data)
    remote = RemoteFile("w.bin", len(data), sha256(data) if lfs else None, git_sha1(tmp_path / "x"))
    return Placement(remote, tmp_path, final, tmp_path / "partial" / "w.bin.incomplete")


def test_present_keeps_only_the_listed_file(tmp_path: Path, monkeypatch) -> None:
    for lfs in (True, False):
        p = placement(tmp_path, b"listed bytes", lfs)
        cancel = threading.Event()
        assert hub._present(p, cancel) is None  # nothing there
        p.final.write_bytes(b"listed bytes")
        assert hub._present(p, cancel) == hub._digests(p.final, p.remote, cancel) and p.final.exists()
        p.final.write_bytes(b"listed byteX")  # same size, other bytes: removed
        assert hub._present(p, cancel) is None and not p.final.exists()
    hashed: list[Path] = []
    monkeypatch.setattr(hub, "_digests", lambda path, remote, cancel: hashed.append(path) or {})
    p.final.write_bytes(b"other size")  # removed without being read
    assert hub._present(p, threading.Event()) is None and not p.final.exists() and hashed == []


def test_present_refuses_what_is_no_file(tmp_path: Path) -> None:
    p = placement(tmp_path, b"listed bytes")
    p.final.mkdir()
    with pytest.raises(InputError) as caught:
        hub._present(p, threading.Event())
    assert message(caught) == f"{p.final} is a folder where 'w.bin' goes; refused"
    assert not isinstance(caught.value, UnsafeContentError)
    p.final.rmdir()
    (tmp_path / "target").write_bytes(b"listed bytes")
    p.final.symlink_to(tmp_path / "target")
    with pytest.raises(UnsafeContentError) as caught:
        hub._present(p, threading.Event())
    assert message(caught) == (f"{p.final} is a symbolic link or special file where 'w.bin' goes; refusing to use "
                               f"it (remove it first)")
    assert (tmp_path / "target").read_bytes() == b"listed bytes" and p.final.is_symlink()


def fake_transfer(monkeypatch, p: Placement, downloads: list[bytes], resumed: bool, adopted: int = 5) -> SimpleNamespace:
    transfer = SimpleNamespace(on_disk=[None], notes=[], cancel=threading.Event(), downloads=0)
    monkeypatch.setattr(hub, "_adopt", lambda placement: adopted if resumed else 0)
    monkeypatch.setattr(hub, "_partial_size", lambda placement: adopted if resumed else 0)

    def download(placement, index, t):
        assert placement is p and index == 0 and t is transfer
        placement.partial.write_bytes(downloads[transfer.downloads])
        transfer.downloads += 1

    monkeypatch.setattr(hub, "_download", download)
    return transfer


def test_download_verified(tmp_path: Path, monkeypatch) -> None:
    good = b"the listed bytes"
    p = placement(tmp_path, good)
    transfer = fake_transfer(monkeypatch, p, [good], resumed=False)
    assert hub._download_verified(p, 0, transfer) == {"sha256": sha256(good)}
    assert transfer.downloads == 1 and transfer.notes == [] and transfer.on_disk == [0]
    assert p.partial.read_bytes() == good

    transfer = fake_transfer(monkeypatch, p, [b"a resumed mixup", good], resumed=True)  # resumed: once more
    assert hub._download_verified(p, 0, transfer) == {"sha256": sha256(good)}
    assert transfer.downloads == 2 and transfer.on_disk == [5]
    assert transfer.notes == ["w.bin: the download resumed from an earlier run did not match; downloading it again "
                              "from the start"]


@pytest.mark.parametrize("resumed", [False, True])
def test_a_download_that_does_not_match_is_removed(tmp_path: Path, monkeypatch, resumed: bool) -> None:
    good, bad = b"the listed bytes", b"the lying bytes!"
    p = placement(tmp_path, good, lfs=not resumed)
    transfer = fake_transfer(monkeypatch, p, [bad, bad], resumed=resumed)
    with pytest.raises(VerificationError) as caught:
        hub._download_verified(p, 0, transfer)
    kind, expected, actual = (("git blob sha1", p.remote.blob_sha1, hashlib.sha1(b"blob 16\0" + bad).hexdigest())
                              if resumed else ("sha256", sha256(good), sha256(bad)))
    assert message(caught) == f"w.bin: {kind} mismatch (expected {expected}, got {actual}); the file was removed"
    assert not p.partial.exists() and transfer.downloads == (2 if resumed else 1)


# -- hub: the release check ------------------------------------------------------------------------

def manifest(files: dict[str, bytes | None]) -> Manifest:
    return Manifest("rel", "Rel", {path: FileEntry(path, len(data) if data is not None else 1,
                                                   sha256(data) if data is not None else None)
                                   for path, data in files.items()}, True)


def test_release_files_and_check(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a").write_bytes(b"A")
    (out / "sub" / "b").write_bytes(b"B")
    (out / "nohash").write_bytes(b"N")
    m = manifest({"a": b"A", "sub/b": b"B", "missing": b"M", "nohash": None})
    assert hub._release_files(out, m, False) == {"a": out / "a", "sub/b": out / "sub" / "b"}
    assert hub._check_manifest(out, m, {}, False) == 2
    jobs: list[dict] = []
    real_hash_all = hub._hash_all
    monkeypatch.setattr(hub, "_hash_all", lambda j: jobs.append(dict(j)) or real_hash_all(j))
    assert hub._check_manifest(out, m, {"a": sha256(b"A")}, False) == 2
    assert jobs == [{"sub/b": out / "sub" / "b"}]  # what was hashed while fetching is not read again
    with pytest.raises(VerificationError) as caught:
        hub._check_manifest(out, m, {"a": sha256(b"other")}, False)
    assert message(caught) == (f"a: sha256 does not match rel (expected {sha256(b'A')}, got {sha256(b'other')}); "
                               f"the file was removed")
    assert not (out / "a").exists() and (out / "sub" / "b").exists()
    (out / "sub" / "b").write_bytes(b"X")
    with pytest.raises(VerificationError) as caught:
        hub._check_manifest(out, m, {}, False)
    assert message(caught).startswith(f"sub/b: sha256 does not match rel (expected {sha256(b'B')}, got {sha256(b'X')})")
    assert not (out / "sub" / "b").exists()


@pytest.mark.parametrize("kind", ["folder", "link", "fifo"])
def test_release_files_refuse_what_is_no_file(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "target").write_bytes(b"A")
    {"folder": lambda p: p.mkdir(), "link": lambda p: p.symlink_to(tmp_path / "target"),
     "fifo": lambda p: os.mkfifo(p)}[kind](out / "a")
    words = {"folder": "a folder", "link": "a symbolic link", "fifo": "a special file"}[kind]
    with pytest.raises(UnsafeContentError) as caught:
        hub._release_files(out, manifest({"a": b"A"}), False)
    assert message(caught) == (f"{out / 'a'} is {words} where rel has 'a'; refusing the check against rel through "
                               f"it (remove it)")
    assert (tmp_path / "target").read_bytes() == b"A"


def test_release_files_refuse_a_linked_folder_on_the_way(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b").write_bytes(b"B")
    (out / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeContentError) as caught:
        hub._release_files(out, manifest({"sub/b": b"B"}), False)
    assert "the check against rel" in message(caught)
    (out / "x").mkdir()
    (out / "x" / "sub").symlink_to(tmp_path / "elsewhere")  # a link deeper on the way
    with pytest.raises(UnsafeContentError) as caught:
        hub._release_files(out, manifest({"x/sub/b": b"B"}), False)
    assert "the check against rel" in message(caught) and "x/sub" in message(caught)


def cache_repo(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "models--org--m"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    return repo, snapshot


def test_release_files_in_the_hf_cache(tmp_path: Path) -> None:
    repo, snapshot = cache_repo(tmp_path)
    blob = repo / "blobs" / sha256(b"A")
    blob.write_bytes(b"A")
    (snapshot / "a").symlink_to(os.path.relpath(blob, snapshot))
    (snapshot / "c").write_bytes(b"C")
    (snapshot / "sub").mkdir()
    (snapshot / "sub" / "a").symlink_to(os.path.relpath(blob, snapshot / "sub"))  # a file's own link: fine
    assert hub._release_files(snapshot, manifest({"a": b"A", "c": b"C", "sub/a": b"A"}), True) == {
        "a": blob, "c": snapshot / "c", "sub/a": blob}
    m = manifest({"a": b"A", "c": b"C"})
    assert hub._release_files(snapshot, m, True) == {"a": blob, "c": snapshot / "c"}
    with pytest.raises(UnsafeContentError):  # in OUT a link is never read, wherever it leads
        hub._release_files(snapshot, m, False)
    (tmp_path / "outside").write_bytes(b"A")
    (snapshot / "a").unlink()
    (snapshot / "a").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeContentError) as caught:
        hub._release_files(snapshot, m, True)
    assert message(caught) == (f"{snapshot / 'a'} is a symbolic link not into this repo's blobs/ where rel has 'a'; "
                               f"refusing the check against rel through it (remove it)")


def test_a_mismatch_in_the_hf_cache_removes_the_link_and_its_own_blob(tmp_path: Path) -> None:
    repo, snapshot = cache_repo(tmp_path)
    blob = repo / "blobs" / "b1"
    blob.write_bytes(b"X")
    (snapshot / "a").symlink_to(blob)
    with pytest.raises(VerificationError):
        hub._check_manifest(snapshot, manifest({"a": b"A"}), {}, True)
    assert not os.path.lexists(snapshot / "a") and not blob.exists()


def test_own_blob_and_discard(tmp_path: Path) -> None:
    repo, snapshot = cache_repo(tmp_path)
    blob = repo / "blobs" / "b1"
    blob.write_bytes(b"X")
    assert hub._own_blob(snapshot, blob) is True
    (repo / "other").mkdir()
    (repo / "other" / "b2").write_bytes(b"Y")
    assert hub._own_blob(snapshot, repo / "other" / "b2") is False
    (repo / "blobs" / "sub").mkdir()
    (repo / "blobs" / "sub" / "b3").write_bytes(b"Z")
    assert hub._own_blob(snapshot, repo / "blobs" / "sub" / "b3") is False
    (repo / "blobs" / "link").symlink_to(repo / "other" / "b2")
    assert hub._own_blob(snapshot, repo / "blobs" / "link") is False
    assert hub._own_blob(snapshot, repo / "blobs" / "absent") is False
    (repo / "blobs" / "dir").mkdir()
    assert hub._own_blob(snapshot, repo / "blobs" / "dir") is False

    (snapshot / "a").symlink_to(repo / "other" / "b2")
    hub._discard(snapshot, snapshot / "a", repo / "other" / "b2")  # not a blob of this repo: only the name goes
    assert not os.path.lexists(snapshot / "a") and (repo / "other" / "b2").exists()
    (snapshot / "a").symlink_to(blob)
    hub._discard(snapshot, snapshot / "a", blob)
    assert not os.path.lexists(snapshot / "a") and not blob.exists()
    (snapshot / "c").write_bytes(b"C")
    hub._discard(snapshot, snapshot / "c", snapshot / "c")
    hub._discard(snapshot, snapshot / "c", snapshot / "c")  # already gone: no error
    assert not (snapshot / "c").exists()


def test_hash_all(tmp_path: Path, monkeypatch) -> None:
    files = {name: tmp_path / name for name in ("e", "a", "b", "c")}  # names in the opposite order of sizes
    for size, path in zip((0, 1, 50, 900), files.values()):
        path.write_bytes(bytes([size % 256]) * size)
    assert hub._hash_all({}) == {}
    assert hub._hash_all(files) == {n: sha256(p.read_bytes()) for n, p in files.items()}
    order: list[str] = []
    real = hub._hash_regular

    def record(path, algorithms, cancel):
        assert algorithms == ("sha256",)
        order.append(path.name)
        return real(path, algorithms, cancel)

    monkeypatch.setattr(hub, "_hash_regular", record)
    monkeypatch.setattr(hub.os, "cpu_count", lambda: None)  # unknown: one worker, so the order shows
    hub._hash_all(files)
    assert order == ["c", "b", "a", "e"]  # largest first


def test_hash_all_stops_the_others_at_the_first_failure(tmp_path: Path, monkeypatch) -> None:
    files = {name: tmp_path / name for name in ("a", "b", "c")}
    for size, path in zip((30, 20, 10), files.values()):
        path.write_bytes(b"x" * size)
    events: list[threading.Event] = []

    def hash_regular(path, algorithms, cancel):
        events.append(cancel)
        if path.name == "a":
            raise OSError("unreadable")
        return {"sha256": "0"}

    monkeypatch.setattr(hub, "_hash_regular", hash_regular)
    with pytest.raises(OSError):
        hub._hash_all(files)
    assert events and all(e is events[0] for e in events) and events[0].is_set()  # the others stop reading


def test_verify_cached_checks_the_revision_asked(hf_cache: Path, monkeypatch) -> None:
    repo = hf_cache / "models--org--m"
    (repo / "snapshots" / OTHER).mkdir()
    (repo / "refs" / "v1").write_text(OTHER)
    calls = fake_verify(monkeypatch, ["ok"])
    hubs = fake_hub(monkeypatch, None)
    outcome = hub_cache.verify_cached("org/m", "v1", None)
    assert outcome["commit"] == OTHER and calls[0][0] == repo / "snapshots" / OTHER
    assert hubs[0][1] == OTHER


def test_hub_check_endpoint_keeps_its_last_letter(api, tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / COMMIT
    assert hub_cache._hub_check("org/m", COMMIT, snapshot, "http://hubX//")["endpoint"] == "http://hubX"


def test_hub_check_httpx_errors_mean_offline(api, tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / COMMIT

    class ConnectTimeout(Exception):  # what httpx raises is no OSError: recognised by its module
        pass

    ConnectTimeout.__module__ = "httpx._exceptions"
    api.raises = ConnectTimeout("timed out")
    assert hub_cache._hub_check("org/m", COMMIT, snapshot, "http://e") is None


def test_hash_all_workers(tmp_path: Path, monkeypatch) -> None:
    import time

    files = {name: tmp_path / name for name in ("a", "b", "c")}
    for path in files.values():
        path.write_bytes(b"x")
    threads: set[str] = set()

    def hash_regular(path, algorithms, cancel):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # busy: another queued file needs another worker, if there is one
        return {"sha256": "0"}

    monkeypatch.setattr(hub, "_hash_regular", hash_regular)
    monkeypatch.setattr(hub.os, "cpu_count", lambda: None)
    hub._hash_all(files)
    assert len(threads) == 1  # the CPU count unknown: one worker
    threads.clear()
    monkeypatch.setattr(hub.os, "cpu_count", lambda: 2)
    hub._hash_all(files)
    assert len(threads) == 2  # at most one per CPU


def test_discard_of_a_blob_gone_meanwhile(tmp_path: Path, monkeypatch) -> None:
    repo, snapshot = cache_repo(tmp_path)
    (snapshot / "a").symlink_to(repo / "blobs" / "gone")
    monkeypatch.setattr(hub, "_own_blob", lambda folder, real: True)  # it was there when checked
    hub._discard(snapshot, snapshot / "a", repo / "blobs" / "gone")
    assert not os.path.lexists(snapshot / "a")


def test_hash_all_waits_for_the_others_before_raising(tmp_path: Path, monkeypatch) -> None:
    import time

    events: list[str] = []

    def hash_regular(path, algorithms, cancel):
        if path.name == "bad":
            time.sleep(0.1)
            raise OSError("boom")
        for _ in range(100):
            if cancel.is_set():
                time.sleep(0.02)
                events.append("slow stopped")
                raise hub.Cancelled(str(path))
            time.sleep(0.05)
        events.append("slow finished")
        return {"sha256": "0"}

    monkeypatch.setattr(hub, "_hash_regular", hash_regular)
    monkeypatch.setattr(hub.os, "cpu_count", lambda: 2)
    (tmp_path / "bad").write_bytes(b"x" * 100)
    (tmp_path / "slow").write_bytes(b"x")
    with pytest.raises(OSError, match="boom"):
        hub._hash_all({"bad": tmp_path / "bad", "slow": tmp_path / "slow"})
    assert events == ["slow stopped"]  # waited for: no thread still reading once the error is raised


def test_hash_all_never_starts_files_queued_behind_an_error(tmp_path: Path, monkeypatch) -> None:
    started: list[str] = []

    def hash_regular(path, algorithms, cancel):
        started.append(path.name)
        if path.name == "bad":
            raise OSError("boom")
        return {"sha256": "0"}

    monkeypatch.setattr(hub, "_hash_regular", hash_regular)
    monkeypatch.setattr(hub.os, "cpu_count", lambda: 1)
    jobs = {name: tmp_path / name for name in ("bad", "q1", "q2")}
    for size, path in zip((100, 2, 1), jobs.values()):
        path.write_bytes(b"x" * size)
    with pytest.raises(OSError):
        hub._hash_all(jobs)
    assert started == ["bad"]


def test_one_byte_from_an_earlier_run_is_a_resumed_download(tmp_path: Path, monkeypatch) -> None:
    good = b"the listed bytes"
    p = placement(tmp_path, good)
    transfer = fake_transfer(monkeypatch, p, [b"a resumed mixup", good], resumed=True, adopted=1)
    assert hub._download_verified(p, 0, transfer) == {"sha256": sha256(good)}
    assert transfer.downloads == 2 and transfer.on_disk == [1]


def test_checking_a_download_stops_when_cancelled(tmp_path: Path, monkeypatch) -> None:
    p = placement(tmp_path, b"the listed bytes")
    transfer = fake_transfer(monkeypatch, p, [b"the listed bytes"], resumed=False)
    transfer.cancel.set()  # Ctrl-C while the file was downloading: its check does not start
    with pytest.raises(hub.Cancelled):
        hub._download_verified(p, 0, transfer)


def test_checks_of_files_on_disk_stop_when_cancelled(tmp_path: Path, monkeypatch) -> None:
    p = placement(tmp_path, b"listed bytes")
    p.final.write_bytes(b"listed bytes")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(hub.Cancelled):
        hub._present(p, cancel)  # the file already there is not hashed to the end once stopped
    good = b"the listed bytes"
    p = placement(tmp_path, good)
    transfer = fake_transfer(monkeypatch, p, [b"a resumed mixup", good], resumed=True)
    real_download = hub._download

    def download(placement, index, t):
        real_download(placement, index, t)
        if t.downloads == 2:
            t.cancel.set()  # stopped during the second download: its check does not start

    monkeypatch.setattr(hub, "_download", download)
    with pytest.raises(hub.Cancelled):
        hub._download_verified(p, 0, transfer)
