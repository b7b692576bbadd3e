"""mdist fetch hf://… against a hub that lies: names, revisions, listings and bytes chosen by the
server (FakeHub in tests/hubmirror.py), and the options that must not be silently ignored."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURE, run_mdist
from hubmirror import FakeHub, fake_hub, folder_files, listing_entry
from mdist.convert import convert

REPO = "org/tiny-mistral"
COMMIT = hashlib.sha1(b"the commit").hexdigest()
SHARD = "model-00002-of-00002.safetensors"
REGISTRY = Path(__file__).resolve().parents[1] / "checksums" / "tiny-mistral-hf.json"


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> dict[str, bytes]:
    """The fixture in HF layout: the files of the known release tiny-mistral-hf."""
    folder = tmp_path_factory.mktemp("attacks") / "hf"
    convert(FIXTURE, folder, layout="hf")
    return folder_files(folder)


def fetch(*args: str, env: dict | None = None, as_json: bool = True) -> tuple[subprocess.CompletedProcess, dict | None]:
    result = run_mdist("fetch", *args, *(["--json"] if as_json else []), timeout=180, env=env)
    return result, json.loads(result.stdout) if result.returncode == 0 and as_json else None


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr
    return lines[0]


def release_manifest(tmp_path: Path, revision: str | None = None) -> Path:
    """tiny-mistral-hf (files_complete) with the test repo as its hub source."""
    manifest = json.loads(REGISTRY.read_text())
    manifest["sources"] = {"hub": {"repo": REPO, **({"revision": revision} if revision else {})}}
    path = tmp_path / "tiny-mistral-hf.json"
    path.write_text(json.dumps(manifest))
    return path


def tampered_shard(hf: dict[str, bytes]) -> bytes:
    """A valid second shard that overrides lm_head.weight with zeros (the runner loads model*.safetensors)."""
    header = json.loads(hf["model-00001-of-00001.safetensors"][8:8 + struct.unpack("<Q", hf[
        "model-00001-of-00001.safetensors"][:8])[0]])
    info = header["lm_head.weight"]
    size = info["data_offsets"][1] - info["data_offsets"][0]
    text = json.dumps({"lm_head.weight": {"dtype": info["dtype"], "shape": info["shape"],
                                          "data_offsets": [0, size]}}).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(size)


# 1. Revisions: the command line's, a manifest's, and the commit the server answers.

BAD_REVISIONS = ["../../../../escape", "a/../b", "-x", "/x", "x.lock", "x/", "x.", ".x", "a/.b", "a@{1}", "@",
                 "a~1", "a^", "a:b", "a?b", "a*b", "a[b", "a\\b", "a b", "a\x01b", "a//b", "a\x7fb"]


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_bad_revision_is_a_usage_error_before_any_request(hf, tmp_path: Path, revision: str) -> None:
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, _ = fetch(f"hf://{REPO}@{revision}", "--endpoint", hub.endpoint, "--out", str(tmp_path / "x"))
    line = one_line_error(result, 2)
    assert "revision" in line, line
    assert hub.requests == []


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "feature/x-y_z", COMMIT, "café"])
def test_good_revisions_parse(revision: str) -> None:
    from mdist.sources.resolve import parse_hub

    assert parse_hub(f"hf://{REPO}@{revision}") == (REPO, revision)


def test_revision_escaping_the_hf_cache_writes_nothing(hf, tmp_path: Path) -> None:
    """`@../../../../escape` once wrote the server's answer outside the cache (refs/<revision>)."""
    home = tmp_path / "home"
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, _ = fetch(f"hf://{REPO}@../../../../escape", "--endpoint", hub.endpoint, "--to-hf-cache",
                          env={"HF_HOME": str(home)})
    one_line_error(result, 2)
    assert not (tmp_path / "escape").exists() and not (home / "escape").exists()
    assert hub.requests == []


def test_revision_from_a_manifest_is_checked(hf, tmp_path: Path) -> None:
    path = release_manifest(tmp_path, revision="../../../../escape")
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, _ = fetch(str(path), "--endpoint", hub.endpoint, "--out", str(tmp_path / "x"))
    assert "revision" in one_line_error(result, 2)
    assert hub.requests == []


