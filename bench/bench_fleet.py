"""Fleet distribution: one origin (`mdist seed` + Debian's opentracker) feeds N hosts, each in its own
network namespace on one bridge, every uplink shaped with `tc tbf` (tests/fleetnet.py).

For each N: bytes the origin's uplink sent (on the wire, over the model's size), the time until the
last host has a complete, verified copy (from the moment the hosts are started, start-up included),
against one host alone at that rate (measured) and the origin serving everyone (N x the model over
the uplink, computed). Needs root, iproute2 and opentracker.

    .venv/bin/python bench/bench_fleet.py --hosts 2 4 8 12 16 24 --mode both --plot docs/fleet.png
    .venv/bin/python bench/bench_fleet.py --hosts 12 --mode today          # `--seed` hosts, no --fleet
    .venv/bin/python bench/bench_fleet.py --hosts 12 --tune-origin '{"super_seeding": false}'

--tune-origin / --tune-host pass libtorrent settings (and "super_seeding") through MDIST_FLEET_TUNING,
to measure one lever at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import machine  # noqa: E402
from fleetnet import (Fleet, kill_group, make_model, start_host, start_opentracker, start_origin,  # noqa: E402
                      torrent_hashes, unavailable, wait_complete)


def run_once(model: Path, work: Path, hosts: int, rate: float, mode: str, discovery: str,
             tune_origin: dict, tune_host: dict, timeout: float, trace: bool = False) -> dict:
    """One origin, one tracker (unless discovery is 'pex' or 'lsd'), `hosts` hosts; the measured numbers."""
    size = sum(p.stat().st_size for p in model.iterdir() if p.is_file())
    _, hashes = torrent_hashes(model)
    fleet = Fleet(hosts, rate)
    try:
        flag = ["--fleet"] if mode == "fleet" else []
        seed_args = [*flag]
        if discovery == "tracker":
            seed_args += ["--tracker", start_opentracker(fleet, fleet.origin, work, hashes)]
        env_origin = dict(os.environ, MDIST_FLEET_TUNING=json.dumps(tune_origin))
        origin, magnet, notes = start_origin(fleet, model, *seed_args, env=env_origin)
        command = ["mdist", "fetch", magnet, "--no-dht", "--timeout", "60", *(flag or ["--seed"])]
        if discovery == "lsd":  # the hosts get the magnet without the origin's address
            command[2] = "&".join(p for p in magnet.split("&") if not p.startswith("x.pe="))
        env_host = dict(os.environ, MDIST_FLEET_TUNING=json.dumps(tune_host))
        before = fleet.tx_bytes(fleet.origin)
        started = time.time()
        outs = [work / f"host{i}" for i in range(hosts)]
        procs = [start_host(fleet, node, command, out, work / f"host{i}.log", env=env_host)
                 for i, (node, out) in enumerate(zip(fleet.hosts, outs))]
        timeline: list[tuple[float, float]] = []  # (seconds, origin sent x model), for --timeline
        done = wait_complete(outs, started, timeout, procs,
                             tick=lambda: timeline.append((round(time.time() - started, 1), round(
                                 (fleet.tx_bytes(fleet.origin) - before) / size, 3))) if trace else None)
        sent = fleet.tx_bytes(fleet.origin) - before
        kill_group(origin)
        same = all(_same_files(model, out) for out in outs)
        times = sorted(done.values())
        return {"hosts": hosts, "rate_mbit": rate, "size_MB": round(size / 2**20), "mode": mode,
                "discovery": discovery, "origin_sent_x": round(sent / size, 3), "last_s": round(times[-1], 1),
                "median_s": round(times[len(times) // 2], 1), "first_s": round(times[0], 1), "identical": same,
                "tune_origin": tune_origin, "tune_host": tune_host, **({"timeline": timeline} if trace else {})}
    finally:
        fleet.close()


def _same_files(model: Path, out: Path) -> bool:
    return all((out / p.name).read_bytes() == p.read_bytes() for p in model.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8, 12, 16, 24])
    parser.add_argument("--rate", type=float, default=100.0, help="every uplink, Mbit/s")
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--mode", choices=["fleet", "today", "both"], default="fleet",
                        help="both: for each N, --fleet and today's mdist (`--seed` hosts) in the same run")
    parser.add_argument("--discovery", choices=["tracker", "pex", "lsd"], default="tracker",
                        help="tracker: opentracker; pex: only the magnet with the origin's address; "
                             "lsd: the magnet without any address")
    parser.add_argument("--tune-origin", type=json.loads, default={})
    parser.add_argument("--tune-host", type=json.loads, default={})
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-lone", action="store_true", help="skip measuring one host alone")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--timeline", action="store_true", help="record the origin's bytes sent every 0.5 s")
    parser.add_argument("--json-out", type=Path, help="append each row as a JSON line")
    parser.add_argument("--plot", type=Path, help="PNG of the results (needs matplotlib: pip install '.[bench]')")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        sys.exit(f"bench_fleet: {reason}")
    work = Path(tempfile.mkdtemp(prefix="mdist-fleet-"))
    rows = []
    try:
        model = make_model(work / "model" / "fleet-model", args.size_mb)
        lone = None
        if not args.no_lone:
            lone = run_once(model, _fresh(work / "lone"), 1, args.rate, "today", "tracker", {}, {}, args.timeout)
            print(json.dumps({"lone": lone}), flush=True)
        modes = ["fleet", "today"] if args.mode == "both" else [args.mode]
        for hosts in args.hosts:
            for repeat, mode in ((r, m) for r in range(args.repeat) for m in modes):
                row = run_once(model, _fresh(work / f"n{hosts}-{mode}-{repeat}"), hosts, args.rate, mode,
                               args.discovery, args.tune_origin, args.tune_host, args.timeout, args.timeline)
                model_s = args.size_mb * 2**20 * 8 / (args.rate * 1e6)
                row["origin_serves_all_s"] = round(hosts * model_s, 1)
                if lone:
                    row["lone_s"] = lone["last_s"]
                    row["last_over_lone"] = round(row["last_s"] / lone["last_s"], 2)
                row["machine"], row["date"] = machine(), time.strftime("%Y-%m-%d")
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json_out:
                    with open(args.json_out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
        if args.plot:
            plot(rows, lone, args.plot)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def plot(rows: list[dict], lone: dict | None, path: Path) -> None:
    """Two panels: origin bytes sent (x model) and last-host time, against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    top_sent = top_last = 0.0
    serves_all: dict[int, float] = {}
    for mode, label, style in (("fleet", "--fleet", "o-"), ("today", "today (--seed, no --fleet)", "^--")):
        by_n: dict[int, list[dict]] = {}
        for row in rows:
            if row["mode"] == mode:
                by_n.setdefault(row["hosts"], []).append(row)
                serves_all[row["hosts"]] = row["origin_serves_all_s"]
        if not by_n:
            continue
        ns = sorted(by_n)
        sent = [max(r["origin_sent_x"] for r in by_n[n]) for n in ns]
        last = [max(r["last_s"] for r in by_n[n]) for n in ns]
        top_sent, top_last = max(top_sent, *sent), max(top_last, *last)
        left.plot(ns, sent, style, label=f"origin sent, {label}")
        right.plot(ns, last, style, label=f"last host done, {label}")
    ns = sorted(serves_all)
    left.axhline(1.2, color="tab:red", ls="--", label="goal 1.2x")
    left.axhline(1.0, color="grey", ls=":")
    left.set(xlabel="hosts", ylabel="origin uplink bytes / model size", ylim=(0, max(2.0, top_sent * 1.1)))
    left.legend()
    right.plot(ns, [serves_all[n] for n in ns], "s:", label="origin serves all")
    if lone:
        right.plot(ns, [2 * lone["last_s"] + 5] * len(ns), "--", color="tab:red", label="goal 2x lone + 5 s")
        right.axhline(lone["last_s"], color="grey", ls=":", label="one host alone")
    right.set(xlabel="hosts", ylabel="seconds", ylim=(0, top_last * 1.6))
    right.legend(fontsize="small")
    rate = rows[0]["rate_mbit"]
    fig.suptitle(f"mdist fleet distribution, {rows[0]['size_MB']} MB model, every uplink {rate:g} Mbit/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
