"""`mdist fetch https://…/X.tar`: a release archive from Mistral's CDN (or a mirror), resumable,
checked against its published md5 before a single file is extracted.

The download goes to `OUT/.mdist/archive-partial/`, keyed by the URL and the md5 (another archive
never resumes its bytes), appended to with O_NOFOLLOW (mdist.sources.http_download, shared with the
hub source), and resumed with a Range request after Ctrl-C or a kill; the md5 is computed while the
bytes arrive (a resumed run re-reads what is on disk first). Only when it matched is the tar read,
and then by mdist itself, not by tarfile's extract: every member is checked first (regular files
and folders only, mdist.paths' rule for names, no two names for one file, bounded count and size),
then written into a fresh folder under `.mdist/` and moved into OUT file by file. A wrong md5 or a
refused archive leaves no model file in OUT. Each extracted file's sha256 is recorded, signed, in
`.mdist/extracted.json` (mdist.verify.extracted) so that later checks do not rest on md5.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import unquote, urljoin, urlsplit

from mdist import __version__
from mdist.atomic import real_dir, refuse_links_on_the_way, require_free_space, write_bytes_atomic
from mdist.errors import InputError, UnsafeContentError, VerificationError
from mdist.paths import (UnsafePathError, check_component, check_not_state, check_path_set, check_relative_path,
                         collision_key)
from mdist.sources.http_download import (check_redirect, clear_foreign_partial, folder_lock, open_nofollow, open_partial,
                                         real_folders, regular_size, resume_offset, shown_url,
                                         url_problem)
from mdist.verify.extracted import Extracted, write_record
from mdist.verify.folder import STATE_DIR

PARTIAL_DIR = "archive-partial"  # in OUT/.mdist: <key>.tar.incomplete
EXTRACT_PREFIX = "archive-extract-"  # in OUT/.mdist: a fresh folder per extraction, moved into OUT once complete
LOCK_FILE = "archive.lock"
MAX_MEMBERS = 4096  # a release archive holds a handful of files; a manifest's complete file list bounds it further
MAX_ARCHIVE_BYTES = 1 << 41  # 2 TiB: Mixtral 8x22B's archive is about 262 GB
FREE_SPACE_MARGIN = 1 << 30  # an archive whose size nobody announced stops this far from a full disk
CHUNK = 1 << 20
RETRIES = 5  # attempts in a row that bring no new byte before giving up
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_MD5 = re.compile(r"[0-9a-f]{32}")


class Unreachable(InputError):
    """The server could not be reached or answered with an error (exit 2): a release with a hub
    repository may fall back to it. A wrong md5 or a refused archive is never this."""


class NoRoom(InputError):
    """An archive of unknown size would not leave room for its extraction (exit 2)."""


@dataclass
class ArchiveOptions:
    out: Path | None = None
    md5: str | None = None  # --md5, checked against the registry's when both are known
    keep_archive: bool = False
    timeout: float = 300.0  # seconds without a byte before a request is given up (and retried)
    quiet: bool = False


def is_archive_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def archive_name(url: str) -> str:
    """The archive's file name from its URL (`…/X.tar` -> `X.tar`), refused unless a plain name
    ending in .tar (a compressed archive could expand without bound); checked before any request."""
    problem = url_problem(url)
    if problem:
        raise InputError(problem if problem.startswith("not a usable URL:") else f"{_short(url)}: {problem}")
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    try:
        check_component(name, "archive name")
    except UnsafePathError as exc:
        raise InputError(f"{_short(url)}: {exc}") from None
    if not name.lower().endswith(".tar") or len(name) <= 4:
        raise InputError(f"{_short(url)}: expected an uncompressed .tar archive (…/NAME.tar)")
    return name


def check_md5(text: str, where: str = "--md5") -> str:
    value = text.strip().lower() if isinstance(text, str) else ""
    if not _MD5.fullmatch(value):
        raise InputError(f"{where}: expected 32 hex digits, got {_short(str(text))}")
    return value


def _short(text: str) -> str:
    return repr(text[:100]).encode("ascii", "backslashreplace").decode("ascii")


@dataclass(frozen=True)
class Limits:
    """What an archive may hold: at most `members` entries and `total` bytes of files; with
    `names`, only those files (a manifest listing the whole release)."""

    members: int = MAX_MEMBERS
    total: int = MAX_ARCHIVE_BYTES
    names: frozenset[str] | None = None


def fetch_archive(url: str, options: ArchiveOptions, reporter, *, md5: str | None = None, size: int | None = None,
                  release: str | None = None, limits: Limits | None = None) -> dict[str, Any]:
    """Download, check the md5, extract safely into OUT, record sha256 of every file; the fetch's
    result as `--json` prints it. `md5`/`size` are what was published (the registry or --md5)."""
    name = archive_name(url)
    out = Path(options.out) if options.out else Path.cwd() / name[:-4]
    state = _prepare(out)
    partial = state / PARTIAL_DIR / f"{hashlib.sha256(f'{url}|{md5}'.encode()).hexdigest()[:16]}.tar.incomplete"
    try:
        with folder_lock(state / LOCK_FILE, out):
            return _fetch_locked(url, name, out, state, partial, options, reporter, md5, size, release, limits)
    finally:
        _remove_empty(partial.parent)


def _fetch_locked(url: str, name: str, out: Path, state: Path, partial: Path, options: ArchiveOptions, reporter,
                  md5: str | None, size: int | None, release: str | None, limits: Limits | None) -> dict[str, Any]:
    """fetch_archive, once this process alone writes into OUT."""
    note = clear_foreign_partial(partial, name)
    if note:
        reporter.message(note)
    others = _other_partials(partial)
    if others:
        reporter.message(f"{len(others)} partial download(s) of another archive URL or md5 ({sum(others) / 1e9:.2f} GB) "
                         f"remain in {partial.parent}: only the same URL and md5 resume them; remove them if no "
                         f"longer needed")
    _remove_old_extractions(state)
    if options.keep_archive:
        _check_kept_archive(out / name, md5, size, reporter)
    if md5 is None:
        reporter.message(f"no md5 is known for {name}: its content cannot be checked (give --md5)")
    download, actual = _download_checked(url, name, out, partial, size, md5, options.timeout, reporter)
    reporter.message(f"{name}: md5 {'matched' if md5 else 'not checked'}; extracting into {out}")
    try:
        files, replaced = _extract_into(partial, out, state, limits or Limits(total=download.total or MAX_ARCHIVE_BYTES),
                                        name)
    except UnsafeContentError:  # the archive itself is refused: it goes too
        partial.unlink(missing_ok=True)
        raise
    if replaced:
        shown = ", ".join(_short(path) for path in replaced[:5]) + (", …" if len(replaced) > 5 else "")
        reporter.message(f"{name}: replaced {len(replaced)} file(s) of other content already in {out}: {shown}")
    if md5 is not None:
        write_record(out, Extracted(url, md5, release, files))
    kept = _keep_or_remove(partial, out, name, files, options.keep_archive, reporter, actual)
    verification = (f"md5 of {name} matched {md5} (md5 detects corruption, not a deliberate collision); "
                    f"sha256 of the {len(files)} extracted files recorded in {STATE_DIR}/extracted.json"
                    if md5 else f"none: no md5 was given or published for {name}")
    return {"out": str(out), "name": name[:-4], "url": url, "md5": md5, "archive_md5": actual,
            "archive_bytes": download.total, "received_bytes": download.received, "archive": kept,
            "files": sorted(files), "replaced": replaced, "total_bytes": sum(size for size, _ in files.values()),
            "manifest": release, "verification": verification}


def _download_checked(url: str, name: str, out: Path, partial: Path, size: int | None, md5: str | None,
                      timeout: float, reporter) -> tuple["_Download", str]:
    """The whole archive in `partial`, and its md5, which is `md5` when one is known. A resumed
    download that does not match may owe it to bytes of an earlier run (another mirror, a crash):
    it is downloaded once more from the start. A mismatch is never kept."""
    download = _Download(url, name, out, partial, size, timeout, reporter)
    actual = _run_or_remove(download)
    if md5 is not None and actual != md5 and download.resumed:
        reporter.message(f"{name}: the download resumed from an earlier run did not match its md5; "
                         f"downloading it again from the start")
        partial.unlink(missing_ok=True)
        download = _Download(url, name, out, partial, size, timeout, reporter)
        actual = _run_or_remove(download)
    if md5 is not None and actual != md5:
        partial.unlink(missing_ok=True)
        raise VerificationError(f"{name}: md5 mismatch (expected {md5}, got {actual}); the archive was removed "
                                f"and nothing was extracted")
    return download, actual


def _run_or_remove(download: "_Download") -> str:
    """download.run(); a refused download (more bytes than published or announced, a size that
    contradicts the published one, no room left) takes its partial file along, so that no later run
    resumes and grows it. A network failure or an interrupt keeps it for the next run."""
    try:
        return download.run()
    except (VerificationError, NoRoom) as exc:
        download.partial.unlink(missing_ok=True)
        raise type(exc)(f"{exc}; the partial download was removed") from None


def write_complete(out: Path, result: dict[str, Any]) -> None:
    """OUT/.mdist/complete.json, written last: a folder without it was not fully fetched and checked."""
    write_bytes_atomic(Path(out) / STATE_DIR / "complete.json", json.dumps(result, indent=2).encode())


def _prepare(out: Path) -> Path:
    """OUT and its .mdist/ as real folders, nothing mdist writes there reached through a link; the
    complete marker goes before anything changes."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror}") from None
    state = real_dir(out / STATE_DIR)
    refuse_links_on_the_way(out, [f"{STATE_DIR}/{name}" for name in (LOCK_FILE, PARTIAL_DIR, "complete.json")],
                            "the fetch")
    (state / "complete.json").unlink(missing_ok=True)
    return state


