"""The `checksums/` registry: one JSON manifest per known release (schema in docs/manifests.md).

A manifest (packaged, or a file the user names) decides what counts as verified and where a
fetch goes, so every field mdist uses is checked for type, range and form before use, as in
docs/manifest.schema.json; anything else is one line of InputError (exit 2), never a traceback
later. Unknown keys are refused too: a misspelt `sha265` would otherwise leave a file unchecked.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Any

from mdist.errors import InputError
from mdist.jsonio import MAX_JSON_BYTES, read_small_file, strict_loads
from mdist.paths import UnsafePathError, check_path_set, check_relative_path

SCHEMA_ID = "mdist-manifest/1"
_HEX = {"sha256": 64, "md5": 32}
MAX_NAME_CHARS = 100  # a release name becomes a file name (checksums/NAME.json) and a CLI word
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_TEXT_CHARS = 1 << 16  # titles, notes, magnets are at most a few hundred characters
MAX_FILE_SIZE = (1 << 63) - 1  # sizes are compared with st_size, an int64
MAX_TRACKERS = 256  # published magnets list a handful
_TOP_KEYS = frozenset({"schema", "name", "title", "publisher", "license", "released", "notes", "files_complete",
                       "files", "archives", "tensor_digest", "sources", "provenance"})
_FILE_KEYS = frozenset({"size", "sha256", "md5", "json"})
_SOURCE_KEYS = frozenset({"magnet", "btih", "btmh", "display_name", "trackers", "hub", "hub_alternative"})
_ARCHIVE_KEYS = frozenset({"name", "url", "md5", "sha256", "size", "current", "note"})
_ARCHIVE_URL = re.compile(r"https?://[\x21-\x7e]+")  # printable ASCII, percent-encoded; mdist.sources.archive checks more
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAGNET = re.compile(r"magnet:\?[\x21-\x7e]*")  # a URI: printable ASCII, percent-encoded
_TRACKER = re.compile(r"(udp|https?|wss?)://[\x21-\x7e]+")
_HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # the hub's own limits
# A commit, branch or tag (refs/pr/1, café): the form only; mdist.sources applies git's ref rules.
_REVISION = re.compile(r"(?!.*\.\.)(?![-/.])[^\s\\]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


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

    @property
    def archive(self) -> dict[str, Any] | None:
        """The archive to fetch the release from: the first with a URL and an md5 that the publisher
        has not replaced (`"current": false` keeps an older published value on record, never used)."""
        for archive in self.raw.get("archives", []):
            if archive.get("url") and archive.get("md5") and archive.get("current", True):
                return archive
        return None


def _show(value: Any) -> str:
    """A value from the document for a one-line message: escaped and cut."""
    return repr(value)[:80].encode("ascii", "backslashreplace").decode("ascii")


def check_release_name(name: Any) -> str:
    """A release name: lowercase letters, digits, `.`, `_`, `-`, starting alphanumeric, <= 100 chars.

    It names a file in checksums/ and is typed on the command line, so `My Model/../x` is refused.
    """
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise InputError(f"invalid release name {_show(name)}: use at most {MAX_NAME_CHARS} lowercase letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    return name


def safe_relative_path(text: str) -> str:
    """mdist.paths' one rule for relative paths from outside (raises UnsafePathError, exit 1)."""
    return check_relative_path(text, "path")


def _text(value: Any, where: str, *, lines: bool = False, pattern: re.Pattern[str] | None = None) -> str:
    """Free text: a string, bounded, without control characters (titles reach the terminal)."""
    control = _CONTROL_BUT_LINES if lines else _CONTROL
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS or control.search(value):
        raise InputError(f"{where} must be text of at most {MAX_TEXT_CHARS} characters without control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where} is not valid Unicode") from None
    if pattern is not None and not pattern.fullmatch(value):
        raise InputError(f"{where} has an invalid form: {_show(value)}")
    return value


