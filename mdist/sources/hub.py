"""Fetch from the Hugging Face hub or a mirror through huggingface_hub, then verify every file.

huggingface_hub checks only sizes; a broken or malicious mirror can serve altered bytes. mdist
resolves the revision to a commit, lists every file's LFS sha256 and git blob sha1, downloads,
and hashes what landed on disk. A file that does not match is removed, never left looking valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdist.atomic import require_free_space, write_bytes_atomic
from mdist.errors import InputError, VerificationError
from mdist.verify.folder import STATE_DIR
from mdist.verify.hashing import hash_files
from mdist.verify.manifest import Manifest, load_registry, safe_relative_path

DEFAULT_ENDPOINT = "https://huggingface.co"


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
    """(commit sha, files with their published hashes) for repo at revision."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    errors = _api_errors()
    api = HfApi(endpoint=endpoint)
    wanted = revision or "main"
    try:
        info = api.model_info(repo, revision=wanted)
        commit = info.sha
        tree = [e for e in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(e, RepoFile)]
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
    if not commit:
        raise InputError(f"{endpoint} did not say which commit {repo}@{wanted} is")
    files = [RemoteFile(safe_relative_path(e.path), e.size, e.lfs.sha256 if e.lfs else None, e.blob_id) for e in tree]
    return commit, files


def _select(files: list[RemoteFile], include: list[str], exclude: list[str]) -> list[RemoteFile]:
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(files, allow_patterns=include or None, ignore_patterns=exclude or None,
                                    key=lambda f: f.path))


def _manifest_for(repo: str, given: Manifest | None) -> Manifest | None:
    if given is not None:
        return given
    for manifest in load_registry():
        if (manifest.sources.get("hub") or {}).get("repo") == repo:
            return manifest
    return None


def fetch_hub(repo: str, revision: str | None, options: HubOptions, reporter,
              manifest: Manifest | None = None) -> dict[str, Any]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    endpoint = (options.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    commit, remote = resolve_remote(repo, revision, endpoint)
    selected = _select(remote, options.include, options.exclude)
    if not selected:
        raise InputError(f"no file of {repo}@{commit[:12]} matches --include/--exclude")
    reporter.message(f"{repo}@{revision or 'main'} is commit {commit}; fetching {len(selected)} files from {endpoint}")
    total = sum(f.size for f in selected)
    if options.quiet:
        disable_progress_bars()
    kwargs: dict[str, Any] = dict(repo_id=repo, revision=commit, endpoint=endpoint,
                                  allow_patterns=[f.path for f in selected],
                                  tqdm_class=_reporting_tqdm(reporter, repo))
    if options.to_hf_cache:
        from huggingface_hub import constants

        require_free_space(Path(constants.HF_HUB_CACHE), total, what="the download")
    else:
        out = Path(options.out) if options.out else Path.cwd() / repo.split("/")[1]
        out.mkdir(parents=True, exist_ok=True)
        (out / STATE_DIR).mkdir(exist_ok=True)
        (out / STATE_DIR / "complete.json").unlink(missing_ok=True)
        require_free_space(out, total, what="the download")
        kwargs["local_dir"] = out
    try:
        folder = Path(snapshot_download(**kwargs))
    except Exception as exc:
        errors = _api_errors()
        if isinstance(exc, (errors.HfHubHTTPError, OSError, ValueError)) or _is_network_error(exc):
            raise InputError(f"download from {endpoint} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        raise
    verified = _verify_download(folder, selected, options.to_hf_cache)
    known = _manifest_for(repo, manifest)
    manifest_checked = _check_manifest(folder, known) if known else 0
    if options.to_hf_cache:
        _write_ref(folder, revision or "main", commit)
    result = {
        "out": str(folder), "name": repo, "repo": repo, "revision": revision or "main", "commit": commit,
        "endpoint": endpoint, "files": sorted(f.path for f in selected), "total_bytes": total,
        "manifest": known.name if known else None,
        "verification": (f"sha256 of {verified['lfs']} LFS files and git sha1 of {verified['git']} small files "
                         f"against what {endpoint} published for commit {commit[:12]}"
                         + (f"; {manifest_checked} files also against {known.name}" if known else "")),
    }
    if not options.to_hf_cache:
        write_bytes_atomic(folder / STATE_DIR / "complete.json", json.dumps(result, indent=2).encode())
    return result


def _reporting_tqdm(reporter, name: str):
    """A tqdm class that shows huggingface_hub's byte counts through mdist's reporter (rich on a
    terminal, plain lines otherwise) instead of drawing tqdm bars of its own."""
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
                reporter.update(Progress(name=name, state="downloading", total=int(self.total or 0),
                                         done=int(self.n), download_rate=float(rate), source="hub"))
            return shown

    return ReportingTqdm


class _NullWriter:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _verify_download(folder: Path, files: list[RemoteFile], in_cache: bool) -> dict[str, int]:
    lfs = [f for f in files if f.sha256]
    digests = hash_files({(folder / f.path).resolve(): ("sha256",) for f in lfs})
    counts = {"lfs": 0, "git": 0}
    for remote in files:
        local = (folder / remote.path).resolve()
        if remote.sha256:
            actual, expected, kind = digests[local]["sha256"], remote.sha256, "sha256"
        else:
            actual, expected, kind = git_blob_sha1(local), remote.blob_sha1, "git blob sha1"
        if expected and actual != expected:
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


def _write_ref(snapshot: Path, revision: str, commit: str) -> None:
    """So that `from_pretrained(repo)` finds the snapshot offline by its branch name."""
    if revision == commit:
        return
    refs = snapshot.parent.parent / "refs"
    refs.mkdir(exist_ok=True)
    write_bytes_atomic(refs / revision, commit.encode())
