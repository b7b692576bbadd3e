"""Read JSON documents from outside (params.json, config.json, manifests, headers) within limits.

json.loads recurses per nesting level, so a deeply nested document raises RecursionError, and a
large one takes memory in proportion: both are refused here with one line naming the document
(RecursionError is caught like any parse error).
Callers then check types and ranges of what they use (a schema), never trusting shapes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from mdist.errors import InputError

MAX_JSON_BYTES = 16 << 20  # params.json, config.json, index and manifests are a few KB


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a repeated key is ambiguous (json keeps the last silently), so refuse it."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {printable(key)!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: str) -> Any:
    """json.loads without duplicate keys or NaN/Infinity; raises ValueError or RecursionError."""
    return json.loads(text, object_pairs_hook=unique_object, parse_constant=_no_constant)


def printable(text: str, limit: int = 100) -> str:
    """Outside text for a one-line message: bounded, no lone surrogates or control characters."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def parse_json(data: bytes | str, what: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON document strictly or raise InputError naming `what`."""
    if len(data) > max_bytes:
        raise InputError(f"{what} is larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return strict_loads(text)
    except RecursionError:
        raise InputError(f"{what} is not valid JSON: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{what} is not valid JSON: {printable(str(exc), 200)}") from None


def read_json_file(path: Path, what: str | None = None, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a small JSON file: a regular file (no FIFO or device), at most max_bytes."""
    path = Path(path)
    what = what or str(path)
    data = read_small_file(path, max_bytes, what)
    return parse_json(data, what, max_bytes=max_bytes)


def open_regular(path: Path, what: str | None = None, *, follow_links: bool = True, flags: int = os.O_RDONLY,
                 error: type[InputError] = InputError) -> int:
    """A descriptor of a regular file: a FIFO would block and a device never ends (O_NONBLOCK, so
    opening a FIFO cannot hang either). With follow_links=False the path itself must be the file
    (O_NOFOLLOW): a link planted where mdist reads or writes its own files is refused, never followed.
    `flags` may add O_WRONLY, O_CREAT, O_APPEND; `error` is the class raised (exit code)."""
    what = what or str(path)
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        raise InputError(f"{what} is missing") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and not follow_links:
            raise error(f"{what} is a symbolic link; refusing to follow it (remove it first)") from None
        if exc.errno == errno.ENXIO:  # opening a FIFO for writing with no reader
            raise error(f"{what} is not a regular file (a FIFO); refusing to use it (remove it first)") from None
        raise InputError(f"cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{what} is not a regular file (a FIFO or a device); refusing to use it")
    return fd


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


def read_small_file(path: Path, max_bytes: int, what: str | None = None, *, follow_links: bool = True) -> bytes:
    """A regular file's bytes, refusing devices, FIFOs (and links, when asked) and anything larger
    than max_bytes."""
    what = what or str(path)
    fd = open_regular(path, what, follow_links=follow_links)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise InputError(f"{what} is larger than {_size(max_bytes)}")
        chunks, remaining = [], max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise InputError(f"{what} is larger than {_size(max_bytes)}")
        return data
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
