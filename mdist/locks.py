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
import re
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


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.partial")  # mdist.atomic's temporary names (mkstemp)


def reclaim_leftovers(targets: list[Path]) -> int:
    """Remove what an interrupted write of one of `targets` left (killed, power lost: the temporary
    file mdist.atomic renames into place once complete, as large as the output: 14 GB for Mistral
    7B, never removed, shrinking the free space the next attempt checks). Only regular files named
    as mdist.atomic names them; call it under the folder's derivation_lock, so that no other mdist
    process is writing them. Returns the bytes freed, said on stderr."""
    freed = 0
    for folder in {Path(t).parent for t in targets}:
        wanted = {Path(t).name for t in targets if Path(t).parent == folder}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                match = _LEFTOVER.fullmatch(entry.name)
                if match and match["name"] in wanted and entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        freed += size
    if freed:
        print(f"mdist: removed {freed / 1e6:.1f} MB that an interrupted conversion left in temporary files",
              file=sys.stderr, flush=True)
    return freed
