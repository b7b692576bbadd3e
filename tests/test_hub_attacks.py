"""mdist fetch hf://… against a hub that lies: names, revisions, listings and bytes chosen by the
server (FakeHub in tests/hubmirror.py), and the options that must not be silently ignored."""

from __future__ import annotations

import hashlib
import json
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
