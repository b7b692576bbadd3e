"""What every resumable download shares (the hub's files, a CDN archive): mdist's own partial files,
reached through real folders only, opened without following a link, resumed with an HTTP Range.

A partial is appended to and truncated across runs, so it must be mdist's own file: a regular file
with one name (a hard link's other name may be a file anywhere on the disk), never a FIFO (a write
would block forever) or a link (a truncate would reach its target).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import SplitResult, urlsplit

from mdist.errors import InputError, UnsafeContentError
from mdist.jsonio import open_regular


def own_file(info: os.stat_result) -> bool:
    """A regular file with one name: what mdist may append to or truncate."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def regular_size(path: Path, own: bool = False) -> int | None:
    """The size of the regular file at `path` itself (None for a link, a FIFO, a device, nothing;
    with `own`, also for a file with another name, a hard link)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if (own_file(info) if own else stat.S_ISREG(info.st_mode)) else None


def real_folders(root: Path, folder: Path) -> None:
    """`folder` and every folder between `root` and it, created where absent, one component at a
    time (no recursion per level), each a real folder: never created or entered through a link."""
    current = Path(root)
    current.mkdir(parents=True, exist_ok=True)  # the download's own folder: the user's choice
    for part in Path(folder).relative_to(root).parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise UnsafeContentError(f"{current} is a symbolic link or a file where the fetch needs a folder; "
                                     f"refusing to write through it (remove it first)")


def open_nofollow(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of the regular file at `path` itself (never through a link; a FIFO or device
    refused without blocking): mdist.jsonio.open_regular, refusals exit 1."""
    return open_regular(path, str(path), follow_links=False, flags=flags, error=UnsafeContentError)


def open_partial(root: Path, partial: Path) -> BinaryIO:
    """`partial` for appending, its folders real: a regular file with one name, never through a link."""
    real_folders(root, partial.parent)
    fd = open_nofollow(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    if os.fstat(fd).st_nlink != 1:
        os.close(fd)
        raise UnsafeContentError(f"{partial} has another name (a hard link); refusing to write to it")
    return os.fdopen(fd, "ab")


def clear_foreign_partial(partial: Path, what: str) -> str | None:
    """Remove a link, hard link, FIFO or device where mdist keeps a partial download (the name, never
    what it leads to); a note saying so, or None when there was nothing foreign."""
    try:
        info = os.lstat(partial)
    except FileNotFoundError:
        return None
    if own_file(info):
        return None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{partial} is a folder where the partial download of {what} goes; refused (remove it)")
    os.unlink(partial)
    return (f"removed {partial}: a link or special file where the partial download of {what} goes "
            f"(what it leads to is untouched)")


MAX_URL_CHARS = 2048


def url_problem(url: str) -> str | None:
    """Why mdist does not fetch `url` (None when it does): too long, spaces or control characters,
    unparsable (a bracket left open, a port that is no number), not http(s) with a host, or carrying
    a user name or password (which would be shown in messages and kept). The same rule for the URL
    the user gives and for every redirect a server answers with."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or re.search(r"[\x00-\x20\x7f-\x9f]", url):
        return f"not a usable URL: at most {MAX_URL_CHARS} characters, no spaces or control characters"
    try:
        parts: SplitResult = urlsplit(url)
        host, credentials = parts.hostname, parts.username or parts.password
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError as exc:
        return f"not a usable URL ({exc})"
    if parts.scheme.lower() not in ("http", "https") or not host:
        return "only http:// and https:// URLs with a host are fetched"
    if credentials:
        return "a URL with a user name or password is refused (it would be shown and kept)"
    return None


def check_redirect(source: str, target: str) -> None:
    """Refuse a redirect that lowers the protection the user asked for: https:// to http:// (the
    bytes would then arrive unencrypted and unauthenticated, with at most an md5 behind them), or to
    any scheme but http(s) (ftp://, file://); and a Location the user's own URL would be refused
    for (url_problem). http:// to https:// only adds protection: followed. Checked at every hop, so
    a chain cannot step down through an intermediate URL."""
    old, new = urlsplit(source).scheme.lower(), target.split(":", 1)[0].lower() if ":" in target else ""
    if new not in ("http", "https"):
        raise InputError(f"{shown_url(source)} redirects to {shown_url(target)}: only http:// and https:// "
                         f"redirects are followed; refused")
    if old == "https" and new == "http":
        raise InputError(f"{shown_url(source)} redirects to {shown_url(target)}: a redirect from https:// to "
                         f"http:// is refused (the download would no longer be encrypted or authenticated); "
                         f"give the http:// URL yourself to fetch from it")
    problem = url_problem(target)
    if problem:
        raise InputError(f"{shown_url(source)} redirects to {shown_url(target)}: {problem}; refused")


def shown_url(url: str, limit: int = 200) -> str:
    """A URL as one printable line: at most `limit` characters, anything but printable ASCII escaped
    (a Location header is the server's text)."""
    text = url[:limit] + ("…" if len(url) > limit else "")
    return "".join(c if " " < c < "\x7f" or c == "…" else repr(c)[1:-1] for c in text)


def resume_offset(status: int, content_range: str | None, start: int, where: str) -> int | None:
    """Where a response body goes in the file: `start` for a 206 that starts there, 0 for a 200 (a
    server ignoring Range sends everything), None for a 416 to a resumed request (the server has
    fewer bytes: start over). Anything else is an error naming `where`."""
    if status == 416 and start:
        return None
    if status == 206:
        match = re.match(r"bytes (\d+)-", content_range or "")
        if not match or int(match.group(1)) != start:
            shown = repr(str(content_range)[:80])
            raise UnsafeContentError(f"{where} answered a request from byte {start} with Content-Range {shown}; "
                                     f"refused")
        return start
    if status == 200:
        return 0
    raise InputError(f"{where} answered HTTP {status}")


@contextlib.contextmanager
def folder_lock(lock_file: Path, folder: Path) -> Iterator[None]:
    """One fetch at a time into a folder: two would append to the same partial files."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(f"another mdist fetch is writing into {folder}; wait for it to end") from None
    try:
        yield
    finally:
        lock.release()
