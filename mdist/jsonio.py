"""Read JSON documents from outside (params.json, config.json, manifests, headers) within limits.

json.loads recurses per nesting level, so a deeply nested document raises RecursionError, and a
large one takes memory in proportion: both are refused here with one line naming the document
(RecursionError is caught like any parse error).
Callers then check types and ranges of what they use (a schema), never trusting shapes.
"""

from __future__ import annotations

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


def open_regular(path: Path, what: str | None = None) -> int:
    """A read-only descriptor of a regular file: a FIFO would block and a device never ends
    (O_NONBLOCK, so opening a FIFO cannot hang either)."""
    what = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{what} is missing") from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{what} is not a regular file")
    return fd


def read_small_file(path: Path, max_bytes: int, what: str | None = None) -> bytes:
    """A regular file's bytes, refusing devices, FIFOs and anything larger than max_bytes."""
    what = what or str(path)
    fd = open_regular(path, what)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise InputError(f"{what} is larger than {max_bytes} bytes")
        chunks, remaining = [], max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise InputError(f"{what} is larger than {max_bytes} bytes")
        return data
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
