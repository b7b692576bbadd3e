"""sha256 of the files mdist extracted from an archive whose md5 matched, kept so that later checks
do not rest on md5.

md5 is all Mistral publishes for its CDN archives: it detects corruption, not a deliberate
collision. Once an archive matched its md5, mdist hashes every file it extracts with sha256 and keeps
the list in `DIR/.mdist/extracted.json`, under an HMAC with this machine's key (mdist.derived's
sign_bytes): a folder from elsewhere cannot bring a record that `mdist verify` would trust. Later
verifies check those files by sha256, so a file altered after the download is caught by sha256,
whatever md5 says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdist.atomic import real_dir, write_bytes_atomic
from mdist.derived import STATE_DIR, sign_bytes, signed_by_us
from mdist.errors import InputError
from mdist.jsonio import parse_json, read_small_file
from mdist.paths import MAX_FILES, UnsafePathError, check_relative_path

RECORD_FILE = "extracted.json"
PURPOSE = "mdist extracted files/1"
MAX_RECORD_BYTES = 16 << 20


@dataclass(frozen=True)
class Extracted:
    """What mdist extracted here: from which archive (and release), each file's size and sha256."""

    archive: str  # the archive's URL
    md5: str  # the md5 it matched
    release: str | None
    files: dict[str, tuple[int, str]]  # path -> (size, sha256)


def _payload(record: Extracted) -> bytes:
    files = {path: {"size": size, "sha256": sha256} for path, (size, sha256) in sorted(record.files.items())}
    return json.dumps({"archive": record.archive, "md5": record.md5, "release": record.release, "files": files},
                      sort_keys=True, separators=(",", ":")).encode()


def write_record(directory: Path, record: Extracted) -> None:
    """Keep `record` in DIR/.mdist/extracted.json, signed with this machine's key."""
    payload = _payload(record)
    document = {"note": "sha256 of the files mdist extracted from an archive whose md5 matched; "
                        "see docs/trust-model.md",
                "record": json.loads(payload), "mac": sign_bytes(payload, PURPOSE)}
    write_bytes_atomic(real_dir(Path(directory) / STATE_DIR) / RECORD_FILE,
                       json.dumps(document, indent=1, sort_keys=True).encode())


def read_record(directory: Path) -> Extracted | None:
    """The record in DIR/.mdist/, only when mdist wrote it on this machine and it is well formed."""
    path = Path(directory) / STATE_DIR / RECORD_FILE
    try:
        document = parse_json(read_small_file(path, MAX_RECORD_BYTES, str(path), follow_links=False), str(path))
    except (InputError, OSError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("record"), dict):
        return None
    try:  # parsed before the MAC is checked: anything a hand-made record holds means no record
        record = _parse(document["record"])
    except (TypeError, ValueError, AttributeError, KeyError, UnsafePathError):
        return None
    if record is None or not signed_by_us(_payload(record), document.get("mac"), PURPOSE):
        return None
    return record


def _parse(data: dict[str, Any]) -> Extracted | None:
    files = data.get("files")
    if not (isinstance(data.get("archive"), str) and isinstance(data.get("md5"), str) and isinstance(files, dict)
            and len(files) <= MAX_FILES and (data.get("release") is None or isinstance(data["release"], str))):
        return None
    parsed: dict[str, tuple[int, str]] = {}
    for path, entry in files.items():
        check_relative_path(path, RECORD_FILE)
        if not isinstance(entry, dict):  # {"params.json": 5} was an internal error in verify
            return None
        size, sha256 = entry.get("size"), entry.get("sha256")
        if type(size) is not int or size < 0 or not isinstance(sha256, str) or len(sha256) != 64:
            return None
        parsed[path] = (size, sha256)
    return Extracted(data["archive"], data["md5"], data.get("release"), parsed)
