"""What a fetch SOURCE names: a magnet link, a .torrent file, hf://owner/repo[@rev], or a known release."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mdist.errors import InputError
from mdist.verify.manifest import Manifest, find_manifest


@dataclass
class Source:
    kind: str  # "torrent" | "hub" | "archive"
    target: str  # magnet URI, .torrent path, owner/repo, or an archive's URL
    revision: str | None = None
    manifest: Manifest | None = None  # set when SOURCE was a release name (or a known archive URL)
    hub_fallback: "Source | None" = None
    archive: "Source | None" = None  # a torrent release's archive, for --source archive
    md5: str | None = None  # an archive's published md5
    size: int | None = None  # an archive's published size


COMMIT = re.compile(r"[0-9a-f]{40}")
MAX_REVISION_CHARS = 255
_REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")  # the hub's rule: at most 96
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f~^:?*\[\\]|\.\.|@\{|//")  # git check-ref-format


def quoted(text: object) -> str:
    """Text from the command line or a server, quoted, escaped and cut for a one-line message."""
    return repr(str(text)[:100]).encode("ascii", "backslashreplace").decode("ascii")


def check_repo_id(repo: str, where: str = "hub repository") -> str:
    """OWNER/NAME as the hub allows them: the name becomes a folder (--out, models--OWNER--NAME)."""
    parts = repo.split("/") if isinstance(repo, str) else []
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) and ".." not in p and "--" not in p for p in parts):
        raise InputError(f"{where}: expected OWNER/REPO (letters, digits, '.', '_', '-', no '..' or '--'), "
                         f"got {quoted(repo)}")
    return repo


def check_revision(revision: str, where: str = "revision") -> str:
    """A branch, tag or commit by git's rules for ref names (git check-ref-format), or 40-hex commit.

    The revision becomes a file under the Hugging Face cache's refs/ folder, so `../x`, an
    absolute path, `-x` (an option to git) or a control character is refused before any request.
    """
    bad = (not isinstance(revision, str) or not revision or len(revision) > MAX_REVISION_CHARS
           or revision == "@" or revision.startswith(("/", "-")) or revision.endswith(("/", "."))
           or _REF_FORBIDDEN.search(revision) is not None
           or any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/")))
    if bad:
        raise InputError(f"{where} {quoted(revision)} is not a git branch, tag or commit name "
                         "(no '..', '//', '@{', control characters, spaces or ~^:?*[\\; no part starting with '.', "
                         "none ending in '.lock', '/' or '.'; not starting with '/' or '-')")
    return revision


def parse_hub(text: str) -> tuple[str, str | None]:
    spec = text[len("hf://"):]
    repo, _, revision = spec.partition("@")
    check_repo_id(repo, "hf://OWNER/REPO[@REVISION]")
    return repo, check_revision(revision) if revision else None


def _hub_source(hub: dict | None, manifest: Manifest) -> Source | None:
    """The hub repository a release names, with the same checks as a typed hf:// source."""
    if not hub:
        return None
    where = f"{manifest.name}: hub"
    revision = hub.get("revision")
    return Source("hub", check_repo_id(hub.get("repo"), f"{where} repository"),
                  check_revision(revision, f"{where} revision") if revision else None, manifest)


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


def _archive_source(manifest: Manifest) -> Source | None:
    """The release's current archive (URL, md5, size), its URL checked as a typed one is."""
    from mdist.sources.archive import archive_name

    archive = manifest.archive
    if archive is None:
        return None
    try:
        archive_name(archive["url"])
    except InputError as exc:
        raise InputError(f"{manifest.name}: archive: {exc}") from None
    return Source("archive", archive["url"], manifest=manifest, md5=archive["md5"], size=archive.get("size"))


def find_archive(url: str) -> Source:
    """A typed URL: the registry's archive of that URL when it knows it (its md5 and size), else bare."""
    from mdist.sources.archive import archive_name
    from mdist.verify.manifest import load_registry

    archive_name(url)
    for manifest in load_registry():
        for archive in manifest.raw.get("archives", []):
            if archive.get("url") == url and archive.get("md5") and archive.get("current", True):
                return Source("archive", url, manifest=manifest, md5=archive["md5"], size=archive.get("size"))
    return Source("archive", url)


def resolve_source(text: str) -> Source:
    if text.startswith("magnet:"):
        return Source("torrent", text)
    if text.startswith("hf://"):
        repo, revision = parse_hub(text)
        return Source("hub", repo, revision)
    if text.startswith(("http://", "https://")):
        return find_archive(text)
    if text.lower().endswith(".tar") and not text.endswith(".torrent"):
        raise InputError(f"{text}: mdist fetches archives by URL (http:// or https://), where it checks the md5 "
                         f"while downloading; serve the file over HTTP, or extract it yourself and run "
                         f"`mdist verify` on the folder")
    if text.endswith(".torrent") or (Path(text).is_file() and not text.endswith(".json")):
        return Source("torrent", text)
    manifest = find_manifest(text)  # a release name or a manifest file; else a clear error
    sources = manifest.sources
    hub = sources.get("hub")
    if not hub and sources.get("hub_alternative"):
        alternative = find_manifest(sources["hub_alternative"])
        hub_source = _hub_source(alternative.sources.get("hub"), alternative)
    else:
        hub_source = _hub_source(hub, manifest)
    archive = _archive_source(manifest)
    magnet = sources.get("magnet") or compose_magnet(sources)
    if magnet:  # the info-hash checks every piece: preferred to an archive's md5
        return Source("torrent", magnet, manifest=manifest, hub_fallback=hub_source, archive=archive)
    if archive:
        archive.hub_fallback = hub_source
        return archive
    if hub_source:
        return hub_source
    raise InputError(f"release {manifest.name} lists no magnet link, archive or hub repository to fetch from")