def _remove_old_extractions(state: Path) -> None:
    """Folders of an extraction that was interrupted: never moved into OUT, so nothing of them is used."""
    for entry in os.scandir(state):
        if entry.name.startswith(EXTRACT_PREFIX):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)  # removes links inside, never what they lead to
            else:
                os.unlink(entry.path)


def _other_partials(partial: Path) -> list[int]:
    """Sizes of the partial downloads beside `partial` (another URL or md5: an abandoned fetch into
    the same OUT, never resumed by this one), so that they do not hold the disk without a word."""
    try:
        entries = list(os.scandir(partial.parent))
    except OSError:
        return []
    return [entry.stat(follow_symlinks=False).st_size for entry in entries
            if entry.name != partial.name and entry.name.endswith(".tar.incomplete") and entry.is_file(follow_symlinks=False)]


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


# -- downloading ------------------------------------------------------------------------------------
class _HttpOnly(urllib.request.HTTPRedirectHandler):
    """Redirects by mdist.sources.http_download.check_redirect: to http:// and https:// only (urllib
    would also follow ftp://), never from https:// down to http://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        check_redirect(req.full_url, newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 (urllib's signature)
        """Every redirect by mdist's policy before urllib's own checks, which said only 'answered HTTP
        302' for file://, data: or an empty Location, a loop or too many hops, and let a Location
        urllib cannot parse ('http://[::1/x') out as an internal error."""
        location = headers.get("Location") or headers.get("URI") or ""
        try:
            check_redirect(req.full_url, urljoin(req.full_url, location))
            return super().http_error_302(req, fp, code, msg, headers)
        except ValueError as exc:
            raise InputError(f"{shown_url(req.full_url)} redirects to {shown_url(location)}: not a usable URL "
                             f"({exc}); refused") from None
        except urllib.error.HTTPError as exc:
            if not str(exc.msg).startswith(self.inf_msg):
                raise
            raise InputError(f"{shown_url(req.full_url)} redirects in a loop or more than {self.max_redirections} "
                             f"times; refused") from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _Download:
    """One archive into its partial file: resumed from what is on disk, md5 computed on the way.

    Runs in the main thread, so Ctrl-C and SIGTERM (raised as KeyboardInterrupt by the CLI) stop it
    at once; every chunk is written before the next is read, so the partial holds exactly what was
    received."""

    def __init__(self, url: str, name: str, out: Path, partial: Path, size: int | None, timeout: float,
                 reporter) -> None:
        self.url, self.name, self.out, self.partial = url, name, out, partial
        self.host = urlsplit(url).hostname or url
        self.expected_size = size
        self.total: int | None = size
        self.timeout = timeout
        self.reporter = reporter
        self.hasher = hashlib.md5()
        self.have = 0
        self.received = 0  # bytes received by this run (a resumed run asks only for the rest)
        self.resumed = False
        self._shown = 0.0
        self._samples: list[tuple[float, int]] = [(time.monotonic(), 0)]

    def run(self) -> str:
        """The archive's md5 once the partial holds all of it."""
        self.have = self._hash_on_disk()
        self.resumed = self.have > 0
        if self.resumed:
            self.reporter.message(f"resuming {self.name}: {self.have / 1e6:.1f} MB already on disk")
        stalled, done = 0, False
        while not done:
            before = self.have
            error: BaseException | None = None
            try:
                done = self._get_rest()
            except Unreachable as exc:
                if not exc.args or not getattr(exc, "transient", False):
                    raise
                error = exc
            stalled = 0 if self.have > before else stalled + 1
            if not done and stalled > RETRIES:
                raise error or Unreachable(f"{self.host} stopped sending {self.name} at byte {self.have}")
            if not done and stalled:
                time.sleep(1.0)
        self._progress(force=True)
        return self.hasher.hexdigest()

    def _hash_on_disk(self) -> int:
        """Feed the bytes an earlier run left to the md5; a partial longer than the archive is started over."""
        size = regular_size(self.partial, own=True)
        if not size:
            return 0
        if self.total is not None and size > self.total:
            self.partial.unlink()
            return 0
        fd = open_nofollow(self.partial)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            left = size
            while left and (chunk := handle.read(min(CHUNK * 4, left))):
                self.hasher.update(chunk)
                left -= len(chunk)
        return size - left

    def _request(self) -> Any:
        headers = {"User-Agent": f"mdist/{__version__}", "Accept-Encoding": "identity"}
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
        opener = urllib.request.build_opener(_HttpOnly)
        try:
            return opener.open(urllib.request.Request(self.url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and self.have:
                return exc  # a response like any other: the caller reads its Content-Range
            error = Unreachable(f"{self.host} answered HTTP {exc.code} for {self.name}")
            error.transient = exc.code in RETRY_STATUS  # type: ignore[attr-defined]
            raise error from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            error = Unreachable(f"cannot reach {self.host}: {reason}")
            error.transient = True  # type: ignore[attr-defined]
            raise error from None

    def _get_rest(self) -> bool:
        """One GET from byte `have`; True once the partial holds the whole archive."""
        response = self._request()
        with contextlib.closing(response):
            status = response.status if hasattr(response, "status") else response.code
            if status == 416:
                if _range_total(response.headers.get("Content-Range")) == self.have:
                    self.total = self.have  # an earlier run got everything
                    return True
                self._restart()
                return False
            offset = resume_offset(status, response.headers.get("Content-Range"), self.have,
                                   f"{self.host} ({self.name})")
            if offset == 0 and self.have:
                self.reporter.message(f"{self.host} ignored the Range request: downloading {self.name} from the start")
                self._restart()
            self._check_total(self._announced_total(response, status))
            self._check_length(response.headers.get("Content-Length"))
            with open_partial(self.out, self.partial) as handle:
                self._receive(response, handle)
        if self.total is None:  # no length announced: the end of the body is the end of the archive
            self.total = self.have
        return self.have == self.total

    def _restart(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.hasher = hashlib.md5()
        self.have = 0

    def _announced_total(self, response: Any, status: int) -> int | None:
        if status == 206:
            return _range_total(response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    def _check_total(self, announced: int | None) -> None:
        """The size the server announces must be the published one, and within bounds; then the
        free space for the rest and for the extraction is checked before a byte is written."""
        if announced is not None:
            if self.expected_size is not None and announced != self.expected_size:
                raise VerificationError(f"{self.host} serves {self.name} with {announced} bytes; "
                                        f"{self.expected_size} were published; refused")
            if announced > MAX_ARCHIVE_BYTES:
                raise UnsafeContentError(f"{self.host} announces {announced} bytes for {self.name}, more than "
                                         f"{MAX_ARCHIVE_BYTES}; refused")
            self.total = announced
        if self.total is not None:
            require_free_space(self.out, (self.total - self.have) + self.total,
                               what=f"{self.name} and its extracted files")

    def _check_length(self, length: str | None) -> None:
        """The body's Content-Length must be exactly the rest of the archive: from `have` to the
        published or announced size. Without any size, it becomes the size."""
        if length is None:
            return
        length = length.strip()
        if not length.isdigit():
            raise UnsafeContentError(f"{self.host} sends {self.name} with Content-Length {_short(length)}; refused")
        if self.total is None:
            self._check_total(self.have + int(length))
        elif int(length) != self.total - self.have:
            raise VerificationError(f"{self.host} sends {int(length)} bytes of {self.name} from byte {self.have}; "
                                    f"{self.total - self.have} were expected (the archive has {self.total}); refused")

    def _check_room(self, more: int) -> None:
        """No size announced or published: stop before the disk fills up. After `more` bytes the
        partial must still leave room for the extracted files (as many bytes) and a margin."""
        free = shutil.disk_usage(self.partial.parent).free
        if free - more < self.have + more + FREE_SPACE_MARGIN:
            raise NoRoom(f"{self.host} sends {self.name} without announcing its size and has sent "
                         f"{self.have / 1e9:.2f} GB; stopped: the free space in {self.out} ({free / 1e9:.2f} GB) would "
                         f"not hold more and its extracted files with {FREE_SPACE_MARGIN / 1e9:.1f} GB to spare")

    def _receive(self, response: Any, handle: BinaryIO) -> None:
        limit = self.total if self.total is not None else MAX_ARCHIVE_BYTES
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, HTTPException) as exc:
                error = Unreachable(f"{self.host} stopped sending {self.name}: {exc}")
                error.transient = True  # type: ignore[attr-defined]
                raise error from None
            if not chunk:
                return
            if self.have + len(chunk) > limit:
                raise UnsafeContentError(f"{self.host} sent more than the {limit} bytes of {self.name}; refused")
            if self.total is None:
                self._check_room(len(chunk))
            handle.write(chunk)
            handle.flush()
            self.hasher.update(chunk)
            self.have += len(chunk)
            self.received += len(chunk)
            self._progress()

    def _progress(self, force: bool = False) -> None:
        from mdist.sources.torrent_fetch import Progress

        now = time.monotonic()
        if not force and now - self._shown < 0.25:
            return
        self._shown = now
        self._samples = [s for s in self._samples if now - s[0] <= 3.0] or self._samples[-1:]
        self._samples.append((now, self.received))
        then, before = self._samples[0]
        rate = (self.received - before) / (now - then) if now > then else 0.0
        self.reporter.update(Progress(name=self.name, state="downloading", total=self.total or 0, done=self.have,
                                      download_rate=rate, source="archive"))


def _range_total(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None


# -- extracting -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Member:
    path: str
    info: tarfile.TarInfo | None  # None for a folder


def check_members(archive: tarfile.TarFile, limits: Limits, where: str) -> list[_Member]:
    """Every entry of the tar, checked before anything is written: regular files and folders only
    (no link, hard link, device, FIFO, sparse file), names by mdist.paths' rule (no `..`, absolute
    name, tool-state folder, two names for one file), no folder spelt two ways (check_spellings), at
    most `limits.members` entries and `limits.total` bytes. A leading `./` is the archive's own folder, as `tar -C DIR` reads it."""
    members: list[_Member] = []
    folders: dict[str, str] = {}
    total = 0
    count = 0
    while True:
        try:
            info = archive.next()
        except _TAR_ERRORS as exc:
            raise _not_a_tar(where, exc) from None
        if info is None:
            _check_end(archive, where)
            break
        count += 1
        if count > limits.members:
            raise UnsafeContentError(f"{where} has more than {limits.members} entries; refused")
        name = info.name
        while name.startswith("./"):
            name = name[2:]
        if info.isdir() and name in ("", "."):
            continue
        kind = _kind(info)
        if kind:
            raise UnsafeContentError(f"{where}: {_short(info.name)} is {kind}; only regular files and folders are "
                                     f"extracted; refused")
        try:
            check_relative_path(name, where)
        except UnsafePathError as exc:
            raise UnsafeContentError(f"{exc}; refused") from None
        if info.isdir():
            folders.setdefault(collision_key(name), name)
            members.append(_Member(name, None))
            continue
        if info.size < 0:
            raise UnsafeContentError(f"{where}: {_short(name)} has a negative size ({info.size}); refused")
        if limits.names is not None and name not in limits.names:
            raise UnsafeContentError(f"{where}: {_short(name)} is not a file of the release; refused")
        total += info.size
        if total > limits.total:
            raise UnsafeContentError(f"{where}: its files hold more than {limits.total} bytes; refused")
        members.append(_Member(name, info))
    files = [m.path for m in members if m.info is not None]
    if not files:
        raise UnsafeContentError(f"{where} holds no file; refused")
    try:
        check_path_set(files, where)
    except UnsafePathError as exc:
        raise UnsafeContentError(f"{exc}; refused") from None
    clash = [path for path in files if collision_key(path) in folders]
    if clash:
        raise UnsafeContentError(f"{where}: {_short(clash[0])} is both a file and a folder; refused")
    check_spellings([member.path for member in members], where)
    return members


# Code points some file systems leave out of a name (HFS+, Linux's casefolding ext4 in some kernels):
# soft hyphen, zero-width and direction marks, variation selectors, the byte-order mark, tags.
_IGNORABLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
                        "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def spelling_key(path: str) -> str:
    """mdist.paths.collision_key, also folding what Windows and FAT/exFAT drop from a name (trailing
    dots and spaces: `a.` is `a` there, also on Linux's vfat) and the code points HFS+ ignores."""
    return "/".join(collision_key(_IGNORABLE.sub("", part)).rstrip(". ") for part in path.split("/"))


def check_spellings(paths: list[str], where: str) -> None:
    """Refuse two spellings of one name anywhere on the paths (`a/x` and `A/y`, `café/` in NFC and
    NFD, `a./x` and `a/y`, a zero-width space): on a case-insensitive, normalising or Windows-style
    file system (macOS, Windows, FAT and exFAT drives, some mounts) they are one folder or file, so
    what lands on disk would differ from what was checked (a file replaced after verification, a
    folder merged). mdist.paths.check_path_set compares whole file paths; this compares every folder
    on the way too, by spelling_key. Linear in the number of path components."""
    spelled: dict[str, tuple[str, str]] = {}  # spelling key of a path prefix -> (its spelling, a full path)
    for path in paths:
        parts = path.split("/")
        try:  # `.mdist./complete.json` or `.git /config` is inside the state folder on such a file system
            check_not_state(spelling_key(path).split("/"), where)
        except UnsafePathError as exc:
            raise UnsafeContentError(f"{where}: {_short(path)} is inside a tool-state folder where trailing dots or "
                                     f"spaces are dropped (Windows, FAT); refused") from exc
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            first = spelled.setdefault(spelling_key(prefix), (prefix, path))
            if first[0] != prefix:
                raise UnsafeContentError(
                    f"{where}: {_short(first[1])} and {_short(path)} spell {_short(first[0])} differently (case or Unicode "
                    f"normalisation), or with trailing dots, spaces or invisible characters: one name on a "
                    f"case-insensitive, normalising or Windows-style file system (macOS, Windows, FAT), so one "
                    f"would replace or merge with the other; refused")


_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, IndexError, KeyError, OverflowError, struct.error)
MAX_EXTENDED_HEADER = 64 << 10  # a pax or GNU long-name header's data: a path is at most 4096 characters
MAX_EXTENDED_CHAIN = 8  # extended headers before one member (pax, global pax, long name, long link)
MAX_DIGIT_RUN = 64  # tarfile's pax regexes backtrack over a run of digits: quadratic in its length
_EXTENDED = {tarfile.XHDTYPE: "pax", tarfile.XGLTYPE: "global pax", tarfile.SOLARIS_XHDTYPE: "pax",
             tarfile.GNUTYPE_LONGNAME: "long name", tarfile.GNUTYPE_LONGLINK: "long link"}
_DIGIT_RUN = re.compile(rb"[0-9]{%d}" % (MAX_DIGIT_RUN + 1))


class RefusedHeader(tarfile.TarError):
    """An extended header refused before tarfile parses it (tarfile passes it on unchanged)."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's own header parsing, bounded before it starts. tarfile reads an extended header's
    whole data into memory whatever size it claims, parses pax records with regexes that are
    quadratic on crafted input, reads GNU sparse maps through the archive, and follows each
    extended header by recursion (thousands of them: RecursionError). Here: at most
    MAX_EXTENDED_HEADER bytes per extended header, MAX_EXTENDED_CHAIN of them before a member, pax
    records checked in linear time first (exact lengths, no GNU.sparse keys, no long digit runs),
    no GNU sparse member."""

    def _proc_member(self, tarfile_):  # noqa: ANN001 (tarfile's signature)
        kind = _EXTENDED.get(self.type)
        if kind is None:
            tarfile_._mdist_chain = 0
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise RefusedHeader(f"{_short(self.name)} is a GNU sparse file")
            return super()._proc_member(tarfile_)
        chain = getattr(tarfile_, "_mdist_chain", 0) + 1
        tarfile_._mdist_chain = chain
        if chain > MAX_EXTENDED_CHAIN:
            raise RefusedHeader(f"more than {MAX_EXTENDED_CHAIN} extended headers in a row at byte {self.offset}")
        if not 0 <= self.size <= MAX_EXTENDED_HEADER:
            raise RefusedHeader(f"a {kind} header of {self.size} bytes at byte {self.offset} (at most "
                                f"{MAX_EXTENDED_HEADER})")
        if kind.endswith("pax"):
            handle = tarfile_.fileobj
            start = handle.tell()
            _check_pax_records(handle.read(self.size), self.offset)
            handle.seek(start)
        return super()._proc_member(tarfile_)


def _check_pax_records(data: bytes, offset: int) -> None:
    """pax records exactly as POSIX writes them ("LENGTH KEYWORD=VALUE\n", the length counting the
    whole record), checked in one pass: what tarfile's parser then reads stays linear."""
    if _DIGIT_RUN.search(data):
        raise RefusedHeader(f"a pax header at byte {offset} holds a run of more than {MAX_DIGIT_RUN} digits")
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos, pos + 21)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        record = data[pos:pos + length]
        equals = record.find(b"=", space - pos + 1)
        if length <= 0 or len(record) != length or not record.endswith(b"\n") or equals <= space - pos + 1:
            raise RefusedHeader(f"a malformed pax record at byte {pos} of the pax header at byte {offset}")
        if record[space - pos + 1:equals].startswith(b"GNU.sparse."):
            raise RefusedHeader(f"a GNU sparse file (pax header at byte {offset})")
        pos += length
    if data[pos:].count(0) != len(data) - pos:
        raise RefusedHeader(f"a malformed pax record at byte {pos} of the pax header at byte {offset}")
END_BLOCKS = 2  # tar ends with two zero blocks of 512 bytes (GNU tar then pads its 10240-byte record with zeros)


def _not_a_tar(where: str, exc: BaseException) -> UnsafeContentError:
    return UnsafeContentError(f"{where} is not a valid tar archive ({_short(str(exc) or type(exc).__name__)}); refused")


def _check_end(archive: tarfile.TarFile, where: str) -> None:
    """tarfile takes a header it cannot read, anywhere after the first, for the end of the archive:
    the members after it would be dropped without a word, and so would a download cut at a header.
    Where tarfile stopped, only zero blocks may follow, at least two, as tar writes them."""
    handle = archive.fileobj
    offset = archive.offset
    handle.seek(0, os.SEEK_END)
    rest = handle.tell() - offset
    if rest < END_BLOCKS * tarfile.BLOCKSIZE or rest % tarfile.BLOCKSIZE:
        raise UnsafeContentError(f"{where} ends at byte {offset + max(rest, 0)} without tar's end-of-archive blocks "
                                 f"(cut short?); refused")
    handle.seek(offset)
    while rest:
        block = handle.read(min(CHUNK, rest))
        if not block:
            raise UnsafeContentError(f"{where} is cut short at byte {handle.tell()}; refused")
        if block.count(0) != len(block):
            raise UnsafeContentError(f"{where} has an unreadable tar header at byte {offset}, and data after it "
                                     f"(the members from there on would be lost); refused")
        rest -= len(block)


def _kind(info: tarfile.TarInfo) -> str | None:
    """What an entry is when it is neither a plain file nor a folder (None for those)."""
    if info.issym():
        return "a symbolic link"
    if info.islnk():
        return "a hard link"
    if info.ischr() or info.isblk():
        return "a device"
    if info.isfifo():
        return "a FIFO"
    if info.issparse():
        return "a sparse file (its size on disk could exceed the archive)"
    if not (info.isreg() or info.isdir()):
        return f"an entry of type {info.type!r}"
    return None


def extract_checked(tar_path: Path, dest: Path, limits: Limits,
                    on_bytes: Callable[[int], None] | None = None, name: str | None = None) -> dict[str, tuple[int, str]]:
    """Extract the tar at `tar_path` into the empty folder `dest` after check_members; {path: (size,
    sha256)} of every file. Files get mode 0644 and folders 0755 (less the umask), never the tar's
    owner or mode bits; each file is created anew (O_EXCL, O_NOFOLLOW) in folders mdist made.
    Refusals name `name` (the archive the user asked for; default the file's own name); anything
    that is not a readable tar, its first header included, is refused (UnsafeContentError)."""
    where = name or tar_path.name
    fd = open_nofollow(tar_path)
    with os.fdopen(fd, "rb") as raw:
        try:
            archive = tarfile.open(fileobj=raw, mode="r:", tarinfo=_BoundedTarInfo)
        except _TAR_ERRORS as exc:
            raise _not_a_tar(where, exc) from None
        with archive:
            members = check_members(archive, limits, where)
            files: dict[str, tuple[int, str]] = {}
            for member in members:
                target = dest / member.path
                if member.info is None:
                    real_folders(dest, target)
                    continue
                real_folders(dest, target.parent)
                try:
                    digest = _copy_member(archive, member.info, target, on_bytes, where)
                except _TAR_ERRORS as exc:
                    raise _not_a_tar(where, exc) from None
                files[member.path] = (member.info.size, digest)
    return files


def _copy_member(archive: tarfile.TarFile, info: tarfile.TarInfo, target: Path,
                 on_bytes: Callable[[int], None] | None, where: str) -> str:
    source = archive.extractfile(info)
    if source is None:
        raise UnsafeContentError(f"{where}: {_short(info.name)} cannot be read as a file; refused")
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as handle, source:
        left = info.size
        while left:
            chunk = source.read(min(CHUNK * 4, left))
            if not chunk:
                raise UnsafeContentError(f"{where}: {_short(info.name)} is cut short in the archive; refused")
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _extract_into(partial: Path, out: Path, state: Path, limits: Limits, name: str
                  ) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Extract into a fresh folder under .mdist/, then move each file into OUT (never through a link);
    an error leaves nothing of the archive in OUT. Refusals name the archive `name`. Also the
    paths of files OUT held with other content, which the archive's replaced."""
    temporary = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX, dir=state))
    try:
        files = extract_checked(partial, temporary, limits, name=name)
        replaced = _move_into(temporary, out, files)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)
        raise
    shutil.rmtree(temporary)
    return files, replaced


