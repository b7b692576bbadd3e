"""mdist.verify.hashing and mdist.verify.folder, in process: every verdict `verify` can give, at its edges.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_verify.py shows the
verdicts through the CLI; these pin each condition so that a weakened one fails a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from conftest import FIXTURE
from mdist import derived
from mdist.errors import InputError
from mdist.verify import folder as vf
from mdist.verify import hashing
from mdist.verify.manifest import FileEntry, Manifest, find_manifest

TINY = find_manifest("tiny-mistral")


@pytest.fixture(autouse=True)
def private_key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --- hashing ------------------------------------------------------------------------------------------------

def test_chunk_and_names() -> None:
    assert hashing.CHUNK == 4 * 1024 * 1024
    assert hashing.GIT_SHA1 == "git-sha1"


@pytest.mark.parametrize("size", [0, 1, hashing.CHUNK - 1, hashing.CHUNK, hashing.CHUNK + 1, 2 * hashing.CHUNK + 5])
def test_hash_file_reads_once_for_every_algorithm(tmp_path: Path, size: int) -> None:
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    path = write(tmp_path / "f", data)
    seen: list[int] = []
    result = hashing.hash_file(path, ("sha256", "md5", "git-sha1", "sha1"), on_bytes=seen.append)
    assert result == {"sha256": sha256(data), "md5": md5(data), "git-sha1": git_sha1(data),
                      "sha1": hashlib.sha1(data).hexdigest()}
    assert list(result) == ["sha256", "md5", "git-sha1", "sha1"]
    expected = [hashing.CHUNK] * (size // hashing.CHUNK) + ([size % hashing.CHUNK] if size % hashing.CHUNK else [])
    assert seen == expected
    assert hashing.hash_file(path) == {"sha256": sha256(data)}


def test_git_sha1_is_gits_blob_id(tmp_path: Path) -> None:
    path = write(tmp_path / "f", b"hello\n")
    assert hashing.hash_file(path, ("git-sha1",)) == {"git-sha1": "ce013625030ba8dba906f756967f9e9ca394464a"}


def test_hash_file_stops_when_cancelled(tmp_path: Path) -> None:
    path = write(tmp_path / "f", b"x" * (hashing.CHUNK + 1))
    cancel = threading.Event()
    seen: list[int] = []

    def on_bytes(n: int) -> None:
        seen.append(n)
        cancel.set()

    with pytest.raises(hashing.Cancelled) as info:
        hashing.hash_file(path, ("sha256",), on_bytes, cancel)
    assert str(info.value) == str(path)
    assert seen == [hashing.CHUNK]
    assert hashing.hash_file(path, ("md5",), None, threading.Event()) == {"md5": md5(b"x" * (hashing.CHUNK + 1))}


def test_hash_files_largest_first_and_all_results(tmp_path: Path) -> None:
    small = write(tmp_path / "a", b"s" * 10)  # names in another order than sizes
    big = write(tmp_path / "b", b"b" * 1000)
    mid = write(tmp_path / "c", b"m" * 100)
    seen: list[int] = []
    result = hashing.hash_files({small: ("sha256",), big: ("md5",), mid: ("sha256", "md5")}, workers=1,
                                on_bytes=seen.append)
    assert seen == [1000, 100, 10]
    assert result == {big: {"md5": md5(b"b" * 1000)}, mid: {"sha256": sha256(b"m" * 100), "md5": md5(b"m" * 100)},
                      small: {"sha256": sha256(b"s" * 10)}}
    assert hashing.hash_files({small: ("sha256",)}) == {small: {"sha256": sha256(b"s" * 10)}}
    assert hashing.hash_files({}) == {}


def test_hash_files_uses_at_most_one_worker_per_file_and_core(tmp_path: Path, monkeypatch) -> None:
    made: list[int] = []
    original = hashing.ThreadPoolExecutor

    def pool(max_workers: int):
        made.append(max_workers)
        return original(max_workers=max_workers)

    monkeypatch.setattr(hashing, "ThreadPoolExecutor", pool)
    files = {write(tmp_path / f"f{i}", b"x" * i): ("sha256",) for i in range(5)}
    hashing.hash_files(dict(list(files.items())[:1]))
    hashing.hash_files(files)
    hashing.hash_files(files, workers=3)
    hashing.hash_files({})
    assert made == [1, min(5, os.cpu_count() or 1), 3, 1]
    monkeypatch.setattr(hashing.os, "cpu_count", lambda: None)  # unknown: one worker
    hashing.hash_files(files)
    assert made[-1] == 1


def test_an_error_in_one_file_cancels_the_others(tmp_path: Path, monkeypatch) -> None:
    big = write(tmp_path / "big", b"b" * (3 * hashing.CHUNK))
    events: list[threading.Event] = []
    original = hashing.hash_file

    def hash_file(path, algorithms, on_bytes, cancel, pieces=None):
        events.append(cancel)
        if path.name == "bad":
            raise OSError("boom")
        return original(path, algorithms, on_bytes, cancel)

    monkeypatch.setattr(hashing, "hash_file", hash_file)
    bad = write(tmp_path / "bad", b"x" * (4 * hashing.CHUNK))
    with pytest.raises(OSError, match="boom"):
        hashing.hash_files({bad: ("sha256",), big: ("sha256",)}, workers=1)
    assert events and all(e.is_set() for e in events)


def test_an_error_stops_the_other_workers_before_it_is_raised(tmp_path: Path, monkeypatch) -> None:
    import time

    events: list[str] = []

    def hash_file(path, algorithms, on_bytes, cancel, pieces=None):
        if path.name == "bad":
            time.sleep(0.1)
            raise OSError("boom")
        for _ in range(100):
            if cancel.is_set():
                time.sleep(0.02)
                events.append("slow stopped")
                raise hashing.Cancelled(str(path))
            time.sleep(0.05)
        events.append("slow finished")
        return {}

    monkeypatch.setattr(hashing, "hash_file", hash_file)
    bad = write(tmp_path / "bad", b"x" * 100)
    slow = write(tmp_path / "slow", b"x" * 10)
    with pytest.raises(OSError, match="boom"):
        hashing.hash_files({bad: ("sha256",), slow: ("sha256",)}, workers=2)
    assert events == ["slow stopped"]  # waited for: no thread still reading after the error


def test_files_queued_behind_an_error_are_never_started(tmp_path: Path, monkeypatch) -> None:
    started: list[str] = []

    def hash_file(path, algorithms, on_bytes, cancel, pieces=None):
        started.append(path.name)
        if path.name == "bad":
            raise OSError("boom")
        return {}

    monkeypatch.setattr(hashing, "hash_file", hash_file)
    jobs = {write(tmp_path / "bad", b"x" * 100): ("sha256",), write(tmp_path / "q1", b"x"): ("sha256",),
            write(tmp_path / "q2", b"x"): ("sha256",)}
    with pytest.raises(OSError):
        hashing.hash_files(jobs, workers=1)
    assert started == ["bad"]


def test_hash_files_passes_the_shared_cancel_event(tmp_path: Path, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(hashing, "hash_file", lambda path, algorithms, on_bytes, cancel, pieces=None: seen.append(cancel) or {})
    files = {write(tmp_path / f"f{i}", b"x"): ("sha256",) for i in range(3)}
    hashing.hash_files(files)
    assert len(seen) == 3 and all(isinstance(e, threading.Event) and not e.is_set() for e in seen)
    assert seen[0] is seen[1] is seen[2]


# --- reports ------------------------------------------------------------------------------------------------

def test_report_ok_fully_checked_counts_and_json() -> None:
    statuses = [vf.OK, vf.MISMATCH, vf.MISSING, vf.UNEXPECTED, vf.UNCHECKABLE, vf.REFUSED, vf.DERIVED]
    assert statuses == ["ok", "mismatch", "missing", "unexpected", "not checkable", "refused", "derived"]
    assert vf.FAILING == {"mismatch", "missing", "refused"}
    for status in statuses:
        report = vf.Report("m", True, [vf.FileResult("a", vf.OK), vf.FileResult("b", status)])
        assert report.ok == (status not in vf.FAILING)
        report.strict = True
        assert report.ok == (status in (vf.OK, vf.DERIVED))
        assert report.fully_checked == (status != vf.UNCHECKABLE)
    assert not vf.Report(None, True).ok
    assert vf.Report("m", False).ok
    report = vf.Report("m", True, [vf.FileResult("a", vf.OK), vf.FileResult("b", vf.OK),
                                   vf.FileResult("c", vf.MISSING)])
    assert report.counts() == {"ok": 2, "missing": 1}
    data = report.to_json()
    assert data["ok"] is False and data["fully_checked"] is True and data["counts"] == {"ok": 2, "missing": 1}
    assert data["files"][2] == {"path": "c", "status": "missing", "detail": "", "expected": None, "actual": None}
    assert data["manifest"] == "m" and data["identified"] is True and data["strict"] is False


def by_path(report: vf.Report) -> dict[str, vf.FileResult]:
    return {r.path: r for r in report.files}


def test_the_fixture_verifies_and_says_how(fixture_copy: Path) -> None:
    starts: list[int] = []
    seen: list[int] = []
    report = vf.verify_folder(fixture_copy, on_start=starts.append, on_bytes=seen.append)
    assert report.manifest == "tiny-mistral" and report.identified and report.ok and report.fully_checked
    assert [(r.path, r.status, r.detail) for r in report.files] == [
        ("consolidated.00.pth", "ok", "sha256"), ("params.json", "ok", "sha256"), ("tokenizer.model", "ok", "sha256")]
    entry = TINY.files["params.json"]
    assert by_path(report)["params.json"].expected == by_path(report)["params.json"].actual == entry.sha256
    total = sum(e.size for e in TINY.files.values())
    assert starts == [total] and sum(seen) == total
    assert report.not_checked == []
    given = vf.verify_folder(fixture_copy, TINY)
    assert given.ok and not given.identified


def manifest(files: dict[str, FileEntry], complete: bool = True) -> Manifest:
    return Manifest("m", "m", files, complete)


def test_every_verdict_on_listed_files(tmp_path: Path) -> None:
    good, other = b"good content", b"other content"
    folder = tmp_path / "f"
    for name in ["sha", "md5only", "both", "badsha", "badmd5", "short", "sizeonly", "bare", "json", "badjson",
                 "notjson", "jsonsha", "jsonbadsha"]:
        write(folder / name, good)
    write(folder / "json", b'{"a": [1, 2]}')
    write(folder / "badjson", b'{"a": [1, 3]}')
    write(folder / "jsonsha", b'{"a": 1}')
    write(folder / "jsonbadsha", b'{"a": 1}')
    n = len(good)
    m = manifest({
        "sha": FileEntry("sha", n, sha256(good)),
        "md5only": FileEntry("md5only", n, md5=md5(good)),
        "both": FileEntry("both", None, sha256(good), md5(good)),
        "badsha": FileEntry("badsha", n, sha256(other), md5(good)),
        "badmd5": FileEntry("badmd5", n, sha256(good), md5(other)),
        "short": FileEntry("short", n + 1, sha256(good)),
        "sizeonly": FileEntry("sizeonly", n),
        "bare": FileEntry("bare"),
        "json": FileEntry("json", json={"a": [1, 2]}),
        "badjson": FileEntry("badjson", json={"a": [1, 2]}),
        "notjson": FileEntry("notjson", json={"a": [1, 2]}),
        "jsonsha": FileEntry("jsonsha", 8, sha256(b'{"a": 1}'), json={"a": 1}),
        "jsonbadsha": FileEntry("jsonbadsha", 8, sha256(b'{"a":1}'), json={"a": 1}),
        "gone": FileEntry("gone", 3, sha256(b"abc")),
    })
    report = vf.verify_folder(folder, m)
    got = {r.path: (r.status, r.detail, r.expected, r.actual) for r in report.files}
    assert got == {
        "sha": ("ok", "sha256", sha256(good), sha256(good)),
        "md5only": ("ok", vf.MD5_ONLY, md5(good), md5(good)),
        "both": ("ok", "sha256", sha256(good), sha256(good)),
        "badsha": ("mismatch", "sha256 differs", sha256(other), sha256(good)),
        "badmd5": ("mismatch", "md5 differs", md5(other), md5(good)),
        "short": ("mismatch", f"size {n}, expected {n + 1}", str(n + 1), str(n)),
        "sizeonly": ("not checkable", "size matches; no published hash", None, None),
        "bare": ("not checkable", "no published size or hash", None, None),
        "json": ("ok", "JSON content (no published hash)", None, None),
        "badjson": ("mismatch", "JSON content differs from the published one", None, None),
        "notjson": ("mismatch", "not the published JSON content", None, None),
        "jsonsha": ("ok", "sha256", sha256(b'{"a": 1}'), sha256(b'{"a": 1}')),
        "jsonbadsha": ("mismatch", "sha256 differs", sha256(b'{"a":1}'), sha256(b'{"a": 1}')),
        "gone": ("missing", "", None, None),
    }
    assert [r.path for r in report.files] == sorted(got)
    assert report.not_checked == ["bare", "sizeonly"]
    assert not report.ok and not report.fully_checked


def test_only_files_with_a_published_hash_are_hashed(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "f"
    for name in ("sha", "md5", "size", "short", "json"):
        write(folder / name, b"12345")
    jobs_seen: list[dict] = []
    original = vf.hash_files

    def hash_files(jobs, on_bytes=None, pieces=None):
        jobs_seen.append(dict(jobs))
        return original(jobs, on_bytes=on_bytes)

    monkeypatch.setattr(vf, "hash_files", hash_files)
    starts: list[int] = []
    m = manifest({"sha": FileEntry("sha", 5, sha256(b"12345")), "md5": FileEntry("md5", None, None, md5(b"12345")),
                  "size": FileEntry("size", 5), "short": FileEntry("short", 4, sha256(b"1234")),
                  "json": FileEntry("json", json=12345)})
    report = vf.verify_folder(folder, m, on_start=starts.append)
    assert jobs_seen == [{folder / "sha": ("sha256",), folder / "md5": ("md5",)}]
    assert starts == [10]
    assert by_path(report)["json"].status == "ok"
    jobs_seen.clear()
    vf.verify_folder(folder, manifest({"size": FileEntry("size", 5)}))
    assert jobs_seen == []  # nothing to hash: not even started


def test_extra_files(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write(folder / "a", b"a")
    write(folder / "notes.txt", b"n")
    write(folder / "evil.safetensors", b"e")
    m = manifest({"a": FileEntry("a", 1, sha256(b"a"))})
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder, m).files}
    assert got["notes.txt"] == ("unexpected", "not part of the release")
    assert got["evil.safetensors"] == ("refused", "weights that are not part of m: mdist refuses to load this "
                                                  "folder while the file is here")
    loose = manifest(m.files, complete=False)
    assert {r.path: r.detail for r in vf.verify_folder(folder, loose).files}["notes.txt"] == "not listed in the manifest"
    report = vf.verify_folder(folder, m, strict=True)
    assert report.strict and not report.ok
    (folder / "evil.safetensors").unlink()
    assert vf.verify_folder(folder, m).ok
    assert not vf.verify_folder(folder, m, strict=True).ok


def test_derived_files_in_a_release(fixture_copy: Path, tmp_path: Path) -> None:
    folder = fixture_copy
    made = write(folder / "consolidated.safetensors", b"weights")
    note = write(folder / "made.json", b"{}")
    derived.record_derived(folder, [made, note], [folder / "consolidated.00.pth"])
    lone = write(tmp_path / "lone.pth", b"x")
    other = write(folder / "other.safetensors", b"o")
    other_note = write(folder / "other.json", b"{}")
    derived.record_derived(folder, [other, other_note], [lone])
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder).files}
    assert got["consolidated.safetensors"] == ("derived", "written by mdist here from the release's files "
                                                          "(not re-hashed)")
    assert got["made.json"][0] == "derived"
    elsewhere = f"from files in {tmp_path}, not in this folder (`mdist verify {tmp_path}` checks those)"
    assert got["other.safetensors"] == ("refused", f"written by mdist, but {elsewhere}")
    assert got["other.json"] == ("unexpected", f"written by mdist {elsewhere}")
    both = write(folder / "both.json", b"{}")  # made from a file here that is not the release's, and one elsewhere
    derived.record_derived(folder, [both], [lone, other])
    assert {r.path: r.detail for r in vf.verify_folder(folder).files}["both.json"] == (
        "written by mdist from files that are not part of this release")
    write(lone, b"changed")
    report = vf.verify_folder(folder)
    got = {r.path: (r.status, r.detail) for r in report.files}
    stale = ("stale", "derived by mdist, but it or its source changed since (a copy, an edit): never loaded; "
                      "`mdist run` converts again, `mdist convert --force` too")
    assert got["other.safetensors"] == got["other.json"] == stale
    assert report.ok  # never loaded, so not failing
    assert report.counts()["stale"] == 3  # other.safetensors, other.json, both.json


def test_derived_files_in_an_unknown_folder(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    source = write(folder / "w.pth", b"w")
    made = write(folder / "w.safetensors", b"s")
    derived.record_derived(folder, [made], [source])
    m = manifest({"w.pth": FileEntry("w.pth", 1, sha256(b"w"))})
    assert {r.path: r.status for r in vf.verify_folder(folder, m).files} == {"w.pth": "ok", "w.safetensors": "derived"}


def test_no_known_release_names_the_closest(fixture_copy: Path) -> None:
    (fixture_copy / "params.json").write_text("{}")
    report = vf.verify_folder(fixture_copy)
    assert report.manifest is None and not report.identified and report.files == [] and not report.ok
    assert report.closest == "tiny-mistral"
    assert report.differences == [f"params.json size 2, expected {TINY.files['params.json'].size}"]


def test_no_release_and_nothing_close(tmp_path: Path) -> None:
    write(tmp_path / "f" / "x", b"x")
    with pytest.raises(InputError) as info:
        vf.verify_folder(tmp_path / "f")
    assert str(info.value) == f"{tmp_path / 'f'} holds no model: no weight file and no file of a known release"
    write(tmp_path / "f" / "w.bin", b"w")  # weights, but of no known release
    report = vf.verify_folder(tmp_path / "f")
    assert (report.manifest, report.identified, report.closest, report.differences, report.files) == (
        None, False, None, [], [])


def test_odd_names_are_refused_unless_listed(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    names = {"a": b"a", "Notes.txt": b"1", "notes.TXT": b"2", "caf\u00e9": b"3", "cafe\u0301": b"4",
             "bad\x01name": b"5", "sub/x\x7fy": b"6", "plain": b"7"}
    for name, content in names.items():
        write(folder / name, content)
    m = manifest({"a": FileEntry("a", 1, sha256(b"a")), "plain": FileEntry("plain", 1, sha256(b"7"))})
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder, m).files}
    control = ("refused", "a name with a control character or invalid Unicode")
    assert got["bad\x01name"] == got["sub/x\x7fy"] == control
    assert got["Notes.txt"] == got["notes.TXT"] == ("refused", "differs from Notes.txt only by case or Unicode "
                                                               "normalisation")
    assert got["cafe\u0301"] == got["caf\u00e9"] == ("refused", "differs from cafe\u0301 only by case or Unicode "
                                                                 "normalisation")
    assert got["a"] == ("ok", "sha256") and got["plain"] == ("ok", "sha256")
    assert vf._odd_names({"a": 1, "b": 2, "A/b": 3}) == {}
    assert vf._odd_names({"x": 1, "X": 1, "x\x00": 1}) == {
        "X": "differs from X only by case or Unicode normalisation",
        "x": "differs from X only by case or Unicode normalisation",
        "x\x00": "a name with a control character or invalid Unicode"}


def test_a_listed_file_with_an_odd_twin_is_still_checked(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write(folder / "a", b"a")
    write(folder / "A", b"b")
    m = manifest({"a": FileEntry("a", 1, sha256(b"a"))})
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder, m).files}
    assert got == {"a": ("ok", "sha256"), "A": ("refused", "differs from A only by case or Unicode normalisation")}


def test_links_and_special_files_are_refused(fixture_copy: Path, tmp_path: Path) -> None:
    (fixture_copy / "link").symlink_to(fixture_copy / "params.json")
    os.mkfifo(fixture_copy / "fifo")
    report = vf.verify_folder(fixture_copy)
    got = by_path(report)
    assert got["link"].status == got["fifo"].status == "refused"
    assert got["link"].detail == ("symbolic link, FIFO, device, or a plain file inside an HF cache snapshot: "
                                  "never followed or read")
    assert not report.ok


SHA_CONTENT = b"weights in the cache"
SMALL = b'{"small": true}'


def snapshot(tmp_path: Path) -> Path:
    repo = tmp_path / "models--owner--name"
    blobs = repo / "blobs"
    write(blobs / sha256(SHA_CONTENT), SHA_CONTENT)
    write(blobs / git_sha1(SMALL), SMALL)
    snap = repo / "snapshots" / ("1" * 40)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(f"../../blobs/{sha256(SHA_CONTENT)}")
    (snap / "config.json").symlink_to(f"../../blobs/{git_sha1(SMALL)}")
    return snap


def test_a_cache_snapshot_verifies_by_blob_names(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    report = vf.verify_folder(snap)
    assert report.manifest == "hf-cache models--owner--name" and not report.identified and report.ok
    got = {r.path: (r.status, r.detail, r.expected, r.actual) for r in report.files}
    assert got == {
        "config.json": ("ok", "git-sha1 equals its blob name (content-addressed cache)", git_sha1(SMALL),
                        git_sha1(SMALL)),
        "model.safetensors": ("ok", "sha256 equals its blob name (content-addressed cache)", sha256(SHA_CONTENT),
                              sha256(SHA_CONTENT)),
    }


def test_a_cache_blob_that_does_not_match_its_name(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    blobs = snap.parent.parent / "blobs"
    write(blobs / sha256(SHA_CONTENT), b"tampered")
    write(blobs / git_sha1(SMALL), b"tampered")
    report = vf.verify_folder(snap)
    got = {r.path: (r.status, r.detail, r.expected, r.actual) for r in report.files}
    assert got == {
        "config.json": ("mismatch", "content differs from its blob name (git-sha1)", git_sha1(SMALL),
                        git_sha1(b"tampered")),
        "model.safetensors": ("mismatch", "content differs from its blob name (sha256)", sha256(SHA_CONTENT),
                              sha256(b"tampered")),
    }
    assert not report.ok


def test_a_cache_snapshot_against_a_manifest_checks_both(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    m = manifest({"model.safetensors": FileEntry("model.safetensors", len(SHA_CONTENT), sha256(SHA_CONTENT),
                                                 md5(SHA_CONTENT)),
                  "config.json": FileEntry("config.json", len(SMALL), None, md5(b"other"))})
    jobs_seen = []
    original = vf.hash_files
    vf.hash_files = lambda jobs, on_bytes=None, pieces=None: jobs_seen.append(dict(jobs)) or original(jobs, on_bytes=on_bytes, pieces=pieces)
    try:
        report = vf.verify_folder(snap, m)
    finally:
        vf.hash_files = original
    assert jobs_seen == [{snap / "model.safetensors": ("sha256", "md5"), snap / "config.json": ("md5", "git-sha1")}]
    got = {r.path: (r.status, r.detail) for r in report.files}
    assert got == {"model.safetensors": ("ok", "sha256"), "config.json": ("mismatch", "md5 differs")}
    assert report.manifest == "m"


def test_judge_blob_keeps_other_verdicts(tmp_path: Path) -> None:
    result = vf.FileResult("a", vf.MISMATCH, "x")
    assert vf._judge_blob(result, None, {}) is result
    assert vf._judge_blob(result, "a" * 64, {"sha256": "a" * 64}) is result
    derived_result = vf.FileResult("a", vf.DERIVED)
    assert vf._judge_blob(derived_result, "b" * 40, {"git-sha1": "b" * 40}) is derived_result
    unexpected = vf.FileResult("a", vf.UNEXPECTED)
    assert vf._judge_blob(unexpected, "b" * 40, {"git-sha1": "b" * 40}).status == vf.OK
    uncheckable = vf.FileResult("a", vf.UNCHECKABLE)
    assert vf._judge_blob(uncheckable, "a" * 64, {"sha256": "a" * 64}).status == vf.OK
    assert vf._judge_blob(uncheckable, "a" * 64, {"git-sha1": "a" * 64}).status == vf.MISMATCH
    assert vf._judge_blob(uncheckable, "a" * 64, {}).actual is None


def test_judge_extra_without_a_manifest(tmp_path: Path) -> None:
    from mdist.model_folder import inspect_folder

    write(tmp_path / "f" / "x.bin", b"x")
    contents = inspect_folder(tmp_path / "f")
    assert vf._judge_extra("x.bin", None, contents) == vf.FileResult("x.bin", vf.UNEXPECTED, "no manifest")


def test_a_file_that_is_not_readable_json(tmp_path: Path) -> None:
    write(tmp_path / "a.json", b"\xff")
    result = vf._judge(tmp_path / "a.json", FileEntry("a.json", json=1), {})
    assert result == vf.FileResult("a.json", vf.MISMATCH, "not the published JSON content")
    with pytest.raises(InputError):
        from mdist.jsonio import read_json_file
        read_json_file(tmp_path / "a.json", "a.json")


def test_hash_fd_reads_an_open_file_and_closes_it(tmp_path: Path) -> None:
    path = write(tmp_path / "f", b"abc")
    fd = os.open(path, os.O_RDONLY)
    assert hashing.hash_fd(fd, ("md5",)) == {"md5": md5(b"abc")}
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(hashing.Cancelled) as info:
        hashing.hash_fd(os.open(path, os.O_RDONLY), cancel=cancel)
    assert str(info.value) == ""  # no label given
    with pytest.raises(hashing.Cancelled, match="^the label$"):
        hashing.hash_fd(os.open(path, os.O_RDONLY), cancel=cancel, label="the label")


def test_hash_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError):
        hashing.hash_file(tmp_path / "fifo")


def test_a_given_manifest_decides_what_counts_as_the_release(fixture_copy: Path) -> None:
    made = write(fixture_copy / "consolidated.safetensors", b"weights")
    derived.record_derived(fixture_copy, [made], [fixture_copy / "consolidated.00.pth"])
    assert by_path(vf.verify_folder(fixture_copy))["consolidated.safetensors"].status == "derived"
    params = TINY.files["params.json"]
    only_params = manifest({"params.json": params})  # the checkpoint is not part of this one
    got = by_path(vf.verify_folder(fixture_copy, only_params))["consolidated.safetensors"]
    assert (got.status, got.detail) == ("refused", "written by mdist, but from files that are not part of this "
                                                   "release")


def test_a_missing_or_wrong_sized_file_does_not_stop_the_others_being_hashed(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write(folder / "short", b"12")
    write(folder / "good", b"good")
    m = manifest({"gone": FileEntry("gone", 1, sha256(b"x")), "short": FileEntry("short", 3, sha256(b"123")),
                  "good": FileEntry("good", 4, sha256(b"good"))})
    got = {r.path: r.status for r in vf.verify_folder(folder, m).files}
    assert got == {"gone": "missing", "short": "mismatch", "good": "ok"}


# --- raw pieces and extraction records (8b6ffda and after) -------------------------------------------------

from mdist.verify.extracted import Extracted, write_record  # noqa: E402


def test_hash_file_of_pieces_hashes_their_concatenation(tmp_path: Path) -> None:
    parts = [b"a" * (hashing.CHUNK + 3), b"", b"bc", b"d" * 10]
    paths = [write(tmp_path / f"p{i}", data) for i, data in enumerate(parts)]
    whole = b"".join(parts)
    seen: list[int] = []
    assert hashing.hash_file(tmp_path / "joined", ("sha256", "md5", "git-sha1"), seen.append, None, paths) == {
        "sha256": sha256(whole), "md5": md5(whole), "git-sha1": git_sha1(whole)}  # git's header: the total size
    assert seen == [hashing.CHUNK, 3, 2, 10]
    assert hashing.hash_file(tmp_path / "p2", ("md5",), None, None, []) == {"md5": md5(b"bc")}  # no pieces: the file
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(hashing.Cancelled) as info:
        hashing.hash_file(tmp_path / "joined", ("sha256",), None, cancel, paths)
    assert str(info.value) == str(tmp_path / "joined")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(InputError):
        hashing.hash_file(tmp_path / "joined", ("sha256",), None, None, paths + [tmp_path / "missing"])
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError):
        hashing.hash_file(tmp_path / "joined", ("sha256",), None, None, paths + [tmp_path / "fifo"])
    with pytest.raises(hashing.Cancelled):
        hashing.hash_file(tmp_path / "joined", ("sha256",), None, cancel, paths)
    assert len(os.listdir("/proc/self/fd")) == before  # every piece opened was closed


def test_hash_files_with_pieces(tmp_path: Path) -> None:
    big = [write(tmp_path / "b0", b"x" * 600), write(tmp_path / "b1", b"y" * 600)]
    single = write(tmp_path / "s", b"z" * 1000)
    seen: list[int] = []
    joined = tmp_path / "b-split*"  # a path no file has
    result = hashing.hash_files({single: ("sha256",), joined: ("md5",)}, workers=1, on_bytes=seen.append,
                                pieces={joined: big})
    assert result == {joined: {"md5": md5(b"x" * 600 + b"y" * 600)}, single: {"sha256": sha256(b"z" * 1000)}}
    assert seen == [600, 600, 1000]  # the pieces (1200 bytes together) before the 1000-byte file


def piece_folder(tmp_path: Path, parts: list[bytes], *, joined: bytes | None = None) -> Path:
    folder = tmp_path / "f"
    for i, data in enumerate(parts):
        write(folder / f"consolidated.00.pth-split{i}", data)
    if joined is not None:
        write(folder / "consolidated.00.pth", joined)
    write(folder / "params.json", b"{}")
    return folder


def piece_manifest(whole: bytes, *, size: int | None = -1, sha: bool = True, md5_: bool = True) -> Manifest:
    return manifest({"consolidated.00.pth": FileEntry("consolidated.00.pth", len(whole) if size == -1 else size,
                                                      sha256(whole) if sha else None, md5(whole) if md5_ else None),
                     "params.json": FileEntry("params.json", 2, sha256(b"{}"))})


def test_verify_checks_pieces_as_the_file_they_join_into(tmp_path: Path) -> None:
    parts = [b"first part ", b"second ", b"third"]
    whole = b"".join(parts)
    folder = piece_folder(tmp_path, parts)
    starts: list[int] = []
    report = vf.verify_folder(folder, piece_manifest(whole), on_start=starts.append)
    assert starts == [len(whole) + 2]
    got = {r.path: (r.status, r.detail, r.expected, r.actual) for r in report.files}
    joined = ("ok", "sha256; of its 3 pieces joined (never written)", sha256(whole), sha256(whole))
    assert got == {"consolidated.00.pth": joined, "params.json": ("ok", "sha256", sha256(b"{}"), sha256(b"{}")),
                   **{f"consolidated.00.pth-split{i}": ("ok", f"piece {i} of consolidated.00.pth: {joined[1]}",
                                                        joined[2], joined[3]) for i in range(3)}}
    assert report.ok
    got = by_path(vf.verify_folder(folder, piece_manifest(whole, sha=False)))["consolidated.00.pth-split2"]
    assert (got.status, got.detail) == ("ok", f"piece 2 of consolidated.00.pth: {vf.MD5_ONLY}; of its 3 pieces "
                                              "joined (never written)")
    # in the wrong order: the hash differs
    swapped = piece_folder(tmp_path / "s", [parts[1], parts[0], parts[2]])
    report = vf.verify_folder(swapped, piece_manifest(whole))
    got = by_path(report)
    assert (got["consolidated.00.pth"].status, got["consolidated.00.pth"].detail) == (
        "mismatch", "sha256 differs; of its 3 pieces joined (never written)")
    assert got["consolidated.00.pth-split1"].status == "mismatch" and not report.ok
    report = vf.verify_folder(swapped, piece_manifest(whole, sha=False))
    assert by_path(report)["consolidated.00.pth"].detail == "md5 differs; of its 3 pieces joined (never written)"


def test_pieces_of_the_wrong_size_are_not_hashed(tmp_path: Path, monkeypatch) -> None:
    parts = [b"first part ", b"second ", b"third"]
    whole = b"".join(parts)
    folder = piece_folder(tmp_path, parts[:2] + [b"third!"])
    jobs_seen: list[dict] = []
    original = vf.hash_files
    monkeypatch.setattr(vf, "hash_files", lambda jobs, on_bytes=None, pieces=None: jobs_seen.append(
        (dict(jobs), dict(pieces or {}))) or original(jobs, on_bytes=on_bytes, pieces=pieces))
    report = vf.verify_folder(folder, piece_manifest(whole))
    detail = f"its 3 pieces join into {len(whole) + 1} bytes, expected {len(whole)}"
    got = {r.path: (r.status, r.detail, r.expected, r.actual) for r in report.files}
    assert got["consolidated.00.pth"] == ("mismatch", detail, str(len(whole)), str(len(whole) + 1))
    assert got["consolidated.00.pth-split0"] == ("mismatch", f"piece 0 of consolidated.00.pth: {detail}",
                                                 str(len(whole)), str(len(whole) + 1))
    assert jobs_seen == [({folder / "params.json": ("sha256",)}, {})]
    jobs_seen.clear()
    report = vf.verify_folder(folder, piece_manifest(whole, size=None))  # no size published: hashed
    assert by_path(report)["consolidated.00.pth"].detail == "sha256 differs; of its 3 pieces joined (never written)"
    key = folder / "consolidated.00.pth-split*"
    assert jobs_seen == [({key: ("sha256", "md5"), folder / "params.json": ("sha256",)},
                          {key: [folder / f"consolidated.00.pth-split{i}" for i in range(3)]})]


def test_a_joined_file_beside_its_pieces(tmp_path: Path) -> None:
    parts = [b"first part ", b"second "]
    whole = b"".join(parts)
    folder = piece_folder(tmp_path, parts, joined=whole)
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder, piece_manifest(whole)).files}
    assert got["consolidated.00.pth"] == ("ok", "sha256")  # judged on its own
    assert got["consolidated.00.pth-split1"] == (
        "refused", "consolidated.00.pth is here too: mdist will not guess which to read (piece 1 of "
                   "consolidated.00.pth: sha256; of its 2 pieces joined (never written))")
    folder = piece_folder(tmp_path / "w", parts[:1] + [b"second!"], joined=whole)
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder, piece_manifest(whole)).files}
    assert got["consolidated.00.pth"] == ("ok", "sha256")
    assert got["consolidated.00.pth-split0"][0] == "refused"


def test_pieces_of_an_unlisted_file_are_extra_files(tmp_path: Path) -> None:
    folder = piece_folder(tmp_path, [b"ab", b"cd"])
    m = manifest({"params.json": FileEntry("params.json", 2, sha256(b"{}"))})
    got = {r.path: r.status for r in vf.verify_folder(folder, m).files}
    assert got == {"params.json": "ok", "consolidated.00.pth-split0": "refused", "consolidated.00.pth-split1": "refused"}


def test_no_release_names_the_missing_piece(tmp_path: Path) -> None:
    folder = piece_folder(tmp_path, [b"ab", b"cd", b"ef"])
    (folder / "consolidated.00.pth-split1").unlink()
    report = vf.verify_folder(folder)
    assert report.manifest is None and "piece 1 of consolidated.00.pth is missing, after " \
        "consolidated.00.pth-split0: the pieces cannot be joined" in report.differences


def test_the_closest_release_is_judged_with_pieces_joined(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    shutil.copy(FIXTURE / "params.json", write(folder / "params.json", b"").parent / "params.json")
    size = TINY.files["consolidated.00.pth"].size
    write(folder / "consolidated.00.pth-split0", b"\0" * 100)
    write(folder / "consolidated.00.pth-split1", b"\0" * (size - 100 + 1))  # one byte too many: no release
    report = vf.verify_folder(folder)
    assert report.manifest is None and report.closest == "tiny-mistral"
    assert f"consolidated.00.pth size {size + 1}, expected {size}" in report.differences


def record(tmp_path: Path, files: dict[str, bytes], release: str | None = None) -> Extracted:
    return Extracted("https://example.org/dl/model.tar", "0" * 32, release,
                     {path: (len(data), sha256(data)) for path, data in files.items()})


def test_an_extraction_record_names_and_completes_the_release(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    files = {"consolidated.00.pth": b"weights", "params.json": b"{}", "notes.txt": b"n"}
    for path, data in files.items():
        write(folder / path, data)
    write_record(folder, record(tmp_path, files))
    report = vf.verify_folder(folder)  # no release: the record itself
    assert report.manifest == "extracted from model.tar" and report.ok
    assert {r.path: (r.status, r.detail) for r in report.files} == {
        path: ("ok", vf.RECORDED) for path in files}
    write(folder / "notes.txt", b"N")
    got = by_path(vf.verify_folder(folder))["notes.txt"]
    assert (got.status, got.detail) == ("mismatch", "sha256 differs from the one recorded at extraction")
    # a release listing md5 only: the recorded sha256 is checked, and says the md5 was published too
    m = manifest({"consolidated.00.pth": FileEntry("consolidated.00.pth", 7, None, md5(b"weights")),
                  "params.json": FileEntry("params.json", 2, sha256(b"{}")),
                  "other": FileEntry("other", 1, None, md5(b"o"))})
    got = {r.path: (r.status, r.detail) for r in vf.verify_folder(folder, m).files}
    assert got["consolidated.00.pth"] == ("ok", vf.RECORDED + " (and the published md5)")
    assert got["params.json"] == ("ok", "sha256")  # a published sha256 stands
    assert got["notes.txt"][0] == "unexpected"  # not listed: the record counts under its own release only
    assert got["other"] == ("missing", "")
    merged, recorded = vf._with_record(m, record(tmp_path, files))
    assert recorded == {"consolidated.00.pth"} and merged.files["consolidated.00.pth"] == FileEntry(
        "consolidated.00.pth", 7, sha256(b"weights"), md5(b"weights"), None)
    assert merged.files["params.json"] == m.files["params.json"]
    # a recorded size that differs from the published one: the published entry stands
    m2 = manifest({"consolidated.00.pth": FileEntry("consolidated.00.pth", 8, None, md5(b"weights"))})
    assert vf._with_record(m2, record(tmp_path, files)) == (m2, set())
    # under its own release, unlisted recorded files are the release's too
    own = Manifest("rel", "t", {"params.json": FileEntry("params.json", 2)}, True)
    merged, recorded = vf._with_record(own, record(tmp_path, files, release="rel"))
    assert recorded == set(files) and merged.files["notes.txt"] == FileEntry("notes.txt", 1, sha256(b"n"))
    labelled = Manifest("extracted from model.tar", "t", {}, True)
    assert vf._with_record(labelled, record(tmp_path, files))[1] == set(files)


def test_recorded_release(monkeypatch) -> None:
    assert vf._recorded_release(record(Path("."), {}, release="tiny-mistral")) == TINY
    own = vf._recorded_release(record(Path("."), {"a": b"a"}, release="no-such-release"))
    assert (own.name, own.title, own.files, own.files_complete) == (
        "extracted from model.tar", "extracted from model.tar", {}, True)
    assert vf._label(Extracted("https://x/a/b/c.tar.gz?x", "0" * 32, None, {})) == "extracted from c.tar.gz?x"
    assert vf._label(Extracted("c.tar", "0" * 32, None, {})) == "extracted from c.tar"


def test_a_derivation_whose_sources_are_gone(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    source = write(tmp_path / "src" / "consolidated.00.pth", b"source")
    made = write(folder / "consolidated.safetensors", b"made")
    derived.record_derived(folder, [made], [source])
    source.unlink()
    m = manifest({"params.json": FileEntry("params.json", 2)})
    write(folder / "params.json", b"{}")
    stale = ("stale", "derived by mdist, but it or its source changed since (a copy, an edit): never loaded; "
                      "`mdist run` converts again, `mdist convert --force` too")
    got = by_path(vf.verify_folder(folder, m))["consolidated.safetensors"]
    assert (got.status, got.detail) == stale  # a known release: stale, orphaned or not
    write(source, b"source")  # another file of that name: a source changed, not only deleted
    got = by_path(vf.verify_folder(folder, m))["consolidated.safetensors"]
    assert (got.status, got.detail) == stale


# --- fast-tier survivors at HEAD: a recorded verdict's values, stale derivations outside a release, records -----

def test_a_recorded_verdict_carries_both_values() -> None:
    sha = sha256(b"x")
    entry = FileEntry("a.bin", 1, sha, "m" * 32)
    result = vf._judge(Path("/nowhere/a.bin"), entry, {"sha256": sha, "md5": "m" * 32}, recorded=True)
    assert (result.path, result.status, result.detail, result.expected, result.actual) == (
        "a.bin", vf.OK, vf.RECORDED + " (and the published md5)", sha, sha)


def test_a_stale_derivation_outside_a_release(tmp_path: Path) -> None:
    """Stale and remakeable here (its source is in the folder): STALE, run converts again; stale and not
    remakeable (a copy, or its sources elsewhere changed): a file like any other, not checked."""
    from mdist import model_folder as mf

    def verdict(remakeable: frozenset) -> vf.FileResult:
        state = derived.DerivedState(frozenset(), frozenset({"x.safetensors"}), {}, remakeable=remakeable)
        contents = mf.FolderContents(tmp_path, {"x.safetensors": 1}, [], [], state, None)
        return vf._judge_extra("x.safetensors", None, contents)

    stale = verdict(frozenset({"x.safetensors"}))
    assert (stale.path, stale.status) == ("x.safetensors", vf.STALE)
    other = verdict(frozenset())
    assert (other.path, other.status, other.detail) == (
        "x.safetensors", vf.UNEXPECTED, "derived by mdist, then copied here or made from files that have changed or "
                                        "gone since: not checked")


def test_an_extraction_record_fills_every_entry_it_can() -> None:
    """Entries the record cannot vouch for (a published sha256, another size, unlisted under another
    release) are skipped, and the ones after them still filled; the published md5 and JSON stay."""
    from mdist.verify.extracted import Extracted

    listed = {"a": FileEntry("a", 1, sha256(b"a")), "b": FileEntry("b", 5), "c": FileEntry("c", 1, None, "m" * 32,
                                                                                             json={"k": 1})}
    record = Extracted("https://cdn/x.tar", "m" * 32, "other", {
        "a": (1, "1" * 64), "b": (2, "2" * 64), "z": (1, "9" * 64), "c": (1, "3" * 64)})
    merged, recorded = vf._with_record(manifest(listed), record)
    assert recorded == {"c"}
    assert merged.files["c"] == FileEntry("c", 1, "3" * 64, "m" * 32, json={"k": 1})
    assert merged.files["a"] == listed["a"] and merged.files["b"] == listed["b"] and "z" not in merged.files


def test_piece_verdicts_add_to_what_was_already_said(tmp_path: Path) -> None:
    """The pieces' verdicts (sizes wrong, or hashed) join the report: the refused link said before
    them, and a joined file beside its pieces, keep their own lines."""
    parts = [b"first part ", b"second ", b"third"]
    whole = b"".join(parts)
    for pieces in (parts[:2] + [b"third!"], parts):  # joined size wrong; right (hashed)
        folder = piece_folder(tmp_path / str(len(pieces[2])), pieces)
        (folder / "link").symlink_to(folder / "params.json")
        got = by_path(vf.verify_folder(folder, piece_manifest(whole)))
        assert got["link"].status == vf.REFUSED
        assert {"consolidated.00.pth", "consolidated.00.pth-split0", "consolidated.00.pth-split2"} <= set(got)
        write(folder / "consolidated.00.pth", whole)  # the joined file itself beside its pieces
        got = by_path(vf.verify_folder(folder, piece_manifest(whole)))
        assert got["consolidated.00.pth-split1"].status == vf.REFUSED and got["link"].status == vf.REFUSED


def test_pieces_listed_with_json_content_are_never_read_as_json(tmp_path: Path) -> None:
    """A manifest may give JSON content for any name; pieces are never joined on disk, so the joined
    name is not a file to parse: a mismatch, named, never an internal error."""
    parts = [b"first part ", b"second ", b"third"]
    whole = b"".join(parts)
    folder = piece_folder(tmp_path, parts)
    odd = manifest({"consolidated.00.pth": FileEntry("consolidated.00.pth", len(whole), sha256(whole), json={"a": 1}),
                    "params.json": FileEntry("params.json", 2, sha256(b"{}"))})
    result = by_path(vf.verify_folder(folder, odd))["consolidated.00.pth"]
    assert (result.status, result.detail) == (vf.MISMATCH, "not the published JSON content; of its 3 pieces joined "
                                                           "(never written)")


def test_files_derived_beside_an_extraction_record_are_judged_under_its_release(tmp_path: Path) -> None:
    """Once the record completes the release, that release decides what a derived file is: one made
    from a file elsewhere is not derived from it (the folder is inspected again with it)."""
    folder = tmp_path / "f"
    files = {"consolidated.00.pth": b"weights", "params.json": b"{}"}
    for path, data in files.items():
        write(folder / path, data)
    write_record(folder, record(tmp_path, files))
    elsewhere = write(tmp_path / "src" / "tokenizer.model", b"t")
    made = write(folder / "tokenizer.json", b"{}")
    derived.record_derived(folder, [made], [elsewhere])
    got = by_path(vf.verify_folder(folder))["tokenizer.json"]
    assert (got.status, got.detail) == (vf.UNEXPECTED, f"written by mdist from files in {tmp_path / 'src'}, not in "
                                                       f"this folder (`mdist verify {tmp_path / 'src'}` checks those)")