@pytest.mark.parametrize("sha", ["../../../../escape", "main", COMMIT.upper(), COMMIT[:39], COMMIT + "0"])
def test_server_commit_must_be_40_lowercase_hex(hf, tmp_path: Path, sha: str) -> None:
    home = tmp_path / "home"
    with fake_hub(FakeHub(REPO, COMMIT, hf, sha=sha)) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--to-hf-cache", env={"HF_HOME": str(home)})
    line = one_line_error(result, 1)
    assert "commit" in line, line
    assert hub.downloads() == []
    assert not (tmp_path / "escape").exists() and not (home / "escape").exists()


def test_pinned_commit_must_be_answered_with_itself(hf, tmp_path: Path) -> None:
    other = hashlib.sha1(b"another commit").hexdigest()
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, _ = fetch(f"hf://{REPO}@{other}", "--endpoint", hub.endpoint, "--out", str(tmp_path / "x"))
    line = one_line_error(result, 1)
    assert other in line and COMMIT in line, line
    assert hub.downloads() == []


def test_to_hf_cache_writes_the_ref_inside_the_cache(hf, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, payload = fetch(f"hf://{REPO}@refs/pr/1", "--endpoint", hub.endpoint, "--to-hf-cache",
                                env={"HF_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert (home / "hub" / "models--org--tiny-mistral" / "refs" / "refs" / "pr" / "1").read_text() == COMMIT
    assert payload["commit"] == COMMIT


def test_refs_folder_linked_outside_the_cache_is_refused(hf, tmp_path: Path) -> None:
    """The ref file's place is resolved and must stay inside the cache, before anything is fetched."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    storage = home / "hub" / "models--org--tiny-mistral"
    storage.mkdir(parents=True)
    elsewhere.mkdir()
    (storage / "refs").symlink_to(elsewhere)
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--to-hf-cache", env={"HF_HOME": str(home)})
    assert "outside" in one_line_error(result, 1)
    assert list(elsewhere.iterdir()) == []
    assert hub.downloads() == []


# 2. A known release (files_complete) fetched from a mirror that serves more.

def test_known_release_skips_files_the_mirror_adds(hf, tmp_path: Path) -> None:
    files = dict(hf, **{SHARD: tampered_shard(hf)})
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, files)) as hub:
        result, payload = fetch(str(release_manifest(tmp_path)), "--endpoint", hub.endpoint, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert not any(SHARD in r for r in hub.downloads())
    assert not (out / SHARD).exists()
    assert payload["skipped"] == [SHARD] and SHARD not in payload["files"]
    assert sorted(payload["files"]) == sorted(hf)
    assert f"not part of tiny-mistral-hf, not downloaded: {SHARD}" in result.stderr
    assert SHARD not in payload["verification"]
    run = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "8", "--json")
    assert run.returncode == 0, run.stderr
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        clean, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    direct = run_mdist("run", str(tmp_path / "clean"), "--prompt", "ROMEO:", "--max-tokens", "8", "--json")
    assert json.loads(run.stdout)["token_ids"] == json.loads(direct.stdout)["token_ids"]


def test_known_release_missing_on_the_mirror_is_an_error(hf, tmp_path: Path) -> None:
    files = {p: d for p, d in hf.items() if p != "tokenizer.model"}
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, files)) as hub:
        result, _ = fetch(str(release_manifest(tmp_path)), "--endpoint", hub.endpoint, "--out", str(out))
    line = one_line_error(result, 1)
    assert "tokenizer.model" in line and "tiny-mistral-hf" in line, line
    assert hub.downloads() == []
    assert not (out / ".mdist" / "complete.json").exists()


# 3. File names and hashes from the listing.

UNSAFE_NAMES = [".git/config", ".mdist/complete.json", "../x", "sub/../../x", ".cache/huggingface/x", "CONFIG.JSON",
                "/etc/x", "a\x01b", "sub//x", "config.json/x"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_listing_is_refused_before_any_download(hf, tmp_path: Path, name: str) -> None:
    listing = [listing_entry(p, d) for p, d in hf.items()] + [listing_entry(name, b"[core]\n")]
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, dict(hf, **{name: b"[core]\n"}), listings=[listing])) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    one_line_error(result, 1)
    assert hub.downloads() == []
    assert not (out / ".git").exists() and not (out / ".mdist" / "complete.json").exists()
    assert not (tmp_path / "x").exists()


def test_glob_characters_in_names_are_literal(hf, tmp_path: Path) -> None:
    """A file named `*` once made `--exclude '*.bin'` fetch the pickle anyway (names went to
    snapshot_download as globs); `notes[12].txt` was never fetched at all."""
    files = dict(hf, **{"*": b"star\n", "notes[12].txt": b"brackets\n", "pytorch_model.bin": b"pickle"})
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, files)) as hub:
        result, payload = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out), "--exclude", "*.bin")
    assert result.returncode == 0, result.stderr
    assert not (out / "pytorch_model.bin").exists()
    assert not any("pytorch_model.bin" in r for r in hub.downloads())
    assert (out / "*").read_bytes() == b"star\n" and (out / "notes[12].txt").read_bytes() == b"brackets\n"
    assert "pytorch_model.bin" not in payload["files"]


def test_a_second_listing_cannot_add_files(hf, tmp_path: Path) -> None:
    """snapshot_download lists the tree again; what that second answer adds is never fetched."""
    first = [listing_entry(p, d) for p, d in hf.items()] + [listing_entry("notes?.txt", b"q\n")]
    second = first + [listing_entry("notesX.txt", b"added\n"), listing_entry("extra.json", b"{}")]
    files = dict(hf, **{"notes?.txt": b"q\n", "notesX.txt": b"added\n", "extra.json": b"{}"})
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, files, listings=[first, second])) as hub:
        result, payload = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert not (out / "notesX.txt").exists() and not (out / "extra.json").exists()
    assert (out / "notes?.txt").read_bytes() == b"q\n"
    assert "notesX.txt" not in payload["files"]


@pytest.mark.parametrize("case", ["empty oid", "no oid", "short oid", "empty lfs oid", "no size"])
def test_listing_entry_without_a_hash_is_refused(hf, tmp_path: Path, case: str) -> None:
    listing = [listing_entry(p, d) for p, d in hf.items()]
    small = next(e for e in listing if e["path"] == "config.json")
    big = next(e for e in listing if e["path"] == "tokenizer.model")
    if case == "empty oid":
        small["oid"] = ""
    elif case == "no oid":
        del small["oid"]
    elif case == "short oid":
        small["oid"] = small["oid"][:12]
    elif case == "empty lfs oid":
        big["lfs"]["oid"] = ""
    else:
        del small["size"]
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, hf, listings=[listing])) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    line = one_line_error(result, 1)
    assert "listing" in line, line
    assert hub.downloads() == []
    assert not (out / ".mdist" / "complete.json").exists()


def test_files_that_appear_unasked_are_removed(hf, tmp_path: Path, monkeypatch) -> None:
    """Whatever the download machinery writes beyond the selected files is removed and reported."""
    from mdist.sources import hub as hub_module
    from mdist.sources.hub import HubOptions, fetch_hub

    out = tmp_path / "got"
    real = hub_module._transfer_all

    def adding(plan, transfer):
        digests = real(plan, transfer)
        (out / "sneaked.bin").write_bytes(b"not listed")
        (out / "sub").mkdir(exist_ok=True)
        (out / "sub" / "deep.json").write_bytes(b"{}")
        return digests

    monkeypatch.setattr(hub_module, "_transfer_all", adding)
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file, there before")

    class Collect:
        messages: list[str] = []

        def update(self, progress) -> None:
            pass

        def message(self, text: str) -> None:
            self.messages.append(text)

    reporter = Collect()
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result = fetch_hub(REPO, None, HubOptions(out=out, endpoint=hub.endpoint, quiet=True), reporter)
    assert result["removed"] == ["sneaked.bin", "sub/deep.json"]
    assert not (out / "sneaked.bin").exists() and not (out / "sub" / "deep.json").exists()
    assert (out / "mine.txt").exists()
    assert any("'sneaked.bin'" in m and "removed" in m for m in reporter.messages), reporter.messages
    assert "sneaked.bin" not in result["files"]


# 5. Options that cannot both apply.

def test_out_with_to_hf_cache_is_a_usage_error(hf, tmp_path: Path) -> None:
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--to-hf-cache", "--out", str(tmp_path / "x"),
                          env={"HF_HOME": str(tmp_path / "home")})
    line = one_line_error(result, 2)
    assert "--out" in line and "--to-hf-cache" in line, line
    assert hub.requests == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "home" / "hub").exists()


# 6. Plain-line progress shows the whole download's size.

def test_plain_progress_shows_the_total_of_the_selection(hf, tmp_path: Path) -> None:
    big = "model-00001-of-00001.safetensors"
    with fake_hub(FakeHub(REPO, COMMIT, hf, delays={big: 1.0})) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(tmp_path / "got"), as_json=False)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if ": downloading " in line]
    assert lines, result.stderr
    total = f"of {sum(len(d) for d in hf.values()) / 1e6:.1f} MB"
    assert all(total in line for line in lines), lines


# 7. Links and special files where the fetch reads, writes or deletes: what is already in OUT (or in
# the HF cache) is never followed out of it, nor read when it is a FIFO or a device. Every victim is
# outside OUT and must stay as it was; every run is bounded in time (a hang fails, it does not block).

VICTIM_BYTES = b"the victim's own bytes, outside OUT\n"
HANG = 60  # seconds: a fetch of this fixture takes a few; one that hangs on a FIFO or /dev/zero never ends


def victim_file(tmp_path: Path) -> Path:
    folder = tmp_path / "victim"
    folder.mkdir(exist_ok=True)
    path = folder / "precious.txt"
    path.write_bytes(VICTIM_BYTES)
    return path


def snapshot_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bounded_fetch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return run_mdist("fetch", *args, timeout=HANG, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mdist fetch {' '.join(args)} did not end within {HANG} s (blocked on a FIFO or a device?)")


def error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The error that ended a fetch (after its progress lines), with no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("mdist: error:"), result.stderr
    return line


def partial_name(path: str, data: bytes) -> str:
    """The partial download of `path` in OUT/.mdist/hub-partial (keyed by path and content)."""
    entry = listing_entry(path, data)
    etag = (entry.get("lfs") or {}).get("oid") or entry["oid"]
    return f"{hashlib.sha256(path.encode()).hexdigest()[:16]}.{etag}.incomplete"


@pytest.mark.parametrize("case", ["victim file there", "no victim file there", "file itself linked"])
def test_a_linked_sub_folder_is_never_written_through(hf, tmp_path: Path, case: str) -> None:
    """OUT/sub linked to a folder elsewhere once had sub/a.txt written there (and a mismatching
    file there deleted first); OUT/sub/a.txt linked to a file elsewhere is refused likewise."""
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "got"
    (out / "sub").mkdir(parents=True)
    if case == "file itself linked":
        (victim / "a.txt").write_bytes(VICTIM_BYTES)
        (out / "sub" / "a.txt").symlink_to(victim / "a.txt")
    else:
        (out / "sub").rmdir()
        (out / "sub").symlink_to(victim, target_is_directory=True)
        if case == "victim file there":
            (victim / "a.txt").write_bytes(b"x" * 12)  # the listed size: hashed, found wrong, deleted
    before = snapshot_of(victim)
    files = dict(hf, **{"sub/a.txt": b"from the hub"})
    with fake_hub(FakeHub(REPO, COMMIT, files)) as hub:
        result = bounded_fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    line = error_line(result, 1)
    assert "sub" in line and "link" in line, line
    assert snapshot_of(victim) == before
    assert hub.downloads() == []
    assert os.path.islink(out / "sub" / "a.txt") if case == "file itself linked" else os.path.islink(out / "sub")
    assert not (out / ".mdist" / "complete.json").exists()


@pytest.mark.parametrize("kind", ["link to a longer file", "link to a shorter file", "fifo", "link to /dev/zero",
                                  "hard link to a longer file", "hard link to a shorter file"])
def test_a_partial_that_is_no_regular_file_is_removed_never_followed(hf, tmp_path: Path, kind: str) -> None:
    """OUT/.mdist/hub-partial/<key>.<etag>.incomplete linked to a file elsewhere once truncated it
    to 0 (a size taken with lstat, then os.truncate through the link); a FIFO there hung the fetch;
    a hard link's other name was truncated or appended to. The name is removed, never what it
    leads to, and the file is downloaded."""
    victim = victim_file(tmp_path)
    if kind.endswith("to a shorter file"):
        victim.write_bytes(b"v")
    before = victim.read_bytes()
    small = b"tiny\n"  # shorter than the link's own text: lstat's size says the partial is too long
    files = dict(hf, **{"tiny.txt": small})
    out = tmp_path / "got"
    partials = out / ".mdist" / "hub-partial"
    partials.mkdir(parents=True)
    partial = partials / partial_name("tiny.txt", small)
    if kind == "fifo":
        os.mkfifo(partial)
    elif kind.startswith("hard link"):
        os.link(victim, partial)
    else:
        partial.symlink_to("/dev/zero" if kind == "link to /dev/zero" else victim)
    with fake_hub(FakeHub(REPO, COMMIT, files)) as hub:
        result = bounded_fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == before
    assert (out / "tiny.txt").read_bytes() == small
    assert not os.path.lexists(partial)
    assert (out / ".mdist" / "complete.json").is_file()


def test_a_linked_partial_blob_in_the_hf_cache_is_never_followed(hf, tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    home = tmp_path / "home"
    small = b"tiny\n"
    blobs = home / "hub" / "models--org--tiny-mistral" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / f"{listing_entry('tiny.txt', small)['oid']}.incomplete"
    partial.symlink_to(victim)
    with fake_hub(FakeHub(REPO, COMMIT, dict(hf, **{"tiny.txt": small}))) as hub:
        result = bounded_fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--to-hf-cache",
                               env={"HF_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == VICTIM_BYTES
    assert (home / "hub" / "models--org--tiny-mistral" / "snapshots" / COMMIT / "tiny.txt").read_bytes() == small


KNOWN_REPO = "mistralai/Mistral-7B-v0.1"  # checksums/mistral-7b-v0.1-hub.json lists its tokenizer.model


@pytest.mark.parametrize("kind", ["link to a file", "link to /dev/zero", "fifo"])
def test_a_release_file_in_out_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """Files already in OUT are checked against a known release: OUT/tokenizer.model linked to a
    file elsewhere once had that file hashed and then deleted; linked to /dev/zero (or a FIFO) the
    check never ended. Refused before any download, the link left as it is."""
    victim = victim_file(tmp_path)
    out = tmp_path / "got"
    out.mkdir()
    if kind == "fifo":
        os.mkfifo(out / "tokenizer.model")
    else:
        (out / "tokenizer.model").symlink_to("/dev/zero" if kind == "link to /dev/zero" else victim)
    with fake_hub(FakeHub(KNOWN_REPO, COMMIT, {"config.json": b'{"dim": 4096}\n'})) as hub:
        result = bounded_fetch(f"hf://{KNOWN_REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    line = error_line(result, 1)
    assert "tokenizer.model" in line, line
    assert victim.read_bytes() == VICTIM_BYTES
    assert os.path.lexists(out / "tokenizer.model")
    assert hub.downloads() == []
    assert not (out / ".mdist" / "complete.json").exists()


@pytest.mark.parametrize("kind", ["link out of blobs", "link to /dev/zero"])
def test_a_release_file_in_the_hf_cache_linked_out_of_blobs_is_refused(tmp_path: Path, kind: str) -> None:
    """In the HF cache a snapshot's file is a link, but only into the repo's own blobs/: one
    leading elsewhere once had its target deleted as a mismatching blob."""
    victim = victim_file(tmp_path)
    home = tmp_path / "home"
    snapshot = home / "hub" / "models--mistralai--Mistral-7B-v0.1" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.model").symlink_to("/dev/zero" if kind == "link to /dev/zero" else victim)
    with fake_hub(FakeHub(KNOWN_REPO, COMMIT, {"config.json": b'{"dim": 4096}\n'})) as hub:
        result = bounded_fetch(f"hf://{KNOWN_REPO}", "--endpoint", hub.endpoint, "--to-hf-cache",
                               env={"HF_HOME": str(home)})
    line = error_line(result, 1)
    assert "tokenizer.model" in line, line
    assert victim.read_bytes() == VICTIM_BYTES
    assert os.path.islink(snapshot / "tokenizer.model")
    assert not (home / "hub" / "models--mistralai--Mistral-7B-v0.1" / "refs" / "main").exists()


STORAGE = "models--org--tiny-mistral"


@pytest.mark.parametrize("linked", [STORAGE, f"{STORAGE}/blobs", f"{STORAGE}/snapshots",
                                    f"{STORAGE}/snapshots/{COMMIT}", ".locks", f".locks/{STORAGE}"])
def test_linked_folders_of_the_hf_cache_are_refused(hf, tmp_path: Path, linked: str) -> None:
    """A cache repo's folder (or huggingface_hub's lock folder) linked elsewhere once had blobs,
    snapshot links or lock files written there. (A commit is asked for, so no ref is written:
    that check came first and hid this.)"""
    home, victim = tmp_path / "home", tmp_path / "victim"
    victim.mkdir()
    place = home / "hub" / linked
    place.parent.mkdir(parents=True, exist_ok=True)
    place.symlink_to(victim, target_is_directory=True)
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result = bounded_fetch(f"hf://{REPO}@{COMMIT}", "--endpoint", hub.endpoint, "--to-hf-cache",
                               env={"HF_HOME": str(home)})
    line = error_line(result, 1)
    assert "link" in line, line
    assert list(victim.iterdir()) == []
    assert hub.downloads() == []


def test_a_refs_folder_linked_inside_the_cache_is_refused(hf, tmp_path: Path) -> None:
    """refs/ linked to another folder of the cache passes the containment check of the ref file;
    the link itself is refused."""
    home = tmp_path / "home"
    elsewhere = home / "hub" / "models--other--repo" / "refs"
    elsewhere.mkdir(parents=True)
    storage = home / "hub" / STORAGE
    storage.mkdir(parents=True)
    (storage / "refs").symlink_to(elsewhere, target_is_directory=True)
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result = bounded_fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--to-hf-cache",
                               env={"HF_HOME": str(home)})
    line = error_line(result, 1)
    assert "refs" in line and "link" in line, line
    assert list(elsewhere.iterdir()) == []
    assert hub.downloads() == []


def test_leftovers_behind_a_linked_cache_folder_are_never_taken(hf, tmp_path: Path) -> None:
    """huggingface_hub's leftovers are looked for in OUT/.cache/huggingface/download/: with OUT/.cache
    linked elsewhere, a file there matching a leftover's name was moved out of that folder."""
    victim = tmp_path / "victim"
    data = hf["config.json"]
    download = victim / "huggingface" / "download"
    download.mkdir(parents=True)
    (download / f"config.json.{listing_entry('config.json', data)['oid']}.incomplete").write_bytes(data[:10])
    before = snapshot_of(victim)
    out = tmp_path / "got"
    out.mkdir()
    (out / ".cache").symlink_to(victim, target_is_directory=True)
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result = bounded_fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert snapshot_of(victim) == before
    assert (out / "config.json").read_bytes() == data


def test_an_unasked_link_in_the_hf_cache_never_takes_its_target_along(hf, tmp_path: Path, monkeypatch) -> None:
    """A link the download left in the snapshot that is not in the listing is removed; what it
    leads to is removed only when it is a blob of this repo, never a file elsewhere."""
    from mdist.sources import hub as hub_module
    from mdist.sources.hub import HubOptions, fetch_hub
    from mdist.sources.torrent_fetch import SilentReporter

    victim = victim_file(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(home / "hub"))
    snapshot = home / "hub" / STORAGE / "snapshots" / COMMIT
    real = hub_module._transfer_all

    def adding(plan, transfer):
        digests = real(plan, transfer)
        (snapshot / "sneaked.bin").symlink_to(victim)
        return digests

    monkeypatch.setattr(hub_module, "_transfer_all", adding)
    with fake_hub(FakeHub(REPO, COMMIT, hf)) as hub:
        result = fetch_hub(REPO, None, HubOptions(endpoint=hub.endpoint, to_hf_cache=True, quiet=True),
                           SilentReporter())
    assert result["removed"] == ["sneaked.bin"]
    assert not os.path.lexists(snapshot / "sneaked.bin")
    assert victim.read_bytes() == VICTIM_BYTES


def test_a_path_nested_too_deep_is_refused_in_one_line(hf, tmp_path: Path) -> None:
    """A listed path of 1,100 folders once ended in a RecursionError traceback of ~990 lines."""
    deep = "a/" * 1100 + "x.txt"
    listing = [listing_entry(p, d) for p, d in hf.items()] + [listing_entry(deep, b"deep\n")]
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, dict(hf, **{deep: b"deep\n"}), listings=[listing])) as hub:
        result = bounded_fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    line = one_line_error(result, 1)
    assert "deeper" in line, line
    assert hub.downloads() == []
    assert not (out / "a").exists()


