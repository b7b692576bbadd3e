"""One mdist process at a time derives files into a folder (convert, run's one-time conversion, the
tokenizer rebuilt beside a lone GGUF).

Two processes writing the same outputs each rename their own file into place and then record it
as derived: the later rename replaces the file the earlier record describes, so that record no
longer matches (the file is "stale", a read-only folder's cached conversion "did not produce a
loadable model", and a run fell back to reading the .pth as safetensors). The lock is kept in the
user's state folder, keyed by the folder's identity (device and inode: every path to it, a bind
mount or a symbolic link included, reaches one lock), so nothing is written in the model folder
(which may be read-only, a cache, or hostile) to take it. It is re-entrant within a process
(`run` converts through `convert`), and the second process waits, saying for which process, then
sees the first one's result; a holder that is stopped (Ctrl-Z) is said instead of waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Iterator

from mdist.errors import InputError
from mdist.xdg import user_dir

_held: dict[str, int] = {}  # lock file -> how many times this process holds it
POLL_SECONDS = 0.2
STOPPED_GRACE_SECONDS = 3.0  # a holder stopped this long (Ctrl-Z, SIGSTOP) is said, not waited for


def _lock_file(folder: Path) -> Path:
    """The lock of the folder itself (device and inode), not of the path that names it: a bind
    mount, a symbolic link or another spelling on a case-insensitive file system reach one lock."""
    info = os.stat(folder)
    key = hashlib.sha256(f"{info.st_dev}:{info.st_ino}".encode()).hexdigest()[:32]
    return user_dir("XDG_STATE_HOME") / "mdist" / "locks" / f"{key}.lock"


@contextlib.contextmanager
def derivation_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's derivation lock (waiting for another process's, saying which). The folder
    is created if absent (its identity is the lock's key), and removed again if it stays empty."""
    folder = Path(folder)
    created = _make_folder(folder)
    try:
        path = _lock_file(folder)
        name = str(path)
        if _held.get(name):
            _held[name] += 1
            try:
                yield
            finally:
                _held[name] -= 1
            return
        fd = _open_lock(path)
        try:
            _acquire(fd, folder)
            _held[name] = 1
            try:
                yield
            finally:
                del _held[name]
        finally:
            os.close(fd)  # releases the lock
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing was derived there


def _make_folder(folder: Path) -> bool:
    """Create `folder` when absent; whether it was created here."""
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as exc:
        raise InputError(f"cannot create {folder}: {exc.strerror}") from None
    return True


def _open_lock(path: Path) -> int:
    """The lock file itself: a regular file, never through a link (a FIFO would block the read of
    its holder's process id)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise InputError(f"cannot create mdist's lock {path}: {exc.strerror} (remove it if it is not a file)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"mdist's lock {path} is not a regular file; remove it")
    return fd


def _acquire(fd: int, folder: Path) -> None:
    """Take the lock, and record this process's id in it; while another process holds it, wait,
    saying which process, and give up when that process is stopped rather than wait forever."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _wait(fd, folder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _wait(fd: int, folder: Path) -> None:
    holder = _holder(fd)
    who = f"mdist process {holder}" if holder else "another mdist process"
    print(f"mdist: waiting for {who}, which is writing into {folder} (Ctrl-C stops waiting)", file=sys.stderr,
          flush=True)
    stopped_since: float | None = None
    while True:
        time.sleep(POLL_SECONDS)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(fd)
        if holder is None or not _is_stopped(holder):
            stopped_since = None
            continue
        stopped_since = stopped_since or time.monotonic()
        if time.monotonic() - stopped_since >= STOPPED_GRACE_SECONDS:
            raise InputError(f"mdist process {holder}, which is writing into {folder}, is stopped (Ctrl-Z or "
                             f"SIGSTOP): resume it (`fg`, or `kill -CONT {holder}`) or end it, then try again")


def _holder(fd: int) -> int | None:
    """The process id the lock's holder wrote, if any."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 22 else None


def _is_stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal or a debugger (Linux's /proc; elsewhere: unknown, no)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read(4096).rsplit(b")", 1)[-1].split()
    except OSError:
        return False
    return bool(fields) and fields[0] in (b"T", b"t")


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.partial", re.DOTALL)  # mdist.atomic's temporary names (mkstemp)


def reclaim_leftovers(targets: list[Path]) -> int:
    """Remove what an interrupted write of one of `targets` left (killed, power lost: the temporary
    file mdist.atomic renames into place once complete, as large as the output: 14 GB for Mistral
    7B, never removed, shrinking the free space the next attempt checks). Only regular files named
    as mdist.atomic names them, with no other name (a hard link's other name would keep its bytes,
    and is someone's file); call it under the folder's derivation_lock, so that no other mdist
    process is writing them. Returns the bytes freed, said on stderr."""
    freed = 0
    for folder in {Path(t).parent for t in targets}:
        wanted = {Path(t).name for t in targets if Path(t).parent == folder}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                match = _LEFTOVER.fullmatch(entry.name)
                info = entry.stat(follow_symlinks=False) if match and match["name"] in wanted else None
                if info is not None and stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                    size = info.st_size
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        freed += size
    if freed:
        print(f"mdist: removed {freed / 1e6:.1f} MB that an interrupted conversion left in temporary files",
              file=sys.stderr, flush=True)
    return freed
