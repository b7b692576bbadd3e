"""A libtorrent session configured for mdist: quiet alerts, optional discovery, loopback-friendly."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from mdist import __version__
from mdist.errors import InputError

warnings.filterwarnings("ignore", category=DeprecationWarning, module="mdist.sources")


def lt():
    """Import libtorrent lazily (it is slow to load and not needed for most commands)."""
    import libtorrent

    return libtorrent


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """HOST:PORT or [IPv6]:PORT."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"expected HOST:PORT, got {text!r}")
    return Endpoint(host, int(port))


# Fleet mode (`--fleet`, docs/fleet.md): one origin feeds many cooperating hosts. Every value here
# was measured with bench/bench_fleet.py in network namespaces; docs/fleet.md has the numbers.
FLEET_COMMON = {
    # hosts of one fleet trust each other: no tit-for-tat, every interested peer is unchoked
    "unchoke_slots_limit": -1,
    "connections_limit": 500,
}
FLEET_ROLES = {
    "origin": {**FLEET_COMMON},
    "host": {**FLEET_COMMON},
}
FLEET_TORRENT_FLAGS = {"origin": {"super_seeding": True}, "host": {}}
TUNING_ENV = "MDIST_FLEET_TUNING"  # JSON: libtorrent settings (and "super_seeding") over the above, for benchmarks


def fleet_tuning(role: str) -> tuple[dict, dict]:
    """(session settings, torrent flags) of a fleet role, with MDIST_FLEET_TUNING applied on top."""
    import json
    import os

    settings, flags = dict(FLEET_ROLES[role]), dict(FLEET_TORRENT_FLAGS[role])
    text = os.environ.get(TUNING_ENV, "").strip()
    if text:
        try:
            extra = json.loads(text)
        except ValueError:
            raise InputError(f"{TUNING_ENV} is not a JSON object") from None
        if not isinstance(extra, dict):
            raise InputError(f"{TUNING_ENV} is not a JSON object")
        for key, value in extra.items():
            (flags if key in ("super_seeding",) else settings)[key] = value
    return settings, flags


def make_session(listen: Endpoint | None = None, *, no_dht: bool = False, lsd: bool | None = None,
                 fleet: str | None = None):
    """A session listening on `listen` (default: all interfaces, any port).

    Local service discovery follows DHT unless `lsd` says otherwise; a fleet role ("origin" or
    "host") turns it on by default, since hosts on one segment must find each other without a
    tracker."""
    lib = lt()
    category = lib.alert_category
    if listen is None:  # every interface, one port (see free_port)
        port = free_port()
        interfaces = f"0.0.0.0:{port},[::]:{port}"
    else:
        interfaces = str(listen if listen.port else Endpoint(listen.host, free_port(listen.host)))
    if lsd is None:
        lsd = bool(fleet) or not no_dht
    settings = {
        "listen_interfaces": interfaces,
        "enable_dht": not no_dht,
        "enable_lsd": lsd,
        "enable_upnp": not no_dht,
        "enable_natpmp": not no_dht,
        "alert_mask": category.error | category.status | category.storage | category.tracker | category.peer,
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "user_agent": f"mdist/{__version__}",
        "peer_fingerprint": "-MD0100-",
        # uTP yields to other traffic by design; over loopback and fast links TCP is several times faster
        "enable_outgoing_utp": False,
    }
    if fleet == "origin":  # FleetWatch counts the blocks sent: when has every piece left the origin?
        settings["alert_mask"] |= category.upload
        settings["alert_queue_size"] = 1 << 17
    if fleet:
        settings.update(fleet_tuning(fleet)[0])
    try:
        session = lib.session(settings)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"libtorrent refused a setting ({exc}); check {TUNING_ENV}") from None
    return session


def free_port(host: str = "0.0.0.0") -> int:
    """A port free for TCP and UDP on `host` (and, for the wildcard, on IPv6's too).

    Asked for port 0, libtorrent 2.1 opens one socket per interface, each on its own random port,
    but tells peers a single one of them (the extension handshake's "p", local service discovery):
    peers that learnt this host by peer exchange or LSD then connected to a closed port (measured in
    network namespaces: hosts of a fleet never reached each other without a tracker). One port for
    every interface keeps what it announces true."""
    import socket

    wildcard = host in ("0.0.0.0", "::", "")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        tries = [(family, socket.SOCK_DGRAM, host)]
        if wildcard and socket.has_ipv6:
            tries += [(socket.AF_INET6, kind, "::") for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)]
        if all(_bindable(*t, port) for t in tries):
            return port
    raise InputError("no free port for libtorrent to listen on")


def _bindable(family: int, kind: int, host: str, port: int) -> bool:
    import errno
    import socket

    try:
        with socket.socket(family, kind) as probe:
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind((host, port))
        return True
    except OSError as exc:  # in use; or no IPv6 on this machine, which libtorrent skips as well
        return family == socket.AF_INET6 and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def actual_listen_port(session, timeout: float = 10.0) -> int:
    """Wait for the listen socket and return its port (useful when asked for port 0)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = session.listen_port()
        if port:
            return port
        time.sleep(0.05)
    raise InputError("libtorrent could not open a listen socket")
