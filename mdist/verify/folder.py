"""`mdist verify`: check every file of a folder against a manifest; say what could not be checked."""

from __future__ import annotations

import os

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from mdist.errors import InputError
from mdist.jsonio import read_json_file
from mdist.paths import UnsafePathError, check_component, collision_key
from mdist.model_folder import STATE_DIR, with_joined, closest_release, inspect_folder, is_weight_file, list_files  # noqa: F401 (re-exported)
from mdist.verify.extracted import Extracted, read_record
from mdist.verify.hashing import GIT_SHA1, hash_files
from mdist.verify.manifest import FileEntry, Manifest

OK, MISMATCH, MISSING, UNEXPECTED, UNCHECKABLE, REFUSED, DERIVED, STALE = (
    "ok", "mismatch", "missing", "unexpected", "not checkable", "refused", "derived", "stale",
)
FAILING = {MISMATCH, MISSING, REFUSED}
HF_CACHE_LABEL = "hf-cache"  # the report's manifest name for a snapshot checked by blob names alone
EXTRACTED_LABEL = "extracted from"  # ... for a folder checked against mdist's own record of an archive's files
MD5_ONLY = "md5 only (the only published value): detects corruption, not a deliberate collision"
RECORDED = "sha256 recorded when mdist extracted the archive here, after its md5 matched"


@dataclass
class FileResult:
    path: str
    status: str
    detail: str = ""
    expected: str | None = None
    actual: str | None = None


@dataclass
class Report:
    manifest: str | None
    identified: bool
    files: list[FileResult] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)

    strict: bool = False  # unexpected files fail too
    closest: str | None = None  # when no release matched: the one sharing most file names...
    differences: list[str] = field(default_factory=list)  # ...and what differs from it

    @property
    def ok(self) -> bool:
        failing = FAILING | ({UNEXPECTED, UNCHECKABLE} if self.strict else set())
        return self.manifest is not None and not any(r.status in failing for r in self.files)

    @property
    def fully_checked(self) -> bool:
        """Every file of the release was compared with a published value (none "not checkable")."""
        return not any(r.status == UNCHECKABLE for r in self.files)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.files:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["fully_checked"] = self.fully_checked
        data["counts"] = self.counts()
        return data


def verify_folder(directory: Path, manifest: Manifest | None = None, *, strict: bool = False,
                  on_start: Callable[[int], None] | None = None,
                  on_bytes: Callable[[int], None] | None = None) -> Report:
    """Hash every file the manifest lists; judge every other file (derived, foreign weights, extra).

    In a Hugging Face cache snapshot every file is also checked against its blob name (the cache
    is content-addressed), so a snapshot verifies with no manifest at all.
    """
    directory = Path(directory)
    contents = inspect_folder(directory, release=manifest)
    present, blobs = contents.files, contents.blobs
    identified = manifest is None
    record = read_record(directory)
    if manifest is None:
        manifest = contents.release
        if manifest is None and record is not None:  # what mdist extracted here names the release
            manifest = _recorded_release(record)
    recorded: set[str] = set()
    if manifest is not None and record is not None:
        manifest, recorded = _with_record(manifest, record)
        if recorded:  # the recorded files are the release's too (derived from them, not foreign)
            contents = inspect_folder(directory, release=manifest)
            present, blobs = contents.files, contents.blobs
    if manifest is None:
        if not blobs:
            closest, differences = closest_release(directory, with_joined(present, contents.pieces))
            differences += contents.problems  # e.g. a missing piece: why the folder is not the release
            if closest is None and not any(is_weight_file(p) for p in present):
                raise InputError(f"{directory} holds no model: no weight file and no file of a known release")
            return Report(None, False, closest=closest.name if closest else None, differences=differences)
    name = manifest.name if manifest else f"{HF_CACHE_LABEL} {contents.path.resolve().parent.parent.name}"
    report = Report(name, identified and manifest is not None, strict=strict)
    for link in contents.others:
        report.files.append(FileResult(link, REFUSED, "symbolic link, FIFO, device, or a plain file inside an HF "
                                                      "cache snapshot: never followed or read"))
    listed = manifest.files if manifest else {}

    jobs: dict[Path, tuple[str, ...]] = {}
    pieces = {joined: parts for joined, parts in contents.pieces.items() if joined in listed}
    piece_jobs = {_pieces_key(directory, joined): [directory / p for p in parts] for joined, parts in pieces.items()}
    for joined, parts in pieces.items():  # checked as the file they join into, never joined on disk
        entry, size = listed[joined], sum(present[p] for p in parts)
        if entry.size is not None and entry.size != size:
            result = FileResult(joined, MISMATCH, f"its {len(parts)} pieces join into {size} bytes, expected "
                                                  f"{entry.size}", str(entry.size), str(size))
            report.files += _piece_results(result, parts, joined in present)
            del piece_jobs[_pieces_key(directory, joined)]
        else:
            jobs[_pieces_key(directory, joined)] = tuple(a for a in ("sha256", "md5") if getattr(entry, a))
    for path, entry in listed.items():
        if path not in present:
            if path not in pieces:
                report.files.append(FileResult(path, MISSING))
            continue
        if entry.size is not None and entry.size != present[path]:
            report.files.append(FileResult(path, MISMATCH, f"size {present[path]}, expected {entry.size}",
                                           str(entry.size), str(present[path])))
            continue
        algorithms = tuple(a for a in ("sha256", "md5") if getattr(entry, a))
        if algorithms:
            jobs[directory / path] = algorithms
    for path, blob in blobs.items():
        algorithm = "sha256" if len(blob) == 64 else GIT_SHA1
        jobs[directory / path] = tuple(dict.fromkeys(jobs.get(directory / path, ()) + (algorithm,)))
    if on_start:
        on_start(sum(sum(present[str(q.relative_to(directory).as_posix())] for q in piece_jobs.get(p, [p]))
                     for p in jobs))
    digests = hash_files(jobs, on_bytes=on_bytes, pieces=piece_jobs) if jobs else {}
    for joined, parts in pieces.items():
        key = _pieces_key(directory, joined)
        if key in jobs:
            result = _judge(directory / joined, listed[joined], digests.get(key, {}))
            result.detail = f"{result.detail}; of its {len(parts)} pieces joined (never written)"
            report.files += _piece_results(result, parts, joined in present)

    judged = {r.path for r in report.files}
    odd_names = _odd_names(present)
    for path in sorted(set(present) - judged):
        found = digests.get(directory / path, {})
        result = (_judge(directory / path, listed[path], found, path in recorded) if path in listed
                  else _judge_extra(path, manifest, contents))
        if path in odd_names and path not in listed:
            result = FileResult(path, REFUSED, odd_names[path])
        report.files.append(_judge_blob(result, blobs.get(path), found))
    report.files.sort(key=lambda r: r.path)
    report.not_checked = [r.path for r in report.files if r.status == UNCHECKABLE]
    return report


