"""`mdist seed`: verify a folder, then share it in the swarm it came from until stopped.

A folder mdist fetched by torrent keeps that torrent (`.mdist/release.torrent`): seeding serves
it again, so re-sharers join the published swarm (same info-hashes) instead of starting a new
one, and files derived later (a conversion by `run`) are not part of it. A known release copied
from elsewhere lacks the torrent's info dict: `--fetch-metadata` learns it from peers by the
release's info-hash, checks the files against it and never downloads them. A new torrent is
made only for a folder that never had one, or with `--new-torrent`.

The saved torrent says which files are the release, so it is used only when mdist wrote it on
this machine (its HMAC, `.mdist/release.torrent.mac`, see mdist.sources.torrent_fetch): one in a
copied or hostile folder is ignored, with a note, as if the folder had none. Options are checked
before the folder is verified (minutes for a 7B release).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from mdist.atomic import refuse_unreal_dir
from mdist.errors import InputError, VerificationError
from mdist.model_folder import STATE_DIR, inspect_folder
from mdist.sources.bt_session import Endpoint, make_session, parse_endpoint
from mdist.sources.interfaces import reachable_addresses
from mdist.sources.resolve import compose_magnet
from mdist.sources.torrent_fetch import (RELEASE_TORRENT, Patience, SilentReporter, check_torrent_bytes,
                                         fetch_metadata, load_source, read_release_torrent, write_release_torrent)
from mdist.sources.torrent_meta import InfoHashes, magnet_peers, release_torrent_bytes
from mdist.sources.torrent_seed import FleetWatch, Seeder, write_torrent
from mdist.verify.folder import verify_folder
from mdist.verify.manifest import Manifest, find_manifest


@dataclass
class SeedOptions:
    """How to share: where to listen and announce, and which torrent (see the module's docstring)."""

    listen: str | None = None
    trackers: list[str] = field(default_factory=list)
    web_seeds: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)  # where --fetch-metadata asks first
    torrent_out: Path | None = None
    version: str | None = None  # only for a new torrent (default hybrid)
    no_dht: bool = False
    manifest_name: str | None = None
    force: bool = False
    upload_limit: int = 0
    new_torrent: bool = False
    fetch_metadata: bool = False
    timeout: float = 300.0  # for --fetch-metadata: seconds without progress
    fleet: bool = False  # the origin of a fleet (docs/fleet.md)
    lsd: bool | None = None  # local service discovery; None: on with --fleet or DHT


@dataclass
class Plan:
    """The torrent to serve: `torrent` bytes (checked), or None for a new one leaving out `leave_out`."""

    torrent: bytes | None
    what: str
    keep: bool = False  # save it as .mdist/release.torrent once the data passed libtorrent's check
    leave_out: frozenset[str] = frozenset()


def check_before_seeding(directory: Path, manifest_name: str | None, force: bool, note: Callable[[str], None]) -> None:
    report = verify_folder(directory, find_manifest(manifest_name) if manifest_name else None)
    if report.ok:
        note(f"verified as {report.manifest}")
        return
    reason = ("no known release matches it" if report.manifest is None else
              f"it does not match {report.manifest}: " + ", ".join(
                  f"{r.path} {r.status}" for r in report.files if r.status in ("mismatch", "missing", "refused")))
    if not force:
        raise VerificationError(f"refusing to seed {directory}: {reason} (use --force to seed anyway)")
    note(f"warning: seeding although {reason}")


def saved_torrent(directory: Path, note: Callable[[str], None] = lambda line: None) -> bytes | None:
    """The torrent mdist kept in the folder, its info dict checked again (check_info_dict); None if
    none, or if mdist did not write it on this machine (a link, a copied or forged file: noted)."""
    state = Path(directory) / STATE_DIR
    refuse_unreal_dir(state)
    saved = read_release_torrent(state)
    if saved.data is None and saved.problem is None:
        return None
    if not saved.trusted:
        why = saved.problem or "not written by mdist on this machine"
        note(f"ignoring {STATE_DIR}/{RELEASE_TORRENT} ({why}): it is not trusted to say which files are the "
             f"release, so the folder is shared as one without it (fetching its torrent into the folder again "
             f"keeps a trusted copy, downloading only what is missing)")
        return None
    check_torrent_bytes(saved.data, f"{STATE_DIR}/{RELEASE_TORRENT}")
    return saved.data


