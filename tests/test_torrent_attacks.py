"""Attacks through torrent metadata: malformed bencode, forged tool state, hostile magnets from a
real seeder, resume data of another torrent or forged, huge file lists. Every wait is bounded."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import libtorrent as lt
import pytest

from conftest import FIXTURE, run_mdist
from mdist.errors import InputError, UnsafeContentError
from mdist.sources.torrent_fetch import SilentReporter, _maybe_resume, resume_purpose, write_state_file
from mdist.sources.torrent_meta import InfoHashes, check_info_dict, create_torrent
from swarm import copy_release, hand_made_torrent, machine_key, mdist_seeder, raw_seeder, seed_folder  # noqa: F401

LEAF = {b"": {b"length": 10, b"pieces root": b"\x01" * 32}}
V1 = {b"piece length": 16384, b"pieces": b"\x00" * 20}
V2 = {b"piece length": 16384, b"meta version": 2}


def v1_files(*paths: list[bytes], name: bytes = b"x") -> dict:
    return {**V1, b"name": name, b"files": [{b"length": 1, b"path": p} for p in paths]}


def v2_tree(tree: dict, name: bytes = b"x") -> dict:
    return {**V2, b"name": name, b"file tree": tree}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def error_line(stderr: str) -> str:
    """The one error line of a run that also printed progress lines."""
    errors = [line for line in stderr.splitlines() if line.startswith("mdist: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


# -- 1. wrong bencode types: one clear line, exit 2 -------------------------------------------------
MALFORMED = {
    "info not a dict": [b"name"],
    "name as int": {**V1, b"name": 5, b"length": 1},
    "name missing": {**V1, b"length": 1},
    "files as dict": {**V1, b"name": b"x", b"files": {b"a": {b"length": 1}}},
    "files empty": {**V1, b"name": b"x", b"files": []},
    "file entry as list": {**V1, b"name": b"x", b"files": [[b"a"]]},
    "path as bytes": {**V1, b"name": b"x", b"files": [{b"length": 1, b"path": b"a"}]},
    "path elements as ints": {**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [1, 2]}]},
    "attr as int": {**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a"], b"attr": 8}]},
    "tree value not a dict": v2_tree({b"a": 5}),
    "tree leaf not a dict": v2_tree({b"a": {b"": [1]}}),
    "tree node file and folder": v2_tree({b"a": {**LEAF, b"b": LEAF}}),
    "tree leaf at the root": v2_tree(LEAF),
    "length negative": {**V1, b"name": b"x", b"length": -1},
    "length as bytes": {**V1, b"name": b"x", b"length": b"10"},
    "file length negative": {**V1, b"name": b"x", b"files": [{b"length": -5, b"path": [b"a"]}]},
    "v2 length huge": v2_tree({b"a": {b"": {b"length": 1 << 62, b"pieces root": b"\x01" * 32}}}),
    "piece length absurd": {**V1, b"piece length": 1 << 40, b"name": b"x", b"length": 1},
    "piece length zero": {**V1, b"piece length": 0, b"name": b"x", b"length": 1},
    "piece length as bytes": {**V1, b"piece length": b"16384", b"name": b"x", b"length": 1},
    "no files at all": {**V1, b"name": b"x"},
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_info_dict_is_one_input_error(case: str) -> None:
    with pytest.raises(InputError) as caught:
        check_info_dict(MALFORMED[case])
    assert "malformed" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", ["name as int", "path elements as ints", "tree value not a dict"])
def test_malformed_torrent_file_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    torrent = tmp_path / "bad.torrent"
    torrent.write_bytes(lt.bencode({b"info": MALFORMED[case]}))
    result = run_mdist("fetch", str(torrent), "--out", str(tmp_path / "out"), "--no-dht", "--timeout", "3")
    assert result.returncode == 2, result.stderr
    assert "malformed" in one_line(result.stderr)
    assert sorted(tmp_path.rglob("*")) == [torrent]


# -- 2. forged state and other refused paths: exit 1 before anything is written ----------------------
FORGED = {
    "v1 .mdist/complete.json": v1_files([b"model.bin"], [b".mdist", b"complete.json"]),
    "v1 .git/config": v1_files([b".git", b"config"]),
    "v1 .GIT/config by case": v1_files([b".GIT", b"config"]),
    "v1 nested .git": v1_files([b"sub", b".git", b"hooks", b"post-checkout"]),
    "v2 .git/config": v2_tree({b".git": {b"config": LEAF}}),
    "v2 .mdist/complete.json": v2_tree({b".mdist": {b"complete.json": LEAF}, b"a": LEAF}),
    "v2 .cache/huggingface": v2_tree({b".cache": {b"huggingface": {b"hub": {b"token": LEAF}}}}),
    "v2 single file named .mdist": v2_tree({b".mdist": LEAF}, name=b"harmless"),
    "single-file name .mdist": {**V1, b"name": b".mdist", b"length": 1},
    "root name .git": v1_files([b"config"], name=b".git"),
    "root name .hg": v2_tree({b"hgrc": LEAF}, name=b".hg"),
    "name.utf-8 twin says .git": {**v1_files([b"config"], name=b"ok"), b"name.utf-8": b".git"},
    "path.utf-8 twin says .git/config": {**V1, b"name": b"x", b"files": [
        {b"length": 1, b"path": [b"ok"], b"path.utf-8": [b".git", b"config"]}]},
    "pad file in .git": {**V1, b"name": b"x", b"files": [
        {b"length": 1, b"path": [b"a"]}, {b"length": 1, b"path": [b".git", b"config"], b"attr": b"p"}]},
    "case collision": v1_files([b"README"], [b"readme"]),
    "file is also a folder": v1_files([b"a"], [b"a", b"b"]),
    "duplicate path": v1_files([b"a"], [b"a"]),
    "hybrid lists disagree": {**V1, **v2_tree({b"a": LEAF}), b"files": [{b"length": 10, b"path": [b"b"]}]},
    "v1 symlink in single file": {**V1, b"name": b"x", b"length": 0, b"attr": b"l", b"symlink path": [b"y"]},
    "control character": v1_files([b"a\x1b[2Jb"]),
    "not UTF-8": v1_files([b"\xff\xfe"]),
}


@pytest.mark.parametrize("case", FORGED)
def test_forged_state_and_unsafe_paths_are_refused(case: str) -> None:
    with pytest.raises(UnsafeContentError) as caught:
        check_info_dict(FORGED[case])
    assert "refused" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", ["v1 .mdist/complete.json", "v1 .git/config", "v2 .cache/huggingface",
                                  "single-file name .mdist", "root name .git", "path.utf-8 twin says .git/config"])
def test_forged_state_torrent_file_writes_nothing(tmp_path: Path, case: str) -> None:
    torrent = tmp_path / "forged.torrent"
    torrent.write_bytes(lt.bencode({b"info": FORGED[case]}))
    for out in (["--out", str(tmp_path / "out")], []):  # also the default folder, named after the torrent
        result = run_mdist("fetch", str(torrent), *out, "--no-dht", "--timeout", "3", cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "refused" in one_line(result.stderr)
        assert sorted(tmp_path.rglob("*")) == [torrent]


def test_accepted_paths_are_what_lands_in_the_folder() -> None:
    hybrid = {**V1, **v2_tree({b"d": {b"a": LEAF}, b"b": LEAF}), b"files": [
        {b"length": 10, b"path": [b"b"]}, {b"length": 16374, b"path": [b".pad", b"16374"], b"attr": b"p"},
        {b"length": 10, b"path": [b"d", b"a"]}, {b"length": 16374, b"path": [b".pad", b"16374"], b"attr": b"p"}]}
    assert sorted(check_info_dict(hybrid)) == ["b", "d/a"]
    assert check_info_dict({**V1, b"name": b"model.bin", b"length": 5}) == ["model.bin"]
    assert check_info_dict({**V1, b"name": b"x", b"name.utf-8": b"x", b"files": [
        {b"length": 1, b"path": [b"caf\xc3\xa9"], b"path.utf-8": [b"caf\xc3\xa9"]}]}) == ["café"]


# -- 1. cost: the path check is linear in the number of files -----------------------------------------
def _many_files(count: int) -> dict:
    tree: dict = {}
    for i in range(count):
        tree.setdefault(f"d{i // 100}".encode(), {})[f"f{i}.bin".encode()] = {
            b"": {b"length": 1, b"pieces root": b"\x01" * 32}}
    return v2_tree(tree)


def _seconds(info: dict) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        assert len(check_info_dict(info)) == sum(len(d) for d in info[b"file tree"].values())
        best = min(best, time.perf_counter() - started)
    return best


def test_a_40k_file_torrent_is_checked_in_linear_time() -> None:
    small, large = _seconds(_many_files(4_000)), _seconds(_many_files(40_000))
    assert large < 5.0, large  # quadratic: 18 s
    assert large / small < 30, (small, large)  # linear: about 10; quadratic: about 100


def test_more_files_than_the_limit_are_refused_quickly() -> None:
    info = {**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"f%d" % i]} for i in range(100_001)]}
    started = time.perf_counter()
    with pytest.raises(UnsafeContentError, match="more than 100000 files"):
        check_info_dict(info)
    assert time.perf_counter() - started < 1.0


# -- 5. what the SOURCE argument is --------------------------------------------------------------------
def test_missing_torrent_file_says_no_such_file(tmp_path: Path) -> None:
    result = run_mdist("fetch", str(tmp_path / "nosuch.torrent"), "--no-dht")
    assert result.returncode == 2
    assert "no such file" in one_line(result.stderr)


@pytest.mark.parametrize("content", [os.urandom(300), b"", b"d4:infoi3ee", b"i42e", b"d4:info" + b"l" * 5000])
def test_garbage_torrent_file_is_one_line_exit_2(tmp_path: Path, content: bytes) -> None:
    torrent = tmp_path / "garbage.torrent"
    torrent.write_bytes(content)
    result = run_mdist("fetch", str(torrent), "--out", str(tmp_path / "out"), "--no-dht", "--timeout", "3")
    assert result.returncode == 2, result.stderr
    one_line(result.stderr)
    assert sorted(tmp_path.rglob("*")) == [torrent]


# -- 3 and 4a. a hostile torrent from a real seeder, by magnet -----------------------------------------
DATA = b"weights " * 100
HOSTILE = {  # (torrent, contents, words the refusal must name)
    "symlink": ([([b"empty"], b"", {}), ([b"model.bin"], DATA, {}),
                 ([b"link"], b"", {b"attr": b"l", b"symlink path": [b"..", b"..", b"victim"]})], "symbolic link"),
    "dotdot": ([([b"empty"], b"", {}), ([b"model.bin"], DATA, {}), ([b"..", b"escape.bin"], DATA, {})], "'..'"),
    "git config": ([([b"empty"], b"", {}), ([b"model.bin"], DATA, {}),
                    ([b".git", b"config"], b"[core]\n\tfsmonitor = touch PWNED\n", {})], ".git/config"),
    "mdist state": ([([b"model.bin"], DATA, {}), ([b".mdist", b"complete.json"], b'{"files": []}', {})],
                    ".mdist/complete.json"),
    "v2 mdist state": ([([b"model.bin"], DATA, {}), ([b".mdist", b"complete.json"], b'{"files": []}', {})],
                       ".mdist/complete.json"),
}


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, bytes | str]:
    """Everything under root (outside `skip`): file contents, symlink targets, folders."""
    found: dict[str, bytes | str] = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        key = str(path.relative_to(root))
        found[key] = (f"-> {os.readlink(path)}" if path.is_symlink() else
                      path.read_bytes() if path.is_file() else "folder")
    return found


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_magnet_is_refused_before_anything_is_created(tmp_path: Path, case: str) -> None:
    entries, cause = HOSTILE[case]
    torrent_bytes = hand_made_torrent(b"release", entries, v2=case.startswith("v2"))
    torrent = tmp_path / "hostile.torrent"
    torrent.write_bytes(torrent_bytes)
    seed_dir = seed_folder(torrent_bytes, entries, tmp_path / "seeder" / "files")
    (tmp_path / "victim").write_text("untouched\n")
    scratch = tmp_path / "tmp"  # the fetcher's temporary folder: its metadata scratch must go away
    scratch.mkdir()
    out = tmp_path / "work" / "out"
    before = _snapshot(tmp_path, (tmp_path / "seeder",))
    with raw_seeder(torrent, seed_dir) as magnet:
        port = magnet.rsplit(":", 1)[1]
        result = run_mdist("fetch", magnet.rsplit("&x.pe=", 1)[0], "--out", str(out), "--peer", f"127.0.0.1:{port}",
                           "--no-dht", "--timeout", "20", timeout=60, env={"TMPDIR": str(scratch)})
    left = [p.relative_to(out) for p in out.rglob("*")] if out.exists() else []
    assert left in ([], [Path(".mdist")]), left  # nothing but mdist's own (empty) state
    assert _snapshot(tmp_path, (tmp_path / "seeder",)) == before  # nothing appeared outside OUT either
    assert result.returncode == 1, result.stderr
    assert cause in error_line(result.stderr) and "refused" in error_line(result.stderr)


# -- 4b. resume data of another torrent is not trusted -------------------------------------------------
def _payload(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_resume_data_of_another_torrent_is_not_used(tmp_path: Path) -> None:
    """Fetch A into OUT, then B into the same OUT: B must arrive, not A's files reported as B."""
    a = copy_release(FIXTURE, tmp_path / "a" / "tiny-mistral")
    b = copy_release(FIXTURE, tmp_path / "b" / "tiny-mistral")
    (b / "params.json").write_text(json.dumps({**json.loads((b / "params.json").read_text()), "note": "B"}))
    out = tmp_path / "out"
    with mdist_seeder(a) as magnet_a:
        first = _payload(run_mdist("fetch", magnet_a, "--out", str(out), "--no-dht", "--json", "--timeout", "30"))
    assert (out / ".mdist" / "resume.fastresume").is_file()
    with mdist_seeder(b, "--force") as magnet_b:
        result = run_mdist("fetch", magnet_b, "--out", str(out), "--no-dht", "--json", "--timeout", "30")
    second = _payload(result)
    assert "another torrent" in result.stderr and "resuming" not in result.stderr
    assert second["info_hash_v1"] != first["info_hash_v1"] and second["info_hash_v1"] in magnet_b
    assert (out / "params.json").read_bytes() == (b / "params.json").read_bytes()
    complete = json.loads((out / ".mdist" / "complete.json").read_text())
    assert complete["info_hash_v1"] == second["info_hash_v1"]


