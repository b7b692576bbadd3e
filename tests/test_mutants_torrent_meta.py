"""mdist.sources.torrent_meta, in process: each check of an info dict from outside, at its edges.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_torrent_attacks.py
shows hostile torrents refused end to end; these pin every bound, message and exit class.
"""

from __future__ import annotations

from pathlib import Path

import libtorrent as lt
import pytest

from mdist.errors import InputError, UnsafeContentError
from mdist.paths import UnsafePathError
from mdist.sources import torrent_meta as tm

ROOT = b"\x01" * 32
LEAF = {b"": {b"length": 10, b"pieces root": ROOT}}
V1 = {b"piece length": 16384, b"pieces": b"\x00" * 20}
V2 = {b"piece length": 16384, b"meta version": 2}


def v1(*paths: list[bytes], name: bytes = b"x") -> dict:
    return {**V1, b"name": name, b"files": [{b"length": 1, b"path": p} for p in paths]}


def v2(tree: dict, name: bytes = b"x") -> dict:
    return {**V2, b"name": name, b"file tree": tree}


def malformed(info: object, message: str) -> None:
    with pytest.raises(InputError) as caught:
        tm.check_info_dict(info)
    assert not isinstance(caught.value, UnsafeContentError)
    assert str(caught.value) == f"torrent metadata is malformed: {message}"


def refused(info: object, message: str) -> None:
    with pytest.raises(UnsafeContentError) as caught:
        tm.check_info_dict(info)
    assert str(caught.value) == message, str(caught.value)


def test_constants() -> None:
    assert (tm.MIN_PIECE, tm.MAX_PIECE) == (256 << 10, 16 << 20)
    assert (tm.MIN_PIECE_LENGTH, tm.MAX_PIECE_LENGTH, tm.MAX_FILE_LENGTH) == (16 << 10, 256 << 20, 1 << 50)
    assert tm.REFUSED == "torrent refused"


@pytest.mark.parametrize("total, piece", [(0, 256 << 10), (1500 * (256 << 10), 256 << 10),
                                          (1500 * (256 << 10) + 1, 512 << 10), (14_500_000_000, 16 << 20),
                                          (10**15, 16 << 20), (1500 * (8 << 20) + 1, 16 << 20),
                                          (1500 * (8 << 20), 8 << 20)])
def test_piece_size(total: int, piece: int) -> None:
    assert tm.choose_piece_size(total) == piece


def test_accepted_info_dicts() -> None:
    assert tm.check_info_dict({**V1, b"name": b"f.bin", b"length": 0}) == ["f.bin"]
    assert tm.check_info_dict({**V1, b"name": b"f.bin", b"length": 1 << 50}) == ["f.bin"]
    assert tm.check_info_dict(v1([b"a", b"b"], [b"c"])) == ["a/b", "c"]
    assert sorted(tm.check_info_dict(v2({b"a": LEAF, b"d": {b"e": LEAF}}))) == ["a", "d/e"]
    assert tm.check_info_dict(v2({b"a": {b"": {b"length": 0}}})) == ["a"]  # an empty file has no pieces root
    hybrid = {**v1([b"a"], [b"d", b"e"]), b"file tree": {b"d": {b"e": LEAF}, b"a": LEAF}}
    assert sorted(tm.check_info_dict(hybrid)) == ["a", "d/e"]
    assert tm.root_name({**V1, b"name": b"r", b"length": 1}) == "r"
    assert tm.root_name({**V1, b"name.utf-8": b"caf\xc3\xa9", b"length": 1}) == "café"


@pytest.mark.parametrize("length", [16 << 10, 256 << 20])
def test_piece_length_bounds_accepted(length: int) -> None:
    assert tm.check_info_dict({**V1, b"piece length": length, b"name": b"x", b"length": 1}) == ["x"]
    assert tm.check_info_dict({**v2({b"a": LEAF}), b"piece length": length}) == ["a"]


@pytest.mark.parametrize("length", [(16 << 10) - 1, (256 << 20) + 1, True, None])
def test_piece_length_bounds_refused(length) -> None:
    malformed({**V1, b"piece length": length, b"name": b"x", b"length": 1},
              f"piece length is not a whole number from {16 << 10} to {256 << 20}")


def test_v2_piece_length_is_a_power_of_two() -> None:
    malformed({**v2({b"a": LEAF}), b"piece length": 3 << 14}, "piece length of a v2 torrent is not a power of two")
    assert tm.check_info_dict({**V1, b"piece length": 3 << 14, b"name": b"x", b"length": 1}) == ["x"]


