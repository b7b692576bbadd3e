"""Hash files fast: large reads, hashlib (which releases the GIL), files in parallel across cores."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from mdist.jsonio import open_regular

CHUNK = 4 << 20


GIT_SHA1 = "git-sha1"  # git's blob id: sha1 of "blob <size>\0" + content (how the hub names small files)


def _hasher(name: str, size: int):
    if name == GIT_SHA1:
        return hashlib.sha1(b"blob %d\0" % size)
    return hashlib.new(name)


class Cancelled(Exception):
    """Hashing stopped because the caller was interrupted."""


def hash_fd(fd: int, algorithms: Iterable[str] = ("sha256",), on_bytes: Callable[[int], None] | None = None,
            cancel: threading.Event | None = None, label: str = "") -> dict[str, str]:
    """Return {algorithm: hex digest} of an open file, reading it once; closes `fd`; stops early
    (Cancelled) when `cancel` is set."""
    return _hash_fds([fd], algorithms, on_bytes, cancel, label)


def _hash_fds(fds: list[int], algorithms: Iterable[str], on_bytes: Callable[[int], None] | None,
              cancel: threading.Event | None, label: str) -> dict[str, str]:
    """Hash the concatenation of open files (raw pieces of one file are never joined on disk);
    closes every fd."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    handles = [os.fdopen(fd, "rb", buffering=0) for fd in fds]
    try:
        total = sum(os.fstat(handle.fileno()).st_size for handle in handles)
        hashers = {name: _hasher(name, total) for name in algorithms}
        for handle in handles:
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(label)
                n = handle.readinto(buffer)
                if not n:
                    break
                for hasher in hashers.values():
                    hasher.update(view[:n])
                if on_bytes:
                    on_bytes(n)
    finally:
        for handle in handles:
            handle.close()
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def hash_file(path: Path, algorithms: Iterable[str] = ("sha256",),
              on_bytes: Callable[[int], None] | None = None,
              cancel: threading.Event | None = None, pieces: list[Path] | None = None) -> dict[str, str]:
    """hash_fd of a regular file (a FIFO or device is refused, never read forever), or of the
    concatenation of `pieces` (then `path` only names the joined file)."""
    if not pieces:
        return hash_fd(open_regular(Path(path)), algorithms, on_bytes, cancel, str(path))
    fds: list[int] = []
    try:
        for piece in pieces:
            fds.append(open_regular(Path(piece)))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return _hash_fds(fds, algorithms, on_bytes, cancel, str(path))


def hash_files(jobs: dict[Path, tuple[str, ...]], *, workers: int | None = None,
               on_bytes: Callable[[int], None] | None = None,
               pieces: dict[Path, list[Path]] | None = None) -> dict[Path, dict[str, str]]:
    """Hash many files in parallel; jobs maps path -> algorithms. Largest files start first.
    A path in `pieces` is hashed as the concatenation of its pieces (it need not exist).

    Ctrl-C (or SIGTERM turned into KeyboardInterrupt) stops every worker within one chunk read,
    instead of waiting for all hashing to finish.
    """
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    pieces = pieces or {}

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in pieces[path]) if path in pieces else path.stat().st_size

    order = sorted(jobs, key=lambda p: -size(p))
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {path: pool.submit(hash_file, path, jobs[path], on_bytes, cancel, pieces.get(path))
                   for path in order}
        return {path: future.result() for path, future in futures.items()}
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
