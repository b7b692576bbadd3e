"""mdist.atomic, in process: an interrupted write never leaves something that looks complete.

Written for mutation testing (bench/mutation.py, docs/testing.md).
"""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from mdist import atomic
from mdist.errors import InputError


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_a_write_lands_whole_with_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        target = tmp_path / "sub" / "deeper" / "f.json"
        with atomic.atomic_writer(target) as handle:
            handle.write(b"abc")
            assert not target.exists()
            assert partials(target.parent) and partials(target.parent)[0].startswith(".f.json.")
        assert target.read_bytes() == b"abc"
        assert target.stat().st_mode & 0o777 == 0o640
        assert partials(target.parent) == []
    finally:
        os.umask(old)


def test_an_existing_target_needs_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(InputError) as info:
        with atomic.atomic_writer(target):
            pass
    assert str(info.value) == f"{target} exists; use --force to overwrite it"
    with atomic.atomic_writer(target, overwrite=True) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"


def test_a_link_is_replaced_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(InputError, match="exists; use --force"):
        atomic.write_bytes_atomic(link, b"x", overwrite=False)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="exists; use --force"):
        atomic.write_bytes_atomic(dangling, b"x", overwrite=False)
    atomic.write_bytes_atomic(link, b"new")
    assert victim.read_bytes() == b"keep"
    assert not link.is_symlink() and link.read_bytes() == b"new"
    dir_link = tmp_path / "dirlink"
    dir_link.symlink_to(tmp_path / "sub", target_is_directory=True)
    (tmp_path / "sub").mkdir()
    atomic.write_bytes_atomic(dir_link, b"d")
    assert not dir_link.is_symlink() and dir_link.read_bytes() == b"d"


def test_a_folder_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    with pytest.raises(InputError) as info:
        atomic.write_bytes_atomic(folder, b"x", overwrite=True)
    assert str(info.value) == f"{folder} is a folder; cannot write a file there"


def test_an_error_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_writer(target, overwrite=True) as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and partials(tmp_path) == []
    with pytest.raises(InputError) as info:
        with atomic.atomic_writer(target, overwrite=True):
            raise OSError(28, "No space left on device")
    assert str(info.value) == f"cannot write {target}: No space left on device"
    with pytest.raises(InputError) as info:
        with atomic.atomic_writer(target, overwrite=True):
            raise OSError("plain")
    assert str(info.value) == f"cannot write {target}: plain"
    with pytest.raises(ValueError):
        with atomic.atomic_writer(target, overwrite=True):
            raise ValueError
    assert target.read_bytes() == b"old" and partials(tmp_path) == []


def test_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(InputError) as info:
        atomic.write_bytes_atomic(blocker / "sub" / "f", b"x")
    assert str(info.value).startswith(f"cannot write {blocker / 'sub' / 'f'}: ")


def test_a_failed_rename_removes_the_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(InputError, match="cross-device"):
        atomic.write_bytes_atomic(tmp_path / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_the_folder_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    monkeypatch.setattr(atomic, "_fsync_dir", lambda d: synced.append((d, (d / "f").exists())))
    atomic.write_bytes_atomic(tmp_path / "f", b"x")
    assert synced == [(tmp_path, True)]


def test_fsync_dir_opens_and_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_open, real_fsync, real_close = os.open, os.fsync, os.close
    monkeypatch.setattr(atomic.os, "open", lambda p, flags: calls.append(("open", p, flags)) or real_open(p, flags))
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "close", lambda fd: calls.append("close") or real_close(fd))
    atomic._fsync_dir(tmp_path)
    assert calls == [("open", tmp_path, os.O_RDONLY), "fsync", "close"]
    calls.clear()
    atomic._fsync_dir(tmp_path / "missing")  # quietly skipped
    assert calls == [("open", tmp_path / "missing", os.O_RDONLY)]


def test_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o037)
    try:
        assert atomic._umask() == 0o037
        assert atomic._umask() == 0o037
    finally:
        os.umask(old)


def test_real_dir(tmp_path: Path) -> None:
    made = atomic.real_dir(tmp_path / "a" / "b")
    assert made == tmp_path / "a" / "b" and made.is_dir()
    assert atomic.real_dir(made) == made
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("file", "link", "dangling"):
        with pytest.raises(InputError) as info:
            atomic.real_dir(tmp_path / name)
        assert str(info.value) == (f"{tmp_path / name} is not a folder (a symbolic link or a file); refusing to use "
                                   f"it for mdist's state (remove it)")
    assert not (tmp_path / "nowhere").exists()
    atomic.refuse_unreal_dir(tmp_path / "absent")
    with pytest.raises(InputError) as info:
        atomic.real_dir(tmp_path / "file" / "sub")
    assert str(info.value).startswith(f"cannot create {tmp_path / 'file' / 'sub'}: ")


def test_copy_file_atomic(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"12345")
    atomic.copy_file_atomic(tmp_path / "src", tmp_path / "dst", max_bytes=5)
    assert (tmp_path / "dst").read_bytes() == b"12345"
    with pytest.raises(InputError):
        atomic.copy_file_atomic(tmp_path / "src", tmp_path / "dst2", max_bytes=4)
    assert not (tmp_path / "dst2").exists()
    with pytest.raises(InputError, match="exists"):
        atomic.copy_file_atomic(tmp_path / "src", tmp_path / "dst", max_bytes=5, overwrite=False)
    (tmp_path / "src").write_bytes(b"abc")
    atomic.copy_file_atomic(tmp_path / "src", tmp_path / "dst", max_bytes=5)
    assert (tmp_path / "dst").read_bytes() == b"abc"


