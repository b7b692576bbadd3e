"""Download a torrent with libtorrent: resume, progress, flush-before-verify, safe paths.

Completion means every piece passed libtorrent's hash check, the data was flushed to disk
(libtorrent can report 'finished' before it is written), and, when checksums/ knows the
release, every file's sha256 matched. Only then is `DIR/.mdist/complete.json` written.

Nothing is created in DIR before the torrent's info dict passed check_info_dict, whether it came
from a .torrent file, from resume data or (for a magnet) from a peer.

The state kept in `DIR/.mdist/` (libtorrent's resume data, the torrent fetched) is trusted only
when mdist wrote it on this machine: each file has an HMAC beside it (`NAME.mac`, under the key
of mdist.derived). Resume data tells libtorrent which pieces it already has, so forged resume
data would skip the piece check; a copied folder's (or a hostile folder's) is used at most for its
file list, and libtorrent checks whatever data is there.
"""

from __future__ import annotations

import json
import os
import stat
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from mdist.atomic import (real_dir, refuse_links_on_the_way, refuse_unreal_dir, require_free_space,
                          write_bytes_atomic)
from mdist.derived import sign_bytes, signed_by_us
from mdist.errors import InputError, VerificationError
from mdist.jsonio import read_small_file
from mdist.sources.bt_session import Endpoint, lt, make_session, parse_endpoint
from mdist.paths import UnsafePathError, check_component, check_path_set
from mdist.sources.torrent_meta import (InfoHashes, check_info_dict, folder_mapping, magnet_peers,
                                       release_torrent_bytes, root_name)
from mdist.model_folder import COMPLETE_FILE, RELEASE_TORRENT, RESUME_FILE  # one definition: the folder rule reads them too
from mdist.verify.folder import STATE_DIR
SAVE_RESUME_EVERY = 3.0
MAC_SUFFIX = ".mac"  # beside each state file: the HMACs that say mdist wrote it here
MAX_MAC_BYTES = 1024
# Resume data grows with the torrent: for v2 (and hybrid) torrents libtorrent keeps a SHA-256 per
# 16 KiB block, 2 MiB per GiB of data (measured: a 1 GiB hybrid torrent with 16 MiB pieces saves
# 2.0 MiB once complete; Mistral 7B's 14.5 GB release about 28 MiB). 64 MiB covers torrents up to
# about 30 GiB; for a .torrent file of a larger one the cap grows with it (twice the measured rate).
# Larger resume data is not read: libtorrent checks the data already there instead.
MAX_RESUME_BYTES = 64 << 20
RELEASE_PURPOSE = "the torrent mdist fetched or seeded (.mdist/release.torrent)"
STATE_LABELS = {"checking_files": "checking", "checking_resume_data": "checking", "downloading_metadata": "metadata",
                "finished": "verifying", "seeding": "verifying"}  # libtorrent's "seeding" is not ours yet


class NoProgress(InputError):
    """The swarm gave nothing for too long (or no peer at all within the grace period): another
    source may be tried. Hash failures are a VerificationError instead."""


def state_label(state: str, phase: str | None = None) -> str:
    """What the progress bar says: mdist's own phase once libtorrent has every piece (flush,
    sha256, complete, seeding), else libtorrent's state in plain words."""
    return phase or STATE_LABELS.get(state, state)


@dataclass
class Progress:
    name: str = ""
    state: str = "metadata"
    total: int = 0
    done: int = 0
    download_rate: float = 0.0
    upload_rate: float = 0.0
    peers: int = 0
    seeds: int = 0
    hash_failures: int = 0
    source: str = "bittorrent"  # or "hub": no peers or piece hashes to show


class Reporter(Protocol):
    def update(self, progress: Progress) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def update(self, progress: Progress) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class FetchOptions:
    out: Path | None = None
    peers: list[str] = field(default_factory=list)
    trackers: list[str] = field(default_factory=list)
    web_seeds: list[str] = field(default_factory=list)
    listen: str | None = None
    no_dht: bool = False
    timeout: float = 300.0
    seed: bool = False
    swarm_grace: float | None = None  # give up this soon when no peer at all was found (set with a fallback)
    fleet: bool = False  # a host of a fleet (docs/fleet.md): fleet settings, and seeding afterwards
    lsd: bool | None = None  # local service discovery; None: on with --fleet or DHT