def test_the_fetch_itself_never_recurses_per_folder_level(tmp_path: Path) -> None:
    """Whatever mdist.paths lets through, hub.py makes folders one level at a time (Path.mkdir
    recursed once per missing level) and walks OUT without recursion (os.walk did)."""
    from mdist.errors import InputError
    from mdist.sources.hub import _files_under, _real_folders

    deep = tmp_path.joinpath(*["a"] * 1100)
    try:
        _real_folders(tmp_path, deep)
        assert deep.is_dir()
        with pytest.raises(InputError, match="deeper"):
            _files_under(tmp_path)
    finally:  # pytest's own clean-up (shutil.rmtree) recurses per level too: remove the tree here
        level = deep
        while level != tmp_path:
            with contextlib.suppress(FileNotFoundError):
                level.rmdir()
            level = level.parent


# 5. Bytes beyond the listed size: refused before writing when announced, never resumed.

class _EndlessHub:
    """A FakeHub handler whose file answers are chunked, without a length, zeros that go on (up to
    64 MiB, then a proper end: a test never waits for ever)."""

    @staticmethod
    def handler():
        from hubmirror import _FakeHubHandler

        class Endless(_FakeHubHandler):
            protocol_version = "HTTP/1.1"

            def _file(self, name: str, head: bool) -> None:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk, sent = b"\0" * (64 << 10), 0
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    while sent < 64 << 20:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)
                    self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

        return Endless