Usage = namedtuple("Usage", "total used free")


def test_require_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list[Path] = []

    def disk_usage(path):
        probed.append(Path(path))
        return Usage(0, 0, 2_000_000_000)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    atomic.require_free_space(tmp_path / "a" / "b", 2_000_000_000, what="x")
    assert probed == [tmp_path]
    with pytest.raises(InputError) as info:
        atomic.require_free_space(tmp_path / "a", 2_000_000_001, what="the weights")
    assert str(info.value) == (f"not enough free space for the weights in {tmp_path / 'a'}: need 2.00 GB, "
                               f"have 2.00 GB")
    with pytest.raises(InputError, match="need 3.50 GB, have 2.00 GB"):
        atomic.require_free_space(tmp_path, 3_500_000_000, what="w")
    assert probed[-1] == tmp_path


def test_free_space_is_said_in_gigabytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(0, 0, 10**16))
    with pytest.raises(InputError) as info:
        atomic.require_free_space(tmp_path, 10**16 + 10**7, what="w")
    assert str(info.value).endswith("need 10000000.01 GB, have 10000000.00 GB")


def test_refuse_links_on_the_way(tmp_path: Path) -> None:
    from mdist.errors import UnsafeContentError

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"")
    atomic.refuse_links_on_the_way(tmp_path, ["a/b/f", "a/b/new", "x/y/z", "a/b"])  # files, folders, nothing yet
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b")
    with pytest.raises(UnsafeContentError) as info:
        atomic.refuse_links_on_the_way(tmp_path, ["a/b/f", "a/link/f"])
    assert str(info.value) == (f"{tmp_path / 'a' / 'link'} is a symbolic link or special file where the download "
                               "writes a/link/f; refusing to write through it (remove it first)")
    with pytest.raises(UnsafeContentError, match="where the seed writes a/link$|where the seed writes a/link;"):
        atomic.refuse_links_on_the_way(tmp_path, ["a/link"], "the seed")
    (tmp_path / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafeContentError, match="dangling is a symbolic link"):
        atomic.refuse_links_on_the_way(tmp_path, ["a/dangling"])
    os.mkfifo(tmp_path / "a" / "b" / "fifo")
    with pytest.raises(UnsafeContentError, match="fifo is a symbolic link or special file"):
        atomic.refuse_links_on_the_way(tmp_path, ["a/b/fifo"])
    atomic.refuse_links_on_the_way(tmp_path, ["missing/link/f"])  # the walk stops at what is not there yet


def test_refuse_links_checks_each_path_in_full(tmp_path: Path) -> None:
    from mdist.errors import UnsafeContentError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeContentError, match="link is a symbolic link"):
        atomic.refuse_links_on_the_way(tmp_path, ["a/ok", "a/link/x"])  # "a" seen before: still goes on
    with pytest.raises(UnsafeContentError, match="link is a symbolic link"):
        atomic.refuse_links_on_the_way(tmp_path, ["gone/x", "a/link/x"])  # a missing path does not stop the rest


def test_refuse_links_cannot_inspect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.lstat

    def lstat(path, *args, **kwargs):
        if Path(path).name == "secret":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "lstat", lstat)
    with pytest.raises(InputError) as info:
        atomic.refuse_links_on_the_way(tmp_path, ["secret/x"])
    assert str(info.value) == f"cannot inspect {tmp_path / 'secret'}: Permission denied"


def test_require_output_folder(tmp_path: Path) -> None:
    """--out must be a folder or creatable as one; a file there, or on the way to it, is named (with the
    option) before any input is read."""
    atomic.require_output_folder(tmp_path)  # an existing folder
    atomic.require_output_folder(tmp_path / "new" / "deeper")  # creatable
    (tmp_path / "f").write_bytes(b"x")

    def refused(path: Path, message: str, *option: str) -> None:
        with pytest.raises(InputError) as caught:
            atomic.require_output_folder(path, *option)
        assert str(caught.value) == message

    refused(tmp_path / "f", f"--out: {tmp_path / 'f'} is a file, not a folder; --out names the folder the output "
                            "files go into (give a new or existing folder)")
    refused(tmp_path / "f" / "a" / "b", f"--dest: {tmp_path / 'f'}, on the way to {tmp_path / 'f' / 'a' / 'b'}, is a "
                                        "file, not a folder; --dest names the folder the output files go into (give "
                                        "a new or existing folder)", "--dest")
    os.mkfifo(tmp_path / "p")
    refused(tmp_path / "p", f"--out: {tmp_path / 'p'} is not a folder; --out names the folder the output files go "
                            "into (give a new or existing folder)")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    refused(tmp_path / "dangling" / "x", f"--out: {tmp_path / 'dangling'}, on the way to {tmp_path / 'dangling' / 'x'}"
                                         ", is not a folder; --out names the folder the output files go into (give a "
                                         "new or existing folder)")
    (tmp_path / "to-folder").symlink_to(tmp_path)
    atomic.require_output_folder(tmp_path / "to-folder" / "x")  # a link to a folder is a folder
    atomic.require_output_folder(Path("relative-that-does-not-exist"))  # up to the working folder