@dataclass
class FetchResult:
    out: str
    name: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    total_bytes: int
    downloaded_bytes: int
    hash_failures: int
    seconds: float
    files: list[str]
    manifest: str | None = None
    verified_files: int = 0
    not_checkable: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


MAX_TORRENT_BYTES = 32 << 20  # libtorrent itself refuses .torrent files over 10 MB


def load_source(source: str):
    """add_torrent_params for a magnet link or a .torrent file; plus the raw info dict if known."""
    lib = lt()
    if source.startswith("magnet:"):
        try:
            params = lib.parse_magnet_uri(source)
        except RuntimeError as exc:
            raise InputError(f"cannot parse the magnet link: {exc}") from None
        if not (params.info_hashes.has_v1() or params.info_hashes.has_v2()):
            raise InputError("the magnet link has no urn:btih or urn:btmh info-hash")
        return params, None
    raw, info = read_checked_torrent(Path(source))
    try:
        params = lib.load_torrent_buffer(raw)
    except RuntimeError as exc:
        raise InputError(f"{source} is not a valid .torrent file: {exc}") from None
    return params, info


def read_checked_torrent(path: Path) -> tuple[bytes, dict]:
    """A .torrent file's bytes and raw info dict, checked (check_info_dict) before libtorrent
    parses, and so sanitises, any name."""
    raw = _read_torrent_file(path)
    return raw, check_torrent_bytes(raw, str(path))


def check_torrent_bytes(raw: bytes, what: str) -> dict:
    """The raw info dict of a .torrent file's bytes, checked by check_info_dict."""
    try:
        decoded = lt().bdecode(raw)
    except RuntimeError:
        decoded = None
    if not isinstance(decoded, dict) or b"info" not in decoded:
        raise InputError(f"{what} is not a .torrent file")
    info = decoded[b"info"]
    check_info_dict(info)
    return info


def _read_torrent_file(path: Path) -> bytes:
    """The bytes of a .torrent file, bounded; every failure is one line."""
    try:
        if not path.exists():
            raise InputError(f"{path}: no such file (expected a magnet link, a .torrent file or a release name)")
        if not path.is_file():
            raise InputError(f"{path} is not a .torrent file (not a regular file)")
        if path.stat().st_size > MAX_TORRENT_BYTES:
            raise InputError(f"{path} is not a .torrent file (larger than {MAX_TORRENT_BYTES >> 20} MiB)")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


# -- state mdist keeps in OUT/.mdist: trusted only when signed on this machine ---------------------
@dataclass(frozen=True)
class StateFile:
    data: bytes | None = None  # None: absent, or not read (see problem)
    trusted: bool = False  # written by mdist on this machine, for this purpose
    problem: str | None = None  # why it was not read


def _read_no_link(path: Path, max_bytes: int) -> bytes | None:
    """A state file's bytes (None if absent), never through a link, regular files only, bounded."""
    if not os.path.lexists(path):
        return None
    return read_small_file(path, max_bytes, path.name, follow_links=False)


def _mac_path(path: Path) -> Path:
    return path.with_name(path.name + MAC_SUFFIX)


def _macs(path: Path) -> list[str]:
    """The HMACs recorded beside `path` (the newest first), or none."""
    try:
        data = _read_no_link(_mac_path(path), MAX_MAC_BYTES) or b""
    except InputError:
        return []
    return data.decode("ascii", "replace").split()[:2]


def read_state_file(path: Path, max_bytes: int, purpose: str) -> StateFile:
    """A state file and whether mdist wrote it on this machine for `purpose` (see write_state_file)."""
    try:
        data = _read_no_link(path, max_bytes)
    except InputError as exc:
        return StateFile(problem=str(exc))
    if data is None:
        return StateFile()
    return StateFile(data, any(signed_by_us(data, mac, purpose) for mac in _macs(path)))


