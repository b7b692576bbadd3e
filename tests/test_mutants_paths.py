"""mdist.paths, in process: each check of the one rule for relative paths from outside, at its edges.

Written for mutation testing (bench/mutation.py, docs/testing.md): the CLI tests show that hostile
names are refused end to end; these pin every boundary so that a weakened check fails a test.
"""

from __future__ import annotations

import pytest

from mdist.errors import UnsafeContentError
from mdist.paths import (MAX_COMPONENT_BYTES, MAX_FILES, MAX_PATH_CHARS, STATE_FOLDERS, UnsafePathError,
                         check_component, check_not_state, check_path_set, check_relative_path, collision_key,
                         in_state_folder)


def refused(func, *args, match: str | None = None) -> str:
    with pytest.raises(UnsafePathError) as info:
        func(*args)
    if match is not None:
        assert match in str(info.value), str(info.value)
    return str(info.value)


def test_limits_are_the_documented_ones() -> None:
    assert (MAX_PATH_CHARS, MAX_COMPONENT_BYTES, MAX_FILES) == (4096, 255, 100_000)
    assert STATE_FOLDERS == {".mdist", ".git", ".hg", ".svn", ".bzr", ".huggingface"}
    assert issubclass(UnsafePathError, UnsafeContentError)


@pytest.mark.parametrize("name", ["a", "model.safetensors", "a b", "ü", "1:", "ab:", "\u00a0", " ", "~",
                                  "..a", "a..", ".a", "...", "X", "MODEL-X.json", "a" * MAX_COMPONENT_BYTES, "é" * 127])
def test_plain_names_are_returned_unchanged(name: str) -> None:
    assert check_component(name) == name
    assert check_component(name, "somewhere") is name


@pytest.mark.parametrize("name, message", [
    ("", "'' leads outside the folder"),
    (".", "'.' leads outside the folder"),
    ("..", "'..' leads outside the folder"),
    ("\ud800", "is not valid Unicode"),
    ("a" * (MAX_COMPONENT_BYTES + 1), f"a name is longer than {MAX_COMPONENT_BYTES} bytes"),
    ("é" * 128, f"a name is longer than {MAX_COMPONENT_BYTES} bytes"),  # 128 chars, 256 bytes
    ("a/b", "holds a separator or control character"),
    ("/", "holds a separator or control character"),
    ("a\\b", "holds a separator or control character"),
    ("\\", "holds a separator or control character"),
    ("a\x00", "holds a separator or control character"),
    ("\x1f", "holds a separator or control character"),
    ("a\nb", "holds a separator or control character"),
    ("\x7f", "holds a separator or control character"),
    ("\x80", "holds a separator or control character"),
    ("\x9f", "holds a separator or control character"),
    ("C:", "looks like a drive letter"),
    ("c:x", "looks like a drive letter"),
    ("é:", "looks like a drive letter"),
    ("x:y", "looks like a drive letter"),
])
def test_unsafe_names_are_refused_with_the_reason(name: str, message: str) -> None:
    text = refused(check_component, name, "the listing", match=message)
    assert text.startswith("the listing: ")
    assert refused(check_component, name).startswith("path: ")


@pytest.mark.parametrize("value", [None, b"a", 1, ["a"]])
def test_a_name_that_is_not_text_is_refused(value: object) -> None:
    assert refused(check_component, value, "w") == "w: a name is not text"


def test_messages_show_names_escaped_and_cut() -> None:
    assert refused(check_component, "a\x01b") == "path: 'a\\x01b' holds a separator or control character"
    assert "'\\\\ud800' is not valid Unicode" in refused(check_component, "\ud800")
    long_name = "ä" * 50 + "\\" + "b" * 150  # a separator, 201 characters, 251 bytes
    text = refused(check_relative_path, long_name)
    shown = text.split("'")[1]
    assert shown == "\\\\xc3\\\\xa4" * 50 + "\\\\" + "b" * 149  # the first 200 characters, escaped to ASCII
    assert text.isascii()


