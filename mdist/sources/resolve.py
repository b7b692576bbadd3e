"""What a fetch SOURCE names: a magnet link, a .torrent file, hf://owner/repo[@rev], or a known release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mdist.errors import InputError
from mdist.verify.manifest import Manifest, find_manifest


@dataclass
class Source:
    kind: str  # "torrent" | "hub"
    target: str  # magnet URI, .torrent path, or owner/repo
    revision: str | None = None
    manifest: Manifest | None = None  # set when SOURCE was a release name
    hub_fallback: "Source | None" = None


def parse_hub(text: str) -> tuple[str, str | None]:
    spec = text[len("hf://"):]
    repo, _, revision = spec.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise InputError(f"expected hf://OWNER/REPO[@REVISION], got {text!r}")
    return repo, revision or None


def compose_magnet(sources: dict) -> str | None:
    """A magnet link from a manifest's info-hashes, name and trackers (when it lists no magnet)."""
    from urllib.parse import quote

    parts = []
    if sources.get("btih"):
        parts.append(f"xt=urn:btih:{sources['btih']}")
    if sources.get("btmh"):
        parts.append(f"xt=urn:btmh:{sources['btmh']}")
    if not parts:
        return None
    if sources.get("display_name"):
        parts.append("dn=" + quote(sources["display_name"], safe=""))
    parts += ["tr=" + quote(url, safe="") for url in sources.get("trackers", [])]
    return "magnet:?" + "&".join(parts)


def resolve_source(text: str) -> Source:
    if text.startswith("magnet:"):
        return Source("torrent", text)
    if text.startswith("hf://"):
        repo, revision = parse_hub(text)
        return Source("hub", repo, revision)
    if text.endswith(".torrent") or (Path(text).is_file() and not text.endswith(".json")):
        return Source("torrent", text)
    manifest = find_manifest(text)  # a release name or a manifest file; else a clear error
    sources = manifest.sources
    hub = sources.get("hub")
    if not hub and sources.get("hub_alternative"):
        alternative = find_manifest(sources["hub_alternative"])
        hub = alternative.sources.get("hub")
        hub_source = Source("hub", hub["repo"], hub.get("revision"), alternative) if hub else None
    else:
        hub_source = Source("hub", hub["repo"], hub.get("revision"), manifest) if hub else None
    magnet = sources.get("magnet") or compose_magnet(sources)
    if magnet:
        return Source("torrent", magnet, manifest=manifest, hub_fallback=hub_source)
    if hub_source:
        return hub_source
    raise InputError(f"release {manifest.name} lists no magnet link or hub repository to fetch from")