def write_state_file(path: Path, data: bytes, purpose: str) -> None:
    """Write `data` (atomically) with its HMAC beside it. The HMAC file is written first and keeps
    the previous HMAC too, so that a kill between the two writes leaves the data there trusted.
    Without a key (an unwritable home) the data is written unsigned: next time it is checked."""
    try:
        mac = sign_bytes(data, purpose)
    except (InputError, OSError):
        mac = None
    if mac is None:
        _mac_path(path).unlink(missing_ok=True)
    else:
        write_bytes_atomic(_mac_path(path), ("\n".join([mac, *_macs(path)[:1]]) + "\n").encode())
    write_bytes_atomic(path, data)


def resume_purpose(out: Path) -> str:
    """Resume data vouches for the data in one folder: a copy elsewhere (or a folder moved) is checked."""
    return f"libtorrent resume data for {os.path.realpath(out)}"


def resume_cap(params) -> int:
    """How much resume data is read (see MAX_RESUME_BYTES)."""
    if params.ti is None:
        return MAX_RESUME_BYTES
    return max(MAX_RESUME_BYTES, params.ti.total_size() // 256 + (1 << 20))


def read_release_torrent(state_dir: Path) -> StateFile:
    """OUT/.mdist/release.torrent as read_state_file reads it (a .torrent file's size bound)."""
    return read_state_file(state_dir / RELEASE_TORRENT, MAX_TORRENT_BYTES, RELEASE_PURPOSE)


def write_release_torrent(state_dir: Path, torrent: bytes) -> None:
    write_state_file(real_dir(state_dir) / RELEASE_TORRENT, torrent, RELEASE_PURPOSE)


class Patience:
    """When to give up on a swarm: `timeout` seconds without progress (any progress resets it), or,
    with a `grace`, that many seconds from the start without ever seeing a peer."""

    def __init__(self, timeout: float, grace: float | None = None) -> None:
        self.timeout, self.grace = timeout, grace
        self.started = self.last_progress = time.monotonic()
        self.last_done = -1
        self.seen_peer = False

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def check(self, done: int, peers: int, waiting_for: str) -> None:
        """Raise NoProgress when the swarm has had long enough."""
        now = time.monotonic()
        self.seen_peer = self.seen_peer or peers > 0
        if done != self.last_done:
            self.last_done, self.last_progress = done, now
        if self.grace is not None and not self.seen_peer and now - self.started > self.grace:
            raise NoProgress(f"no progress: no peer found in {self.grace:.0f}s ({waiting_for})")
        if now - self.last_progress > self.timeout:
            raise NoProgress(f"no progress for {self.timeout:.0f}s ({peers} {plural(peers, 'peer')} connected, "
                             f"{waiting_for})")


def plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def fetch_torrent(source: str, options: FetchOptions, reporter: Reporter | None = None,
                  on_complete: Callable[[Path, InfoHashes], tuple[str | None, int, list[str]]] | None = None,
                  ) -> FetchResult:
    """Fetch into options.out. `on_complete(out, hashes)` verifies content, returning
    (manifest name, files verified, files not checkable); it raises VerificationError on mismatch.

    Nothing is created in the output folder before the torrent's file list passed
    check_info_dict: a magnet's metadata is learnt in a private scratch folder first. Files
    already in the folder (a copy, an earlier download without resume data) are checked by
    libtorrent, and only missing or damaged pieces are downloaded.
    """
    reporter = reporter or SilentReporter()
    params, raw_info = load_source(source)
    for url in options.web_seeds:
        params.url_seeds = list(params.url_seeds) + [url]
    for url in options.trackers:
        params.trackers = list(params.trackers) + [url]
    requested = InfoHashes.of(params.info_hashes)
    session = make_session(parse_endpoint(options.listen) if options.listen else None, no_dht=options.no_dht,
                           lsd=options.lsd, fleet="host" if options.fleet else None)
    extra = magnet_peers(source) if source.startswith("magnet:") else []
    peers = [parse_endpoint(p) for p in [*options.peers, *extra]]
    patience = Patience(options.timeout, options.swarm_grace)
    try:
        out = _output_dir(options.out, params, raw_info)
        if out is None:  # a magnet without dn=: the torrent's own name, once known (and checked)
            params.ti = fetch_metadata(session, params, peers, patience, reporter)
            out = _named_after(params.ti)
        state_dir = out / STATE_DIR
        refuse_unreal_dir(state_dir)
        (state_dir / COMPLETE_FILE).unlink(missing_ok=True)
        fresh = params
        params = _maybe_resume(params, state_dir, requested, reporter)
        if params.ti is None:
            params.ti = fetch_metadata(session, params, peers, patience, reporter)
        _prepare(params, out)  # checks the info dict; only then is anything created in out
        write_release_torrent(state_dir, release_torrent_bytes(params))
        present = _bytes_present(out, params)
        if present and params is fresh:  # no resume data: libtorrent checks every piece that is there
            reporter.message(f"{out} already holds {present / 1e6:.1f} MB of this torrent's files: checking them; "
                             f"only missing or damaged pieces are downloaded")
        handle = session.add_torrent(params)
        engine = _Engine(session, handle, out, reporter, peers, patience)
        try:
            require_free_space(out, max(0, params.ti.total_size() - present), what="the download")
            return _download(engine, state_dir, options.seed or options.fleet, on_complete)
        finally:
            engine.save_resume(wait=True)
            session.remove_torrent(handle)
    finally:
        del session


def _download(engine: "_Engine", state_dir: Path, seed: bool,
              on_complete: Callable[[Path, InfoHashes], tuple[str | None, int, list[str]]] | None) -> FetchResult:
    """Run the swarm until every piece is checked and flushed, verify, then record completion."""
    handle, out = engine.handle, engine.out
    started = time.monotonic()
    engine.run_until_finished()
    engine.require_every_piece()
    hashes = InfoHashes.of(handle.info_hashes())
    manifest, verified, unchecked = (None, 0, [])
    if on_complete is not None:
        manifest, verified, unchecked = on_complete(out, hashes)
    result = FetchResult(
        out=str(out), name=engine.name, info_hash_v1=hashes.v1, info_hash_v2=hashes.v2,
        total_bytes=engine.progress.total, downloaded_bytes=handle.status().total_payload_download,
        hash_failures=engine.progress.hash_failures, seconds=round(time.monotonic() - started, 3),
        files=engine.file_paths(), manifest=manifest, verified_files=verified, not_checkable=unchecked,
    )
    write_bytes_atomic(state_dir / COMPLETE_FILE, json.dumps(result.to_json(), indent=2).encode())
    engine.save_resume(wait=True)
    engine.keep_release_torrent(state_dir)
    engine.show("complete")
    if seed:
        engine.reporter.message("complete and verified; seeding until Ctrl-C")
        engine.seed_forever()
    return result


def _prepare(params, out: Path) -> None:
    """Check the torrent's own info dict (also one from resume data), then aim it at `out`:
    multi-file torrents lose their root folder, since `out` is the release folder."""
    lib = lt()
    ti = params.ti
    check_info_dict(lib.bdecode(ti.info_section()))
    layout = ti.layout()
    renamed = folder_mapping(ti)
    params.renamed_files = renamed
    refuse_links_on_the_way(out, [renamed.get(i, layout.file_path(i)) for i in range(layout.num_files())])
    params.save_path = str(out)
    flags = lib.torrent_flags
    params.flags &= ~(flags.paused | flags.auto_managed | flags.upload_mode | flags.default_dont_download
                      | flags.seed_mode | flags.no_verify_files | flags.share_mode | flags.stop_when_ready)
    params.file_priorities, params.piece_priorities = [], []  # mdist wants every file: none left out


def _bytes_present(out: Path, params) -> int:
    """Bytes of the torrent's files already on disk in `out` (allocated, at most each file's size):
    libtorrent checks them and writes in place, so they need no new space and may need no download."""
    layout = params.ti.layout()
    present = 0
    for index in range(layout.num_files()):
        if layout.file_flags(index) & layout.flag_pad_file:
            continue
        try:
            info = os.lstat(out / params.renamed_files.get(index, layout.file_path(index)))
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            present += min(info.st_size, info.st_blocks * 512, layout.file_size(index))
    return present


def fetch_metadata(session, params, peers: list[Endpoint], patience: Patience, reporter: Reporter):
    """A magnet's torrent_info, learnt without creating anything where it will be saved, and checked.

    libtorrent sets up storage as soon as metadata arrives (empty files, symbolic links) and
    sanitises names on the way, so the unchecked torrent is added in a private scratch folder,
    with every file "don't download" and in upload mode; then removed before the real add.
    """
    lib = lt()
    scratch = tempfile.mkdtemp(prefix="mdist-metadata-")
    probe = lib.add_torrent_params()
    probe.info_hashes, probe.name, probe.save_path = params.info_hashes, params.name, scratch
    probe.trackers, probe.url_seeds, probe.peers = params.trackers, params.url_seeds, params.peers
    probe.flags = (params.flags | lib.torrent_flags.upload_mode | lib.torrent_flags.default_dont_download) & ~(
        lib.torrent_flags.paused | lib.torrent_flags.auto_managed)
    try:
        handle = session.add_torrent(probe)
        try:
            _wait_for_metadata(session, handle, peers, patience, reporter)
            ti = lib.torrent_info(handle.torrent_file())
        finally:
            _remove(session, handle)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    check_info_dict(lib.bdecode(ti.info_section()))
    patience.progressed()  # the file list is progress: the data gets a full timeout of its own
    return ti


def _wait_for_metadata(session, handle, peers: list[Endpoint], patience: Patience, reporter: Reporter) -> None:
    lib = lt()
    last_connect = time.monotonic()
    _connect(handle, peers)
    while True:
        for alert in session.pop_alerts():
            if isinstance(alert, lib.metadata_received_alert):
                return
            if isinstance(alert, lib.torrent_error_alert):
                raise InputError(f"download failed: {alert.message()}")
        status = handle.status()
        reporter.update(Progress(name=status.name, peers=status.num_peers, seeds=status.num_seeds))
        patience.check(0, status.num_peers, "still waiting for the torrent's file list")
        now = time.monotonic()
        if peers and now - last_connect > 5 and status.num_peers == 0:
            _connect(handle, peers)
            last_connect = now
        session.wait_for_alert(250)


def _connect(handle, peers: list[Endpoint]) -> None:
    for peer in peers:
        handle.connect_peer((peer.host, peer.port))


def _remove(session, handle, timeout: float = 10.0) -> None:
    """Remove a torrent and wait (bounded) until it is gone, so that it can be added again."""
    lib = lt()
    session.remove_torrent(handle)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(isinstance(a, lib.torrent_removed_alert) for a in session.pop_alerts()):
            return
        session.wait_for_alert(100)


def _output_dir(out: Path | None, params, raw_info: dict | None) -> Path | None:
    """--out, else a folder in the current one named by the magnet's dn= or the .torrent's name;
    None when only the torrent's metadata can name it."""
    if out is not None:
        return Path(out)
    name = params.name or (raw_info[b"name"].decode("utf-8", "replace") if raw_info else "")
    return _checked_folder(name) if name else None


def _named_after(torrent_info) -> Path:
    """The folder named after a (checked) torrent's own root name."""
    return _checked_folder(root_name(lt().bdecode(torrent_info.info_section())))


def _checked_folder(name: str) -> Path:
    try:
        check_path_set([check_component(name, "torrent name")], "torrent name")
    except UnsafePathError as exc:
        raise InputError(f"{exc}; it cannot be the download folder, use --out") from None
    return Path.cwd() / name


def same_torrent(requested: InfoHashes, saved: InfoHashes) -> bool:
    """Every info-hash known on both sides agrees, and there is at least one."""
    pairs = [(a, b) for a, b in ((requested.v1, saved.v1), (requested.v2, saved.v2)) if a and b]
    return bool(pairs) and all(a == b for a, b in pairs)


def _maybe_resume(params, state_dir: Path, requested: InfoHashes, reporter: Reporter):
    """Saved state of this very torrent (by info-hash) that mdist wrote here, or the fresh params.

    Resume data mdist did not write here (a copied or hostile folder: see the module's docstring)
    gives at most its file list, when its own info-hashes are the ones asked for; every piece
    it claims is left to libtorrent's check of the data on disk."""
    lib = lt()
    saved = read_state_file(state_dir / RESUME_FILE, resume_cap(params), resume_purpose(state_dir.parent))
    if saved.data is None:
        if saved.problem:
            reporter.message(f"ignoring the resume data ({saved.problem}): checking existing data")
        return params
    try:
        resumed = lib.read_resume_data(saved.data)
    except RuntimeError:
        reporter.message("ignoring unreadable resume data")
        return params
    if resumed.ti is None:
        reporter.message("resume data holds no file list; starting fresh")
        return params
    if not same_torrent(requested, InfoHashes.of(resumed.ti.info_hashes())):  # the file list's own hashes
        reporter.message("resume data is for another torrent; starting fresh")
        return params
    if not saved.trusted:
        reporter.message("resume data not written by mdist here: checking existing data")
        if params.ti is None:  # a magnet: the file list is the one asked for (checked like a peer's)
            params.ti = resumed.ti
        return params
    resumed.trackers = list(set(resumed.trackers) | set(params.trackers))
    resumed.url_seeds = list(set(resumed.url_seeds) | set(params.url_seeds))
    resumed.peers = list(params.peers)
    reporter.message("resuming from saved state")
    return resumed


class _Engine:
    """The alert loop of one download, added only after its file list was checked."""

    def __init__(self, session, handle, out: Path, reporter: Reporter, peers: list[Endpoint], patience: Patience):
        self.session, self.handle, self.out = session, handle, out
        self.reporter, self.peers, self.patience = reporter, peers, patience
        self.progress = Progress()
        self.name = handle.torrent_file().name()
        self.phase: str | None = None  # mdist's own state once libtorrent has every piece
        self.last_resume = 0.0
        self.resume_pending = False
        self.resume_params = None  # the latest saved state: info dict, trackers, v2 piece layers
        self.resume_purpose = resume_purpose(out)

    def file_paths(self) -> list[str]:
        ti = self.handle.torrent_file()
        layout, renamed = ti.layout(), folder_mapping(ti)
        return sorted(renamed.get(index, layout.file_path(index)) for index in range(layout.num_files())
                      if not layout.file_flags(index) & layout.flag_pad_file)

    # -- the loop -----------------------------------------------------------------------------
    def run_until_finished(self) -> None:
        lib = lt()
        _connect(self.handle, self.peers)
        last_connect = time.monotonic()
        flushing = False
        while True:
            for alert in self.session.pop_alerts():
                if isinstance(alert, lib.hash_failed_alert):
                    self.progress.hash_failures += 1
                    self.reporter.message(f"piece {alert.piece_index} failed its hash check; its sender is distrusted")
                elif isinstance(alert, lib.peer_ban_alert):
                    self.reporter.message(f"banned peer {alert.endpoint} for sending corrupt data")
                elif isinstance(alert, (lib.torrent_error_alert, lib.file_error_alert)):
                    raise InputError(f"download failed: {alert.message()}")
                elif isinstance(alert, (lib.save_resume_data_alert, lib.save_resume_data_failed_alert)):
                    self._saved(alert)
                elif isinstance(alert, lib.torrent_finished_alert) and not flushing:
                    flushing = True
                    self.handle.flush_cache()
                elif isinstance(alert, lib.cache_flushed_alert) and flushing:
                    self._remove_pad_files()
                    self.show("verifying")
                    return
            self._update()
            self.reporter.update(self.progress)
            self._check_patience()
            now = time.monotonic()
            if self.peers and now - last_connect > 5 and self.progress.peers == 0:
                _connect(self.handle, self.peers)
                last_connect = now
            if now - self.last_resume > SAVE_RESUME_EVERY:
                self.save_resume()
            self.session.wait_for_alert(250)

    def _check_patience(self) -> None:
        p = self.progress
        try:
            self.patience.check(p.done, p.peers, f"{p.done} of {p.total or '?'} bytes")
        except NoProgress as exc:
            if not p.hash_failures:
                raise
            raise VerificationError(f"{exc}; {p.hash_failures} pieces failed their hash check") from None

    def show(self, phase: str) -> None:
        """Say what mdist is doing now that libtorrent has every piece: verifying, complete, seeding."""
        self.phase = phase
        self._update()
        self.reporter.update(self.progress)

    def _update(self) -> None:
        status = self.handle.status()
        p = self.progress
        p.name = self.name or status.name
        p.state = state_label(str(status.state).rsplit(".", 1)[-1], self.phase)
        p.total = status.total_wanted
        p.done = status.total_wanted_done
        p.download_rate, p.upload_rate = status.download_payload_rate, status.upload_payload_rate
        p.peers, p.seeds = status.num_peers, status.num_seeds

    def _remove_pad_files(self) -> None:
        """Older libtorrents write pad files to .pad/SIZE; keep the folder if the release has real files
        there. Only such files are removed (no recursion into whatever else a folder holds there)."""
        pad_dir = self.out / ".pad"
        if any(path.startswith(".pad/") for path in self.file_paths()):
            return
        if not pad_dir.is_dir() or pad_dir.is_symlink():
            return
        with os.scandir(pad_dir) as entries:
            pads = [entry.path for entry in entries if entry.name.isascii() and entry.name.isdigit()
                    and entry.is_file(follow_symlinks=False)]
        for path in pads:
            os.unlink(path)
        try:
            pad_dir.rmdir()
        except OSError:  # something else is there: not ours to delete
            pass

    def _saved(self, alert) -> None:
        lib = lt()
        if isinstance(alert, lib.save_resume_data_alert):
            write_state_file(self.out / STATE_DIR / RESUME_FILE, lib.write_resume_data_buf(alert.params),
                             self.resume_purpose)
            self.resume_params = alert.params
        self.resume_pending = False

    def save_resume(self, wait: bool = False) -> None:
        lib = lt()
        if not self.handle.is_valid():
            return
        self.last_resume = time.monotonic()
        if not self.resume_pending:
            self.resume_pending = True
            self.handle.save_resume_data(lib.save_resume_flags_t.save_info_dict)
        if wait:
            deadline = time.monotonic() + 10
            while self.resume_pending and time.monotonic() < deadline:
                for alert in self.session.pop_alerts():
                    if isinstance(alert, (lib.save_resume_data_alert, lib.save_resume_data_failed_alert)):
                        self._saved(alert)
                self.session.wait_for_alert(100)

    def require_every_piece(self) -> None:
        """libtorrent says 'finished' once every piece it was asked for is there: mdist asks for all,
        and checks that every file is covered by pieces that passed their hash check."""
        ti = self.handle.torrent_file()
        layout = ti.layout()
        done = self.handle.file_progress(lt().file_progress_flags_t.piece_granularity)
        missing = [layout.file_path(i) for i in range(layout.num_files())
                   if not layout.file_flags(i) & layout.flag_pad_file and done[i] != layout.file_size(i)]
        if missing:
            raise VerificationError(f"libtorrent finished without every piece of {len(missing)} "
                                    f"{plural(len(missing), 'file')} ({missing[0]}...); not complete")

    def keep_release_torrent(self, state_dir: Path) -> None:
        """Rewrite the saved .torrent from the final state: the same info dict, now with the v2 piece
        layers libtorrent verified, so that a seeder (or any client) can use the file alone."""
        saved = self.resume_params
        if saved is None or saved.ti is None:
            return
        if InfoHashes.of(saved.ti.info_hashes()) != InfoHashes.of(self.handle.info_hashes()):
            return
        write_release_torrent(state_dir, release_torrent_bytes(saved))

    def seed_forever(self) -> None:
        self.phase = "seeding"
        while True:
            self.session.pop_alerts()
            self._update()
            self.reporter.update(self.progress)
            self.session.wait_for_alert(1000)