def partials(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*.incomplete"))


def last_error(result: subprocess.CompletedProcess, code: int) -> str:
    """The error line, after the lines saying what is fetched."""
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mdist: error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def test_a_length_beyond_the_listed_size_is_refused_before_writing(tmp_path: Path) -> None:
    data = b'{"dim": 8}' * 100
    out = tmp_path / "got"
    with fake_hub(FakeHub(REPO, COMMIT, {"config.json": data}, served={"config.json": data + b" " * 100})) as hub:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    line = last_error(result, 1)
    assert line.endswith(f"announces '1100' bytes of 'config.json' from byte 0; the listing's size leaves 1000; "
                         f"refused; the partial download was removed"), line
    assert partials(out) == [] and not (out / "config.json").exists()


def test_an_endless_body_stops_at_the_listed_size_and_is_not_kept(tmp_path: Path) -> None:
    from hubmirror import serving

    data = b'{"dim": 8}' * 100
    hub = FakeHub(REPO, COMMIT, {"config.json": data})
    out = tmp_path / "got"
    with serving(type("Handler", (_EndlessHub.handler(),), {"hub": hub})) as hub.endpoint:
        result, _ = fetch(f"hf://{REPO}", "--endpoint", hub.endpoint, "--out", str(out))
    line = last_error(result, 1)
    assert line.endswith("sent more than the 1000 bytes it lists for 'config.json'; refused; the partial download "
                         "was removed"), line
    assert partials(out) == [] and not (out / "config.json").exists()
