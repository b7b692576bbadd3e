"""Fetch from the Hugging Face hub or a mirror through huggingface_hub, then verify every file.

huggingface_hub checks only sizes; a broken or malicious mirror can serve altered bytes. mdist
resolves the revision to a commit, lists every file's LFS sha256 and git blob sha1, downloads,
and hashes what landed on disk. A file that does not match is removed, never left looking valid.

Everything the server says is checked before it is used: the commit is 40 lowercase hex (and the
one asked for, when a commit was asked for), every listed name passes mdist.paths, every file has
its hashes, and a known release fetches only its own files. What the download machinery writes
beyond the selected files is removed and reported.

Nothing on disk is trusted either: whatever the fetch reads, writes, truncates, renames or deletes
in OUT (or in the cache repo's folders) is reached without a symbolic link on the way, and is a
regular file, opened with O_NOFOLLOW and O_NONBLOCK (a FIFO or a device is never read or written).
A link where a file or folder of the fetch goes is refused, never followed; a link, a special file
or a hard-linked file where mdist keeps a partial download is removed (the name, never what it
leads to: a partial is appended to and truncated, so it must be mdist's own file, one name only).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from mdist.atomic import real_dir, refuse_links_on_the_way, refuse_unreal_dir, require_free_space, write_bytes_atomic
from mdist.errors import InputError, MdistError, UnsafeContentError, VerificationError
from mdist.paths import check_path_set, walk
from mdist.sources.http_download import (clear_foreign_partial, folder_lock, open_nofollow, open_partial, own_file,
                                         real_folders, regular_size, resume_offset)
from mdist.sources.resolve import COMMIT, check_repo_id, check_revision, quoted
from mdist.verify.folder import STATE_DIR
from mdist.verify.hashing import GIT_SHA1, Cancelled, hash_fd
from mdist.verify.manifest import Manifest, load_registry

DEFAULT_ENDPOINT = "https://huggingface.co"
SHA256 = re.compile(r"[0-9a-f]{64}")
HF_STATE = (".cache", "huggingface")  # huggingface_hub's own metadata inside a --out folder


@dataclass
class HubOptions:
    out: Path | None = None
    endpoint: str | None = None
    to_hf_cache: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    quiet: bool = False


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS oid
    blob_sha1: str | None  # git blob id (what a small file's content hashes to)


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_network_error(exc: BaseException) -> bool:
    """Transport failures of whichever HTTP client huggingface_hub uses (httpx, httpx2, requests)."""
    root = type(exc).__module__.split(".")[0]
    return root.startswith(("httpx", "httpcore", "requests", "urllib3"))


def _api_errors():
    from huggingface_hub import errors

    return errors


def resolve_remote(repo: str, revision: str | None, endpoint: str) -> tuple[str, list[RemoteFile]]:
    """(commit sha, files with their published hashes) for repo at revision, all checked."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    errors = _api_errors()
    api = HfApi(endpoint=endpoint)
    wanted = revision or "main"
    try:
        info = api.model_info(repo, revision=wanted)
        commit = _check_commit(info.sha, repo, revision, endpoint)
        try:
            tree = [e for e in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(e, RepoFile)]
        except (KeyError, TypeError, AttributeError) as exc:  # RepoFile(**entry) on an entry lacking a field
            raise UnsafeContentError(f"the file listing from {endpoint} for {repo}@{commit[:12]} is malformed "
                                     f"(an entry lacks {quoted(exc.args[0] if exc.args else exc)}); refused") from None
    except errors.RevisionNotFoundError:
        raise InputError(f"{repo} has no revision {wanted!r} at {endpoint}") from None
    except errors.RepositoryNotFoundError:
        raise InputError(f"repository {repo} (revision {wanted!r}) not found at {endpoint}") from None
    except errors.HfHubHTTPError as exc:
        raise InputError(f"{endpoint} answered with an error for {repo}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:  # connection refused, DNS, timeouts (requests/httpx subclass these)
        raise InputError(f"cannot reach {endpoint}: {type(exc).__name__}") from None
    except Exception as exc:
        if _is_network_error(exc):
            raise InputError(f"cannot reach {endpoint}: {type(exc).__name__}: {exc}") from None
        raise
    check_path_set((e.path for e in tree), f"file listing from {endpoint}")
    return commit, [_remote_file(e, endpoint) for e in tree]


def _check_commit(sha: Any, repo: str, revision: str | None, endpoint: str) -> str:
    """The server's commit names the snapshot folder and goes into refs/: 40 lowercase hex only,
    and the very commit asked for when the revision was one."""
    if not sha:
        raise InputError(f"{endpoint} did not say which commit {repo}@{revision or 'main'} is")
    if not isinstance(sha, str) or not COMMIT.fullmatch(sha):
        raise UnsafeContentError(f"{endpoint} answered {quoted(sha)} as the commit of "
                                 f"{repo}@{revision or 'main'}, not a 40-hex commit id; refused")
    if revision is not None and COMMIT.fullmatch(revision) and sha != revision:
        raise UnsafeContentError(f"asked {endpoint} for commit {revision} of {repo}, it answered with commit {sha}; "
                                 "refused")
    return sha


def _remote_file(entry: Any, endpoint: str) -> RemoteFile:
    """A listed file with the hashes it will be checked against: a file without them is refused,
    never counted as verified."""
    where = f"the file listing from {endpoint}: {quoted(entry.path)}"
    if type(entry.size) is not int or entry.size < 0:
        raise UnsafeContentError(f"{where} has no valid size ({quoted(entry.size)}); refused")
    if not isinstance(entry.blob_id, str) or not COMMIT.fullmatch(entry.blob_id):
        raise UnsafeContentError(f"{where} has no valid git blob id ({quoted(entry.blob_id)}); refused")
    sha256 = entry.lfs.sha256 if entry.lfs is not None else None
    if entry.lfs is not None and not (isinstance(sha256, str) and SHA256.fullmatch(sha256)):
        raise UnsafeContentError(f"{where} is an LFS file without a valid sha256 ({quoted(sha256)}); refused")
    return RemoteFile(entry.path, entry.size, sha256, entry.blob_id)


def _select(files: list[RemoteFile], include: list[str], exclude: list[str]) -> list[RemoteFile]:
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(files, allow_patterns=include or None, ignore_patterns=exclude or None,
                                    key=lambda f: f.path))


