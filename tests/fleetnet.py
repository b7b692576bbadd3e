"""Network namespaces for fleet tests and the fleet benchmark: one bridge, an origin, N hosts.

Every node is its own network namespace with one veth (`eth0`, an address from the benchmarking
range 198.18.0.0/15) on a bridge that lives in a namespace of its own, so nothing is added to the
machine's own network. Each uplink is shaped with `tc tbf`. Processes run in their own process
groups; `Fleet.close()` (also on failure, and at exit) kills them and deletes every namespace,
which removes the veths and the bridge with them. Needs root, `ip` and `tc`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "mdf"  # every namespace this module creates: mdf<pid>-<node>
SUBNET = "198.18.0.0/15"
PORT = 6881
TRACKER_PORT = 6969


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian package iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*cmd: str, timeout: float = 20.0) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Node:
    ns: str
    ip: str
    procs: list[subprocess.Popen] = field(default_factory=list)


class Fleet:
    """Node 0 is the origin, nodes 1..hosts the hosts; uplinks shaped to `rate_mbit`."""

    def __init__(self, hosts: int, rate_mbit: float, *, latency_ms: float = 0.0) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.nodes: list[Node] = []
        self.closed = False
        atexit.register(self.close)
        try:
            sh("ip", "netns", "add", self.switch)
            # a plain bridge (multicast snooping on, no querier) and no routes besides the subnet's:
            # local service discovery's multicast needs nothing more on one segment (measured)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            for index in range(hosts + 1):
                self._add_node(index, rate_mbit, latency_ms)
        except BaseException:
            self.close()
            raise

    def _add_node(self, index: int, rate_mbit: float, latency_ms: float) -> None:
        ns = f"{self.tag}-{index}"
        sh("ip", "netns", "add", ns)
        node = Node(ns, f"198.18.{(index + 1) // 256}.{(index + 1) % 256}")
        self.nodes.append(node)
        sh("ip", "-n", self.switch, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", f"v{index}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{node.ip}/15", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if latency_ms:  # one-way delay on the switch side, then the shaped uplink on the host side
            sh("tc", "-n", self.switch, "qdisc", "add", "dev", f"v{index}", "root", "netem", "delay",
               f"{latency_ms}ms")
        sh("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", f"{rate_mbit}mbit",
           "burst", "64kb", "latency", "50ms")

    def shape_downlink(self, node: Node, rate_mbit: float | None) -> None:
        """Limit what `node` receives (the switch side of its link), or lift the limit (None): a test
        that must catch a host mid-transfer makes the transfer slow instead of racing it."""
        index = self.nodes.index(node)
        if rate_mbit is None:
            sh("tc", "-n", self.switch, "qdisc", "del", "dev", f"v{index}", "root")
        else:
            sh("tc", "-n", self.switch, "qdisc", "add", "dev", f"v{index}", "root", "tbf", "rate",
               f"{rate_mbit}mbit", "burst", "64kb", "latency", "50ms")

    @property
    def origin(self) -> Node:
        return self.nodes[0]

    @property
    def hosts(self) -> list[Node]:
        return self.nodes[1:]

    def spawn(self, node: Node, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Run `cmd` in `node`'s namespace, in a process group of its own."""
        proc = subprocess.Popen(["ip", "netns", "exec", node.ns, *cmd], start_new_session=True, **kwargs)
        node.procs.append(proc)
        return proc

    def tx_bytes(self, node: Node) -> int:
        """Bytes the node's uplink sent (on the wire: payload, TCP/IP headers, tracker and LSD)."""
        return int(sh("ip", "netns", "exec", node.ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for node in self.nodes:
            for proc in node.procs:
                kill_group(proc)
        for ns in [node.ns for node in self.nodes] + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGINT the process group (mdist saves its state), then SIGKILL what is left; bounded."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def start_opentracker(fleet: Fleet, node: Node, work: Path, hashes: list[str]) -> str:
    """Debian's opentracker beside the origin, the way a user runs it: it drops root (`-u nobody`),
    chroots into `-d DIR` and serves only the whitelisted info-hashes (40 hex each; a hybrid
    torrent's v2 hash truncated to 40). Returns the announce URL."""
    if shutil.which("opentracker") is None:
        raise RuntimeError("needs `opentracker` (Debian package opentracker)")
    root = work / "ot"
    root.mkdir(parents=True)
    (root / "wl").write_text("".join(h[:40] + "\n" for h in hashes))
    root.chmod(0o755)
    (root / "wl").chmod(0o644)
    proc = fleet.spawn(node, ["opentracker", "-i", node.ip, "-p", str(TRACKER_PORT), "-P", str(TRACKER_PORT),
                              "-d", str(root), "-w", "/wl", "-u", "nobody"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{node.ip}:{TRACKER_PORT}/announce"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-c",
                                f"import socket; socket.create_connection(('{node.ip}', {TRACKER_PORT}), 1)"],
                               capture_output=True)
        if probe.returncode == 0:
            return url
        if proc.poll() is not None:
            raise RuntimeError(f"opentracker exited with {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError("opentracker did not listen within 10 s")


def make_model(folder: Path, megabytes: int, files: int = 2) -> Path:
    """A model-sized folder of random bytes (incompressible, like weights)."""
    folder.mkdir(parents=True)
    size = (megabytes << 20) // files
    for index in range(files):
        with open(folder / f"weights-{index:02d}.bin", "wb") as handle:
            remaining = size
            while remaining:
                chunk = min(remaining, 4 << 20)
                handle.write(os.urandom(chunk))
                remaining -= chunk
    return folder


def torrent_hashes(folder: Path) -> tuple[bytes, list[str]]:
    """The torrent `mdist seed --new-torrent` makes of a folder and its info-hashes (v1, v2)."""
    import libtorrent as lt

    from mdist.sources.torrent_meta import create_torrent

    data = create_torrent(folder)
    hashes = lt.torrent_info(data).info_hashes()
    found = [str(hashes.v1)] if hashes.has_v1() else []
    return data, found + ([str(hashes.v2)] if hashes.has_v2() else [])


def start_origin(fleet: Fleet, folder: Path, *args: str, env: dict | None = None,
                 timeout: float = 60.0, listen: bool = True) -> tuple[subprocess.Popen, str, list[str]]:
    """`mdist seed FOLDER --listen ORIGIN:6881 --no-dht ARGS` in the origin's namespace (without
    --listen when not `listen`): the process, its magnet (first stdout line) and its stderr lines
    (a list a thread keeps appending to)."""
    import select
    import threading

    node = fleet.origin
    where = ["--listen", f"{node.ip}:{PORT}"] if listen else []
    proc = fleet.spawn(node, [sys.executable, "-m", "mdist", "seed", str(folder), *where,
                              "--no-dht", "--force", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    notes: list[str] = []
    threading.Thread(target=lambda: notes.extend(line.rstrip("\n") for line in proc.stderr), daemon=True).start()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("magnet:"):
        kill_group(proc)
        raise RuntimeError(f"origin did not start: {line!r} {notes[-5:]}")
    return proc, line, notes


def wait_for_note(notes: list[str], pattern: str, timeout: float) -> str:
    """The first of `notes` (growing) matching `pattern`, within `timeout` seconds."""
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(notes):
            if re.search(pattern, line):
                return line
        time.sleep(0.1)
    raise TimeoutError(f"no line matching {pattern!r} within {timeout}s: {notes[-3:]}")


def start_host(fleet: Fleet, node: Node, command: list[str], out: Path, log: Path,
               env: dict | None = None) -> subprocess.Popen:
    """A host runs `command` (an `mdist fetch ...` argv without the interpreter) with --out OUT;
    with --debug, so that a defect leaves its traceback in the host's log."""
    assert command[0] == "mdist", command
    with open(log, "ab") as handle:
        return fleet.spawn(node, [sys.executable, "-m", "mdist", "--debug", *command[1:], "--out", str(out)],
                           stdout=handle, stderr=handle, env=env)


def wait_complete(outs: list[Path], started: float, timeout: float,
                  procs: list[subprocess.Popen] | None = None, tick=None) -> dict[Path, float]:
    """Seconds from `started` (time.time()) until each OUT/.mdist/complete.json appeared; bounded.
    Raises if the time is up first or a host process exits before completing."""
    done: dict[Path, float] = {}
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic()
    while len(done) < len(outs):
        for out in outs:
            marker = out / ".mdist" / "complete.json"
            if out not in done and marker.exists():
                done[out] = marker.stat().st_mtime - started
        if procs:
            for proc, out in zip(procs, outs):
                if out not in done and proc.poll() is not None and not (out / ".mdist" / "complete.json").exists():
                    raise RuntimeError(f"host for {out} exited with {proc.returncode} before completing")
        if time.monotonic() > deadline:
            missing = [str(o) for o in outs if o not in done]
            raise TimeoutError(f"{len(missing)} hosts not complete after {timeout:.0f}s: {missing[:3]}")
        if tick is not None and time.monotonic() >= next_tick:
            tick()
            next_tick += 0.5
        time.sleep(0.1)
    return done
