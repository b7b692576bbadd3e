"""`mdist verify hf://OWNER/REPO[@REV]`: check the Hugging Face cache's copy, downloading nothing.

Two independent checks: mdist's own (every file a link into the repo's blobs/, hashing to its
blob name, and checksums/ when it knows the files), then huggingface_hub's
`HfApi.verify_repo_checksums` against what the hub (or `--endpoint`) publishes for that commit.
mdist's scan runs first because the library follows links wherever they point. With no network,
the first check stands alone and the report says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from mdist.errors import InputError
from mdist.jsonio import read_small_file

_COMMIT = re.compile(r"[0-9a-f]{40}")


def cached_snapshot(repo: str, revision: str | None) -> tuple[Path, str]:
    """(snapshot folder, commit) of repo@revision in the local Hugging Face cache."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    if not folder.is_dir():
        raise InputError(f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})")
    wanted = revision or "main"
    if _COMMIT.fullmatch(wanted):
        commit = wanted
    else:  # `wanted` passed git's ref-name rules (parse_hub): no `..`, so it stays under refs/
        ref = folder / "refs" / wanted
        commit = read_small_file(ref, 64, f"{repo}'s cached ref {wanted}").decode("ascii", "replace").strip()
        if not _COMMIT.fullmatch(commit):
            raise InputError(f"{ref} does not hold a commit")
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir() or snapshot.is_symlink():
        raise InputError(f"{repo}@{wanted} (commit {commit}) has no snapshot in the cache")
    return snapshot, commit


def verify_cached(repo: str, revision: str | None, endpoint: str | None, *, strict: bool = False,
                  quiet: bool = True, progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """verify_command's outcome for the snapshot, plus what the hub publishes (or why it could not)."""
    from mdist.verify.pipeline import verify_command

    snapshot, commit = cached_snapshot(repo, revision)
    outcome = verify_command(snapshot, None, strict=strict, quiet=quiet, progress=progress)
    outcome["snapshot"] = str(snapshot)
    outcome["commit"] = commit
    refused = [r["path"] for r in outcome["report"]["files"] if r["status"] == "refused"]
    if refused:  # huggingface_hub's check follows links wherever they point: never hand it these
        outcome["hub"] = None
        outcome["notes"].append(f"hub check skipped: {refused[0]} is refused (a link out of the cache's blobs/ "
                                f"or a plain file in the snapshot)")
        outcome["ok"] = False
        return outcome
    published = _hub_check(repo, commit, snapshot, endpoint)
    outcome["hub"] = published
    if published is None:
        outcome["notes"].append("hub not reachable: checked against blob names (and checksums/ where it knows the "
                                "files) only")
        return outcome
    failures = [f"{m['path']}: {m['algorithm']} expected {m['expected']} got {m['actual']}"
                for m in published["mismatches"]] + [f"{p}: published but not in the cache"
                                                        for p in published["missing"]]
    extra = [f"{p}: in the cache, not published for this commit" for p in published["extra"]]
    for line in failures + extra:
        outcome["notes"].append(f"hub: {line}")
    if not failures and not extra:
        outcome["notes"].append(f"hub {published['endpoint']}: all {published['checked']} files match what it "
                                f"publishes for commit {commit[:12]}")
    if failures or (extra and strict):
        outcome["ok"] = False
    return outcome


def _hub_check(repo: str, commit: str, snapshot: Path, endpoint: str | None) -> dict[str, Any] | None:
    import os

    from huggingface_hub import HfApi, constants, errors

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    if not _reachable(endpoint):  # huggingface_hub would retry for ~25 s, printing each attempt
        return None
    try:
        result = HfApi(endpoint=endpoint).verify_repo_checksums(repo, revision=commit,
                                                                cache_dir=snapshot.parents[2], token=False)
    except errors.RepositoryNotFoundError:
        raise InputError(f"{endpoint} does not know {repo}") from None
    except errors.RevisionNotFoundError:
        raise InputError(f"{endpoint} does not know commit {commit} of {repo}") from None
    except Exception as exc:  # offline, refused, timed out: the local checks stand alone
        if isinstance(exc, (OSError, ValueError, errors.HfHubHTTPError)) or "httpx" in type(exc).__module__:
            return None
        raise
    return {"endpoint": endpoint, "checked": result.checked_count, "mismatches": list(result.mismatches),
            "missing": list(result.missing_paths), "extra": list(result.extra_paths)}


def _reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the endpoint's host opens at all (offline is answered at once)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