def _pieces_key(directory: Path, joined: str) -> Path:
    """The hashing job of a file's raw pieces (a name no file has: the joined file may exist too)."""
    return directory / f"{joined}-split*"


def _piece_results(joined: FileResult, parts: tuple[str, ...], joined_present: bool) -> list[FileResult]:
    """The joined file's verdict, for each piece (and for the joined name unless that file is there,
    judged on its own: then the pieces are refused, as run, convert and digest refuse the folder)."""
    results = [] if joined_present else [joined]
    for number, part in enumerate(parts):
        status, detail = joined.status, f"piece {number} of {joined.path}: {joined.detail}"
        if joined_present:
            status, detail = REFUSED, f"{joined.path} is here too: mdist will not guess which to read ({detail})"
        results.append(FileResult(part, status, detail, joined.expected, joined.actual))
    return results


def _odd_names(present: dict[str, int]) -> dict[str, str]:
    """Names a person or another tool could mistake for others: control characters, invalid
    Unicode, or two names equal after case folding and NFC (one file on some file systems)."""
    odd: dict[str, str] = {}
    seen: dict[str, str] = {}
    for path in sorted(present):
        try:
            for part in path.split("/"):
                check_component(part)
        except UnsafePathError:
            odd[path] = "a name with a control character or invalid Unicode"
        key = collision_key(path)
        if key in seen:
            odd[path] = odd[seen[key]] = f"differs from {seen[key]} only by case or Unicode normalisation"
        seen.setdefault(key, path)
    return odd


def _judge_blob(result: FileResult, blob: str | None, digests: dict[str, str]) -> FileResult:
    """A cache file must hash to its blob's name, whatever else was said about it."""
    if blob is None:
        return result
    algorithm = "sha256" if len(blob) == 64 else GIT_SHA1
    if digests.get(algorithm) != blob:
        return FileResult(result.path, MISMATCH, f"content differs from its blob name ({algorithm})",
                          blob, digests.get(algorithm))
    if result.status in (UNEXPECTED, UNCHECKABLE):
        return FileResult(result.path, OK, f"{algorithm} equals its blob name (content-addressed cache)",
                          blob, blob)
    return result


def _source_folders(sources: tuple[str, ...]) -> list[str]:
    """The folders outside this one that a derived file was made from, when it was made from files
    elsewhere only (absolute source names); empty when one of them is in this folder."""
    if not sources or not all(os.path.isabs(source) for source in sources):
        return []
    return sorted({os.path.dirname(source) for source in sources})


