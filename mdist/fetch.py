"""`mdist fetch`: resolve SOURCE, download through the swarm or the hub, verify, report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdist.errors import InputError, VerificationError
from mdist.sources.hub import HubOptions
from mdist.sources.torrent_fetch import FetchOptions
from mdist.sources.resolve import Source, resolve_source
from mdist.verify.folder import verify_folder
from mdist.verify.manifest import Manifest, find_by_infohash


@dataclass
class FetchRequest:
    """What to fetch, and the options of each transport (`swarm` for BitTorrent, `hub` for hf://)."""

    source: str
    swarm: FetchOptions = field(default_factory=FetchOptions)
    hub: HubOptions = field(default_factory=HubOptions)
    prefer: str = "auto"  # or "torrent" / "hub", for a release that lists both


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
    hub = request.hub
    if hub.to_hf_cache and hub.out is not None:
        raise InputError("--out and --to-hf-cache exclude each other (the cache decides where files go)")
    if source.kind != "hub" and source.hub_fallback is None:
        used = [flag for flag, value in (("--include", hub.include), ("--exclude", hub.exclude),
                                          ("--to-hf-cache", hub.to_hf_cache), ("--endpoint", hub.endpoint))
                if value]
        if used:
            raise InputError(f"{used[0]} applies to hf:// sources only; {request.source[:80]} is a torrent")
    if source.kind == "hub":
        swarm = request.swarm
        used = [flag for flag, value in (("--peer", swarm.peers), ("--tracker", swarm.trackers),
                                          ("--web-seed", swarm.web_seeds), ("--listen", swarm.listen),
                                          ("--seed", swarm.seed)) if value]
        if used:
            raise InputError(f"{used[0]} applies to BitTorrent sources only; {request.source[:80]} is a hub repository")


def run_fetch(request: FetchRequest, reporter) -> dict[str, Any]:
    source = resolve_source(request.source)
    _check_options(request, source)
    if request.prefer == "hub":
        if source.kind != "hub" and source.hub_fallback is None:
            raise InputError(f"{request.source} has no hub repository")
        source = source if source.kind == "hub" else source.hub_fallback  # type: ignore[assignment]
    elif request.prefer == "torrent" and source.kind != "torrent":
        raise InputError(f"{request.source} has no magnet link")
    if source.kind == "hub":
        return _fetch_hub(source, request, reporter)
    try:
        return _fetch_torrent(source, request, reporter)
    except InputError as exc:
        if source.hub_fallback is None or request.prefer != "auto" or "no progress" not in str(exc):
            raise
        reporter.message(f"swarm: {exc}; falling back to the hub ({source.hub_fallback.target})")
        return _fetch_hub(source.hub_fallback, request, reporter)


def _fetch_torrent(source: Source, request: FetchRequest, reporter) -> dict[str, Any]:
    from mdist.sources.torrent_fetch import fetch_torrent

    def on_complete(out: Path, hashes) -> tuple[str | None, int, list[str]]:
        manifest = source.manifest or find_by_infohash(hashes.v1 or "") or find_by_infohash(hashes.v2 or "")
        return verify_against(out, manifest)

    result = fetch_torrent(source.target, request.swarm, reporter, on_complete).to_json()
    result["via"] = "bittorrent"
    if result["manifest"]:
        result["verification"] = (f"BitTorrent piece hashes, and sha256 of {result['verified_files']} files "
                                  f"against {result['manifest']}"
                                  + (f"; not checkable: {', '.join(result['not_checkable'])}"
                                     if result["not_checkable"] else ""))
    else:
        result["verification"] = "BitTorrent piece hashes only (checksums/ does not know this info-hash)"
    return result


def _fetch_hub(source: Source, request: FetchRequest, reporter) -> dict[str, Any]:
    from mdist.sources.hub import fetch_hub

    result = fetch_hub(source.target, source.revision, request.hub, reporter, manifest=source.manifest)
    result["via"] = "hub"
    return result
