"""Fetch from the Hugging Face hub or a mirror through huggingface_hub, then verify every file.

huggingface_hub checks only sizes; a broken or malicious mirror can serve altered bytes. mdist
resolves the revision to a commit, lists every file's LFS sha256 and git blob sha1, downloads,
and hashes what landed on disk. A file that does not match is removed, never left looking valid.

Everything the server says is checked before it is used: the commit is 40 lowercase hex (and the
one asked for, when a commit was asked for), every listed name passes mdist.paths, every file has
its hashes, and a known release fetches only its own files. What the download machinery writes
beyond the selected files is removed and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdist.atomic import require_free_space, write_bytes_atomic, real_dir
from mdist.errors import InputError, UnsafeContentError, VerificationError
from mdist.paths import check_path_set
from mdist.sources.resolve import COMMIT, check_repo_id, check_revision, quoted
from mdist.verify.folder import STATE_DIR
from mdist.verify.hashing import hash_files
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


def _literal(path: str) -> str:
    """An fnmatch pattern that matches exactly `path`: snapshot_download takes globs, not names,
    and a file named `*` would otherwise select every file the server lists."""
    return re.sub(r"([*?\[])", r"[\1]", path)


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
    target, ref = _prepare_target(repo, revision, commit, options, total)
    reporter.message(f"{repo}@{revision or 'main'} is commit {commit}; fetching {len(selected)} files from {endpoint}")
    if skipped:
        reporter.message(f"{endpoint} also lists files that are not part of {known.name}, not downloaded: "
                         f"{', '.join(skipped)}")
    before = _files_under(target)
    folder = _download(repo, commit, endpoint, selected, target, options, _reporting_tqdm(reporter, repo, total))
    removed = _remove_unasked(folder, selected, before, options.to_hf_cache)
    if removed:
        reporter.message(f"removed {len(removed)} files that were not in the selected listing: "
                         f"{', '.join(quoted(p) for p in removed)}")
    verified = _verify_download(folder, selected, options.to_hf_cache)
    manifest_checked = _check_manifest(folder, known) if known else 0
    if ref is not None:  # checked again against the folder snapshot_download returned, just before writing
        write_bytes_atomic(_ref_path(folder, revision or "main", commit) or ref, commit.encode())
    result = {
        "out": str(folder), "name": repo, "repo": repo, "revision": revision or "main", "commit": commit,
        "endpoint": endpoint, "files": sorted(f.path for f in selected), "total_bytes": total,
        "skipped": skipped, "removed": removed,
        "manifest": known.name if known else None,
        "verification": (f"sha256 of {verified['lfs']} LFS files and git sha1 of {verified['git']} small files "
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


def _prepare_target(repo: str, revision: str | None, commit: str, options: HubOptions,
                    total: int) -> tuple[Path, Path | None]:
    """(folder the files land in, ref file to write or None); checked and with room for `total`."""
    if options.to_hf_cache:
        snapshot = _cache_snapshot(repo, commit)
        ref = _ref_path(snapshot, revision or "main", commit)
        require_free_space(snapshot.parents[2], total, what="the download")
        return snapshot, ref
    out = Path(options.out) if options.out else Path.cwd() / repo.split("/")[1]
    out.mkdir(parents=True, exist_ok=True)
    real_dir(out / STATE_DIR)
    (out / STATE_DIR / "complete.json").unlink(missing_ok=True)
    require_free_space(out, total, what="the download")
    return out, None


def _download(repo: str, commit: str, endpoint: str, selected: list[RemoteFile], target: Path,
              options: HubOptions, tqdm_class: type) -> Path:
    """snapshot_download of exactly the selected names (as literal patterns) at the commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    if options.quiet:
        disable_progress_bars()
    kwargs: dict[str, Any] = dict(repo_id=repo, revision=commit, endpoint=endpoint, tqdm_class=tqdm_class,
                                  allow_patterns=[_literal(f.path) for f in selected])
    if not options.to_hf_cache:
        kwargs["local_dir"] = target
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as exc:
        errors = _api_errors()
        if isinstance(exc, (errors.HfHubHTTPError, OSError, ValueError)) or _is_network_error(exc):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"download from {endpoint} failed: {first}") from None
        raise