def test_relative_paths_are_returned_unchanged() -> None:
    for path in ["a", "a/b/c.json", "x/.cache/huggingface/y", ".cache/other", ".cache", "sub/.gitignore",
                 ".github/x", "a/.mdistx", "git/x"]:
        assert check_relative_path(path) == path


def test_path_length_limit_is_in_characters() -> None:
    part = "a" * 200
    longest = "/".join([part] * 20) + "/" + "b" * (MAX_PATH_CHARS - 20 * 201)
    assert len(longest) == MAX_PATH_CHARS
    assert check_relative_path(longest) == longest
    assert refused(check_relative_path, longest + "b", "w") == f"w: path longer than {MAX_PATH_CHARS} characters"


@pytest.mark.parametrize("path, message", [
    ("", "empty or non-text path"),
    (None, "empty or non-text path"),
    (b"a", "empty or non-text path"),
    ("/etc/passwd", "'/etc/passwd' is an absolute path"),
    ("/", "is an absolute path"),
    ("a//b", "'' leads outside the folder"),
    ("a/", "'' leads outside the folder"),
    ("../x", "'..' leads outside the folder"),
    ("a/../../x", "'..' leads outside the folder"),
    ("a/./b", "'.' leads outside the folder"),
    ("a\\..\\b", "holds a separator"),
    ("C:/x", "looks like a drive letter"),
])
def test_unsafe_relative_paths_are_refused(path: object, message: str) -> None:
    text = refused(check_relative_path, path, "listing", match=message)
    assert text.startswith("listing: ")
    assert refused(check_relative_path, path).startswith("path: ")


@pytest.mark.parametrize("path", [
    ".git", ".git/config", "a/.git/config", "a/b/.git", ".mdist/complete.json", ".hg/x", ".svn/x", ".bzr/x",
    ".huggingface/x", ".GIT/config", "a/.Git", ".MDIST/x", ".cache/huggingface", ".cache/huggingface/x",
    ".CACHE/HuggingFace/download/x.lock", ".hg/../.git/y",
])
def test_tool_state_folders_are_refused(path: str) -> None:
    assert in_state_folder(path)
    with pytest.raises(UnsafePathError) as info:
        check_not_state(path.split("/"), "w")
    assert str(info.value) == f"w: {path!r} is inside a tool-state folder"
    with pytest.raises(UnsafePathError, match=r"^path: '"):
        check_not_state(path.split("/"))
    if ".." not in path.split("/"):
        refused(check_relative_path, path, match="is inside a tool-state folder")


def test_state_names_are_folded_like_the_file_system_folds_them() -> None:
    assert in_state_folder(".hu\u0067gingface") is True
    assert in_state_folder(".ca\u0063he/Hu\u0047gingface/x") is True
    assert in_state_folder("x/.cache/huggingface") is False  # the prefix counts only at the top
    assert in_state_folder(".cache/hugging") is False
    assert in_state_folder("huggingface/.cache") is False
    assert in_state_folder("a/b") is False
    assert in_state_folder(".gitx") is False


def test_collision_key_folds_case_and_normalisation() -> None:
    assert collision_key("A/B") == collision_key("a/b") == "a/b"
    assert collision_key("e\u0301") == collision_key("\u00e9") == "\u00e9"
    assert collision_key("Straße") == collision_key("STRASSE")
    assert collision_key("a") != collision_key("b")


def test_path_sets_are_checked_and_returned_in_order() -> None:
    paths = ["b", "a/x", "a/y", "ab", "a b/c", "A b/d"]
    assert check_path_set(iter(paths)) == paths
    assert check_path_set([]) == []