def _move_into(temporary: Path, out: Path, files: dict[str, tuple[int, str]]) -> list[str]:
    """Every file to its place in OUT: folders on the way real (a link there is refused, not
    followed), an existing file replaced by name (a link there is replaced, never written through).
    The paths where OUT held something else (another size, a link, a special file; a file of the
    same size is compared byte for byte), so that a replacement is never silent."""
    refuse_links_on_the_way(out, sorted({p.rsplit("/", 1)[0] for p in files if "/" in p}), "the extraction")
    replaced = []
    for path in sorted(files):
        target = out / path
        real_folders(out, target.parent)
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{target} is a folder where the archive has the file {_short(path)}; refused "
                             f"(remove it)")
        if not (stat.S_ISREG(info.st_mode) and info.st_size == files[path][0] and _same_bytes(target, files[path][1])):
            replaced.append(path)
    for path in sorted(files):
        os.replace(temporary / path, out / path)
    return replaced


def _same_bytes(path: Path, sha256: str) -> bool:
    """The regular file at `path` itself (no link followed) has this sha256."""
    try:
        fd = open_nofollow(path)
    except (OSError, UnsafeContentError):
        return False
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK * 4):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _check_kept_archive(target: Path, md5: str | None, size: int | None, reporter) -> None:
    """--keep-archive writes OUT/NAME.tar: a file already there is replaced only when it is this very
    archive (its md5, and size when published, match); anything else is refused before a byte is
    downloaded, as `convert` refuses to overwrite an output, so that nobody loses a file by fetching."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    proceed = "remove or rename it, or fetch without --keep-archive"
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "a symbolic link or special file"
        raise InputError(f"{target} is {what}; --keep-archive would put the archive there: {proceed}")
    if md5 is None:
        raise InputError(f"{target} exists and no md5 is known to tell whether it is this archive; --keep-archive "
                         f"would replace it: {proceed} (or give --md5)")
    if (size is not None and info.st_size != size) or _file_md5(target) != md5:
        raise InputError(f"{target} exists with other content than this archive (md5 {md5}); --keep-archive would "
                         f"replace it: {proceed}")
    reporter.message(f"{target} is already this archive (md5 matched); it stays")


def _is_archive(path: Path, md5: str) -> bool:
    """The regular file at `path` itself has this md5 (a link or special file put there meanwhile: no)."""
    try:
        return _file_md5(path) == md5
    except (OSError, UnsafeContentError):
        return False


def _file_md5(path: Path) -> str:
    """md5 of the regular file at `path` itself (never through a link)."""
    digest = hashlib.md5()
    with os.fdopen(open_nofollow(path), "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK * 4):
            digest.update(chunk)
    return digest.hexdigest()


def _keep_or_remove(partial: Path, out: Path, name: str, files: dict[str, tuple[int, str]], keep: bool,
                    reporter, md5: str) -> str | None:
    """With --keep-archive the verified archive becomes OUT/NAME.tar; otherwise it goes."""
    if keep:
        if name in files or collision_key(name) in {collision_key(p) for p in files}:
            reporter.message(f"the archive holds a file named {name}: the archive itself is not kept")
        else:
            return _keep(partial, out / name, md5, reporter)
    partial.unlink(missing_ok=True)
    return None


def _keep(partial: Path, target: Path, md5: str, reporter) -> str | None:
    """The verified archive as `target`, never replacing what is there: a file that appeared there
    since _check_kept_archive (a download takes hours) is left alone unless it is this very archive
    (os.link fails on any existing name, where os.replace replaced it without a word); `md5` is the
    archive's."""
    try:
        os.link(partial, target, follow_symlinks=False)
    except FileExistsError:
        if regular_size(target) == os.lstat(partial).st_size and _is_archive(target, md5):
            partial.unlink(missing_ok=True)
            return str(target)
        partial.unlink(missing_ok=True)
        reporter.message(f"{target} appeared during the fetch and is not this archive: it is left as it is, and "
                         f"the archive is not kept")
        return None
    except OSError:  # no hard links on this file system: the same check, then a rename
        if os.path.lexists(target):
            partial.unlink(missing_ok=True)
            reporter.message(f"{target} appeared during the fetch: it is left as it is, and the archive is not kept")
            return None
        os.replace(partial, target)
        return str(target)
    partial.unlink(missing_ok=True)
    return str(target)

