"""Seed a folder: a given torrent (the one it was fetched with) or a new one; check the data,
print the magnet link, serve until stopped. A seeder never downloads: pieces that fail the
check make it stop with an error instead of being fetched again."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from mdist.atomic import write_bytes_atomic
from mdist.errors import InputError, VerificationError
from mdist.sources.bt_session import Endpoint, actual_listen_port, fleet_tuning, lt, make_session
from mdist.atomic import refuse_links_on_the_way
from mdist.sources.torrent_meta import InfoHashes, create_torrent, folder_mapping, magnet_link, release_torrent_bytes


@dataclass
class SeedInfo:
    magnet: str
    hashes: InfoHashes
    port: int
    torrent: bytes


class Seeder:
    """A running seeder (context manager). `start()` returns once libtorrent checked the data.

    With `torrent` (bencoded, its info dict already checked), that torrent is served with the
    folder as its root, mapped as fetch maps it; else a new torrent of the folder is made, leaving
    out `leave_out` (files mdist derived here). Extra trackers and web seeds live outside the
    info dict, so they never change the info-hash.
    """

    def __init__(self, directory: Path, *, listen: Endpoint | None = None, trackers: list[str] = (),
                 web_seeds: list[str] = (), no_dht: bool = False, version: str = "hybrid",
                 torrent: bytes | None = None, upload_limit: int = 0, leave_out: Collection[str] = (),
                 fleet: bool = False, lsd: bool | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.fleet, self.lsd = fleet, lsd
        self.listen, self.trackers, self.web_seeds = listen, list(trackers), list(web_seeds)
        self.no_dht, self.version, self.torrent = no_dht, version, torrent
        self.upload_limit, self.leave_out = upload_limit, leave_out
        self.session = None
        self.handle = None

    def _params(self):
        """add_torrent_params of the torrent to serve, aimed at the folder as fetch aims it."""
        lib = lt()
        data = self.torrent or create_torrent(self.directory, version=self.version, leave_out=self.leave_out)
        params = lib.load_torrent_buffer(data)
        params.trackers = list(dict.fromkeys([*params.trackers, *self.trackers]))
        params.url_seeds = list(dict.fromkeys([*params.url_seeds, *self.web_seeds]))
        params.save_path = str(self.directory)
        params.renamed_files = folder_mapping(params.ti)
        layout = params.ti.layout()
        refuse_links_on_the_way(self.directory, [params.renamed_files.get(i, layout.file_path(i))
                                                 for i in range(layout.num_files())])
        flags = lib.torrent_flags
        params.flags = (params.flags | flags.upload_mode) & ~(flags.paused | flags.auto_managed)
        if self.fleet and fleet_tuning("origin")[1].get("super_seeding"):
            params.flags |= flags.super_seeding  # BEP 16: each piece to one host, until another has it
        return params

    def start(self, check_timeout: float = 600.0) -> SeedInfo:
        lib = lt()
        params = self._params()
        torrent = release_torrent_bytes(params)  # the same info dict, with these trackers and web seeds
        self.session = make_session(self.listen, no_dht=self.no_dht, lsd=self.lsd,
                                    fleet="origin" if self.fleet else None)
        port = actual_listen_port(self.session)
        self.handle = self.session.add_torrent(params)
        if self.upload_limit:
            self.handle.set_upload_limit(self.upload_limit)  # a torrent's own limit binds local peers too
        states = lib.torrent_status.states
        checking = (states.checking_files, states.checking_resume_data)
        started = time.monotonic()
        while not self._checked(started, check_timeout, checking):
            time.sleep(0.05)
        peer = Endpoint(self.listen.host, port) if self.listen and self.listen.host not in ("0.0.0.0", "::") else None
        return SeedInfo(magnet_link(self.handle, peer=peer), InfoHashes.of(params.ti.info_hashes()), port, torrent)

    def _checked(self, started: float, timeout: float, checking: tuple) -> bool:
        """True once seeding; raises if the check ends incomplete or takes longer than timeout."""
        status = self.handle.status()
        if status.errc.value():
            raise InputError(f"seeding failed: {status.errc.message()}")
        if status.is_seeding:
            return True
        elapsed = time.monotonic() - started
        if elapsed > timeout or (status.state not in checking and elapsed > 2.0):
            raise VerificationError(f"{self.directory} does not hold the complete torrent data "
                             f"({status.progress * 100:.1f}% present); a seeder never downloads what is missing")
        return False

    def release_torrent(self, timeout: float = 10.0) -> bytes:
        """The served torrent as a .torrent file, with the v2 piece layers libtorrent computed while
        checking the data (a magnet's metadata has none): the info dict is unchanged."""
        lib = lt()
        self.handle.save_resume_data(lib.save_resume_flags_t.save_info_dict)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.session.pop_alerts():
                if isinstance(alert, lib.save_resume_data_alert):
                    return release_torrent_bytes(alert.params)
                if isinstance(alert, lib.save_resume_data_failed_alert):
                    raise InputError(f"cannot save the torrent: {alert.message()}")
            self.session.wait_for_alert(100)
        raise InputError("libtorrent did not save the torrent in time")

    def serve_forever(self, on_status: Callable[[object, list], None] | None = None) -> None:
        """Serve until interrupted; `on_status(status, alerts)` sees each round's alerts."""
        while True:
            alerts = self.session.pop_alerts()
            if on_status:
                on_status(self.handle.status(), alerts)
            self.session.wait_for_alert(1000)

    def stop(self) -> None:
        if self.session is not None and self.handle is not None:
            self.session.remove_torrent(self.handle)
        self.session = self.handle = None

    def __enter__(self) -> "Seeder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FleetWatch:
    """What the origin of a fleet tells its user (an `on_status` of serve_forever): when every piece
    has left the origin in full at least once (so it may stop: the hosts finish from each other) and,
    every `every` seconds while anything changes, how many hosts are connected and complete and how
    much the origin sent. A piece has left once some host announced it, or all its blocks went to
    one host (block_uploaded alerts; hosts share only whole, verified pieces) DELIVERY seconds ago:
    "uploaded" means handed to the socket, and a kill right then loses what is still in buffers
    (measured: a host stuck at 99.2% without that wait)."""

    def __init__(self, seeder: Seeder, note: Callable[[str], None], every: float = 5.0) -> None:
        self.seeder, self.note, self.every = seeder, note, every
        ti = seeder.handle.torrent_file()
        self.pieces, self.size = ti.num_pieces(), ti.total_size()
        self.blocks = [(ti.piece_size(i) + BLOCK - 1) // BLOCK for i in range(self.pieces)]
        self.partial: dict[tuple[str, int], set[int]] = {}  # (host, piece) -> blocks sent to it
        self.left = [False] * self.pieces
        self.last_left = 0.0  # when the latest piece's last block was handed to the socket
        self.copied = False
        self.last_note = time.monotonic()
        self.last_line = ""

    def __call__(self, status, alerts: list = ()) -> None:
        lib = lt()
        for alert in alerts:
            if isinstance(alert, lib.block_uploaded_alert) and not self.left[alert.piece_index]:
                key = (str(alert.endpoint), alert.piece_index)
                sent = self.partial.setdefault(key, set())
                sent.add(alert.block_index)
                if len(sent) == self.blocks[alert.piece_index]:
                    self.left[alert.piece_index] = True
                    self.last_left = time.monotonic()
                    self.partial = {k: v for k, v in self.partial.items() if k[1] != alert.piece_index}
        peers = [p for p in self.seeder.handle.get_peer_info() if len(p.pieces) == self.pieces]
        for peer in peers:
            self.left = [a or b for a, b in zip(self.left, peer.pieces)]
        count, sent = sum(self.left), status.total_payload_upload / max(1, self.size)
        if not self.copied and count == self.pieces and time.monotonic() - self.last_left >= DELIVERY:
            self.copied = True
            self.note(f"fleet: every piece has left the origin (it sent {sent:.2f}x the model); the hosts "
                      f"can finish from each other if the origin stops now")
        line = (f"fleet: {len(peers)} hosts connected, {sum(1 for p in peers if all(p.pieces))} complete; "
                f"{count} of {self.pieces} pieces have left the origin, which sent {sent:.2f}x the model")
        now = time.monotonic()
        if line != self.last_line and now - self.last_note >= self.every:
            self.note(line)
            self.last_note, self.last_line = now, line


BLOCK = 16 << 10  # BitTorrent's request size
DELIVERY = 2.0  # seconds for a block handed to the socket to reach its host (queues, buffers)


def write_torrent(path: Path, torrent: bytes) -> None:
    write_bytes_atomic(Path(path), torrent)
