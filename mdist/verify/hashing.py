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
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        hashers = {name: _hasher(name, os.fstat(handle.fileno()).st_size) for name in algorithms}
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
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def hash_file(path: Path, algorithms: Iterable[str] = ("sha256",),
              on_bytes: Callable[[int], None] | None = None,
              cancel: threading.Event | None = None) -> dict[str, str]:
    """hash_fd of a regular file (a FIFO or device is refused, never read forever)."""
    return hash_fd(open_regular(Path(path)), algorithms, on_bytes, cancel, str(path))


def hash_files(jobs: dict[Path, tuple[str, ...]], *, workers: int | None = None,
               on_bytes: Callable[[int], None] | None = None) -> dict[Path, dict[str, str]]:
    """Hash many files in parallel; jobs maps path -> algorithms. Largest files start first.

    Ctrl-C (or SIGTERM turned into KeyboardInterrupt) stops every worker within one chunk read,
    instead of waiting for all hashing to finish.
    """
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    order = sorted(jobs, key=lambda p: -p.stat().st_size)
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {path: pool.submit(hash_file, path, jobs[path], on_bytes, cancel) for path in order}
        return {path: future.result() for path, future in futures.items()}
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