def test_pieces() -> None:
    assert tm.check_info_dict({**V1, b"pieces": b"", b"name": b"x", b"length": 1}) == ["x"]
    assert tm.check_info_dict({**V1, b"pieces": b"\x00" * 40, b"name": b"x", b"length": 1}) == ["x"]
    for bad in (b"\x00" * 19, b"\x00" * 21):
        malformed({**V1, b"pieces": bad, b"name": b"x", b"length": 1}, "pieces is not a list of SHA-1 hashes")
    malformed({**V1, b"pieces": 20, b"name": b"x", b"length": 1}, "pieces is not a byte string")
    no_pieces = {b"piece length": 16384, b"name": b"x", b"length": 1}
    assert tm.check_info_dict(no_pieces) == ["x"]


def test_lengths() -> None:
    malformed({**V1, b"name": b"x", b"length": (1 << 50) + 1}, f"length is not a whole number from 0 to {1 << 50}")
    malformed({**V1, b"name": b"x", b"files": [{b"length": True, b"path": [b"a"]}]},
              f"files[0] length is not a whole number from 0 to {1 << 50}")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a"]}, {b"path": [b"b"]}]},
              f"files[1] length is not a whole number from 0 to {1 << 50}")
    malformed(v2({b"a": {b"": {b"length": -1}}}), f"file tree entry 'a' length is not a whole number from 0 to "
                                                   f"{1 << 50}")
    malformed({**V1, b"name": b"x", b"length": 1, b"files": [{b"length": 1, b"path": [b"a"]}]},
              "both length and files are given")


def test_files_lists() -> None:
    malformed({**V1, b"name": b"x", b"files": []}, "files is not a non-empty list")
    malformed({**V1, b"name": b"x", b"files": {}}, "files is not a non-empty list")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a"]}, 5]}, "files[1] is not a dictionary")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": []}]}, "files[0] path is not a non-empty list")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": b"a"}]},
              "files[0] path is not a non-empty list")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1}]}, "files[0] path is missing")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a", 5]}]},
              "files[0] path is not a byte string")
    malformed({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a"], b"attr": 5}]},
              "files[0] attr is not a byte string")
    malformed({**V1, b"name": b"x"}, "it lists no files (no length, files or file tree)")
    malformed([], "the info section is not a dictionary")
    malformed({**V1, b"length": 1}, "name is missing")
    malformed({**V1, b"name": 5, b"length": 1}, "name is not a byte string")


def test_the_file_count_limit() -> None:
    at_limit = {**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"f%d" % i]} for i in range(100_000)]}
    assert len(tm.check_info_dict(at_limit)) == 100_000
    at_limit[b"files"].append({b"length": 1, b"path": [b"one more"]})
    refused(at_limit, "torrent refused: more than 100000 files")


def test_the_v2_file_count_limit() -> None:
    tree = {b"f%d" % i: LEAF for i in range(100_001)}
    refused(v2(tree), "torrent refused: file list: more than 100000 files")  # the walk stops only past 100,001
    tree.pop(b"f0")
    assert len(tm.check_info_dict(v2(tree))) == 100_000


def chain(first: bytes, levels: int, name: bytes = b"d") -> dict:
    """A file at first/name/.../name (levels names in all)."""
    tree: dict = LEAF
    for _ in range(levels - 1):
        tree = {name: tree}
    return {first: tree}


def test_a_deep_v2_tree_is_walked_without_recursion_and_bounded() -> None:
    with pytest.raises(UnsafePathError) as caught:
        tm.check_info_dict(v2(chain(b"d", 5000)))
    assert str(caught.value) == "torrent refused: a path is longer than 4096 characters"
    part = b"a" * 240
    longest = tm.check_info_dict(v2(chain(part, 17, part)))  # 17 names of 240 and 16 slashes: 4096 characters
    assert len(longest[0]) == 4096
    with pytest.raises(UnsafePathError) as caught:
        tm.check_info_dict(v2(chain(part + b"a", 17, part)))
    assert str(caught.value) == "torrent refused: a path is longer than 4096 characters"


def test_many_empty_folders_are_bounded() -> None:
    tree = {b"d%d" % i: {b"e": {b"f": {b"g": LEAF}}} for i in range(100_001)}
    with pytest.raises(UnsafePathError, match="more than 100000 files"):
        tm._v2_paths(tree)