def _hex(value: Any, length: int, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
        raise InputError(f"{where} must be {length} lowercase hex digits, got {_show(value)}")
    return value


def _object(value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    """A JSON object with no keys but the allowed ones."""
    if not isinstance(value, dict):
        raise InputError(f"{where} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InputError(f"{where} has unknown key {_show(unknown[0])}")
    return value


def _list(value: Any, where: str, max_items: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_items:
        raise InputError(f"{where} must be a list of at most {max_items} items")
    return value


def _file_entry(path: str, entry: Any, where: str) -> FileEntry:
    entry = _object(entry, f"{where}: entry for {_show(path)}", _FILE_KEYS)
    for algorithm, length in _HEX.items():
        if algorithm in entry:
            _hex(entry[algorithm], length, f"{where}: {algorithm} of {_show(path)}")
    size = entry.get("size")
    if "size" in entry and (type(size) is not int or not 0 <= size <= MAX_FILE_SIZE):
        raise InputError(f"{where}: size of {_show(path)} must be an integer in 0..{MAX_FILE_SIZE}")
    return FileEntry(path, size, entry.get("sha256"), entry.get("md5"), entry.get("json"))


def _check_files(value: Any, where: str) -> dict[str, FileEntry]:
    """Plain relative paths (mdist.paths' rule, no two naming one file) -> checked entries."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: files must be an object of path -> entry")
    try:
        check_path_set(value, f"{where}: files")
    except UnsafePathError as exc:  # a bad manifest is bad input (exit 2), not refused content
        raise InputError(str(exc)) from None
    return {path: _file_entry(path, entry, where) for path, entry in value.items()}


def _check_sources(value: Any, where: str) -> dict[str, Any]:
    where = f"{where}: sources"
    sources = _object(value, where, _SOURCE_KEYS)
    checks = {
        "magnet": lambda v: _text(v, f"{where}.magnet", pattern=_MAGNET),
        "btih": lambda v: _hex(v, 40, f"{where}.btih"),
        "btmh": lambda v: _check_btmh(v, f"{where}.btmh"),
        "display_name": lambda v: _text(v, f"{where}.display_name"),
        "trackers": lambda v: [_text(url, f"{where}.trackers[]", pattern=_TRACKER)
                               for url in _list(v, f"{where}.trackers", MAX_TRACKERS)],
        "hub": lambda v: _check_hub(v, f"{where}.hub"),
        "hub_alternative": lambda v: _wrap_name(v, f"{where}.hub_alternative"),
    }
    for key, item in sources.items():
        checks[key](item)
    return sources


def _check_btmh(value: Any, where: str) -> str:
    """A BitTorrent v2 info-hash as a multihash: 0x12 (sha2-256), 0x20 (32 bytes), 64 hex digits."""
    if not isinstance(value, str) or not value.startswith("1220"):
        raise InputError(f"{where} must be '1220' followed by 64 lowercase hex digits")
    return "1220" + _hex(value[4:], 64, where)


def _check_hub(value: Any, where: str) -> dict[str, Any]:
    hub = _object(value, where, frozenset({"repo", "revision"}))
    if "repo" not in hub:
        raise InputError(f"{where} lacks repo")
    _text(hub["repo"], f"{where}.repo", pattern=_HUB_REPO)
    if "revision" in hub:
        _text(hub["revision"], f"{where}.revision", pattern=_REVISION)
    return hub


def _wrap_name(value: Any, where: str) -> str:
    try:
        return check_release_name(value)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _check_descriptive(data: dict[str, Any], where: str) -> None:
    """Fields mdist only shows or keeps: still typed, so a document is valid or not as a whole."""
    for key in ("publisher", "license"):
        if key in data:
            _text(data[key], f"{where}: {key}")
    if "notes" in data:
        _text(data["notes"], f"{where}: notes", lines=True)
    if "released" in data:
        _text(data["released"], f"{where}: released", pattern=_DATE)
    for i, archive in enumerate(_list(data.get("archives", []), f"{where}: archives", 1000)):
        archive = _object(archive, f"{where}: archives[{i}]", _ARCHIVE_KEYS)
        _text(archive.get("name"), f"{where}: archives[{i}].name")
        for algorithm, length in _HEX.items():
            if algorithm in archive:
                _hex(archive[algorithm], length, f"{where}: archives[{i}].{algorithm}")
        if "url" in archive:
            _text(archive["url"], f"{where}: archives[{i}].url", pattern=_ARCHIVE_URL)
        if "size" in archive and (type(archive["size"]) is not int or not 0 <= archive["size"] <= MAX_FILE_SIZE):
            raise InputError(f"{where}: archives[{i}].size must be an integer in 0..{MAX_FILE_SIZE}")
        if "current" in archive and not isinstance(archive["current"], bool):
            raise InputError(f"{where}: archives[{i}].current must be true or false")
        if "note" in archive:
            _text(archive["note"], f"{where}: archives[{i}].note", lines=True)
    if "provenance" in data and not _list(data["provenance"], f"{where}: provenance", 1000):
        raise InputError(f"{where}: provenance is empty")
    for i, item in enumerate(data.get("provenance", [])):
        item = _object(item, f"{where}: provenance[{i}]", frozenset({"fields", "source"}))
        if not _list(item.get("fields"), f"{where}: provenance[{i}].fields", 1000):
            raise InputError(f"{where}: provenance[{i}].fields is empty")
        for name in item["fields"]:
            _text(name, f"{where}: provenance[{i}].fields[]")
        _text(item.get("source"), f"{where}: provenance[{i}].source", lines=True)


def parse_manifest(data: Any, origin: str = "") -> Manifest:
    """Check a manifest against the schema (docs/manifest.schema.json) and return it."""
    where = origin or "manifest"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        raise InputError(f"{where}: not an {SCHEMA_ID} manifest")
    _object(data, where, _TOP_KEYS)
    name = _wrap_name(data.get("name"), f"{where}: name")
    title = _text(data.get("title", name), f"{where}: title")
    files_complete = data.get("files_complete", False)
    if not isinstance(files_complete, bool):
        raise InputError(f"{where}: files_complete must be true or false")
    tensor_digest = data.get("tensor_digest")
    if tensor_digest is not None:
        _hex(tensor_digest, 64, f"{where}: tensor_digest")
    files = _check_files(data.get("files", {}), where)
    sources = _check_sources(data.get("sources", {}), where)
    _check_descriptive(data, where)
    return Manifest(name=name, title=title, files=files, files_complete=files_complete, sources=sources,
                    tensor_digest=tensor_digest, raw=data, origin=origin)


def parse_manifest_bytes(data: bytes | str, where: str) -> Manifest:
    """Parse and check a manifest document: strict JSON (no duplicate keys), bounded, one-line errors."""
    if len(data) > MAX_JSON_BYTES:
        raise InputError(f"{where} is larger than {MAX_JSON_BYTES} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = strict_loads(text)
    except RecursionError:
        raise InputError(f"{where} is not valid JSON: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{where} is not valid JSON: {_show(str(exc))}") from None
    return parse_manifest(document, where)


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
    return tuple(parse_manifest_bytes(text, f"checksums/{name}") for name, text in _registry_files())


def find_manifest(name_or_path: str) -> Manifest:
    """A release name from checksums/, or a path to a manifest file."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return parse_manifest_bytes(read_small_file(path, MAX_JSON_BYTES, str(path)), str(path))
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


def identify(present: dict[str, int], eligible: Callable[[Manifest], bool] | None = None,
             ) -> tuple[Manifest | None, list[Manifest]]:
    """Pick the release whose file names and sizes best match `present` (relative path -> size).

    A manifest is a candidate when it shares a file name, no known size contradicts and
    `eligible(manifest)` holds; the best score wins (a size match counts double). Returns
    (winner or None, tied candidates).
    """
    scored: list[tuple[int, Manifest]] = []
    for manifest in load_registry():
        if eligible is not None and not eligible(manifest):
            continue
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
