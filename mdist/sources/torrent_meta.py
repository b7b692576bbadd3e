"""Torrent metadata: create hybrid/v1/v2 torrents, refuse hostile file paths, build magnet links."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Collection
from urllib.parse import quote

from mdist.errors import InputError, UnsafeContentError
from mdist.paths import (MAX_FILES, MAX_PATH_CHARS, UnsafePathError, check_component, check_not_state,
                         check_path_set, check_relative_path, walk)
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
                   version: str = "hybrid", piece_size: int | None = None,
                   leave_out: Collection[str] = ()) -> bytes:
    """Bencoded .torrent of a folder (its name becomes the torrent's root name).

    Tool state (.mdist, .git...) is never shared; `leave_out` names more files (relative POSIX
    paths), such as what mdist derived here: they are not part of what was released.
    """
    lib = lt()
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder")
    _refuse_unshareable(directory)
    skipped = set(leave_out)
    files = lib.list_files(str(directory), lambda path: not (_is_tool_state(directory, path)
                                                              or _relative(directory, path) in skipped))
    if not files:
        raise InputError(f"{directory} has no files to share")
    _check_shareable(directory, [entry.filename for entry in files])
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


def _refuse_unshareable(directory: Path) -> None:
    """Before libtorrent lists the folder (following links, recursing in C++): no symbolic link or
    special file where it looks, at most MAX_DEPTH folders deep and MAX_FILES files, walked without
    recursion (mdist.paths.walk). Tool state is left out here as libtorrent's listing leaves it."""
    count = 0
    for rel, entries in walk(directory, skip=lambda child: _is_state(child.split("/"))):
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if _is_state(child.split("/")):
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                raise InputError(f"cannot inspect {entry.path}: {exc.strerror}") from None
            if stat.S_ISLNK(mode):
                raise InputError(f"{entry.path} is a symbolic link; refusing to share it")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise InputError(f"{entry.path} is not a regular file or folder; refusing to share it")
            count += stat.S_ISREG(mode)
            if count > MAX_FILES:
                raise InputError(f"cannot share {directory}: more than {MAX_FILES} files")


def _is_state(parts: list[str]) -> bool:
    try:
        check_not_state(parts)
    except UnsafePathError:
        return True
    return False


def _relative(directory: Path, path: str) -> str:
    return os.path.relpath(path, directory).replace(os.sep, "/")


def _is_tool_state(directory: Path, path: str) -> bool:
    """Leave out .mdist, .git, .cache/huggingface...: no fetcher may write them, so never share them."""
    parts = os.path.relpath(path, directory).split(os.sep)
    return parts != ["."] and _is_state(parts)


def _check_shareable(directory: Path, paths: list[str]) -> None:
    """mdist never makes a torrent that its own fetchers would refuse (checked before hashing)."""
    try:
        check_path_set([directory.name], "folder name")
        check_path_set([path.partition("/")[2] or path for path in paths], "file list")
    except UnsafePathError as exc:
        raise InputError(f"cannot share {directory}: {exc}") from None


@dataclass(frozen=True)
class InfoHashes:
    v1: str | None
    v2: str | None

    @classmethod
    def of(cls, hashes) -> "InfoHashes":
        v1 = str(hashes.v1) if hashes.has_v1() else None
        v2 = str(hashes.v2) if hashes.has_v2() else None
        return cls(v1, v2)


def magnet_link(torrent, *, peer: Endpoint | None = None) -> str:
    """The magnet link of a torrent_info or a torrent_handle (with the handle's trackers)."""
    lib = lt()
    uri = lib.make_magnet_uri(torrent)
    if peer is not None:
        uri += "&x.pe=" + quote(str(peer), safe=":[]")  # libtorrent ignores a percent-encoded colon
    return uri


def folder_mapping(torrent_info) -> dict[int, str]:
    """renamed_files that put a multi-file torrent's files straight into the model folder.

    fetch drops the torrent's root folder (OUT is the release folder) and seed maps back the
    same way, so a folder serves the very torrent it was fetched with, whatever its own name.
    """
    layout = torrent_info.layout()
    renamed = {}
    for index in range(layout.num_files()):
        root, _, rest = layout.file_path(index).partition("/")
        if rest and root == torrent_info.name():
            renamed[index] = rest
    return renamed


def root_name(info: dict) -> str:
    """The name an info dict gives its folder (call check_info_dict first)."""
    return _name_text(_one_of(info, b"name", "name"), "name")


def _bencode_key(key: bytes) -> bytes:
    return str(len(key)).encode() + b":" + key


def release_torrent_bytes(params) -> bytes:
    """A .torrent file of `params.ti` whose info dict is byte for byte the one fetched (so its
    info-hashes are the original's), with the trackers and web seeds known, and the v2 piece
    layers when libtorrent has them (from resume data or after checking the data)."""
    lib = lt()
    ti = params.ti
    trackers = list(dict.fromkeys([*params.trackers, *(entry.url for entry in ti.trackers())]))
    web_seeds = list(dict.fromkeys([*params.url_seeds, *(seed["url"] for seed in ti.web_seeds())]))
    fields: dict[bytes, bytes] = {}
    if trackers:
        fields[b"announce"] = lib.bencode(trackers[0].encode())
        fields[b"announce-list"] = lib.bencode([[url.encode()] for url in trackers])
    if web_seeds:
        fields[b"url-list"] = lib.bencode([url.encode() for url in web_seeds])
    try:
        layers = lib.write_torrent_file(params, lib.write_flags.allow_missing_piece_layer).get(b"piece layers")
    except RuntimeError:  # the layers are a convenience: libtorrent recomputes them when it checks the data
        layers = None
    if layers:
        fields[b"piece layers"] = lib.bencode(layers)
    fields[b"info"] = ti.info_section()  # verbatim: re-encoding could change the info-hash
    return b"d" + b"".join(_bencode_key(key) + fields[key] for key in sorted(fields)) + b"e"


def magnet_peers(uri: str) -> list[str]:
    """x.pe values of a magnet link, percent-decoded (libtorrent skips encoded ones)."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(uri).query).get("x.pe", [])


# -- the info dict from outside: types first, then one path rule -------------------------------
MIN_PIECE_LENGTH = 16 << 10
MAX_PIECE_LENGTH = 256 << 20
MAX_FILE_LENGTH = 1 << 50  # 1 PiB: larger is a forgery, and sums of such lengths overflow
REFUSED = "torrent refused"


def _malformed(what: str) -> InputError:
    return InputError(f"torrent metadata is malformed: {what}")


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _malformed(f"{what} is not a whole number from {low} to {high}")
    return value


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise _malformed(f"{what} is not a byte string")
    return value


def _name_text(value: object, what: str) -> str:
    """One path element: a UTF-8 byte string that is a plain name (mdist.paths.check_component)."""
    try:
        text = _bytes(value, what).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePathError(f"{REFUSED}: {what} is not UTF-8") from None
    return check_component(text, f"{REFUSED}: {what}")


def _one_of(entry: dict, key: bytes, what: str) -> object:
    """`key` or `key.utf-8`: libtorrent prefers the second, so both must say the same thing."""
    values = [entry[k] for k in (key, key + b".utf-8") if k in entry]
    if not values:
        raise _malformed(f"{what} is missing")
    if len(values) == 2 and values[0] != values[1]:
        raise UnsafePathError(f"{REFUSED}: {what} differs from its {key.decode()}.utf-8 twin")
    return values[0]


def _refuse_symlink(entry: dict, what: str) -> bytes:
    attr = _bytes(entry.get(b"attr", b""), f"{what} attr")
    if b"l" in attr or b"symlink path" in entry:
        raise UnsafeContentError(f"{REFUSED}: it contains a symbolic link")
    return attr


def _check_pieces(info: dict, v2: bool) -> None:
    length = _int(info.get(b"piece length"), "piece length", MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
    if v2 and length & (length - 1):
        raise _malformed("piece length of a v2 torrent is not a power of two")
    if b"pieces" in info and len(_bytes(info[b"pieces"], "pieces")) % 20:
        raise _malformed("pieces is not a list of SHA-1 hashes")


def _v1_paths(info: dict, name: str) -> list[str] | None:
    """Paths below the root of the v1 file list (pad files left out), or [name] for one file."""
    if b"files" not in info:
        if b"length" not in info:
            return None
        _int(info[b"length"], "length", 0, MAX_FILE_LENGTH)
        _refuse_symlink(info, "the file")
        return [name]
    if b"length" in info:
        raise _malformed("both length and files are given")
    files = info[b"files"]
    if not isinstance(files, list) or not files:
        raise _malformed("files is not a non-empty list")
    if len(files) > MAX_FILES:
        raise UnsafePathError(f"{REFUSED}: more than {MAX_FILES} files")
    paths = []
    for index, entry in enumerate(files):
        what = f"files[{index}]"
        if not isinstance(entry, dict):
            raise _malformed(f"{what} is not a dictionary")
        _int(entry.get(b"length"), f"{what} length", 0, MAX_FILE_LENGTH)
        attr = _refuse_symlink(entry, what)
        parts = _one_of(entry, b"path", f"{what} path")
        if not isinstance(parts, list) or not parts:
            raise _malformed(f"{what} path is not a non-empty list")
        path = "/".join(_name_text(part, f"{what} path") for part in parts)
        if b"p" in attr:  # pad files are never written; libtorrent names them .pad/SIZE, repeatedly
            check_relative_path(path, f"{REFUSED}: {what} path")
        else:
            paths.append(path)
    return paths


def _v2_paths(tree: object) -> list[str]:
    """Paths of the v2 file tree, walked without recursion (a deep tree cannot exhaust the stack)."""
    paths: list[str] = []
    stack: list[tuple[object, str]] = [(tree, "")]
    nodes = 0
    while stack:
        node, prefix = stack.pop()
        nodes += 1
        if not isinstance(node, dict) or not node:
            raise _malformed(f"file tree entry {prefix or '(root)'!r} is not a non-empty dictionary")
        if len(paths) > MAX_FILES or nodes > 4 * MAX_FILES:
            raise UnsafePathError(f"{REFUSED}: more than {MAX_FILES} files")
        if len(prefix) > MAX_PATH_CHARS:
            raise UnsafePathError(f"{REFUSED}: a path is longer than {MAX_PATH_CHARS} characters")
        if b"" in node:
            if not prefix or len(node) != 1:
                raise _malformed(f"file tree entry {prefix or '(root)'!r} is both a file and a folder")
            _check_leaf(node[b""], prefix)
            paths.append(prefix)
            continue
        for key, child in node.items():
            name = _name_text(key, "file tree")
            stack.append((child, f"{prefix}/{name}" if prefix else name))
    return paths


def _check_leaf(leaf: object, path: str) -> None:
    what = f"file tree entry {path!r}"
    if not isinstance(leaf, dict):
        raise _malformed(f"{what} is not a dictionary")
    _refuse_symlink(leaf, what)
    length = _int(leaf.get(b"length"), f"{what} length", 0, MAX_FILE_LENGTH)
    if length and len(_bytes(leaf.get(b"pieces root"), f"{what} pieces root")) != 32:
        raise _malformed(f"{what} pieces root is not a SHA-256 hash")


def check_info_dict(info: object) -> list[str]:
    """Check a raw bdecoded info dict; return the file paths it places in the download folder.

    Runs before libtorrent parses the dict (or creates anything): libtorrent sanitises names
    while parsing, so a hostile torrent must be refused here, not silently rewritten. Wrong
    bencode types are InputError (exit 2); symbolic links and every path that mdist.paths
    refuses (`..`, absolute, `.git/`, `.mdist/`, collisions...) are UnsafeContentError (exit 1).
    """
    if not isinstance(info, dict):
        raise _malformed("the info section is not a dictionary")
    name = _name_text(_one_of(info, b"name", "name"), "name")
    tree = info.get(b"file tree")
    _check_pieces(info, tree is not None)
    v1 = _v1_paths(info, name)
    v2 = _v2_paths(tree) if tree is not None else None
    if v1 is None and v2 is None:
        raise _malformed("it lists no files (no length, files or file tree)")
    check_path_set([name], f"{REFUSED}: name")  # the folder (or file) named after the torrent
    paths = check_path_set(v2 if v2 is not None else v1, f"{REFUSED}: file list")
    if v1 is not None and v2 is not None and sorted(v1) != sorted(v2):
        raise UnsafePathError(f"{REFUSED}: its v1 and v2 file lists differ")
    return paths
