"""What `mdist verify` and `mdist manifest` do, as importable functions (the CLI only prints)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable

from mdist import __version__
from mdist.errors import MdistError
from mdist.paths import in_state_folder
from mdist.model_folder import inspect_folder
from mdist.verify.folder import EXTRACTED_LABEL, HF_CACHE_LABEL, MD5_ONLY, verify_folder
from mdist.verify.hashing import hash_files
from mdist.verify.manifest import SCHEMA_ID, check_release_name, find_manifest


def verify_command(directory: Path, manifest_name: str | None, *, signature: Path | None = None,
                   public_key: Path | None = None, tensors: bool = False, strict: bool = False,
                   quiet: bool = True, progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    manifest = find_manifest(manifest_name) if manifest_name else None
    if progress is not None:
        with progress("hashing", quiet=quiet) as bar:
            task = bar.add_task("hashing", total=None)
            report = verify_folder(directory, manifest, strict=strict, on_start=lambda n: bar.update(task, total=n),
                                   on_bytes=lambda n: bar.advance(task, n))
    else:
        report = verify_folder(directory, manifest, strict=strict)
    outcome: dict[str, Any] = {"report": report.to_json(), "notes": []}
    if report.manifest and report.manifest.startswith(HF_CACHE_LABEL):
        outcome["notes"].append("integrity only: every file matches its blob name in the cache; no published "
                                "manifest in checksums/ says these files are a release")
    if report.manifest and report.manifest.startswith(EXTRACTED_LABEL):
        outcome["notes"].append("checked against the sha256 mdist recorded when it extracted the archive here, "
                                "after the archive's md5 matched; no manifest in checksums/ describes these files")
    md5_only = [r.path for r in report.files if r.detail == MD5_ONLY]
    if md5_only:
        outcome["notes"].append(f"md5 is the only check of {', '.join(md5_only)}: it detects corruption, not a "
                                f"deliberate collision (someone who can make two files with one md5)")
    ok = report.ok
    if ok and tensors and report.manifest and report.manifest.startswith(EXTRACTED_LABEL):
        outcome["notes"].append("tensor digest: not checkable (no manifest in checksums/ has one for these files)")
    elif ok and tensors:
        used = manifest or find_manifest(report.manifest)  # type: ignore[arg-type]
        ok = _check_tensor_digest(directory, used.tensor_digest, outcome)
    if signature is not None and public_key is not None:
        from mdist.verify.signing import verify_signature

        try:
            verify_signature(directory, signature, public_key)
            outcome["signature"] = "valid"
            outcome["notes"].append(f"signature {signature}: valid")
        except MdistError as exc:
            if exc.exit_code != 1:
                raise
            outcome["signature"] = "invalid"
            outcome["notes"].append(f"signature {signature}: INVALID ({exc})")
            ok = False
    outcome["ok"] = ok
    return outcome


def _check_tensor_digest(directory: Path, expected: str | None, outcome: dict[str, Any]) -> bool:
    from mdist.verify.digest import root_digest, tensor_digests

    if not expected:
        outcome["notes"].append("tensor digest: not checkable (the manifest has none)")
        return True
    digests = tensor_digests(directory, note=outcome["notes"].append)
    actual = root_digest(digests)
    outcome["tensor_digest"] = {"expected": expected, "actual": actual}
    outcome["notes"].append(f"tensor digest: {'ok' if actual == expected else 'MISMATCH'}")
    if actual != expected:
        return False
    from mdist.verify.gguf_digest import check_folder_ggufs  # GGUFs here must hold these very weights

    return check_folder_ggufs(directory, digests, outcome["notes"].append)


def build_manifest(directory: Path, name: str, title: str | None = None) -> dict[str, Any]:
    from mdist.verify.digest import root_digest, tensor_digests

    check_release_name(name)  # before any work: a name verify would reject is never written
    directory = Path(directory)
    contents = inspect_folder(directory, recognise_release=False)
    present, links = contents.files, contents.others
    present = {p: size for p, size in present.items()  # .git/ and mdist's own derivations are no release file
               if not in_state_folder(p) and not contents.derived.known(p)}
    if links:
        raise MdistError(f"{directory} contains {links[0]}, which is not a regular file; refusing to describe it")
    digests = hash_files({directory / p: ("sha256",) for p in present})
    files = {p: {"size": present[p], "sha256": digests[directory / p]["sha256"]} for p in sorted(present)}
    data: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "name": name,
        "title": title or name,
        "files_complete": True,
        "files": files,
    }
    try:
        data["tensor_digest"] = root_digest(tensor_digests(directory))
    except MdistError:
        pass  # a folder without weights has no tensor digest
    today = datetime.date.today().isoformat()
    data["provenance"] = [{"fields": ["files"] + (["tensor_digest"] if "tensor_digest" in data else []),
                           "source": f"computed by mdist {__version__} `mdist manifest` on {today}"}]
    return data
