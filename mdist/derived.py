"""Files mdist derived itself (conversions), recorded so that no downloaded folder can forge them.

`mdist convert` and `mdist run` write files next to a release (consolidated.safetensors, an HF
layout). Those are not part of the release, yet they are what `run` loads, so they must be told
apart from a file an attacker put in the folder. Each record in `DIR/.mdist/derived.json` carries
an HMAC-SHA256 under a key that never leaves this machine (`$XDG_STATE_HOME/mdist/derived.key`,
mode 0600): a folder from a torrent, a mirror or a USB disk cannot produce a valid one. A record
binds the derived file and the files it was made from by (size, mtime_ns, inode), so replacing
either makes the record stale: mdist may overwrite a stale file but never loads it as derived.

The same key signs other state mdist keeps in a folder (sign_bytes / signed_by_us): the torrent
client's resume data, which would otherwise let a folder claim pieces nobody checked, and the
torrent `mdist seed` serves again.

What this does not defend against: someone who can write to your home folder (the key) or who
edits a derived file in place while keeping its size, mtime and inode.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from mdist.atomic import real_dir, write_bytes_atomic
from mdist.errors import InputError
from mdist.jsonio import parse_json, read_small_file
from mdist.xdg import user_dir

RECORD_FILE = "derived.json"
STATE_DIR = ".mdist"
_KEY_BYTES = 32
_MAX_RECORD_BYTES = 1 << 20

VALID, STALE = "derived", "stale"


def _key_path() -> Path:
    return user_dir("XDG_STATE_HOME") / "mdist" / "derived.key"


def _load_key(create: bool) -> bytes | None:
    path = _key_path()
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        if len(data) == _KEY_BYTES:
            return data
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(_KEY_BYTES)
    # Written whole under a private name, then linked into place: the key file never exists empty
    # or short (mdist processes started together all read one complete key), and a link never
    # replaces an existing file or link (the first process's key wins).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path, follow_symlinks=False)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    except FileExistsError:  # another mdist process made it first
        return _load_key(create=False)
    except OSError as exc:
        raise InputError(f"cannot create mdist's key {path}: {exc.strerror}") from None
    return key


def signing_key() -> bytes:
    """The key, made on first use; a key file that is not one (damaged, a link) is an error the
    user can act on, never overwritten (what was signed under it would silently stop counting)."""
    key = _load_key(create=True)
    if key is None:
        raise InputError(f"mdist's key {_key_path()} is not a {_KEY_BYTES}-byte file (damaged, or a link); "
                         f"remove it to make a new one (files mdist derived under the old key are converted again)")
    return key


_SIGNED_BYTES = b"mdist signed bytes\0"  # derived records' messages are JSON arrays: never this prefix


def _bytes_mac(key: bytes, data: bytes, purpose: str) -> str:
    return hmac.new(key, _SIGNED_BYTES + purpose.encode("utf-8", "surrogateescape") + b"\0" + data,
                    hashlib.sha256).hexdigest()


def sign_bytes(data: bytes, purpose: str) -> str:
    """An HMAC of `data` under this machine's key, for state mdist keeps beside a download (resume
    data, the saved torrent). `purpose` says what the bytes are (and where), so a record made for one
    file or folder does not vouch for another. Raises InputError when the key cannot be created."""
    return _bytes_mac(signing_key(), data, purpose)


def signed_by_us(data: bytes, mac: object, purpose: str) -> bool:
    """True only if `mac` is what sign_bytes(data, purpose) gave on this machine."""
    try:
        key = _load_key(create=False)
    except OSError:
        return False
    if key is None or not isinstance(mac, str) or not mac.isascii():  # compare_digest refuses non-ASCII
        return False
    return hmac.compare_digest(_bytes_mac(key, data, purpose), mac)


def _identity(path: Path) -> list[int] | None:
    """(size, mtime_ns, inode) of a regular file, not following a final symlink."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not (info.st_mode & 0o170000 == 0o100000):
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _mac(key: bytes, name: str, identity: list[int], sources: dict[str, list[int]]) -> str:
    message = json.dumps([name, identity, sorted(sources.items())], separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DerivedState:
    valid: frozenset[str]  # derived by mdist, unchanged, from unchanged sources: safe to load
    stale: frozenset[str]  # derived by mdist, but it or a source changed: overwrite, never load
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)  # valid file -> what it was made from
    orphaned: frozenset[str] = frozenset()  # stale only because sources were deleted: itself and the rest unchanged
    remakeable: frozenset[str] = frozenset()  # stale, and a file it was made from is still in this folder

    def known(self, name: str) -> bool:
        return name in self.valid or name in self.stale