def _within_release(selected: list[RemoteFile], remote: list[RemoteFile], known: Manifest | None,
                    include: list[str], exclude: list[str], where: str) -> tuple[list[RemoteFile], list[str]]:
    """(files to fetch, names skipped). For a release whose manifest lists every file, what else the
    server lists is not part of it (a mirror adding a shard that the runner would load) and is
    skipped; a file of the release that the server lacks is an error."""
    if known is None or not known.files_complete:
        return selected, []
    from huggingface_hub.utils import filter_repo_objects

    served = {f.path for f in remote}
    wanted = filter_repo_objects(sorted(known.files), allow_patterns=include or None, ignore_patterns=exclude or None)
    missing = [path for path in wanted if path not in served]
    if missing:
        raise VerificationError(f"{where} does not serve {', '.join(missing)} of {known.name}; refused")
    return [f for f in selected if f.path in known.files], sorted(f.path for f in selected if f.path not in known.files)



def _manifest_for(repo: str, given: Manifest | None) -> Manifest | None:
    if given is not None:
        return given
    for manifest in load_registry():
        if (manifest.sources.get("hub") or {}).get("repo") == repo:
            return manifest
    return None


def fetch_hub(repo: str, revision: str | None, options: HubOptions, reporter,
              manifest: Manifest | None = None) -> dict[str, Any]:
    _check_request(repo, revision, options)
    endpoint = (options.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    commit, remote = resolve_remote(repo, revision, endpoint)
    known = _manifest_for(repo, manifest)
    selected, skipped = _within_release(_select(remote, options.include, options.exclude), remote, known,
                                        options.include, options.exclude, f"{endpoint} ({repo}@{commit[:12]})")
    if not selected:
        raise InputError(f"no file of {repo}@{commit[:12]} matches --include/--exclude")
    total = sum(f.size for f in selected)
    folder, ref = _prepare_target(repo, revision, commit, options)
    reporter.message(f"{repo}@{revision or 'main'} is commit {commit}; fetching {len(selected)} files from {endpoint}")
    if skipped:
        reporter.message(f"{endpoint} also lists files that are not part of {known.name}, not downloaded: "
                         f"{', '.join(skipped)}")
    if known:  # what the release check will read: refused now, before any download
        _release_files(folder, known, options.to_hf_cache)
    before = _files_under(folder)
    with _folder_lock(folder, options.to_hf_cache):
        digests = _download_all(repo, commit, endpoint, selected, folder, options.to_hf_cache, reporter)
    removed = _remove_unasked(folder, selected, before, options.to_hf_cache)
    if removed:
        reporter.message(f"removed {len(removed)} files that were not in the selected listing: "
                         f"{', '.join(quoted(p) for p in removed)}")
    sha256 = {f.path: d["sha256"] for f, d in zip(selected, digests)}
    manifest_checked = _check_manifest(folder, known, sha256, options.to_hf_cache) if known else 0
    if ref is not None:  # checked again just before writing
        ref = _ref_path(folder, revision or "main", commit) or ref
        _refuse_cache_links(folder, revision or "main")
        write_bytes_atomic(ref, commit.encode())
    lfs = sum(1 for f in selected if f.sha256)
    result = {
        "out": str(folder), "name": repo, "repo": repo, "revision": revision or "main", "commit": commit,
        "endpoint": endpoint, "files": sorted(f.path for f in selected), "total_bytes": total,
        "skipped": skipped, "removed": removed,
        "manifest": known.name if known else None,
        "verification": (f"sha256 of {lfs} LFS files and git sha1 of {len(selected) - lfs} small files "
                         f"against what {endpoint} published for commit {commit[:12]}"
                         + (f"; {manifest_checked} files also against {known.name}" if known else "")),
    }
    if not options.to_hf_cache:
        write_bytes_atomic(folder / STATE_DIR / "complete.json", json.dumps(result, indent=2).encode())
    return result


def _check_request(repo: str, revision: str | None, options: HubOptions) -> None:
    """Usage errors before any request (the CLI checks too; this guards other callers)."""
    if options.out is not None and options.to_hf_cache:
        raise InputError("--out and --to-hf-cache cannot be used together: the cache decides where files go")
    check_repo_id(repo)
    if revision is not None:
        check_revision(revision)


def _prepare_target(repo: str, revision: str | None, commit: str, options: HubOptions) -> tuple[Path, Path | None]:
    """(folder the files land in, ref file to write or None), checked; an --out folder loses its
    complete marker before anything in it changes."""
    if options.to_hf_cache:
        snapshot = _cache_snapshot(repo, commit)
        ref = _ref_path(snapshot, revision or "main", commit)
        _refuse_cache_links(snapshot, (revision or "main") if ref else None)
        return snapshot, ref
    out = Path(options.out) if options.out else Path.cwd() / repo.split("/")[1]
    out.mkdir(parents=True, exist_ok=True)
    real_dir(out / STATE_DIR)
    refuse_links_on_the_way(out, [f"{STATE_DIR}/hub.lock"], "the fetch")
    (out / STATE_DIR / "complete.json").unlink(missing_ok=True)
    return out, None


def _refuse_cache_links(snapshot: Path, revision: str | None) -> None:
    """The cache repo's folder and its blobs/, snapshots/<commit>/ and refs/<revision> (when a ref
    is written) are real folders, not links to elsewhere (the cache's own root may be a link: that
    is the user's choice of disk)."""
    cache, storage = snapshot.parents[2], snapshot.parents[1].name
    folders = [f"{storage}/blobs", f"{storage}/snapshots/{snapshot.name}"]
    refuse_links_on_the_way(cache, folders + ([f"{storage}/refs/{revision}"] if revision else []),
                            "the fetch into the HF cache")


def _download_all(repo: str, commit: str, endpoint: str, selected: list[RemoteFile], target: Path, in_cache: bool,
                  reporter) -> list[dict[str, str]]:
    """Digests of the selected files, each in place and verified; what is already on disk (whole
    files, partial files of an interrupted run) is used, and needs no free space."""
    plan = _plan(selected, target, in_cache)
    for note in _clear_partials(plan):
        reporter.message(note)
    total, have = sum(f.size for f in selected), sum(_bytes_on_disk(p) for p in plan)
    require_free_space(target.parents[2] if in_cache else target, total - have, what="the download")
    if have:
        reporter.message(f"resuming: {have / 1e6:.1f} MB of {total / 1e6:.1f} MB already on disk")
    try:
        return _transfer_all(plan, _Transfer(repo, commit, endpoint, plan, reporter))
    finally:
        if not in_cache:
            _remove_empty(target / STATE_DIR / PARTIAL_DIR)


def _cache_snapshot(repo: str, commit: str) -> Path:
    """Where huggingface_hub keeps repo@commit in the Hugging Face cache (HF_HUB_CACHE)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit


# -- downloading: resumable, stoppable -------------------------------------------------------------
#
# huggingface_hub (2.x) downloads each file to a temporary name unique to the process and deletes it
# on failure, so nothing is ever resumed; and snapshot_download's thread pool waits for every running
# download on Ctrl-C. mdist therefore downloads each listed file itself, through huggingface_hub's
# HTTP session and headers: into a partial file that keeps its name across runs (resumed with a
# Range request), hashed, and renamed into place only once it matches.

_real_folders, _own_file, _regular_size = real_folders, own_file, regular_size  # shared with the archive source

PARTIAL_DIR = "hub-partial"  # in OUT/.mdist: partial downloads, named <path key>.<etag>.incomplete
WORKERS = 8  # files downloaded at once, as snapshot_download did
RETRIES = 5  # attempts in a row that bring no new byte before giving up
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Placement:
    """Where one listed file's bytes go: `partial` grows across runs and becomes `final` only once
    verified. In the HF cache `final` is the blob, `link` the snapshot's name for it, and `lock`
    huggingface_hub's lock for that blob (so the two never write it at once). `stale` names the
    folders and name patterns of earlier partial files of the same path (or blob). Every one of
    these paths is below `root`, reached through real folders only."""

    remote: RemoteFile
    root: Path  # the folder nothing below may be a link: OUT, or the HF cache
    final: Path
    partial: Path
    link: Path | None = None
    lock: Path | None = None
    stale: tuple[tuple[Path, str], ...] = ()

    @property
    def etag(self) -> str:
        return self.remote.sha256 or self.remote.blob_sha1 or ""


def _plan(selected: list[RemoteFile], target: Path, in_cache: bool) -> list[Placement]:
    """Where each file goes, refused before anything is written when a symbolic link (or a FIFO, a
    device) is on the way to a final file, a partial's folder, a snapshot's folder or a lock: the
    fetch would write, truncate or delete through it, outside its folder."""
    if in_cache:
        plan = [_cache_placement(f, target) for f in selected]
    else:
        refuse_unreal_dir(target / STATE_DIR / PARTIAL_DIR)
        plan = [_folder_placement(f, target) for f in selected]
    if plan:
        root = plan[0].root
        refuse_links_on_the_way(root, [_rel(root, place) for p in plan for place in (
            p.final, p.partial.parent, *([p.link.parent] if p.link else []), *([p.lock] if p.lock else []))],
            "the fetch")
    return plan


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _real_folder_under(root: Path, folder: Path) -> bool:
    """True when `folder` exists below `root` with no link (or file) on the way."""
    current = Path(root)
    for part in folder.relative_to(root).parts:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except OSError:
            return False
    return True


def _clear_partials(plan: list[Placement]) -> list[str]:
    """Notes on partial files removed because they are not mdist's own: a link (to a file outside
    that a resume would truncate), a hard link (to one a resume would append to), a FIFO (that
    would block the write forever), a device. The name goes, never what it leads to."""
    notes = [clear_foreign_partial(p.partial, quoted(p.remote.path)) for p in plan]
    return [note for note in notes if note]


def _folder_placement(remote: RemoteFile, out: Path) -> Placement:
    """A file of an --out folder; its partial is keyed by path and content, so that two paths with
    the same bytes never share one, and a new commit's content never resumes an old one's."""
    key = hashlib.sha256(remote.path.encode()).hexdigest()[:16]
    etag = remote.sha256 or remote.blob_sha1
    *parents, name = remote.path.split("/")
    short = base64.urlsafe_b64encode(hashlib.sha1(f"{name}.metadata".encode()).digest()).decode()
    hf_names = rf"(?:{re.escape(name)}|{re.escape(short)})\.(?:[0-9a-f]{{40}}|[0-9a-f]{{64}})(?:\.[0-9a-f]{{8}})?"
    partials = out / STATE_DIR / PARTIAL_DIR
    return Placement(remote, root=out, final=out / remote.path, partial=partials / f"{key}.{etag}.incomplete",
                     stale=((partials, rf"{key}\.[0-9a-f]+\.incomplete"),
                            (out.joinpath(*HF_STATE, "download", *parents), hf_names + r"\.incomplete")))


def _cache_placement(remote: RemoteFile, snapshot: Path) -> Placement:
    """A file in the HF cache layout: blobs/<etag>, and snapshots/<commit>/<path> linking to it."""
    storage = snapshot.parents[1]
    etag = remote.sha256 or remote.blob_sha1
    blobs = storage / "blobs"
    return Placement(remote, root=storage.parent, final=blobs / etag, partial=blobs / f"{etag}.incomplete",
                     link=snapshot / remote.path, lock=storage.parent / ".locks" / storage.name / f"{etag}.lock",
                     stale=((blobs, rf"{etag}\.[0-9a-f]{{8}}\.incomplete"),))


def _leftovers(p: Placement) -> list[Path]:
    """Earlier partial files of this placement other than its own partial (huggingface_hub's, an
    old commit's): resumable when they hold the same content, removed once the file is verified."""
    found = []
    for folder, pattern in p.stale:
        if _real_folder_under(p.root, folder):
            found += [folder / n for n in os.listdir(folder) if re.fullmatch(pattern, n) and folder / n != p.partial]
    return sorted(found)


@contextlib.contextmanager
def _folder_lock(target: Path, in_cache: bool) -> Iterator[None]:
    """One fetch at a time into an --out folder: two would append to the same partial files. (In
    the cache, each blob has its own lock, shared with huggingface_hub.)"""
    if in_cache:
        yield
        return
    with folder_lock(target / STATE_DIR / "hub.lock", target):
        yield


@contextlib.contextmanager
def _blob_lock(p: Placement, cancel: threading.Event) -> Iterator[None]:
    """huggingface_hub's lock for one blob of the cache, waited for only as long as not stopped."""
    if p.lock is None:
        yield
        return
    from filelock import FileLock, Timeout

    _real_folders(p.root, p.lock.parent)
    lock = FileLock(str(p.lock))
    while True:
        try:
            lock.acquire(timeout=0.5)
            break
        except Timeout:
            if cancel.is_set():
                raise Cancelled(str(p.lock)) from None
    try:
        yield
    finally:
        lock.release()


class _Transfer:
    """What the download threads share: huggingface_hub's HTTP session and headers, the stop flag,
    and byte counts that the main thread turns into progress (threads never print)."""

    def __init__(self, repo: str, commit: str, endpoint: str, plan: list[Placement], reporter) -> None:
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session

        self.repo, self.commit, self.endpoint, self.reporter = repo, commit, endpoint, reporter
        self.session = get_session()
        self.headers = {**build_hf_headers(), "Accept-Encoding": "identity"}  # Range counts the file's own bytes
        self.timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
        self.cancel = threading.Event()
        self.on_disk = [_bytes_on_disk(p) for p in plan]
        self.received = [0] * len(plan)
        self.total = sum(p.remote.size for p in plan)
        self.notes: list[str] = []
        self._samples: list[tuple[float, int]] = [(time.monotonic(), 0)]

    def url(self, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, path, revision=self.commit, endpoint=self.endpoint)

    def report(self) -> None:
        """Messages and progress, from the main thread only."""
        from mdist.sources.torrent_fetch import Progress

        while self.notes:
            self.reporter.message(self.notes.pop(0))
        now, received = time.monotonic(), sum(self.received)
        self._samples = [s for s in self._samples if now - s[0] <= 3.0] or self._samples[-1:]
        self._samples.append((now, received))
        then, before = self._samples[0]
        rate = (received - before) / (now - then) if now > then else 0.0  # over the last 3 s
        self.reporter.update(Progress(name=self.repo, state="downloading", total=self.total,
                                      done=min(sum(self.on_disk), self.total), download_rate=rate, source="hub"))


def _transfer_all(plan: list[Placement], transfer: _Transfer) -> list[dict[str, str]]:
    """Digests of every placed file, downloaded by up to WORKERS daemon threads, largest first.

    The main thread only waits and reports: Ctrl-C and SIGTERM arrive there, set the stop flag, and
    after at most a second for the threads to close their files the interrupt goes on. Daemon
    threads, so that one blocked on a silent server cannot hold the exit. The first failure stops
    the others; their partial files stay for the next run.
    """
    pending = iter(sorted(range(len(plan)), key=lambda i: -plan[i].remote.size))
    take = threading.Lock()
    results: dict[int, dict[str, str]] = {}
    failures: list[BaseException] = []

    def work() -> None:
        while not transfer.cancel.is_set():
            with take:
                index = next(pending, None)
            if index is None:
                return
            try:
                results[index] = _fetch_one(plan[index], index, transfer)
            except Cancelled:
                return
            except BaseException as exc:  # noqa: BLE001 (handed to the main thread)
                failures.append(_download_error(exc, transfer.endpoint, plan[index].remote.path))
                transfer.cancel.set()

    threads = [threading.Thread(target=work, name=f"mdist-hub-{n}", daemon=True)
               for n in range(min(WORKERS, len(plan)))]
    for thread in threads:
        thread.start()
    try:
        while not failures and (alive := [thread for thread in threads if thread.is_alive()]):
            alive[0].join(0.25)
            transfer.report()
    except BaseException:
        _stop(threads, transfer)
        raise
    _stop(threads, transfer)
    transfer.report()
    if failures:
        raise failures[0]
    return [results[i] for i in range(len(plan))]


def _stop(threads: list[threading.Thread], transfer: _Transfer) -> None:
    """Raise the stop flag and give the threads a second to close their files (a no-op once done)."""
    transfer.cancel.set()
    deadline = time.monotonic() + 1.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _download_error(exc: BaseException, endpoint: str, path: str) -> BaseException:
    """A worker's failure as the CLI reports it: mdist's own errors as they are, HTTP and network
    failures as one line naming the file and the endpoint."""
    if isinstance(exc, MdistError):
        return exc
    if isinstance(exc, (_api_errors().HfHubHTTPError, OSError, ValueError)) or _is_network_error(exc):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return InputError(f"download of {quoted(path)} from {endpoint} failed: {first}")
    return exc


def _fetch_one(p: Placement, index: int, transfer: _Transfer) -> dict[str, str]:
    """Digests of p's file once it is in place and verified: the one already there when it
    matches, otherwise a download. Earlier partial files go once the file is verified."""
    with _blob_lock(p, transfer.cancel):
        digests = _present(p, transfer.cancel)
        if digests is None:
            digests = _download_verified(p, index, transfer)
            _sync(p.partial)
            _real_folders(p.root, p.final.parent)
            os.replace(p.partial, p.final)  # replaces the name itself, never writes through it
        if p.link is not None:
            _link(p.root, p.final, p.link)
        for leftover in _leftovers(p):
            leftover.unlink(missing_ok=True)
    transfer.on_disk[index] = p.remote.size
    return digests


def _present(p: Placement, cancel: threading.Event) -> dict[str, str] | None:
    """Digests of the file already at p.final if it is the listed one (a finished earlier run).
    Anything else there is removed: an outdated or altered file must not stay looking current."""
    try:
        info = os.lstat(p.final)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{p.final} is a folder where {quoted(p.remote.path)} goes; refused")
    if not stat.S_ISREG(info.st_mode):  # refused before the download began: one appeared since
        raise UnsafeContentError(f"{p.final} is a symbolic link or special file where {quoted(p.remote.path)} goes; "
                                 f"refusing to use it (remove it first)")
    if info.st_size == p.remote.size:
        digests = _digests(p.final, p.remote, cancel)
        if _mismatch(p.remote, digests) is None:
            return digests
    p.final.unlink()
    return None


def _download_verified(p: Placement, index: int, transfer: _Transfer) -> dict[str, str]:
    """Digests of p.partial once downloaded and matching. A resumed file that does not match may
    owe it to bytes from an earlier run (another mirror, a crash): it is downloaded once more from
    the start. A mismatch is never kept: the partial is removed."""
    resumed = _adopt(p) > 0
    transfer.on_disk[index] = _partial_size(p)
    _download(p, index, transfer)
    digests = _digests(p.partial, p.remote, transfer.cancel)
    wrong = _mismatch(p.remote, digests)
    if wrong and resumed:
        p.partial.unlink()
        transfer.notes.append(f"{p.remote.path}: the download resumed from an earlier run did not match; "
                              f"downloading it again from the start")
        _download(p, index, transfer)
        digests = _digests(p.partial, p.remote, transfer.cancel)
        wrong = _mismatch(p.remote, digests)
    if wrong:
        p.partial.unlink(missing_ok=True)
        kind, expected, actual = wrong
        raise VerificationError(f"{p.remote.path}: {kind} mismatch (expected {expected}, got {actual}); "
                                f"the file was removed")
    return digests


def _adopt(p: Placement) -> int:
    """Bytes p.partial starts with: an earlier run's, or else the largest leftover of the same
    content (huggingface_hub's, from before mdist resumed), renamed to p.partial."""
    if not os.path.lexists(p.partial):
        sizes = {c: _regular_size(c, own=True) for c in _leftovers(p) if p.etag in c.name.split(".")}
        for candidate in sorted((c for c in sizes if sizes[c] is not None), key=lambda c: -(sizes[c] or 0)):
            _real_folders(p.root, p.partial.parent)
            with contextlib.suppress(OSError):
                os.replace(candidate, p.partial)
                break
    return _partial_size(p)


def _partial_size(p: Placement) -> int:
    """Bytes in p.partial; one longer than the file is started over (removed: a name of mdist's,
    never truncated through a link). Anything but a regular file was removed before the download:
    one that appears since is refused."""
    try:
        info = os.lstat(p.partial)
    except FileNotFoundError:
        return 0
    if not _own_file(info):
        raise UnsafeContentError(f"{p.partial} became a link or special file during the download of "
                                 f"{quoted(p.remote.path)}; refused")
    if info.st_size > p.remote.size:
        p.partial.unlink()
        return 0
    return info.st_size


def _download(p: Placement, index: int, transfer: _Transfer) -> None:
    """Bring p.partial to the listed size, asking only for the bytes it lacks. Network failures
    and busy-server answers are retried from wherever the file got to; RETRIES attempts in a row
    without a new byte give up."""
    stalled = 0
    while (start := _partial_size(p)) < p.remote.size:
        error: BaseException | None = None
        try:
            _get_rest(p, start, index, transfer)
        except Exception as exc:  # noqa: BLE001 (sorted below)
            if not _is_transient(exc):
                raise
            error = exc
        stalled = 0 if _partial_size(p) > start else stalled + 1
        if stalled > RETRIES:
            raise error or InputError(f"{transfer.endpoint} stopped sending {quoted(p.remote.path)} at byte {start} "
                                      f"of {p.remote.size}")
        if stalled and transfer.cancel.wait(1.0):
            raise Cancelled(p.remote.path)


def _is_transient(exc: BaseException) -> bool:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return _is_network_error(exc) or (isinstance(exc, _api_errors().HfHubHTTPError) and status in RETRY_STATUS)


def _get_rest(p: Placement, start: int, index: int, transfer: _Transfer) -> None:
    """One GET of p's file from byte `start` (`Range: bytes=start-`), appended to p.partial. A
    server that ignores Range sends the whole file (200): the partial is started over. Never more
    than the listed size is written, whatever the server sends."""
    headers = dict(transfer.headers, Range=f"bytes={start}-") if start else transfer.headers
    with _stream(transfer.session, transfer.url(p.remote.path), headers, transfer.timeout) as response:
        offset = _body_offset(response, start, p, transfer.endpoint)
        if offset is None:  # 416: the server has fewer bytes than the partial; start over
            p.partial.unlink(missing_ok=True)
            return
        try:
            _check_length(response, offset, p, transfer.endpoint)
            with _open_partial(p) as handle:
                handle.truncate(offset)
                transfer.on_disk[index] = offset
                for chunk in response.chunks:
                    if transfer.cancel.is_set():
                        raise Cancelled(p.remote.path)
                    if offset + len(chunk) > p.remote.size:
                        raise UnsafeContentError(f"{transfer.endpoint} sent more than the {p.remote.size} bytes it "
                                                 f"lists for {quoted(p.remote.path)}; refused")
                    handle.write(chunk)
                    offset += len(chunk)
                    transfer.on_disk[index] = offset
                    transfer.received[index] += len(chunk)
        except UnsafeContentError as exc:  # the server's answer is refused: its bytes are not resumed
            p.partial.unlink(missing_ok=True)
            raise UnsafeContentError(f"{exc}; the partial download was removed") from None


def _check_length(response: _Response, offset: int, p: Placement, endpoint: str) -> None:
    """A Content-Length of the file's own bytes (no Content-Encoding) must be exactly the rest of the
    listed size from `offset`: refused before a byte is written."""
    length = response.headers.get("Content-Length")
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if length is None or encoding != "identity":
        return
    expected = p.remote.size - offset
    if not length.strip().isdigit() or int(length) != expected:
        raise UnsafeContentError(f"{endpoint} announces {quoted(length.strip()[:40])} bytes of {quoted(p.remote.path)} "
                                 f"from byte {offset}; the listing's size leaves {expected}; refused")


@dataclass
class _Response:
    status: int
    headers: Any
    chunks: Iterator[bytes]
    raw: Any


@contextlib.contextmanager
def _stream(session: Any, url: str, headers: dict[str, str], timeout: float) -> Iterator[_Response]:
    """A streamed GET through huggingface_hub's session: httpx/httpx2 (huggingface_hub >= 1.0) or
    requests (older). Both follow redirects and drop the token when one leaves the host."""
    if type(session).__module__.split(".")[0] == "requests":
        with session.get(url, headers=headers, timeout=timeout, stream=True) as raw:
            yield _Response(raw.status_code, raw.headers, raw.iter_content(1 << 16), raw)
        return
    with session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as raw:
        yield _Response(raw.status_code, raw.headers, raw.iter_bytes(), raw)


def _body_offset(response: _Response, start: int, p: Placement, endpoint: str) -> int | None:
    """Where the body goes in the file: `start` for a 206 that starts there, 0 for a 200, None for 416."""
    if response.status >= 400 and not (response.status == 416 and start):
        from huggingface_hub.utils import hf_raise_for_status

        getattr(response.raw, "read", lambda: None)()  # a streamed body, needed for the error's message
        hf_raise_for_status(response.raw)
    return resume_offset(response.status, response.headers.get("Content-Range"), start,
                         f"{endpoint} ({quoted(p.remote.path)})")


def _open_partial(p: Placement) -> BinaryIO:
    """p.partial for appending: a regular file, never through a link, never blocking on a FIFO."""
    return open_partial(p.root, p.partial)


_open_regular = open_nofollow


def _hash_regular(path: Path, algorithms: tuple[str, ...], cancel: threading.Event | None = None) -> dict[str, str]:
    """{algorithm: hex digest} of the regular file at `path` itself (never through a link)."""
    return hash_fd(_open_regular(path), algorithms, cancel=cancel, label=str(path))


def _digests(path: Path, remote: RemoteFile, cancel: threading.Event) -> dict[str, str]:
    """sha256, and for a small file its git blob sha1 too, in one read (stopped by `cancel`)."""
    return _hash_regular(path, ("sha256",) if remote.sha256 else ("sha256", GIT_SHA1), cancel)


def _mismatch(remote: RemoteFile, digests: dict[str, str]) -> tuple[str, str, str] | None:
    """(kind, expected, actual) when the file is not the listed one: sha256 for LFS files, the git
    blob sha1 for small ones."""
    if remote.sha256:
        kind, expected, actual = "sha256", remote.sha256, digests["sha256"]
    else:
        kind, expected, actual = "git blob sha1", remote.blob_sha1 or "", digests[GIT_SHA1]
    return None if expected and actual == expected else (kind, expected, actual)


def _bytes_on_disk(p: Placement) -> int:
    """Bytes of p already here: the whole file if something of its size is in place (checked
    before use), else what its partial holds."""
    with contextlib.suppress(OSError):
        info = os.lstat(p.final)
        if stat.S_ISREG(info.st_mode) and info.st_size == p.remote.size:
            return p.remote.size
    return min(_regular_size(p.partial, own=True) or 0, p.remote.size)


def _link(root: Path, blob: Path, link: Path) -> None:
    """The snapshot's name for a blob: a relative link, as huggingface_hub makes, replaced atomically."""
    relative = os.path.relpath(blob, link.parent)
    if link.is_symlink() and os.readlink(link) == relative:
        return
    _real_folders(root, link.parent)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.link")
    temporary.unlink(missing_ok=True)
    os.symlink(relative, temporary)
    os.replace(temporary, link)


def _sync(path: Path) -> None:
    """On disk before it takes its real name: after a crash, a file that looks complete is complete."""
    fd = _open_regular(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _files_under(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file or link below folder (outside mdist's and huggingface_hub's own state), with
    what tells a new or rewritten one from the one that was there: (inode, size, mtime)."""
    found: dict[str, tuple[int, int, int]] = {}
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return found
    except FileNotFoundError:
        return found
    state = {STATE_DIR, "/".join(HF_STATE)}
    for here, entries in walk(folder, skip=lambda rel: rel in state):  # iterative, never into a link
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                found[f"{here}/{entry.name}" if here else entry.name] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def _remove_unasked(folder: Path, selected: list[RemoteFile], before: dict[str, tuple[int, int, int]],
                    in_cache: bool) -> list[str]:
    """Remove files the download created or rewrote that are not in the selected listing (a second
    listing, a pattern matching more than meant): they were never checked, so they must not stay."""
    wanted = {f.path for f in selected}
    kept_blobs = {(folder / p).resolve() for p in wanted} if in_cache else set()
    removed = []
    for path, identity in sorted(_files_under(folder).items()):
        if path in wanted or before.get(path) == identity:
            continue
        local = folder / path
        target = local.resolve()
        local.unlink(missing_ok=True)  # the name itself: a link goes, not what it leads to
        if in_cache and target != local and target not in kept_blobs and _own_blob(folder, target):
            target.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _own_blob(snapshot: Path, target: Path) -> bool:
    """True for a regular file directly in the blobs/ folder of the cache repo holding `snapshot`
    (resolved): the only thing outside a snapshot that the fetch may delete along with a link."""
    blobs = (snapshot.parents[1] / "blobs").resolve()
    return target.parent == blobs and _regular_size(target) is not None


def _release_files(folder: Path, manifest: Manifest, in_cache: bool) -> dict[str, Path]:
    """{path: the regular file to read} for the files of `manifest` (with a sha256) present in
    folder: in OUT the file itself; in the HF cache the snapshot's file, or the blob its link names
    in this repo's own blobs/. A link (in OUT, or out of blobs/), a FIFO, a device, a folder, or a
    link on the way is refused: never followed, read, or deleted."""
    paths = sorted(e.path for e in manifest.files.values() if e.sha256)
    what = f"the check against {manifest.name}"
    refuse_links_on_the_way(folder, [p.rsplit("/", 1)[0] for p in paths if "/" in p], what)
    found: dict[str, Path] = {}
    for path in paths:
        local = folder / path
        try:
            mode = os.lstat(local).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            found[path] = local
        elif in_cache and stat.S_ISLNK(mode) and _own_blob(folder, local.resolve()):
            found[path] = local.resolve()
        else:
            kind = "a folder" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
            where = " not into this repo's blobs/" if in_cache and stat.S_ISLNK(mode) else ""
            raise UnsafeContentError(f"{local} is {kind}{where} where {manifest.name} has {quoted(path)}; refusing "
                                     f"{what} through it (remove it)")
    return found


def _check_manifest(folder: Path, manifest: Manifest, known: dict[str, str], in_cache: bool) -> int:
    """Files present that the release lists, against its sha256; `known` holds those just hashed
    while fetching, so that no file is read twice."""
    present = _release_files(folder, manifest, in_cache)
    digests = _hash_all({path: real for path, real in present.items() if path not in known})
    expected = {e.path: e.sha256 for e in manifest.files.values()}
    for path, real in present.items():
        actual = known.get(path) or digests[path]
        if actual != expected[path]:
            _discard(folder, folder / path, real)
            raise VerificationError(f"{path}: sha256 does not match {manifest.name} "
                                    f"(expected {expected[path]}, got {actual}); the file was removed")
    return len(present)


def _hash_all(jobs: dict[str, Path]) -> dict[str, str]:
    """{name: sha256} of regular files, several at once, largest first; the first failure (or
    Ctrl-C) stops the others within one chunk read."""
    from concurrent.futures import ThreadPoolExecutor

    if not jobs:
        return {}
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1))
    try:
        order = sorted(jobs, key=lambda name: -(_regular_size(jobs[name]) or 0))
        futures = {name: pool.submit(_hash_regular, jobs[name], ("sha256",), cancel) for name in order}
        return {name: future.result()["sha256"] for name, future in futures.items()}
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _discard(folder: Path, local: Path, real: Path) -> None:
    """Remove a file that failed the release check: its name in the folder, and in the HF cache
    the blob it links to, only when that is a blob of this very repo (checked again now)."""
    local.unlink(missing_ok=True)
    if real != local and _own_blob(folder, real):
        real.unlink(missing_ok=True)


def _ref_path(snapshot: Path, revision: str, commit: str) -> Path | None:
    """Where refs/REVISION goes, so that `from_pretrained(repo)` finds the snapshot offline by its
    branch name (None for a commit). Resolved, and refused unless inside the repo's refs/ folder
    inside the cache: the revision comes from the command line or a manifest, the commit from a server."""
    from huggingface_hub import constants

    if revision == commit:
        return None
    check_revision(revision)
    if not COMMIT.fullmatch(commit):
        raise UnsafeContentError(f"refusing to record {quoted(commit)} as a commit")
    cache = Path(constants.HF_HUB_CACHE).resolve()
    refs = (snapshot.parent.parent / "refs").resolve()
    target = (refs / revision).resolve()
    if not (refs.is_relative_to(cache) and target.is_relative_to(refs) and target != refs):
        raise UnsafeContentError(f"the ref {quoted(revision)} would be written at {target}, "
                                 f"outside {cache}/; refused")
    return target