def test_v2_tree_shapes() -> None:
    malformed(v2({}), "file tree entry '(root)' is not a non-empty dictionary")
    malformed(v2({b"a": {}}), "file tree entry 'a' is not a non-empty dictionary")
    malformed(v2({b"a": {b"b": 5}}), "file tree entry 'a/b' is not a non-empty dictionary")
    malformed(v2(LEAF), "file tree entry '(root)' is both a file and a folder")
    malformed(v2({b"a": {**LEAF, b"b": LEAF}}), "file tree entry 'a' is both a file and a folder")
    malformed(v2({b"a": {b"": 5}}), "file tree entry 'a' is not a dictionary")
    malformed(v2({b"a": {b"": {b"length": 1}}}), "file tree entry 'a' pieces root is not a byte string")
    malformed(v2({b"a": {b"": {b"length": 1, b"pieces root": b"\x01" * 31}}}),
              "file tree entry 'a' pieces root is not a SHA-256 hash")
    malformed(v2({b"a": {b"": {b"length": 1, b"pieces root": b"\x01" * 33}}}),
              "file tree entry 'a' pieces root is not a SHA-256 hash")
    malformed(v2({5: LEAF}), "file tree is not a byte string")


def test_names() -> None:
    refused(v1([b"\xff"]), "torrent refused: files[0] path is not UTF-8")
    refused({**V1, b"name": b"\xff", b"length": 1}, "torrent refused: name is not UTF-8")
    refused(v1([b".."]), "torrent refused: files[0] path: '..' leads outside the folder")
    refused({**V1, b"name": b"..", b"length": 1}, "torrent refused: name: '..' leads outside the folder")
    refused(v2({b"a/b": LEAF}), "torrent refused: file tree: 'a/b' holds a separator or control character")
    refused({**v1([b"a"]), b"name.utf-8": b"y"}, "torrent refused: name differs from its name.utf-8 twin")
    refused({**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a"], b"path.utf-8": [b"b"]}]},
            "torrent refused: files[0] path differs from its path.utf-8 twin")
    assert tm.check_info_dict({**V1, b"name.utf-8": b"x", b"files": [
        {b"length": 1, b"path.utf-8": [b"a"]}]}) == ["a"]
    refused(v1([b".git", b"x"], name=b"ok"), "torrent refused: file list: '.git/x' is inside a tool-state folder")
    refused(v1([b"a"], name=b".git"), "torrent refused: name: '.git' is inside a tool-state folder")
    refused(v1([b"A"], [b"a"]), "torrent refused: file list: 'a' and 'A' name the same file")


def test_symlinks() -> None:
    for entry in ({b"attr": b"l"}, {b"attr": b"xl"}, {b"symlink path": [b"y"]}):
        refused({**V1, b"name": b"x", b"length": 0, **entry}, "torrent refused: it contains a symbolic link")
        refused({**V1, b"name": b"x", b"files": [{b"length": 0, b"path": [b"a"], **entry}]},
                "torrent refused: it contains a symbolic link")
        refused(v2({b"a": {b"": {b"length": 0, **entry}}}), "torrent refused: it contains a symbolic link")
    assert tm.check_info_dict({**V1, b"name": b"x", b"length": 0, b"attr": b"x"}) == ["x"]
    assert tm.check_info_dict({**V1, b"name": b"x", b"length": 0, b"attr": b"h"}) == ["x"]


def test_pad_files_are_checked_but_not_listed() -> None:
    info = {**V1, b"name": b"x", b"files": [{b"length": 1, b"path": [b"a"]},
                                            {b"length": 5, b"path": [b".pad", b"5"], b"attr": b"p"},
                                            {b"length": 5, b"path": [b".pad", b"5"], b"attr": b"xp"}]}
    assert tm.check_info_dict(info) == ["a"]
    info[b"files"].append({b"length": 5, b"path": [b".mdist", b"x"], b"attr": b"p"})
    refused(info, "torrent refused: files[3] path: '.mdist/x' is inside a tool-state folder")


def test_v1_and_v2_lists_must_agree() -> None:
    hybrid = {**v1([b"a"], [b"b"]), b"file tree": {b"a": LEAF, b"c": LEAF}}
    refused(hybrid, "torrent refused: its v1 and v2 file lists differ")
    single = {**V1, b"name": b"a", b"length": 10, b"file tree": {b"a": LEAF}}
    assert tm.check_info_dict(single) == ["a"]


def test_one_of() -> None:
    assert tm._one_of({b"k": 1}, b"k", "w") == 1
    assert tm._one_of({b"k.utf-8": 2}, b"k", "w") == 2
    assert tm._one_of({b"k": 3, b"k.utf-8": 3}, b"k", "w") == 3
    with pytest.raises(InputError, match="^torrent metadata is malformed: w is missing$"):
        tm._one_of({}, b"k", "w")


# -- sharing: never a torrent that mdist's own fetchers would refuse ----------------------------------------

def release(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "release"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
    return folder


def shared(torrent: bytes) -> list[str]:
    return sorted(tm.check_info_dict(lt.bdecode(torrent)[b"info"]))


def test_tool_state_is_left_out(tmp_path: Path) -> None:
    folder = release(tmp_path, "a", ".git/config", "sub/.hg/x", ".cache/huggingface/t", ".cache/ok", "b/c",
                     ".MDIST/x", ".gitignore")
    assert shared(tm.create_torrent(folder)) == [".cache/ok", ".gitignore", "a", "b/c"]


def test_leave_out_and_versions(tmp_path: Path) -> None:
    folder = release(tmp_path, "a", "b/c", "d")
    assert shared(tm.create_torrent(folder, leave_out=["b/c", "d"])) == ["a"]
    assert shared(tm.create_torrent(folder, leave_out=["b"])) == ["a", "d"]  # a folder and all in it
    for version in ("hybrid", "v1", "v2"):
        info = lt.bdecode(tm.create_torrent(folder, version=version))[b"info"]
        assert (b"pieces" in info) == (version != "v2") and (b"file tree" in info) == (version != "v1")
    info = lt.bdecode(tm.create_torrent(folder, piece_size=32 << 10))[b"info"]
    assert info[b"piece length"] == 32 << 10
    assert lt.bdecode(tm.create_torrent(folder))[b"info"][b"piece length"] == 256 << 10
    torrent = lt.bdecode(tm.create_torrent(folder, trackers=["udp://a:1", "udp://b:2"], web_seeds=["http://w/"]))
    assert torrent[b"announce"] == b"udp://a:1"
    assert torrent[b"announce-list"] == [[b"udp://a:1"], [b"udp://b:2"]]
    assert torrent[b"url-list"] in (b"http://w/", [b"http://w/"])
    assert torrent[b"created by"] == b"mdist"
    assert torrent[b"info"][b"name"] == b"release"


def test_what_cannot_be_shared(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a folder"):
        tm.create_torrent(tmp_path / "missing")
    folder = release(tmp_path, "a")
    (folder / "link").symlink_to(folder / "a")
    with pytest.raises(InputError) as caught:
        tm.create_torrent(folder)
    assert str(caught.value) == f"{folder / 'link'} is a symbolic link; refusing to share it"
    (folder / "link").unlink()
    (folder / "sub").mkdir()
    (folder / "sub" / "dirlink").symlink_to(folder)
    with pytest.raises(InputError, match="dirlink is a symbolic link"):
        tm.create_torrent(folder)
    (folder / "sub" / "dirlink").unlink()
    (folder / "A").write_bytes(b"x")
    with pytest.raises(InputError) as caught:
        tm.create_torrent(folder)
    assert str(caught.value).startswith(f"cannot share {folder.resolve()}: file list: ")
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    (empty / ".git" / "config").write_bytes(b"x")
    with pytest.raises(InputError) as caught:
        tm.create_torrent(empty)
    assert str(caught.value) == f"{empty.resolve()} has no files to share"


def test_a_folder_name_that_fetchers_refuse_cannot_be_shared(tmp_path: Path) -> None:
    folder = tmp_path / "bad\x01name"
    folder.mkdir()
    (folder / "a").write_bytes(b"a")
    with pytest.raises(InputError) as caught:
        tm.create_torrent(folder)
    assert str(caught.value).startswith(f"cannot share {folder.resolve()}: folder name: ")
    state = tmp_path / ".git"
    state.mkdir()
    (state / "a").write_bytes(b"a")
    with pytest.raises(InputError, match="'.git' is inside a tool-state folder"):
        tm.create_torrent(state)


def test_tool_state_is_never_inspected(tmp_path: Path) -> None:
    """Links and special files inside tool state are not shared, so never refused (libtorrent skips them too)."""
    import os

    folder = release(tmp_path, "a", "zz/b")
    (folder / ".git").mkdir()
    (folder / ".git" / "link").symlink_to(folder / "a")  # inside a tool-state folder: not walked
    (folder / ".cache").mkdir()
    (folder / ".cache" / "huggingface").symlink_to(tmp_path)  # a tool-state name itself, two levels down
    os.mkfifo(folder / ".mdist")
    for state in (".git", "zz/.hg"):  # deeper than walk goes, but never walked
        (folder / state / "/".join(["d"] * 70)).mkdir(parents=True)
    assert shared(tm.create_torrent(folder)) == ["a", "zz/b"]
    (folder / "zlink").symlink_to(folder / "a")  # after the tool state in name order: still checked
    with pytest.raises(InputError) as caught:
        tm.create_torrent(folder)
    assert str(caught.value) == f"{folder / 'zlink'} is a symbolic link; refusing to share it"
    (folder / "zlink").unlink()
    os.mkfifo(folder / "zz" / "fifo")
    with pytest.raises(InputError) as caught:
        tm.create_torrent(folder)
    assert str(caught.value) == f"{folder / 'zz' / 'fifo'} is not a regular file or folder; refusing to share it"


def test_the_shared_file_count_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tm, "MAX_FILES", 3)
    folder = release(tmp_path, "a", "b/c", "b/d/e")  # 3 files (and 2 folders, which do not count)
    assert tm._refuse_unshareable(folder) is None
    (folder / "f").write_bytes(b"f")
    with pytest.raises(InputError) as caught:
        tm._refuse_unshareable(folder)
    assert str(caught.value) == f"cannot share {folder}: more than 3 files"


def test_an_entry_that_cannot_be_inspected(tmp_path: Path, monkeypatch) -> None:
    class Entry:
        name, path = "a", str(tmp_path / "a")

        def stat(self, follow_symlinks=True):
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tm, "walk", lambda directory, skip: iter([("", [Entry()])]))
    with pytest.raises(InputError) as caught:
        tm._refuse_unshareable(tmp_path)
    assert str(caught.value) == f"cannot inspect {tmp_path / 'a'}: Permission denied"


def test_shared_paths_are_checked_below_the_root(tmp_path: Path) -> None:
    folder = release(tmp_path, "sub1/x", "sub2/x", "a/b/c")  # same names in other folders: fine
    assert shared(tm.create_torrent(folder)) == ["a/b/c", "sub1/x", "sub2/x"]
    (folder / "sub1" / "X").write_bytes(b"X")
    with pytest.raises(InputError) as caught:
        tm.create_torrent(folder)
    assert str(caught.value) == (f"cannot share {folder.resolve()}: file list: 'sub1/x' and 'sub1/X' name the same "
                                 f"file") or str(caught.value) == (f"cannot share {folder.resolve()}: file list: "
                                                                   f"'sub1/X' and 'sub1/x' name the same file")


def test_root_name() -> None:
    assert tm.root_name({b"name": b"r"}) == "r" and tm.root_name({b"name.utf-8": b"r"}) == "r"
    with pytest.raises(InputError) as caught:
        tm.root_name({})
    assert str(caught.value) == "torrent metadata is malformed: name is missing"
    with pytest.raises(UnsafeContentError) as caught:
        tm.root_name({b"name": b"r", b"name.utf-8": b"s"})
    assert str(caught.value) == "torrent refused: name differs from its name.utf-8 twin"
    with pytest.raises(UnsafeContentError) as caught:
        tm.root_name({b"name": b"a/b"})
    assert str(caught.value) == "torrent refused: name: 'a/b' holds a separator or control character"
    with pytest.raises(InputError) as caught:
        tm.root_name({b"name": 5})
    assert str(caught.value) == "torrent metadata is malformed: name is not a byte string"


def test_attr_that_is_not_bytes() -> None:
    malformed({**V1, b"name": b"x", b"length": 0, b"attr": 5}, "the file attr is not a byte string")
    malformed(v1([b"a"]) | {b"files": [{b"length": 1, b"path": [b"a"], b"attr": 5}]},
              "files[0] attr is not a byte string")
    malformed(v2({b"a": {b"": {b"length": 0, b"attr": 5}}}), "file tree entry 'a' attr is not a byte string")


def test_the_v2_node_count_limit(monkeypatch) -> None:
    monkeypatch.setattr(tm, "MAX_FILES", 2)  # at most 8 nodes: the root, folders and the file's own node
    def chain(folders: int) -> dict:
        tree: dict = LEAF
        for i in range(folders):
            tree = {b"d%d" % i: tree}
        return tree
    assert tm.check_info_dict(v2(chain(7))) == ["/".join(f"d{i}" for i in reversed(range(7)))]  # 1 + 6 + 1 = 8
    refused(v2(chain(8)), "torrent refused: more than 2 files")