def test_resume_data_must_agree_on_every_info_hash(tmp_path: Path) -> None:
    """A magnet naming A's v1 hash with another v2 hash is not A: A's saved state is not used."""
    state = tmp_path / ".mdist"
    state.mkdir()
    saved = lt.add_torrent_params()
    saved.ti = lt.torrent_info(create_torrent(FIXTURE))
    saved.info_hashes = saved.ti.info_hashes()
    saved.save_path = str(tmp_path)
    write_state_file(state / "resume.fastresume", lt.write_resume_data_buf(saved), resume_purpose(tmp_path))
    a = InfoHashes.of(saved.ti.info_hashes())
    fresh = lt.add_torrent_params()
    other_v2 = str(lt.sha256_hash(b"\x03" * 32))
    assert _maybe_resume(fresh, state, InfoHashes(a.v1, other_v2), SilentReporter()) is fresh
    assert _maybe_resume(fresh, state, InfoHashes(None, other_v2), SilentReporter()) is fresh
    for requested in (a, InfoHashes(a.v1, None), InfoHashes(None, a.v2)):
        resumed = _maybe_resume(fresh, state, requested, SilentReporter())
        assert resumed is not fresh and InfoHashes.of(resumed.info_hashes) == a


def test_forged_resume_data_is_checked_before_anything_is_created(tmp_path: Path) -> None:
    """OUT/.mdist/resume.fastresume carries an info dict of its own: it passes the same check."""
    entries = [([b"empty"], b"", {}), ([b".git", b"config"], b"[core]\n\tfsmonitor = touch PWNED\n", {})]
    ti = lt.torrent_info(hand_made_torrent(b"release", entries))
    out = tmp_path / "out"
    (out / ".mdist").mkdir(parents=True)
    saved = lt.add_torrent_params()
    saved.ti, saved.info_hashes, saved.save_path = ti, ti.info_hashes(), str(out)
    (out / ".mdist" / "resume.fastresume").write_bytes(lt.write_resume_data_buf(saved))
    result = run_mdist("fetch", lt.make_magnet_uri(ti), "--out", str(out), "--no-dht", "--timeout", "5")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == [Path(".mdist"), Path(".mdist/resume.fastresume")]
    assert result.returncode == 1, result.stderr
    assert ".git/config" in error_line(result.stderr)


