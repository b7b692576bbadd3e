"""`mdist seed`: verify a folder, then share it as a torrent until stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mdist.errors import VerificationError
from mdist.sources.bt_session import parse_endpoint
from mdist.sources.torrent_seed import Seeder, write_torrent
from mdist.verify.folder import verify_folder
from mdist.verify.manifest import find_manifest


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


def run_seed(directory: Path, *, listen: str | None, trackers: list[str], web_seeds: list[str],
             torrent_out: Path | None, version: str, no_dht: bool, manifest_name: str | None, force: bool,
             echo: Callable[[str], None], note: Callable[[str], None], upload_limit: int = 0) -> None:
    check_before_seeding(directory, manifest_name, force, note)
    endpoint = parse_endpoint(listen) if listen else None
    with Seeder(directory, listen=endpoint, trackers=trackers, web_seeds=web_seeds, no_dht=no_dht,
                version=version, upload_limit=upload_limit) as seeder:
        info = seeder.start()
        if torrent_out:
            write_torrent(torrent_out, info.torrent)
        echo(info.magnet)
        note(f"seeding {directory} on port {info.port} (btih {info.hashes.v1 or '-'}, "
             f"btmh {('1220' + info.hashes.v2) if info.hashes.v2 else '-'}); Ctrl-C to stop")
        seeder.serve_forever()
