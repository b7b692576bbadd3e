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


def make_session(listen: Endpoint | None = None, *, no_dht: bool = False):
    """A session listening on `listen` (default: all interfaces, any port)."""
    lib = lt()
    category = lib.alert_category
    interfaces = str(listen) if listen else "0.0.0.0:0,[::]:0"
    settings = {
        "listen_interfaces": interfaces,
        "enable_dht": not no_dht,
        "enable_lsd": not no_dht,
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
    session = lib.session(settings)
    return session


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
