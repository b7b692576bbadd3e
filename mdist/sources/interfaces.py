"""This machine's own addresses, for the magnet a fleet's origin prints: an origin listening on every
interface has no single address to name, and a host given none cannot reach it without a tracker.

Read with the C library's getifaddrs (the standard library lists interface names, not addresses).
Only addresses another machine could use are kept: interfaces that are up, no loopback, no
link-local (an IPv6 fe80:: address needs the host's own interface name, which the origin cannot know).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import socket
import sys

IFF_UP, IFF_LOOPBACK = 0x1, 0x8


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [("ifa_next", ctypes.POINTER(_IfAddrs)), ("ifa_name", ctypes.c_char_p),
                     ("ifa_flags", ctypes.c_uint), ("ifa_addr", ctypes.c_void_p), ("ifa_netmask", ctypes.c_void_p),
                     ("ifa_ifu", ctypes.c_void_p), ("ifa_data", ctypes.c_void_p)]
_LAYOUT = {socket.AF_INET: (4, 4), socket.AF_INET6: (8, 16)}  # offset and size of the address in its sockaddr


def _family(sockaddr: int) -> int:
    head = ctypes.string_at(sockaddr, 2)
    return head[1] if sys.platform == "darwin" else int.from_bytes(head, sys.byteorder)  # BSD: sa_len first


def _listed() -> list[tuple[int, int, bytes]]:
    """(flags, family, packed address) of every interface address getifaddrs gives; [] when it fails."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return []
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return []
    found = []
    try:
        entry = head
        while entry:
            item = entry.contents
            if item.ifa_addr:
                family = _family(item.ifa_addr)
                if family in _LAYOUT:
                    offset, size = _LAYOUT[family]
                    found.append((item.ifa_flags, family, ctypes.string_at(item.ifa_addr + offset, size)))
            entry = item.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found


def reachable_addresses(families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> list[str]:
    """This machine's addresses that another host may reach, IPv4 first, each once."""
    result: list[str] = []
    for flags, family, packed in sorted(_listed(), key=lambda f: f[1] != socket.AF_INET):
        if family not in families or not flags & IFF_UP or flags & IFF_LOOPBACK:
            continue
        address = ipaddress.ip_address(packed)
        if address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast:
            continue
        if str(address) not in result:
            result.append(str(address))
    return result
