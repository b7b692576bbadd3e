"""Seed a folder: create a torrent, check the data, print the magnet link, serve until stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mdist.atomic import write_bytes_atomic
from mdist.errors import InputError
from mdist.sources.bt_session import Endpoint, actual_listen_port, lt, make_session
from mdist.sources.torrent_meta import InfoHashes, create_torrent, magnet_link


@dataclass
class SeedInfo:
    magnet: str
    hashes: InfoHashes
    port: int
    torrent: bytes


class Seeder:
    """A running seeder (context manager). `start()` returns once libtorrent checked the data."""

    def __init__(self, directory: Path, *, listen: Endpoint | None = None, trackers: list[str] = (),
                 web_seeds: list[str] = (), no_dht: bool = False, version: str = "hybrid",
                 torrent: bytes | None = None, upload_limit: int = 0) -> None:
        self.directory = Path(directory).resolve()
        self.listen, self.trackers, self.web_seeds = listen, list(trackers), list(web_seeds)
        self.no_dht, self.version, self.torrent = no_dht, version, torrent
        self.upload_limit = upload_limit
        self.session = None
        self.handle = None

    def start(self, check_timeout: float = 600.0) -> SeedInfo:
        lib = lt()
        torrent = self.torrent or create_torrent(self.directory, trackers=self.trackers, web_seeds=self.web_seeds,
                                                 version=self.version)
        self.session = make_session(self.listen, no_dht=self.no_dht)
        port = actual_listen_port(self.session)
        params = lib.add_torrent_params()
        params.ti = lib.torrent_info(torrent)
        params.save_path = str(self.directory.parent)
        self.handle = self.session.add_torrent(params)
        if self.upload_limit:
            self.handle.set_upload_limit(self.upload_limit)  # a torrent's own limit binds local peers too
        states = lib.torrent_status.states
        checking = (states.checking_files, states.checking_resume_data)
        started = time.monotonic()
        while not self._checked(started, check_timeout, checking):
            time.sleep(0.05)
        peer = Endpoint(self.listen.host, port) if self.listen and self.listen.host not in ("0.0.0.0", "::") else None
        return SeedInfo(magnet_link(params.ti, peer=peer), InfoHashes.of(params.ti.info_hashes()), port, torrent)

    def _checked(self, started: float, timeout: float, checking: tuple) -> bool:
        """True once seeding; raises if the check ends incomplete or takes longer than timeout."""
        status = self.handle.status()
        if status.errc.value():
            raise InputError(f"seeding failed: {status.errc.message()}")
        if status.is_seeding:
            return True
        elapsed = time.monotonic() - started
        if elapsed > timeout or (status.state not in checking and elapsed > 2.0):
            raise InputError(f"{self.directory} does not hold the complete torrent data "
                             f"({status.progress * 100:.1f}% present)")
        return False

    def serve_forever(self, on_status: Callable[[object], None] | None = None) -> None:
        while True:
            self.session.pop_alerts()
            if on_status:
                on_status(self.handle.status())
            self.session.wait_for_alert(1000)

    def stop(self) -> None:
        if self.session is not None and self.handle is not None:
            self.session.remove_torrent(self.handle)
        self.session = self.handle = None

    def __enter__(self) -> "Seeder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_torrent(path: Path, torrent: bytes) -> None:
    write_bytes_atomic(Path(path), torrent)