def _cache_snapshot(repo: str, commit: str) -> Path:
    """Where snapshot_download puts repo@commit in the Hugging Face cache (HF_HUB_CACHE)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit


def _reporting_tqdm(reporter, name: str, total: int):
    """A tqdm class that shows huggingface_hub's byte counts through mdist's reporter (rich on a
    terminal, plain lines otherwise) instead of drawing tqdm bars of its own. The total is ours:
    huggingface_hub's grows as each file starts, so early lines said `13% of 0.0 MB`."""
    from tqdm import tqdm

    from mdist.sources.torrent_fetch import Progress

    class ReportingTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = False
            kwargs["file"] = _NullWriter()
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self.unit == "B" and str(self.desc).startswith("Reconstruct"):  # bytes written, out of the total
                rate = self.format_dict.get("rate") or 0.0
                reporter.update(Progress(name=name, state="downloading", total=total,
                                         done=min(int(self.n), total), download_rate=float(rate), source="hub"))
            return shown

    return ReportingTqdm


class _NullWriter:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _files_under(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file or link below folder (outside mdist's and huggingface_hub's own state), with
    what tells a new or rewritten one from the one that was there: (inode, size, mtime)."""
    found: dict[str, tuple[int, int, int]] = {}
    for root, dirs, names in os.walk(folder):
        here = Path(root).relative_to(folder).parts
        dirs[:] = [d for d in dirs if not (here == () and d == STATE_DIR) and (*here, d) != HF_STATE]
        for name in names:
            info = os.lstat(os.path.join(root, name))
            found["/".join((*here, name))] = (info.st_ino, info.st_size, info.st_mtime_ns)
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
        local.unlink(missing_ok=True)
        if in_cache and target != local and target not in kept_blobs:
            target.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _verify_download(folder: Path, files: list[RemoteFile], in_cache: bool) -> dict[str, int]:
    missing = [f.path for f in files if not (folder / f.path).is_file()]
    if missing:
        raise VerificationError(f"the download did not deliver {', '.join(missing)}")
    lfs = [f for f in files if f.sha256]
    digests = hash_files({(folder / f.path).resolve(): ("sha256",) for f in lfs})
    counts = {"lfs": 0, "git": 0}
    for remote in files:
        local = (folder / remote.path).resolve()
        if remote.sha256:
            actual, expected, kind = digests[local]["sha256"], remote.sha256, "sha256"
        else:
            actual, expected, kind = git_blob_sha1(local), remote.blob_sha1, "git blob sha1"
        if not expected or actual != expected:
            _discard(folder / remote.path, in_cache)
            raise VerificationError(f"{remote.path}: {kind} mismatch (expected {expected}, got {actual}); "
                                    f"the file was removed")
        counts["lfs" if remote.sha256 else "git"] += 1
    return counts


def _check_manifest(folder: Path, manifest: Manifest) -> int:
    checked = 0
    present = {e.path: e for e in manifest.files.values() if (folder / e.path).exists()}
    digests = hash_files({(folder / p).resolve(): ("sha256",) for p, e in present.items() if e.sha256})
    for path, entry in present.items():
        if entry.sha256:
            actual = digests[(folder / path).resolve()]["sha256"]
            if actual != entry.sha256:
                _discard(folder / path, in_cache=(folder / path).is_symlink())
                raise VerificationError(f"{path}: sha256 does not match {manifest.name} "
                                        f"(expected {entry.sha256}, got {actual}); the file was removed")
            checked += 1
    return checked


def _discard(path: Path, in_cache: bool) -> None:
    target = path.resolve()
    path.unlink(missing_ok=True)
    if in_cache and target != path:
        target.unlink(missing_ok=True)


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