NONE = DerivedState(frozenset(), frozenset())


def _records(directory: Path) -> dict[str, dict]:
    path = directory / STATE_DIR / RECORD_FILE
    try:
        data = parse_json(read_small_file(path, _MAX_RECORD_BYTES), str(path))
    except InputError:
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _source_identities(directory: Path, sources: object) -> dict[str, list[int]] | None:
    if not isinstance(sources, dict):
        return None
    current = {}
    for name in sources:
        if not isinstance(name, str):
            return None
        identity = _identity(Path(name) if os.path.isabs(name) else directory / name)
        if identity is None:
            return None
        current[name] = identity
    return current


def derived_state(directory: Path) -> DerivedState:
    """Which files of `directory` mdist derived (valid), and which it derived but have changed (stale)."""
    directory = Path(directory)
    records = _records(directory)
    key = _load_key(create=False) if records else None
    if key is None:
        return NONE
    valid, stale, made_from, orphaned, remakeable = set(), set(), {}, set(), set()
    for name, record in records.items():
        if not (isinstance(name, str) and isinstance(record, dict) and isinstance(record.get("mac"), str)):
            continue
        recorded_sources = record.get("sources")
        if not isinstance(recorded_sources, dict) or not isinstance(record.get("identity"), list):
            continue
        expected = _mac(key, name, record["identity"], recorded_sources)
        if not hmac.compare_digest(expected, record["mac"]):
            continue  # not written by mdist on this machine
        now = _identity(directory / name)
        sources_now = _source_identities(directory, recorded_sources)
        if now == record["identity"] and sources_now == recorded_sources:
            valid.add(name)
            made_from[name] = tuple(sorted(recorded_sources))
        else:
            stale.add(name)
            if now == record["identity"] and _only_deleted(directory, recorded_sources):
                orphaned.add(name)
            if any(not os.path.isabs(source) and os.path.lexists(directory / source) for source in recorded_sources):
                remakeable.add(name)
    return DerivedState(frozenset(valid), frozenset(stale), made_from, frozenset(orphaned), frozenset(remakeable))


def _only_deleted(directory: Path, sources: dict) -> bool:
    """Every recorded source is either gone or exactly as recorded (none edited or replaced)."""
    for name, recorded in sources.items():
        if not isinstance(name, str):
            return False
        current = _identity(Path(name) if os.path.isabs(name) else directory / name)
        if current is not None and current != recorded:
            return False
    return True


def record_derived(directory: Path, outputs: list[Path], sources: list[Path]) -> None:
    """Record `outputs` (files in `directory`) as made by mdist from `sources`.

    A source inside `directory` is named relative to it (the folder may move); one elsewhere by
    its absolute path.
    """
    directory = Path(directory)
    key = signing_key()
    source_ids: dict[str, list[int]] = {}
    for source in sources:
        source = Path(source)
        try:
            name = source.resolve().relative_to(directory.resolve()).as_posix()
        except ValueError:
            name = str(source.resolve())
        identity = _identity(source)
        if identity is not None:
            source_ids[name] = identity
    records = _records(directory)
    for output in outputs:
        name = Path(output).resolve().relative_to(directory.resolve()).as_posix()
        source_ids.pop(name, None)
    for output in outputs:
        name = Path(output).resolve().relative_to(directory.resolve()).as_posix()
        identity = _identity(directory / name)
        if identity is None:
            continue
        records[name] = {"identity": identity, "sources": source_ids,
                         "mac": _mac(key, name, identity, source_ids)}
    payload = json.dumps({"note": "files mdist derived here; see docs/trust-model.md", "files": records},
                         indent=1, sort_keys=True)
    write_bytes_atomic(real_dir(directory / STATE_DIR) / RECORD_FILE, payload.encode())