def release_magnet(release: Manifest | None) -> str | None:
    """The published swarm of a known release (its magnet, or one made from its info-hashes)."""
    if release is None:
        return None
    return release.sources.get("magnet") or compose_magnet(release.sources)


def learn_metadata(magnet: str, options: SeedOptions) -> bytes:
    """The info dict of `magnet` from peers (--peer, x.pe, trackers, DHT), checked, as a .torrent.

    Learnt in a private scratch folder (as fetch does), so nothing reaches the folder before the
    check; the data itself is never requested."""
    params, _ = load_source(magnet)
    params.trackers = list(params.trackers) + options.trackers
    peers = [parse_endpoint(p) for p in [*options.peers, *magnet_peers(magnet)]]
    session = make_session(None, no_dht=options.no_dht)
    try:
        params.ti = fetch_metadata(session, params, peers, Patience(options.timeout), SilentReporter())
    finally:
        del session
    return release_torrent_bytes(params)  # with the release's trackers, which the seeder announces to


def check_options(options: SeedOptions) -> None:
    """Everything about the options alone, before any slow work (InputError)."""
    if options.listen:
        parse_endpoint(options.listen)
    for peer in options.peers:
        parse_endpoint(peer)
    if options.new_torrent and options.fetch_metadata:
        raise InputError("--new-torrent and --fetch-metadata exclude each other")
    if options.version and options.fetch_metadata:
        raise InputError("--torrent-version applies to a new torrent only (--new-torrent)")


def saved_for(directory: Path, options: SeedOptions, note: Callable[[str], None]) -> bytes | None:
    """The saved torrent to serve unless --new-torrent (checked against the options)."""
    saved = None if options.new_torrent else saved_torrent(directory, note)
    if options.version and not options.new_torrent and saved:
        raise InputError("--torrent-version applies to a new torrent only (--new-torrent)")
    return saved


def choose_torrent(directory: Path, release: Manifest | None, options: SeedOptions,
                   note: Callable[[str], None], saved: bytes | None = None) -> Plan:
    """Which torrent to serve: `saved` (saved_for), the release's learnt from peers, or a new one."""
    check_options(options)
    derived = inspect_folder(directory, recognise_release=False).derived
    new = Plan(None, "a new torrent of the folder (files mdist derived and .mdist/ left out)",
               leave_out=derived.valid | derived.stale)
    if options.new_torrent:
        return new
    if saved is not None:
        if options.fetch_metadata:
            note(f"{directory} already holds its torrent ({STATE_DIR}/{RELEASE_TORRENT}); nothing to fetch")
        return Plan(saved, f"the torrent it was fetched with ({STATE_DIR}/{RELEASE_TORRENT})")
    magnet = release_magnet(release)
    if release is None or magnet is None:
        if options.fetch_metadata:
            raise InputError(f"--fetch-metadata needs a known release with a published info-hash; {directory} is "
                             + ("not a known release" if release is None else f"{release.name}, which lists none"))
        return new
    if options.fetch_metadata:
        note(f"learning the info dict of {release.name} from peers ({_hashes_of(release)})")
        return Plan(learn_metadata(magnet, options), f"the published torrent of {release.name}", keep=True)
    note(f"note: {directory} holds {release.name}, published as {_hashes_of(release)}; to rejoin that swarm mdist "
         f"needs the torrent's info dict (its file list and piece hashes), which this folder does not hold "
         f"({STATE_DIR}/{RELEASE_TORRENT}): --fetch-metadata learns it from peers. Seeding a new torrent instead")
    return new


def _hashes_of(release: Manifest) -> str:
    return ", ".join(f"{kind} {value}" for kind, value in (("btih", release.btih), ("btmh", release.btmh)) if value)


