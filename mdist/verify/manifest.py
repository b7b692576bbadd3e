"""The `checksums/` registry: one JSON manifest per known release (schema in docs/manifests.md)."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from mdist.errors import InputError

SCHEMA_ID = "mdist-manifest/1"
_HEX = {"sha256": 64, "md5": 32, "sha1": 40}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    json: Any = None  # the parsed content, where that (not the bytes) is what was published

    @property
    def checkable(self) -> bool:
        return bool(self.sha256 or self.md5 or self.json is not None or self.size is not None)


@dataclass
class Manifest:
    name: str
    title: str
    files: dict[str, FileEntry]
    files_complete: bool
    sources: dict[str, Any] = field(default_factory=dict)
    tensor_digest: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    @property
    def btih(self) -> str | None:
        return self.sources.get("btih")

    @property
    def btmh(self) -> str | None:
        return self.sources.get("btmh")


def safe_relative_path(text: str) -> str:
    """Refuse absolute paths, `..`, backslashes and empty parts: a manifest never names a path outside."""
    if not isinstance(text, str) or not text or "\\" in text or "\x00" in text:
        raise InputError(f"manifest path {text!r} is not a plain relative path")
    posix = PurePosixPath(text)
    if posix.is_absolute() or any(part in ("", ".", "..") for part in text.split("/")):
        raise InputError(f"manifest path {text!r} is not a plain relative path")
    return str(posix)


def parse_manifest(data: Any, origin: str = "") -> Manifest:
    """Validate the parts mdist relies on; the full schema is checked by the test suite."""
    where = origin or "manifest"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        raise InputError(f"{where}: not an {SCHEMA_ID} manifest")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{where}: invalid release name {name!r}")
    files: dict[str, FileEntry] = {}
    for path, entry in (data.get("files") or {}).items():
        path = safe_relative_path(path)
        if not isinstance(entry, dict):
            raise InputError(f"{where}: entry for {path} must be an object")
        for algorithm, length in _HEX.items():
            value = entry.get(algorithm)
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", str(value)):
                raise InputError(f"{where}: {algorithm} of {path} is not {length} lowercase hex digits")
        size = entry.get("size")
        if size is not None and (type(size) is not int or size < 0):
            raise InputError(f"{where}: size of {path} is invalid")
        files[path] = FileEntry(path, size, entry.get("sha256"), entry.get("md5"), entry.get("json"))
    return Manifest(
        name=name,
        title=data.get("title", name),
        files=files,
        files_complete=bool(data.get("files_complete", False)),
        sources=data.get("sources") or {},
        tensor_digest=data.get("tensor_digest"),
        raw=data,
        origin=origin,
    )


def _registry_files() -> list[tuple[str, str]]:
    package = resources.files("mdist.checksums")
    found = []
    for item in package.iterdir():
        if item.name.endswith(".json") and not item.name.endswith(".schema.json"):
            found.append((item.name, item.read_text(encoding="utf-8")))
    return sorted(found)


@functools.lru_cache(maxsize=1)
def load_registry() -> tuple[Manifest, ...]:
    """The packaged manifests, parsed once per process (fetch and verify consult them repeatedly)."""
    return tuple(parse_manifest(json.loads(text), f"checksums/{name}") for name, text in _registry_files())


def find_manifest(name_or_path: str) -> Manifest:
    """A release name from checksums/, or a path to a manifest file."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        try:
            return parse_manifest(json.loads(path.read_text(encoding="utf-8")), str(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
    for manifest in load_registry():
        if manifest.name == name_or_path:
            return manifest
    known = ", ".join(m.name for m in load_registry())
    raise InputError(f"no known release {name_or_path!r} (known: {known})")


def find_by_infohash(info_hash: str) -> Manifest | None:
    """The release with this BitTorrent v1 (40 hex) or v2 (64 hex, or 1220-prefixed) info-hash."""
    info_hash = info_hash.lower()
    if not info_hash:
        return None
    for manifest in load_registry():
        v2 = (manifest.btmh or "")[4:]
        if info_hash in (manifest.btih, manifest.btmh, v2):
            return manifest
    return None


def identify(present: dict[str, int]) -> tuple[Manifest | None, list[Manifest]]:
    """Pick the release whose file names and sizes best match `present` (relative path -> size).

    A manifest is a candidate when it shares a file name and no known size contradicts; the best
    score wins (a size match counts double). Returns (winner or None, tied candidates).
    """
    scored: list[tuple[int, Manifest]] = []
    for manifest in load_registry():
        score = 0
        contradicted = False
        for path, entry in manifest.files.items():
            if path not in present:
                continue
            if entry.size is not None:
                if entry.size != present[path]:
                    contradicted = True
                    break
                score += 2
            else:
                score += 1
        if score and not contradicted:
            scored.append((score, manifest))
    if not scored:
        return None, []
    scored.sort(key=lambda item: -item[0])
    best = [m for s, m in scored if s == scored[0][0]]
    return (best[0] if len(best) == 1 else None), best