def test_mdist_never_shares_what_its_fetchers_refuse(tmp_path: Path) -> None:
    """`mdist seed` of a git clone or a used cache leaves tool state out; colliding names are an error."""
    folder = tmp_path / "release"
    for name in ("model.bin", ".git/config", ".mdist/complete.json", "sub/.hg/hgrc", ".cache/huggingface/token",
                 ".cache/other.txt", ".mdistrc", ".GIT/HEAD"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    for version in ("hybrid", "v1", "v2"):
        info = lt.bdecode(create_torrent(folder, version=version))[b"info"]
        assert sorted(check_info_dict(info)) == [".cache/other.txt", ".mdistrc", "model.bin"], version
    (folder / "MODEL.bin").write_text("x")
    with pytest.raises(InputError, match="name the same file"):
        create_torrent(folder)


def test_a_real_pad_folder_survives_the_fetch(tmp_path: Path) -> None:
    """Pad-file clean-up must not delete a release's own .pad/ files after they were verified."""
    folder = copy_release(FIXTURE, tmp_path / "seed" / "tiny-mistral")
    (folder / ".pad").mkdir()
    (folder / ".pad" / "notes.txt").write_text("part of the release\n")
    out = tmp_path / "got"
    with mdist_seeder(folder, "--force") as magnet:
        payload = _payload(run_mdist("fetch", magnet, "--out", str(out), "--no-dht", "--json", "--timeout", "30"))
    assert ".pad/notes.txt" in payload["files"]
    assert (out / ".pad" / "notes.txt").read_text() == "part of the release\n"


def test_fetch_never_writes_through_a_link_already_in_out(tmp_path: Path) -> None:
    """libtorrent opens files by path: a link planted in OUT must be refused before any byte lands."""
    from swarm import copy_release, mdist_seeder

    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "consolidated.00.pth").symlink_to(victim)
    release = copy_release(FIXTURE, tmp_path / "seed" / "tiny-mistral")
    with mdist_seeder(release) as magnet:
        result = run_mdist("fetch", magnet, "--out", str(out), "--no-dht", "--timeout", "30", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "refusing to write through it" in result.stderr
    assert victim.read_bytes() == b"precious"
    assert not (out / ".mdist" / "complete.json").exists()


@pytest.mark.parametrize("name", [b".git", b"..", b"con\x1b[2J"])
def test_a_nameless_magnet_is_named_only_after_its_checked_info_dict(tmp_path: Path, name: bytes) -> None:
    """Without dn= and --out the folder takes the torrent's own name, once the info dict passed the
    path rule: a hostile name creates nothing in the current folder."""
    entries = [([b"model.bin"], DATA, {})]
    torrent_bytes = hand_made_torrent(name, entries)
    torrent = tmp_path / "hostile.torrent"
    torrent.write_bytes(torrent_bytes)
    seed_dir = seed_folder(torrent_bytes, entries, tmp_path / "seeder" / "files")
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    with raw_seeder(torrent, seed_dir) as magnet:
        nameless = "&".join(part for part in magnet.split("&") if not part.startswith(("dn=", "x.pe=")))
        result = run_mdist("fetch", nameless, "--peer", magnet.rsplit("x.pe=", 1)[1], "--no-dht", "--timeout", "20",
                           cwd=work, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "refused" in error_line(result.stderr)
    assert list((tmp_path / "work").rglob("*")) == [work]


# -- 6. mdist's own state in OUT/.mdist: trusted only when mdist wrote it on this machine ------------------
class Messages(SilentReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def _unknown_release(tmp_path: Path) -> tuple[Path, Path]:
    """A release no manifest knows (random files): libtorrent's piece hashes are its only check, as for
    Mistral 7B's consolidated.00.pth. Its .torrent file and folder."""
    folder = tmp_path / "seed" / "release"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(os.urandom(700_000))
    (folder / "notes.txt").write_bytes(os.urandom(5_000))
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(folder))
    return torrent, folder


def _claimed(torrent: Path, out: Path, claim) -> bytes:
    """Resume data as libtorrent writes it (lt.write_resume_data_buf), making `claim` about OUT."""
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent.read_bytes())
    params.info_hashes, params.save_path = params.ti.info_hashes(), str(out)
    claim(params)
    return lt.write_resume_data_buf(params)


def _forged_out(out: Path, folder: Path, torrent: Path, claim) -> None:
    """OUT with random data of the right names and sizes, and resume data (not mdist's) that claims it."""
    (out / ".mdist").mkdir(parents=True)
    for path in folder.iterdir():
        (out / path.name).write_bytes(os.urandom(path.stat().st_size))
    (out / ".mdist" / "resume.fastresume").write_bytes(_claimed(torrent, out, claim))


def _all(count: int) -> list[bool]:
    return [True] * count


FORGED_CLAIMS = {
    "have every piece": lambda p: setattr(p, "have_pieces", _all(p.ti.num_pieces())),
    "have and verified": lambda p: (setattr(p, "have_pieces", _all(p.ti.num_pieces())),
                                    setattr(p, "verified_pieces", _all(p.ti.num_pieces()))),
    "seed mode": lambda p: setattr(p, "flags", p.flags | lt.torrent_flags.seed_mode),
    "no file wanted": lambda p: setattr(p, "file_priorities", [0] * p.ti.num_files()),
    "no piece wanted": lambda p: setattr(p, "piece_priorities", [0] * p.ti.num_pieces()),
}


@pytest.mark.parametrize("claim", FORGED_CLAIMS)
def test_forged_resume_data_does_not_skip_the_piece_check(tmp_path: Path, claim: str) -> None:
    """Random data and resume data claiming it (written by libtorrent, not by mdist here): fetch must
    not say 'verified'; libtorrent checks the data, finds nothing good, and no peer has the rest."""
    torrent, folder = _unknown_release(tmp_path)
    out = tmp_path / "out"
    _forged_out(out, folder, torrent, FORGED_CLAIMS[claim])
    result = run_mdist("fetch", str(torrent), "--out", str(out), "--no-dht", "--timeout", "3", timeout=60)
    assert result.returncode != 0 and "verified" not in result.stdout, result.stdout + result.stderr
    assert not (out / ".mdist" / "complete.json").exists()
    assert "resume data not written by mdist here: checking existing data" in result.stderr


def test_forged_resume_data_over_random_data_ends_with_the_release(tmp_path: Path) -> None:
    """With a peer: every forged piece is checked, found bad and fetched; the result is the release."""
    torrent, folder = _unknown_release(tmp_path)
    out = tmp_path / "out"
    _forged_out(out, folder, torrent, FORGED_CLAIMS["have and verified"])
    with raw_seeder(torrent, folder.parent) as magnet:
        result = run_mdist("fetch", str(torrent), "--out", str(out), "--peer", magnet.rsplit("x.pe=", 1)[1],
                           "--no-dht", "--json", "--timeout", "30", timeout=120)
    payload = _payload(result)
    assert payload["downloaded_bytes"] >= 700_000
    for path in folder.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_resume_data_mdist_wrote_still_wants_every_file(tmp_path: Path) -> None:
    """Even resume data that mdist signed cannot leave files out: priorities are mdist's (all), and a
    download that libtorrent calls finished must cover every file with checked pieces."""
    torrent, folder = _unknown_release(tmp_path)
    out = tmp_path / "out"
    (out / ".mdist").mkdir(parents=True)
    data = _claimed(torrent, out, FORGED_CLAIMS["no file wanted"])
    write_state_file(out / ".mdist" / "resume.fastresume", data, resume_purpose(out))
    result = run_mdist("fetch", str(torrent), "--out", str(out), "--no-dht", "--timeout", "3", timeout=60)
    assert result.returncode != 0 and "verified" not in result.stdout, result.stdout + result.stderr
    assert "resuming from saved state" in result.stderr
    assert not (out / ".mdist" / "complete.json").exists()


def _resume_state(tmp_path: Path) -> tuple[Path, bytes, object]:
    state = tmp_path / "out" / ".mdist"
    state.mkdir(parents=True)
    saved = lt.add_torrent_params()
    saved.ti = lt.torrent_info(create_torrent(FIXTURE))
    saved.info_hashes, saved.save_path = saved.ti.info_hashes(), str(state.parent)
    saved.have_pieces = _all(saved.ti.num_pieces())
    return state, lt.write_resume_data_buf(saved), saved.ti


def test_resume_data_vouches_for_its_own_folder_only(tmp_path: Path) -> None:
    """Signed for OUT: the same bytes (and .mac) copied to another folder are checked again."""
    state, data, ti = _resume_state(tmp_path)
    write_state_file(state / "resume.fastresume", data, resume_purpose(state.parent))
    requested = InfoHashes.of(ti.info_hashes())
    heard = Messages()
    assert _maybe_resume(lt.add_torrent_params(), state, requested, heard) is not None
    assert heard.lines == ["resuming from saved state"]
    elsewhere = tmp_path / "elsewhere" / ".mdist"
    elsewhere.mkdir(parents=True)
    for name in ("resume.fastresume", "resume.fastresume.mac"):
        (elsewhere / name).write_bytes((state / name).read_bytes())
    fresh, heard = lt.add_torrent_params(), Messages()
    resumed = _maybe_resume(fresh, elsewhere, requested, heard)
    assert resumed is fresh and not any(resumed.have_pieces)
    assert InfoHashes.of(resumed.ti.info_hashes()) == requested  # the file list alone: it is the one asked for
    assert heard.lines == ["resume data not written by mdist here: checking existing data"]


def test_a_kill_between_the_two_writes_leaves_resume_data_trusted(tmp_path: Path) -> None:
    """The .mac file is written first and keeps the previous HMAC: the old data still verifies."""
    from mdist.sources.torrent_fetch import read_state_file

    path = tmp_path / "state.bin"
    write_state_file(path, b"first", "test")
    first_macs = (tmp_path / "state.bin.mac").read_bytes()
    write_state_file(path, b"second", "test")
    assert read_state_file(path, 100, "test").trusted
    assert not read_state_file(path, 100, "another purpose").trusted
    path.write_bytes(b"first")  # as if killed after the .mac file was written, before the data
    assert read_state_file(path, 100, "test").trusted
    write_state_file(path, b"third", "test")
    path.write_bytes(b"first")  # two writes ago: no longer vouched for
    assert not read_state_file(path, 100, "test").trusted
    assert first_macs.split()[0] not in (tmp_path / "state.bin.mac").read_bytes().split()


def test_signed_bytes_need_this_machines_key(tmp_path: Path, monkeypatch) -> None:
    from mdist.derived import RECORD_FILE, sign_bytes, signed_by_us

    mac = sign_bytes(b"data", "purpose")
    assert signed_by_us(b"data", mac, "purpose")
    assert not signed_by_us(b"data!", mac, "purpose") and not signed_by_us(b"data", mac, "other")
    assert not signed_by_us(b"data", mac.upper(), "purpose") and not signed_by_us(b"data", "é" * 64, "purpose")
    assert not signed_by_us(b"data", None, "purpose")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "another-machine"))
    assert not signed_by_us(b"data", mac, "purpose")
    assert RECORD_FILE == "derived.json"