def _judge_extra(path: str, manifest: Manifest | None, contents) -> FileResult:
    """A file the manifest does not list: mdist's own derivation, foreign weights, or just extra."""
    if path in contents.derived.valid:
        if contents.release is None or contents.derived_from_release(path):
            return FileResult(path, DERIVED, "written by mdist here from the release's files (not re-hashed)")
        elsewhere = _source_folders(contents.derived.sources.get(path, ()))
        origin = (f"from files in {elsewhere[0]}, not in this folder (`mdist verify {elsewhere[0]}` checks those)"
                  if len(elsewhere) == 1 else "from files that are not part of this release")
        if is_weight_file(path):
            return FileResult(path, REFUSED, f"written by mdist, but {origin}")
        return FileResult(path, UNEXPECTED, f"written by mdist {origin}")
    if path in contents.derived.stale and (contents.release is not None or contents.outdated(path)):
        # ours, but copied or edited since: never loaded, so not failing
        return FileResult(path, STALE, "derived by mdist, but it or its source changed since (a copy, an edit): "
                                       "never loaded; `mdist run` converts again, `mdist convert --force` too")
    if path in contents.derived.stale:  # copied, or its sources elsewhere changed or went: a file like any other
        return FileResult(path, UNEXPECTED, "derived by mdist, then copied here or made from files that have "
                                            "changed or gone since: not checked")
    if manifest is None:
        return FileResult(path, UNEXPECTED, "no manifest")
    if is_weight_file(path):
        return FileResult(path, REFUSED, f"weights that are not part of {manifest.name}: mdist refuses to load "
                                         f"this folder while the file is here")
    detail = "not part of the release" if manifest.files_complete else "not listed in the manifest"
    return FileResult(path, UNEXPECTED, detail)


def _recorded_release(record: Extracted) -> Manifest:
    """The release an archive mdist extracted here was fetched as (from checksums/), or else the
    record itself: the files and sha256 mdist wrote, after the archive's md5 matched."""
    from mdist.verify.manifest import load_registry

    for manifest in load_registry():
        if manifest.name == record.release:
            return manifest
    return Manifest(name=_label(record), title=_label(record), files={}, files_complete=True)


def _label(record: Extracted) -> str:
    return f"{EXTRACTED_LABEL} {record.archive.rsplit('/', 1)[-1]}"


def _with_record(manifest: Manifest, record: Extracted) -> tuple[Manifest, set[str]]:
    """The manifest with the sha256 mdist recorded when it extracted the files wherever it has none
    (md5 only, or not listed at all for an archive-only release), and which paths rest on that
    record. The record counts for unlisted files only under its own release."""
    listed = manifest.files
    own = manifest.name in (record.release, _label(record))
    merged, recorded = dict(listed), set()
    for path, (size, sha256) in record.files.items():
        entry = listed.get(path)
        if entry is None and not own:
            continue
        if entry is not None and (entry.sha256 or (entry.size is not None and entry.size != size)):
            continue
        merged[path] = FileEntry(path, size, sha256, entry.md5 if entry else None, entry.json if entry else None)
        recorded.add(path)
    return (replace(manifest, files=merged) if recorded else manifest), recorded


def _judge(path: Path, entry: FileEntry, digests: dict[str, str], recorded: bool = False) -> FileResult:
    rel = entry.path
    for algorithm in ("sha256", "md5"):
        expected = getattr(entry, algorithm)
        if expected and digests.get(algorithm) != expected:
            detail = f"{algorithm} differs" + (" from the one recorded at extraction" if recorded and
                                               algorithm == "sha256" else "")
            return FileResult(rel, MISMATCH, detail, expected, digests.get(algorithm))
    if entry.json is not None:
        try:
            content = read_json_file(path, rel)
        except InputError:
            return FileResult(rel, MISMATCH, "not the published JSON content")
        if content != entry.json:
            return FileResult(rel, MISMATCH, "JSON content differs from the published one")
    if entry.sha256 and recorded:
        return FileResult(rel, OK, RECORDED + (" (and the published md5)" if entry.md5 else ""),
                          entry.sha256, digests["sha256"])
    if entry.sha256:
        return FileResult(rel, OK, "sha256", entry.sha256, digests["sha256"])
    if entry.md5:
        return FileResult(rel, OK, MD5_ONLY, entry.md5, digests["md5"])
    if entry.json is not None:
        return FileResult(rel, OK, "JSON content (no published hash)")
    if entry.size is not None:
        return FileResult(rel, UNCHECKABLE, "size matches; no published hash")
    return FileResult(rel, UNCHECKABLE, "no published size or hash")
