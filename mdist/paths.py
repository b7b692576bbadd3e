"""One rule for every relative path that arrives from outside (torrent, hub listing, manifest).

A name from a server, a torrent or a manifest decides where bytes land on the user's disk, so
it is checked before anything is created: plain relative POSIX paths only, no tool-state folders
(a delivered `.git/config` or `.mdist/complete.json` would be trusted by git or by mdist), no
control characters, and no two names that the file system could treat as one (case or Unicode
normalisation). The limits are documented in docs/trust-model.md.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mdist.errors import InputError, UnsafeContentError

MAX_PATH_CHARS = 4096
MAX_COMPONENT_BYTES = 255
MAX_FILES = 100_000
MAX_DEPTH = 64  # folders deep: no model nests near this; Python's own recursion breaks near 1,000

# Folders whose content other programs (or mdist itself) trust: never written from a source.
STATE_FOLDERS = frozenset({".mdist", ".git", ".hg", ".svn", ".bzr", ".huggingface"})
STATE_PREFIXES = ((".cache", "huggingface"),)


class UnsafePathError(UnsafeContentError):
    """A path from a source could land outside the folder or in a tool's state: exit 1."""


def _printable(text: str) -> str:
    return text[:200].encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def check_component(part: str, where: str = "path") -> str:
    """One file or folder name: refuse anything but a plain name."""
    if not isinstance(part, str):
        raise UnsafePathError(f"{where}: a name is not text")
    if part in ("", ".", ".."):
        raise UnsafePathError(f"{where}: {_printable(part)!r} leads outside the folder")
    try:
        encoded = part.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"{where}: {_printable(part)!r} is not valid Unicode") from None
    if len(encoded) > MAX_COMPONENT_BYTES:
        raise UnsafePathError(f"{where}: a name is longer than {MAX_COMPONENT_BYTES} bytes")
    if any(c in part for c in "/\\") or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in part):
        raise UnsafePathError(f"{where}: {_printable(part)!r} holds a separator or control character")
    if len(part) >= 2 and part[1] == ":" and part[0].isalpha():
        raise UnsafePathError(f"{where}: {_printable(part)!r} looks like a drive letter")
    return part


def check_relative_path(text: str, where: str = "path") -> str:
    """A plain relative POSIX path outside every tool-state folder; returned unchanged."""
    if not isinstance(text, str) or not text:
        raise UnsafePathError(f"{where}: empty or non-text path")
    if len(text) > MAX_PATH_CHARS:
        raise UnsafePathError(f"{where}: path longer than {MAX_PATH_CHARS} characters")
    if text.startswith("/"):
        raise UnsafePathError(f"{where}: {_printable(text)!r} is an absolute path")
    parts = text.split("/")
    if len(parts) > MAX_DEPTH:
        raise UnsafePathError(f"{where}: a path nested deeper than {MAX_DEPTH} folders")
    for part in parts:
        check_component(part, where)
    check_not_state(parts, where)
    return text


def check_not_state(parts: list[str], where: str = "path") -> None:
    folded = [unicodedata.normalize("NFC", p).casefold() for p in parts]
    if any(p in STATE_FOLDERS for p in folded[:-1]) or folded[-1] in STATE_FOLDERS:
        raise UnsafePathError(f"{where}: {_printable('/'.join(parts))!r} is inside a tool-state folder")
    for prefix in STATE_PREFIXES:
        if tuple(folded[: len(prefix)]) == prefix:
            raise UnsafePathError(f"{where}: {_printable('/'.join(parts))!r} is inside a tool-state folder")


def in_state_folder(path: str) -> bool:
    """True for a relative path inside a tool-state folder (what `check_not_state` refuses)."""
    try:
        check_not_state(path.split("/"))
    except UnsafePathError:
        return True
    return False


def collision_key(path: str) -> str:
    """Two paths with the same key may be one file on a case-insensitive or normalising file system."""
    return unicodedata.normalize("NFC", path).casefold()


def check_path_set(paths: Iterable[str], where: str = "file list") -> list[str]:
    """Check every path, refuse collisions (also a file that is another's folder); linear time."""
    checked: list[str] = []
    seen: dict[str, str] = {}
    folders: set[str] = set()
    for path in paths:
        if len(checked) >= MAX_FILES:
            raise UnsafePathError(f"{where}: more than {MAX_FILES} files")
        check_relative_path(path, where)
        key = collision_key(path)
        if key in seen:
            raise UnsafePathError(f"{where}: {_printable(path)!r} and {_printable(seen[key])!r} name the same file")
        seen[key] = path
        parts = key.split("/")
        for i in range(1, len(parts)):
            folders.add("/".join(parts[:i]))
        checked.append(path)
    clash = folders & set(seen)
    if clash:
        raise UnsafePathError(f"{where}: {_printable(seen[min(clash)])!r} is both a file and a folder")
    return checked


def walk(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> Iterator[tuple[str, list[os.DirEntry]]]:
    """(relative folder, its entries sorted by name) for every folder under `root`, never following
    a link, without recursion (os.walk recurses once per level), at most MAX_DEPTH deep.

    `skip(relative folder)` keeps the walk out of a folder (mdist's state, a tool's cache).
    """
    stack: list[tuple[str, int]] = [("", 0)]
    while stack:
        rel, depth = stack.pop()
        folder = Path(root) / rel if rel else Path(root)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            raise InputError(f"cannot read {folder}: {exc.strerror}") from None
        yield rel, entries
        for entry in reversed(entries):
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False) and not skip(child):
                if depth + 1 > MAX_DEPTH:
                    raise InputError(f"{Path(root) / child} is nested deeper than {MAX_DEPTH} folders")
                stack.append((child, depth + 1))
