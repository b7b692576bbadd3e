"""Torrent metadata: create hybrid/v1/v2 torrents, refuse hostile file paths, build magnet links."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mdist.errors import InputError, UnsafeContentError
from mdist.sources.bt_session import Endpoint, lt

MIN_PIECE = 256 << 10
MAX_PIECE = 16 << 20


def choose_piece_size(total_bytes: int) -> int:
    """About 1,500 pieces, a power of two between 256 KiB and 16 MiB (14.5 GB -> 16 MiB)."""
    size = MIN_PIECE
    while size < MAX_PIECE and total_bytes / size > 1500:
        size *= 2
    return size


def create_torrent(directory: Path, *, trackers: list[str] = (), web_seeds: list[str] = (),
                   version: str = "hybrid", piece_size: int | None = None) -> bytes:
    """Bencoded .torrent of a folder (its name becomes the torrent's root name)."""
    lib = lt()
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder")
    for root, dirs, names in os.walk(directory):
        for name in dirs + names:
            if (Path(root) / name).is_symlink():
                raise InputError(f"{Path(root) / name} is a symbolic link; refusing to share it")
    files = lib.list_files(str(directory), lambda path: "/.mdist" not in path and not path.endswith("/.mdist"))
    if not files:
        raise InputError(f"{directory} has no files to share")
    total = sum(entry.size for entry in files)
    flags = {"hybrid": 0, "v1": lib.create_torrent.v1_only, "v2": lib.create_torrent.v2_only}[version]
    creator = lib.create_torrent(files, piece_size or choose_piece_size(total), flags)
    for tier, url in enumerate(trackers):
        creator.add_tracker(url, tier)
    for url in web_seeds:
        creator.add_url_seed(url)
    creator.set_creator("mdist")
    lib.set_piece_hashes(creator, str(directory.parent))
    return lib.bencode(creator.generate())


@dataclass(frozen=True)
class InfoHashes:
    v1: str | None
    v2: str | None

    @classmethod
    def of(cls, hashes) -> "InfoHashes":
        v1 = str(hashes.v1) if hashes.has_v1() else None
        v2 = str(hashes.v2) if hashes.has_v2() else None
        return cls(v1, v2)


def magnet_link(torrent_info, *, peer: Endpoint | None = None) -> str:
    lib = lt()
    uri = lib.make_magnet_uri(torrent_info)
    if peer is not None:
        uri += "&x.pe=" + quote(str(peer), safe=":[]")  # libtorrent ignores a percent-encoded colon
    return uri


def magnet_peers(uri: str) -> list[str]:
    """x.pe values of a magnet link, percent-decoded (libtorrent skips encoded ones)."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(uri).query).get("x.pe", [])


def _check_component(component: bytes, where: str) -> str:
    try:
        text = component.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeContentError(f"torrent file name in {where} is not UTF-8") from None
    if text in ("", ".", "..") or any(c in text for c in "/\\\x00") or (len(text) >= 2 and text[1] == ":"):
        raise UnsafeContentError(f"torrent names a path outside the download folder: {where} contains {text!r}")
    return text


def check_info_dict(info: dict) -> list[str]:
    """Refuse absolute paths, `..`, separators in names and symlinks (v1 attr or v2 `attr: l`).

    Works on the raw bencoded info dict: libtorrent sanitises names while parsing, so a hostile
    torrent must be caught before that, not silently rewritten. Returns the relative file paths.
    """
    if not isinstance(info, dict) or b"name" not in info:
        raise UnsafeContentError("torrent metadata has no name")
    name = _check_component(info[b"name"], "name")
    paths: list[str] = []
    for entry in info.get(b"files", []) or []:
        attr = entry.get(b"attr", b"")
        if b"l" in attr or b"symlink path" in entry:
            raise UnsafeContentError("torrent contains a symbolic link; refused")
        parts = [_check_component(p, "a file path") for p in entry.get(b"path", [])]
        if not parts:
            raise UnsafeContentError("torrent has a file with an empty path")
        if b"p" not in attr:
            paths.append("/".join(parts))

    def walk(tree: dict, prefix: list[str]) -> None:
        for key, value in tree.items():
            if key == b"":
                if b"l" in value.get(b"attr", b"") or b"symlink path" in value:
                    raise UnsafeContentError("torrent contains a symbolic link; refused")
                if prefix and "/".join(prefix) not in paths:
                    paths.append("/".join(prefix))
                continue
            walk(value, prefix + [_check_component(key, "the v2 file tree")])

    if b"file tree" in info:
        walk(info[b"file tree"], [])  # a single-file v2 torrent's tree is {name: {"": ...}}
    if b"files" not in info and b"file tree" not in info:
        paths.append(name)
    return paths