@pytest.mark.parametrize("case", ["symbolic link", "FIFO", "huge sparse file"])
def test_resume_data_is_read_within_bounds(tmp_path: Path, case: str) -> None:
    """No link followed, no special file, nothing larger than the cap read into memory."""
    state, data, ti = _resume_state(tmp_path)
    resume = state / "resume.fastresume"
    if case == "symbolic link":  # even to resume data signed for this folder
        target = tmp_path / "elsewhere.fastresume"
        write_state_file(target, data, resume_purpose(state.parent))
        resume.symlink_to(target)
        (state / "resume.fastresume.mac").write_bytes((tmp_path / "elsewhere.fastresume.mac").read_bytes())
    elif case == "FIFO":
        os.mkfifo(resume)
    else:
        with open(resume, "wb") as handle:
            handle.write(data)
            handle.truncate(200 << 20)  # sparse: 200 MB that libtorrent would parse
    fresh, heard = lt.add_torrent_params(), Messages()
    started = time.monotonic()
    assert _maybe_resume(fresh, state, InfoHashes.of(ti.info_hashes()), heard) is fresh
    assert time.monotonic() - started < 1.0
    assert fresh.ti is None and len(heard.lines) == 1, heard.lines
    assert {"symbolic link": "a symbolic link", "FIFO": "not a regular file",
            "huge sparse file": "larger than 64 MiB"}[case] in heard.lines[0]
    assert "checking existing data" in heard.lines[0]


def test_sharing_a_folder_never_recurses(tmp_path: Path) -> None:
    """create_torrent walks the folder without recursion: 1,200 levels are refused in one line
    (os.walk raised RecursionError), as a FIFO is (libtorrent would list it as a file)."""
    folder = tmp_path / "deep"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x" * 100)
    fd = os.open(folder, os.O_RDONLY)
    try:
        for _ in range(1200):
            os.mkdir("d", dir_fd=fd)
            fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
    finally:
        os.close(fd)
    try:
        with pytest.raises(InputError, match="nested deeper than 64 folders"):
            create_torrent(folder)
    finally:
        _remove_deep(folder / "d")
    os.mkfifo(folder / "pipe")
    with pytest.raises(InputError, match="not a regular file"):
        create_torrent(folder)


def _remove_deep(top: Path) -> None:
    """rmdir a chain of single folders, deepest first, without recursion (or over-long paths)."""
    fds = [os.open(top, os.O_RDONLY)]
    while True:
        try:
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        except FileNotFoundError:
            break
    while len(fds) > 1:
        os.close(fds.pop())
        os.rmdir("d", dir_fd=fds[-1])
    os.close(fds[0])
    top.rmdir()