def run_seed(directory: Path, options: SeedOptions, *, echo: Callable[[str], None],
             note: Callable[[str], None]) -> None:
    directory = Path(directory)
    check_options(options)  # a bad --listen is said now, not after minutes of checking the folder
    endpoint = parse_endpoint(options.listen) if options.listen else None
    saved = saved_for(directory, options, note)
    check_before_seeding(directory, options.manifest_name, options.force, note)
    release = (find_manifest(options.manifest_name) if options.manifest_name else inspect_folder(directory).release)
    plan = choose_torrent(directory, release, options, note, saved)
    with Seeder(directory, listen=endpoint, trackers=options.trackers, web_seeds=options.web_seeds,
                no_dht=options.no_dht, version=options.version or "hybrid", torrent=plan.torrent,
                upload_limit=options.upload_limit, leave_out=plan.leave_out, fleet=options.fleet,
                lsd=options.lsd) as seeder:
        info = seeder.start()
        served = seeder.release_torrent() if plan.keep else info.torrent  # with the v2 layers the check made
        if plan.keep:  # the data passed libtorrent's check against it: keep it for next time
            write_release_torrent(directory / STATE_DIR, served)
        if options.torrent_out:
            write_torrent(options.torrent_out, served)
        note(f"seeding {directory} on port {info.port}: {plan.what} (btih {info.hashes.v1 or '-'}, "
             f"btmh {('1220' + info.hashes.v2) if info.hashes.v2 else '-'}){_published(release, info.hashes)}; "
             f"Ctrl-C to stop")
        magnet = hosts_magnet(info.magnet, info.port, options, note)
        note(f"{'on each host' if options.fleet else 'to fetch it'}: {host_command(magnet, options)}")
        echo(magnet)  # last: whoever waits for the magnet has every note already
        seeder.serve_forever(FleetWatch(seeder, note) if options.fleet else None)


def hosts_magnet(magnet: str, port: int, options: SeedOptions, note: Callable[[str], None],
                 addresses: Callable[[tuple[int, ...]], list[str]] = reachable_addresses) -> str:
    """The magnet a fleet's hosts are given. An origin listening on every interface (no --listen, or
    0.0.0.0 / ::) has no address in its magnet, and hosts without a tracker could not reach it: the
    magnet then names each of this machine's reachable addresses (x.pe; a host uses those it can
    reach), or the user is told what to add."""
    endpoint = parse_endpoint(options.listen) if options.listen else None
    if not options.fleet or (endpoint is not None and endpoint.host not in ("0.0.0.0", "::")):
        return magnet  # an explicit address is in the magnet already
    families = {"0.0.0.0": (socket.AF_INET,), "::": (socket.AF_INET6,)}.get(
        endpoint.host if endpoint else "", (socket.AF_INET, socket.AF_INET6))
    found = addresses(families)
    if not found:
        note("this machine has no address other than loopback, so the command below names no origin: hosts "
             "find it only through --tracker or local discovery on one segment; add --listen IP:PORT with an "
             "address the hosts reach")
        return magnet
    peers = [str(Endpoint(address, port)) for address in found]
    note(f"the hosts' magnet names this machine's addresses {', '.join(peers)} (x.pe; each host uses one it "
         f"reaches; --listen IP:PORT names only that one)")
    return magnet + "".join("&x.pe=" + quote(peer, safe=":[]") for peer in peers)  # libtorrent: a bare colon


def host_command(magnet: str, options: SeedOptions) -> str:
    """The exact command that fetches what this seeder serves (the magnet names its trackers, and
    the origin with x.pe when --listen gave an address)."""
    import shlex

    words = ["mdist", "fetch", magnet]
    if options.fleet:
        words.append("--fleet")
    if options.no_dht:
        words.append("--no-dht")
    if options.lsd is not None and options.lsd != (options.fleet or not options.no_dht):
        words.append("--lsd" if options.lsd else "--no-lsd")
    return shlex.join(words)


def _published(release: Manifest | None, hashes: InfoHashes) -> str:
    """Whether this is the release's published swarm."""
    if release is None or not (release.btih or release.btmh):
        return ""
    same = (release.btih and release.btih == hashes.v1) or (release.btmh and release.btmh[4:] == hashes.v2)
    return f", the published swarm of {release.name}" if same else f", not the published swarm of {release.name}"