@pytest.mark.parametrize("paths, message", [
    (["a", "a"], "'a' and 'a' name the same file"),
    (["x/Model.json", "x/model.JSON"], "'x/model.JSON' and 'x/Model.json' name the same file"),
    (["\u00e9", "e\u0301"], "name the same file"),
    (["a", "a/b"], "'a' is both a file and a folder"),
    (["a/b/c", "a/b"], "'a/b' is both a file and a folder"),
    (["A/b", "a"], "'a' is both a file and a folder"),
    (["b/c", "b", "a/x", "a"], "'a' is both a file and a folder"),  # the first clash in sorted order
    (["ok", "../x"], "'..' leads outside the folder"),
    (["ok", ".git/config"], "is inside a tool-state folder"),
])
def test_unsafe_path_sets_are_refused(paths: list[str], message: str) -> None:
    assert refused(check_path_set, paths, "the torrent", match=message).startswith("the torrent: ")
    assert refused(check_path_set, paths).startswith("file list: ")


def test_the_file_count_limit_is_exact() -> None:
    paths = [f"f{i}" for i in range(MAX_FILES)]
    assert len(check_path_set(paths)) == MAX_FILES
    text = refused(check_path_set, paths + ["one more"], "w")
    assert text == f"w: more than {MAX_FILES} files"


def test_a_huge_list_is_refused_before_it_is_read_whole() -> None:
    def endless():
        i = 0
        while True:
            yield f"f{i}"
            i += 1

    refused(check_path_set, endless(), match="more than")


def test_depth_limit_of_a_relative_path() -> None:
    from mdist.paths import MAX_DEPTH

    assert MAX_DEPTH == 64
    deepest = "/".join(["d"] * 64)
    assert check_relative_path(deepest) == deepest
    assert refused(check_relative_path, deepest + "/f", "w") == "w: a path nested deeper than 64 folders"
    assert refused(check_relative_path, deepest + "/f").startswith("path: ")


# -- walk: every folder, sorted, never through a link, without recursion, bounded ---------------------------

def tree(root, *names: str):
    for name in names:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    return root


def listing(root, **kwargs) -> list[tuple[str, list[str]]]:
    from mdist.paths import walk

    return [(rel, [entry.name for entry in entries]) for rel, entries in walk(root, **kwargs)]


def test_walk_lists_every_folder_in_order(tmp_path) -> None:
    tree(tmp_path, "b", "a/y", "a/x/z", "c/", "B")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert listing(tmp_path) == [("", ["B", "a", "b", "c", "link"]), ("a", ["x", "y"]), ("a/x", ["z"]), ("c", [])]
    assert listing(tmp_path, skip=lambda rel: rel == "a/x") == [("", ["B", "a", "b", "c", "link"]),
                                                                ("a", ["x", "y"]), ("c", [])]
    assert listing(tmp_path, skip=lambda rel: rel in ("a", "c")) == [("", ["B", "a", "b", "c", "link"])]
    from mdist.paths import walk

    first = next(walk(str(tmp_path)))  # a str root is a path too
    assert first[0] == "" and first[1][0].path == str(tmp_path / "B")


def test_walk_depth_limit(tmp_path) -> None:
    from mdist.errors import InputError
    from mdist.paths import walk

    deep = tmp_path / "/".join(["d"] * 64)
    deep.mkdir(parents=True)
    assert len(list(walk(tmp_path))) == 65
    (deep / "e").mkdir()
    with pytest.raises(InputError) as info:
        list(walk(tmp_path))
    assert str(info.value) == f"{deep / 'e'} is nested deeper than 64 folders"
    assert len(list(walk(tmp_path, skip=lambda rel: rel.endswith("/e")))) == 65
    (deep / "e").rmdir()
    (deep / "f").write_bytes(b"")  # a file at the deepest level is fine
    assert len(list(walk(tmp_path))) == 65


def test_walk_error_is_one_line(tmp_path, monkeypatch) -> None:
    import os

    from mdist.errors import InputError
    from mdist.paths import walk

    tree(tmp_path, "sub/a")
    real = os.scandir

    def scandir(path):
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError) as info:
        list(walk(tmp_path))
    assert str(info.value) == f"cannot read {tmp_path / 'sub'}: Permission denied"
    with pytest.raises(InputError, match="cannot read"):
        list(walk(tmp_path / "missing"))
