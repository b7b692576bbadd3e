"""One mdist process at a time derives files into a folder (convert, run's one-time conversion, the
tokenizer rebuilt beside a lone GGUF).

Two processes writing the same outputs each rename their own file into place and then record it
as derived: the later rename replaces the file the earlier record describes, so that record no
longer matches (the file is "stale", a read-only folder's cached conversion "did not produce a
loadable model", and a run fell back to reading the .pth as safetensors). The lock is kept in the
user's state folder, keyed by the folder's real path, so nothing is written in the model folder
(which may be read-only, a cache, or hostile) to take it. It is re-entrant within a process
(`run` converts through `convert`), and the second process waits, saying for what, then sees the
first one's result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
from pathlib import Path
from typing import Iterator

from mdist.errors import InputError

_held: dict[str, int] = {}  # lock file -> how many times this process holds it


def _lock_file(folder: Path) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    key = hashlib.sha256(os.path.realpath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return Path(base) / "mdist" / "locks" / f"{key}.lock"


@contextlib.contextmanager
def derivation_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's derivation lock (waiting for another process's, with a note on stderr)."""
    path = _lock_file(Path(folder))
    name = str(path)
    if _held.get(name):
        _held[name] += 1
        try:
            yield
        finally:
            _held[name] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InputError(f"cannot create mdist's lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"mdist: waiting for another mdist process writing into {folder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[name] = 1
        try:
            yield
        finally:
            del _held[name]
    finally:
        os.close(fd)  # releases the lock
