"""`mdist verify`: check every file of a folder against a manifest; say what could not be checked."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mdist.errors import InputError
from mdist.verify.hashing import hash_files
from mdist.verify.manifest import FileEntry, Manifest, identify

STATE_DIR = ".mdist"  # mdist's own resume and status files; never part of a release
HF_STATE_DIR = ".cache"  # huggingface_hub's download bookkeeping in a --local-dir (.cache/huggingface)

OK, MISMATCH, MISSING, UNEXPECTED, UNCHECKABLE, REFUSED = (
    "ok", "mismatch", "missing", "unexpected", "not checkable", "refused",
)
FAILING = {MISMATCH, MISSING, REFUSED}


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
    candidates: list[str] = field(default_factory=list)
    files: list[FileResult] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not any(r.status in FAILING for r in self.files)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def list_files(directory: Path) -> tuple[dict[str, int], list[str]]:
    """Regular files under directory (relative path -> size), and symlinks found (never followed)."""
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder")
    files: dict[str, int] = {}
    links: list[str] = []
    for root, dirs, names in os.walk(directory, followlinks=False):
        rel_root = Path(root).relative_to(directory)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d != STATE_DIR and not (
                d == HF_STATE_DIR and (Path(root) / d / "huggingface").is_dir())]
        for d in list(dirs):
            if (Path(root) / d).is_symlink():
                links.append(str(rel_root / d))
                dirs.remove(d)
        for name in names:
            full = Path(root) / name
            rel = (rel_root / name).as_posix()
            if full.is_symlink():
                links.append(rel)
            elif full.is_file():
                files[rel] = full.stat().st_size
    return files, sorted(links)


def verify_folder(directory: Path, manifest: Manifest | None = None, *,
                  on_start: Callable[[int], None] | None = None,
                  on_bytes: Callable[[int], None] | None = None) -> Report:
    directory = Path(directory)
    present, links = list_files(directory)
    candidates: list[Manifest] = []
    identified = manifest is None
    if manifest is None:
        manifest, candidates = identify(present)
        if manifest is None:
            return Report(None, True, [m.name for m in candidates])
    report = Report(manifest.name, identified)
    for link in links:
        report.files.append(FileResult(link, REFUSED, "symbolic link: not followed"))

    jobs: dict[Path, tuple[str, ...]] = {}
    for path, entry in manifest.files.items():
        if path not in present:
            report.files.append(FileResult(path, MISSING))
            continue
        if entry.size is not None and entry.size != present[path]:
            report.files.append(FileResult(path, MISMATCH, f"size {present[path]}, expected {entry.size}",
                                           str(entry.size), str(present[path])))
            continue
        algorithms = tuple(a for a in ("sha256", "md5") if getattr(entry, a))
        if algorithms:
            jobs[directory / path] = algorithms
    if on_start:
        on_start(sum(present[str(p.relative_to(directory).as_posix())] for p in jobs))
    digests = hash_files(jobs, on_bytes=on_bytes) if jobs else {}

    for path, entry in manifest.files.items():
        if path not in present or any(r.path == path for r in report.files):
            continue
        report.files.append(_judge(directory / path, entry, digests.get(directory / path, {})))
    for path in sorted(set(present) - set(manifest.files)):
        detail = "not part of the release" if manifest.files_complete else "not listed in the manifest"
        report.files.append(FileResult(path, UNEXPECTED, detail))
    report.files.sort(key=lambda r: r.path)
    report.not_checked = [r.path for r in report.files if r.status == UNCHECKABLE]
    return report


def _judge(path: Path, entry: FileEntry, digests: dict[str, str]) -> FileResult:
    rel = entry.path
    for algorithm in ("sha256", "md5"):
        expected = getattr(entry, algorithm)
        if expected and digests.get(algorithm) != expected:
            return FileResult(rel, MISMATCH, f"{algorithm} differs", expected, digests.get(algorithm))
    if entry.json is not None:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return FileResult(rel, MISMATCH, "not the published JSON content")
        if content != entry.json:
            return FileResult(rel, MISMATCH, "JSON content differs from the published one")
    if entry.sha256:
        return FileResult(rel, OK, "sha256", entry.sha256, digests["sha256"])
    if entry.md5:
        return FileResult(rel, OK, "md5 (only md5 was published)", entry.md5, digests["md5"])
    if entry.json is not None:
        return FileResult(rel, OK, "JSON content (no published hash)")
    if entry.size is not None:
        return FileResult(rel, UNCHECKABLE, "size matches; no published hash")
    return FileResult(rel, UNCHECKABLE, "no published size or hash")
