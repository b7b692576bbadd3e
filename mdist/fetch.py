"""`mdist fetch`: resolve SOURCE, download through the swarm or the hub, verify, report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mdist.errors import InputError, VerificationError
from mdist.model_folder import inspect_folder
from mdist.sources.archive import ArchiveOptions, Limits, Unreachable
from mdist.sources.hub import HubOptions
from mdist.sources.torrent_fetch import FetchOptions, NoProgress
from mdist.sources.resolve import Source, resolve_source
from mdist.verify.folder import FAILING, verify_folder
from mdist.verify.manifest import Manifest, find_by_infohash

SWARM_GRACE = 30.0  # seconds without a single peer before a release falls back to its hub repository


@dataclass
class FetchRequest:
    """What to fetch, and the options of each transport (`swarm` for BitTorrent, `hub` for hf://,
    `archive` for an http(s) .tar)."""

    source: str
    swarm: FetchOptions = field(default_factory=FetchOptions)
    hub: HubOptions = field(default_factory=HubOptions)
    archive: ArchiveOptions = field(default_factory=ArchiveOptions)
    prefer: str = "auto"  # or "torrent" / "archive" / "hub", for a release that lists several
    swarm_grace: float = SWARM_GRACE  # with a hub to fall back to: how long to wait for a first peer


def verify_against(out: Path, manifest: Manifest | None) -> tuple[str | None, int, list[str]]:
    """Check a finished download against its manifest; raise VerificationError on any mismatch."""
    if manifest is None:
        return None, 0, []
    report = verify_folder(out, manifest)
    bad = [r for r in report.files if r.status in ("mismatch", "missing", "refused")]
    if bad:
        details = "; ".join(f"{r.path}: {r.status} {r.detail}".strip() +
                            (f" (expected {r.expected}, got {r.actual})" if r.expected else "") for r in bad)
        raise VerificationError(f"download does not match {manifest.name}: {details}")
    verified = sum(1 for r in report.files if r.status == "ok")
    return manifest.name, verified, report.not_checked


def _check_options(request: FetchRequest, source: Source) -> None:
    """Options that cannot apply to this source are an error, never silently ignored."""
    hub, swarm, archive = request.hub, request.swarm, request.archive
    if hub.to_hf_cache and hub.out is not None:
        raise InputError("--out and --to-hf-cache exclude each other (the cache decides where files go)")
    what = {"torrent": "a torrent", "archive": "an archive", "hub": "a hub repository"}[source.kind]
    checks = (
        (source.kind == "hub" or source.hub_fallback is not None, "hf:// sources",
         (("--include", hub.include), ("--exclude", hub.exclude), ("--to-hf-cache", hub.to_hf_cache),
          ("--endpoint", hub.endpoint))),
        (source.kind == "torrent", "BitTorrent sources",
         (("--peer", swarm.peers), ("--tracker", swarm.trackers), ("--web-seed", swarm.web_seeds),
          ("--listen", swarm.listen), ("--seed", swarm.seed), ("--fleet", swarm.fleet),
          ("--lsd/--no-lsd", swarm.lsd is not None))),
        (source.kind == "archive" or source.archive is not None, "archive sources",
         (("--md5", archive.md5), ("--keep-archive", archive.keep_archive))),
    )
    for applies, sources, flags in checks:
        used = [flag for flag, value in flags if value]
        if used and not applies:
            raise InputError(f"{used[0]} applies to {sources} only; {request.source[:80]} is {what}")


def _pick(request: FetchRequest, source: Source) -> Source:
    """The source --source asks for, among those a release lists."""
    if request.prefer == "hub":
        if source.kind != "hub" and source.hub_fallback is None:
            raise InputError(f"{request.source} has no hub repository")
        return source if source.kind == "hub" else source.hub_fallback  # type: ignore[return-value]
    if request.prefer == "torrent" and source.kind != "torrent":
        raise InputError(f"{request.source} has no magnet link")
    if request.prefer == "archive":
        if source.kind != "archive" and source.archive is None:
            raise InputError(f"{request.source} has no archive")
        if source.kind != "archive":
            return replace(source.archive, hub_fallback=None)  # type: ignore[arg-type]
    return source


def run_fetch(request: FetchRequest, reporter) -> dict[str, Any]:
    source = resolve_source(request.source)
    _check_options(request, source)
    source = _pick(request, source)
    if source.kind == "hub":
        return _fetch_hub(source, request, reporter)
    fallback = source.hub_fallback is not None and request.prefer == "auto"
    if source.kind == "torrent" and fallback:  # without somewhere else to go, waiting for a first peer costs nothing
        request = replace(request, swarm=replace(request.swarm, swarm_grace=request.swarm_grace))
    fetch, stalled, what = ((_fetch_archive, Unreachable, "archive") if source.kind == "archive"
                            else (_fetch_torrent, NoProgress, "swarm"))
    try:
        return fetch(source, request, reporter)
    except stalled as exc:  # the archive's server unreachable, or no peer delivering: the hub, if any
        if not fallback:
            raise
        reporter.message(f"{what}: {exc}; falling back to the hub ({source.hub_fallback.target})")
        return _fetch_hub(source.hub_fallback, request, reporter)


def _fetch_archive(source: Source, request: FetchRequest, reporter) -> dict[str, Any]:
    """An http(s) .tar: the published md5 (the registry's, or --md5, which must agree with it),
    bounds from the manifest, and the manifest's own check of the extracted files."""
    from mdist.sources.archive import check_md5, fetch_archive, write_complete

    md5 = source.md5
    if request.archive.md5:
        given = check_md5(request.archive.md5)
        if md5 and given != md5:
            raise InputError(f"--md5 {given} differs from the published md5 of {source.target[:100]} ({md5})")
        md5 = given
    manifest = source.manifest
    options = replace(request.archive, out=request.archive.out or request.hub.out or request.swarm.out,
                      timeout=request.swarm.timeout)
    result = fetch_archive(source.target, options, reporter, md5=md5, size=source.size,
                           release=manifest.name if manifest else None, limits=_limits(manifest, source.size))
    out = Path(result["out"])
    if manifest is not None:
        _, verified, unchecked = verify_against(out, manifest)
        if verified:
            result["verification"] += f"; {verified} files also against {manifest.name}"
        result["not_checkable"] = unchecked
    result["via"] = "archive"
    write_complete(out, result)
    return result


def _limits(manifest: Manifest | None, size: int | None) -> Limits:
    """What the archive may hold: no more bytes than it has (or its files are published to have),
    and only the release's files when the manifest lists all of them."""
    limits = Limits(total=size) if size else Limits()
    if manifest is None or not manifest.files_complete:
        return limits
    sizes = [entry.size for entry in manifest.files.values()]
    total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else limits.total
    return Limits(total=min(total, limits.total), names=frozenset(manifest.files))


def _fetch_torrent(source: Source, request: FetchRequest, reporter) -> dict[str, Any]:
    from mdist.sources.torrent_fetch import fetch_torrent

    found: dict[str, Any] = {}

    def on_complete(out: Path, hashes) -> tuple[str | None, int, list[str]]:
        manifest = source.manifest or find_by_infohash(hashes.v1 or "") or find_by_infohash(hashes.v2 or "")
        if manifest is not None:
            return verify_against(out, manifest)
        found.update(recognise_download(out))
        return found.get("manifest"), found.get("verified", 0), found.get("not_checkable", [])

    result = fetch_torrent(source.target, request.swarm, reporter, on_complete).to_json()
    result["via"] = "bittorrent"
    unchecked = f"; not checkable: {', '.join(result['not_checkable'])}" if result["not_checkable"] else ""
    if result["manifest"] and found:
        result["verification"] = (f"BitTorrent piece hashes; files verified against {result['manifest']} "
                                  f"(sha256 of {result['verified_files']} files; recognised from the files, "
                                  f"checksums/ does not know this info-hash){unchecked}")
    elif result["manifest"]:
        result["verification"] = (f"BitTorrent piece hashes, and sha256 of {result['verified_files']} files "
                                  f"against {result['manifest']}{unchecked}")
    else:
        result["verification"] = ("BitTorrent piece hashes only (checksums/ does not know this info-hash"
                                  + (f"; {found['differs']}" if found.get("differs") else "") + ")")
    return result


def recognise_download(out: Path) -> dict[str, Any]:
    """A download whose info-hash no manifest knows may still be a known release's files: recognised
    by names and sizes, then verified as `mdist verify` would. A look-alike that differs is said,
    not failed: it is simply not that release (a fine-tune can share names and sizes)."""
    release = inspect_folder(out).release
    if release is None:
        return {}
    report = verify_folder(out, release)
    bad = [r for r in report.files if r.status in FAILING]
    if bad:
        return {"differs": f"the files look like {release.name} but are not: "
                           + ", ".join(f"{r.path} {r.status}" for r in bad[:5])}
    return {"manifest": release.name, "verified": sum(1 for r in report.files if r.status == "ok"),
            "not_checkable": report.not_checked}


def _fetch_hub(source: Source, request: FetchRequest, reporter) -> dict[str, Any]:
    from mdist.sources.hub import fetch_hub

    result = fetch_hub(source.target, source.revision, request.hub, reporter, manifest=source.manifest)
    result["via"] = "hub"
    return result
