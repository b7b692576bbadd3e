"""After the first download: re-sharing joins the published swarm (same info-hashes), never the
files mdist derived later; a copied release learns its torrent from peers without downloading.
Real seeders and clients on 127.0.0.1, discovery off, every wait bounded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import libtorrent as lt
import pytest

from conftest import FIXTURE, run_mdist
from mdist.sources.torrent_fetch import write_release_torrent
from mdist.sources.torrent_meta import create_torrent
from swarm import (aria2, copy_release, http_tracker, info_hashes, machine_key, mdist_seeder, peer_of,  # noqa: F401
                   start_seeder, stop, strip_peers)

RELEASE_FILES = ["consolidated.00.pth", "params.json", "tokenizer.model"]
MANIFEST = json.loads((Path(__file__).resolve().parents[1] / "checksums" / "tiny-mistral.json").read_text())
PUBLISHED = (MANIFEST["sources"]["btih"], MANIFEST["sources"]["btmh"])
DERIVED = "consolidated.safetensors"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The release as published: a folder named tiny-mistral, so its hybrid torrent is the manifest's."""
    return copy_release(FIXTURE, tmp_path / "seed" / "tiny-mistral")


def fetch(source: str, out: Path, *args: str) -> dict:
    result = run_mdist("fetch", source, "--out", str(out), "--no-dht", "--json", "--timeout", "30", *args,
                       timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_once(folder: Path) -> None:
    """`mdist run` converts the .pth once, into the folder: a derived consolidated.safetensors."""
    ran = run_mdist("run", str(folder), "--prompt", "ROMEO:", "--max-tokens", "2")
    assert ran.returncode == 0, ran.stderr
    assert (folder / DERIVED).is_file()


def shared_files(torrent: bytes) -> list[str]:
    layout = lt.torrent_info(torrent).layout()
    return sorted(layout.file_path(i).partition("/")[2] for i in range(layout.num_files())
                  if not layout.file_flags(i) & layout.flag_pad_file)


def test_a_fetched_folder_is_reshared_with_the_original_torrent(release: Path, tmp_path: Path) -> None:
    """fetch by magnet -> run (derives a file) -> seed: the same v1 and v2 info-hashes, and a third
    client gets exactly the release's files from this seeder alone."""
    fetched = tmp_path / "fetched"  # not the torrent's name: a new torrent of it would differ
    with mdist_seeder(release) as original:
        assert info_hashes(original) == PUBLISHED
        fetch(original, fetched)
    saved = (fetched / ".mdist" / "release.torrent").read_bytes()
    assert shared_files(saved) == RELEASE_FILES
    assert b"piece layers" in lt.bdecode(saved)  # a complete .torrent, usable by any v2 client
    run_once(fetched)
    proc, again = start_seeder(fetched, "--torrent-out", str(tmp_path / "again.torrent"))
    try:
        assert info_hashes(again) == PUBLISHED
        third = fetch(strip_peers(again), tmp_path / "third", "--peer", peer_of(again))
    finally:
        stop(proc)
    assert "the torrent it was fetched with" in proc.stderr.read()
    assert sorted(third["files"]) == RELEASE_FILES and third["manifest"] == "tiny-mistral"
    assert sorted(p.name for p in (tmp_path / "third").iterdir() if p.name != ".mdist") == RELEASE_FILES
    assert shared_files((tmp_path / "again.torrent").read_bytes()) == RELEASE_FILES


def test_aria2_fetches_a_reshared_folder_by_magnet(release: Path, tmp_path: Path) -> None:
    """A real Debian client joins the re-shared swarm through the tracker the original magnet named
    (kept in .mdist/release.torrent) and gets the release's files, not the derived one. v1: aria2
    does not speak v2 or hybrid torrents."""
    fetched = tmp_path / "fetched"
    with http_tracker() as announce:
        with mdist_seeder(release, "--torrent-version", "v1", "--tracker", announce) as original:
            fetch(original, fetched)
        run_once(fetched)
        with mdist_seeder(fetched) as again:
            assert info_hashes(again) == info_hashes(original)
            assert "tr=" in again  # the tracker came back from the saved torrent
            got = subprocess.run(aria2("--seed-time=0", "--bt-stop-timeout=60", "-d", str(tmp_path / "aria"),
                                       strip_peers(again)), capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    folder = tmp_path / "aria" / "tiny-mistral"
    assert sorted(p.name for p in folder.iterdir()) == RELEASE_FILES
    for name in RELEASE_FILES:
        assert (folder / name).read_bytes() == (FIXTURE / name).read_bytes()


def test_new_torrent_leaves_derived_files_and_state_out(release: Path, tmp_path: Path) -> None:
    fetched = tmp_path / "fetched"
    with mdist_seeder(release) as original:
        fetch(original, fetched)
    run_once(fetched)
    torrent = tmp_path / "new.torrent"
    with mdist_seeder(fetched, "--new-torrent", "--torrent-out", str(torrent)) as fresh:
        assert info_hashes(fresh) != PUBLISHED  # named after the folder: a new swarm, as asked
    assert shared_files(torrent.read_bytes()) == RELEASE_FILES


@pytest.mark.parametrize("args, cause", [
    (("--new-torrent", "--fetch-metadata"), "exclude each other"),
    (("--torrent-version", "v1"), "--torrent-version applies to a new torrent only"),
])
def test_seed_options_that_contradict_the_saved_torrent(tmp_path: Path, args: tuple[str, ...], cause: str) -> None:
    folder = copy_release(FIXTURE, tmp_path / "fetched")
    write_release_torrent(folder / ".mdist", _torrent_of_the_fixture())  # as fetch keeps it
    result = run_mdist("seed", str(folder), "--no-dht", "--listen", "127.0.0.1:0", *args, timeout=60)
    assert result.returncode == 2 and cause in result.stderr, result.stderr


def _torrent_of_the_fixture() -> bytes:
    return create_torrent(FIXTURE)


def test_a_hostile_saved_torrent_is_checked_again(tmp_path: Path) -> None:
    """Even a .mdist/release.torrent that mdist signed (an older mdist's) is input: check_info_dict first."""
    folder = copy_release(FIXTURE, tmp_path / "copied")
    info = {b"name": b"x", b"piece length": 16384, b"pieces": b"\0" * 20,
            b"files": [{b"length": 1, b"path": [b"..", b"escape"]}]}
    write_release_torrent(folder / ".mdist", lt.bencode({b"info": info}))
    result = run_mdist("seed", str(folder), "--no-dht", "--listen", "127.0.0.1:0", timeout=60)
    assert result.returncode == 1 and "refused" in result.stderr, result.stderr


@pytest.mark.parametrize("case", ["not signed", "a link to a signed one"])
def test_a_saved_torrent_mdist_did_not_write_here_is_ignored(release: Path, tmp_path: Path, case: str) -> None:
    """A fetched folder that went through someone else's hands: its release.torrent lists the derived
    consolidated.safetensors too. Seed says so and serves a new torrent of the release's files alone,
    as for a folder with no saved torrent; a link is not followed, even to a torrent mdist wrote."""
    fetched = tmp_path / "fetched"
    with mdist_seeder(release) as original:
        fetch(original, fetched)
    run_once(fetched)
    forged = create_torrent(fetched)  # every file, the derived one included
    assert DERIVED in shared_files(forged)
    saved = fetched / ".mdist" / "release.torrent"
    saved.unlink()
    (fetched / ".mdist" / "release.torrent.mac").unlink()
    if case == "not signed":
        saved.write_bytes(forged)
    else:
        write_release_torrent(tmp_path / "elsewhere" / ".mdist", forged)
        saved.symlink_to(tmp_path / "elsewhere" / ".mdist" / "release.torrent")
        (fetched / ".mdist" / "release.torrent.mac").symlink_to(tmp_path / "elsewhere" / ".mdist" /
                                                                "release.torrent.mac")
    served = tmp_path / "served.torrent"
    proc, magnet = start_seeder(fetched, "--torrent-out", str(served))
    stop(proc)
    said = proc.stderr.read()
    assert "ignoring .mdist/release.torrent" in said and "the torrent it was fetched with" not in said, said
    assert ("a symbolic link" if case != "not signed" else "not written by mdist on this machine") in said
    assert shared_files(served.read_bytes()) == RELEASE_FILES
    assert info_hashes(magnet) != info_hashes(lt.make_magnet_uri(lt.torrent_info(forged)))


@pytest.mark.parametrize("args, cause", [
    (("--listen", "nonsense"), "expected HOST:PORT, got 'nonsense'"),
    (("--listen", "127.0.0.1:99999"), "expected HOST:PORT"),
    (("--peer", "nowhere", "--fetch-metadata"), "expected HOST:PORT, got 'nowhere'"),
    (("--new-torrent", "--fetch-metadata"), "exclude each other"),
    (("--torrent-version", "v1", "--fetch-metadata"), "--torrent-version applies to a new torrent only"),
])
def test_bad_options_are_said_before_the_folder_is_checked(tmp_path: Path, args: tuple[str, ...],
                                                           cause: str) -> None:
    """Checking a 7B folder takes minutes: a wrong option is a usage error (exit 2) before that. This
    folder would fail the check (no known release), so only an early check names the option."""
    folder = _unknown_model(tmp_path)
    result = run_mdist("seed", str(folder), "--no-dht", *args, timeout=60)
    assert result.returncode == 2 and cause in result.stderr, result.stderr
    assert "refusing to seed" not in result.stderr


# -- 2. a release copied from a disk: no torrent, learnt from peers ----------------------------------
def test_a_copied_release_says_what_it_lacks(tmp_path: Path) -> None:
    copied = copy_release(FIXTURE, tmp_path / "disk" / "from-a-disk")
    proc, magnet = start_seeder(copied)
    stop(proc)
    said = proc.stderr.read()
    assert info_hashes(magnet) != PUBLISHED
    assert "info dict" in said and "--fetch-metadata" in said and PUBLISHED[0] in said
    assert "not the published swarm of tiny-mistral" in said


def test_fetch_metadata_rejoins_the_published_swarm(release: Path, tmp_path: Path) -> None:
    copied = copy_release(FIXTURE, tmp_path / "disk" / "from-a-disk")
    with mdist_seeder(release) as original:
        proc, magnet = start_seeder(copied, "--fetch-metadata", "--peer", peer_of(original), "--timeout", "30")
    try:  # the original seeder is gone: the copy alone serves the release
        assert info_hashes(magnet) == PUBLISHED
        third = fetch(strip_peers(magnet), tmp_path / "third", "--peer", peer_of(magnet))
    finally:
        stop(proc)
    assert "the published swarm of tiny-mistral" in proc.stderr.read()
    assert third["manifest"] == "tiny-mistral" and sorted(third["files"]) == RELEASE_FILES
    saved = (copied / ".mdist" / "release.torrent").read_bytes()  # kept once the data passed the check
    assert shared_files(saved) == RELEASE_FILES and b"piece layers" in lt.bdecode(saved)
    with mdist_seeder(copied) as later:  # next time no peer is needed
        assert info_hashes(later) == PUBLISHED


def test_fetch_metadata_never_downloads_the_files(release: Path, tmp_path: Path) -> None:
    """A damaged copy (seeded with --force) is checked against the learnt torrent and refused; the
    honest peer that gave the metadata, found again through the tracker, is not asked for the damaged
    piece."""
    copied = copy_release(FIXTURE, tmp_path / "disk" / "from-a-disk")
    data = bytearray((copied / "consolidated.00.pth").read_bytes())
    data[300_000] ^= 0xFF
    (copied / "consolidated.00.pth").write_bytes(bytes(data))
    with http_tracker() as announce, mdist_seeder(release, "--tracker", announce):  # found by both sessions
        result = run_mdist("seed", str(copied), "--no-dht", "--listen", "127.0.0.1:0", "--force", "--fetch-metadata",
                           "--tracker", announce, "--timeout", "30", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "does not hold the complete torrent data" in result.stderr
    assert (copied / "consolidated.00.pth").read_bytes() == bytes(data)  # not repaired from the peer
    assert not (copied / ".mdist" / "release.torrent").exists()


def _unknown_model(tmp_path: Path) -> Path:
    """A model folder no manifest knows: verify refuses it (exit 1) unless --force."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "consolidated.00.pth").write_bytes(b"not a known release\n")
    return folder


def test_fetch_metadata_needs_a_known_release(tmp_path: Path) -> None:
    folder = _unknown_model(tmp_path)
    result = run_mdist("seed", str(folder), "--no-dht", "--force", "--fetch-metadata", timeout=60)
    assert result.returncode == 2 and "needs a known release" in result.stderr, result.stderr


def test_fetch_metadata_uses_and_keeps_the_releases_trackers(release: Path, tmp_path: Path) -> None:
    """No --peer: the release's own magnet (its manifest's trackers) finds the swarm, and the seeder
    goes on announcing there."""
    copied = copy_release(FIXTURE, tmp_path / "disk" / "from-a-disk")
    with http_tracker() as announce:
        manifest = {**MANIFEST, "name": "tiny-mistral-tracked",
                    "sources": {**MANIFEST["sources"], "trackers": [announce]}}
        path = tmp_path / "tiny-mistral-tracked.json"
        path.write_text(json.dumps(manifest))
        with mdist_seeder(release, "--tracker", announce):
            with mdist_seeder(copied, "--manifest", str(path), "--fetch-metadata", "--timeout", "30") as magnet:
                assert info_hashes(magnet) == PUBLISHED
                assert "tr=" in magnet
    saved = lt.bdecode((copied / ".mdist" / "release.torrent").read_bytes())
    assert saved[b"announce"] == announce.encode()


def test_fleet_magnet_names_the_machine_or_says_what_to_add() -> None:
    """An origin on every interface has no address in its magnet: the hosts' magnet gets this
    machine's addresses, or the user is told to add --listen; an explicit address is kept alone."""
    import socket

    from mdist.seeding import SeedOptions, hosts_magnet

    magnet, notes, asked = "magnet:?xt=urn:btih:" + "ab" * 20, [], []

    def found(families):
        asked.append(families)
        return ["192.0.2.7", "2001:db8::7"] if socket.AF_INET6 in families else ["192.0.2.7"]

    got = hosts_magnet(magnet, 6881, SeedOptions(fleet=True), notes.append, found)
    assert got == magnet + "&x.pe=192.0.2.7:6881&x.pe=[2001:db8::7]:6881"
    assert notes == ["the hosts' magnet names this machine's addresses 192.0.2.7:6881, [2001:db8::7]:6881 (x.pe; "
                     "each host uses one it reaches; --listen IP:PORT names only that one)"]
    assert hosts_magnet(magnet, 6881, SeedOptions(fleet=True, listen="0.0.0.0:6881"), notes.append, found) \
        == magnet + "&x.pe=192.0.2.7:6881" and asked[-1] == (socket.AF_INET,)
    asked.clear()
    assert hosts_magnet(magnet, 6881, SeedOptions(fleet=True, listen="10.0.0.1:6881"), notes.append, found) == magnet
    assert hosts_magnet(magnet, 6881, SeedOptions(), notes.append, found) == magnet and not asked  # not a fleet
    notes.clear()
    assert hosts_magnet(magnet, 6881, SeedOptions(fleet=True), notes.append, lambda families: []) == magnet
    assert len(notes) == 1 and "no address other than loopback" in notes[0] and "add --listen IP:PORT" in notes[0]


def test_reachable_addresses_are_never_loopback_or_link_local() -> None:
    import ipaddress

    from mdist.sources.interfaces import reachable_addresses

    for text in reachable_addresses():
        address = ipaddress.ip_address(text)
        assert not (address.is_loopback or address.is_link_local or address.is_unspecified), text
