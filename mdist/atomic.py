"""Write files so that an interrupted write never leaves something that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from mdist.errors import InputError, UnsafeContentError


@contextlib.contextmanager
def atomic_writer(target: Path, *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Yield a file in target's directory under a temporary name; fsync and rename on success.

    On any exception the temporary file is removed and the target is untouched. The rename
    replaces an existing symlink at `target` itself: nothing is ever written through a link.
    """
    target = Path(target)
    if os.path.lexists(target) and not overwrite:
        raise InputError(f"{target} exists; use --force to overwrite it")
    if target.is_dir() and not target.is_symlink():
        raise InputError(f"{target} is a folder; cannot write a file there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from None
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would surprise users of a model folder
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise


def refuse_unreal_dir(path: Path) -> None:
    """A symlink or a file where mdist keeps its state (say a `.mdist` delivered inside a model
    folder) would send that state somewhere else: refused, whether or not mdist writes yet."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"{path} is not a folder (a symbolic link or a file); refusing to use it for mdist's "
                         f"state (remove it)")


def real_dir(path: Path) -> Path:
    """`path` as a folder, created if absent; see refuse_unreal_dir."""
    path = Path(path)
    refuse_unreal_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror}") from None
    return path


def require_output_folder(path: Path, option: str = "--out") -> None:
    """`path` must be a folder or creatable as one: a file there (or on the way to it) would
    otherwise surface as a raw 'File exists' from mkdir, after the input was read."""
    path = Path(path)
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir():
        return
    kind = "a file, not a folder" if probe.is_file() else "not a folder"
    where = f"{probe} is {kind}" if probe == path else f"{probe}, on the way to {path}, is {kind}"
    raise InputError(f"{option}: {where}; {option} names the folder the output files go into "
                     f"(give a new or existing folder)")


def refuse_links_on_the_way(root: Path, paths: list[str], what: str = "the download") -> None:
    """A symlink (or FIFO, device) already under `root` at any component of a path mdist (or
    libtorrent) is about to write, read or delete would be followed out of `root`: refuse first."""
    checked: set[Path] = set()
    for relative in paths:
        target = Path(root)
        for part in relative.split("/"):
            target = target / part
            if target in checked:
                continue
            checked.add(target)
            try:
                mode = os.lstat(target).st_mode
            except FileNotFoundError:
                break
            except OSError as exc:
                raise InputError(f"cannot inspect {target}: {exc.strerror}") from None
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise UnsafeContentError(f"{target} is a symbolic link or special file where {what} writes "
                                         f"{relative}; refusing to write through it (remove it first)")


def write_bytes_atomic(target: Path, data: bytes, *, overwrite: bool = True) -> None:
    with atomic_writer(target, overwrite=overwrite) as handle:
        handle.write(data)


def copy_file_atomic(source: Path, target: Path, *, max_bytes: int, overwrite: bool = True) -> None:
    """Copy a small regular file (a tokenizer, a config) by atomic rename, never through a link."""
    from mdist.jsonio import read_small_file

    write_bytes_atomic(target, read_small_file(Path(source), max_bytes), overwrite=overwrite)


def require_free_space(directory: Path, needed_bytes: int, *, what: str) -> None:
    """Fail early with a clear message rather than half-way through a long write."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise InputError(
            f"not enough free space for {what} in {directory}: "
            f"need {needed_bytes / 1e9:.2f} GB, have {free / 1e9:.2f} GB"
        )


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
