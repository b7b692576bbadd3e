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
from mdist.sources.bt_session import Endpoint, actual_listen_port, lt, make_session
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
                 torrent: bytes | None = None, upload_limit: int = 0, leave_out: Collection[str] = ()) -> None:
        self.directory = Path(directory).resolve()
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
        return params

    def start(self, check_timeout: float = 600.0) -> SeedInfo:
        lib = lt()
        params = self._params()
        torrent = release_torrent_bytes(params)  # the same info dict, with these trackers and web seeds
        self.session = make_session(self.listen, no_dht=self.no_dht)
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
