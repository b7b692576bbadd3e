"""mdist fetch vs aria2c downloading the same ~500 MB torrent from the same mdist seeder on loopback.

Both get a v1 torrent (aria2 leeches v1 only) and find the seeder through a local tracker.
Prints both times and the ratio aria2c_s / mdist_s (target >= 1.0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import print_result  # noqa: E402
from swarm import http_tracker, mdist_seeder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdist-fetch-"))
    try:
        release = work / "seed" / "bench-release"
        release.mkdir(parents=True)
        for index in range(4):
            with open(release / f"part{index}.bin", "wb") as handle:
                for _ in range(args.size_mb // 4 // 16):
                    handle.write(os.urandom(16 << 20))
        torrent = work / "bench.torrent"
        with http_tracker() as announce, mdist_seeder(release, "--torrent-version", "v1", "--tracker", announce,
                                                      "--torrent-out", str(torrent), "--force", timeout=300):
            results = {"mdist": [], "aria2c": []}
            for round_ in range(2):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "mdist", "fetch", str(torrent), "--out",
                                str(work / f"mdist{round_}"), "--no-dht", "--timeout", "120"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results["mdist"].append(time.perf_counter() - started)
                started = time.perf_counter()
                subprocess.run(["aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                                "--enable-peer-exchange=false", "--seed-time=0", "--summary-interval=0",
                                "--console-log-level=error", "--file-allocation=none", "-d",
                                str(work / f"aria{round_}"), str(torrent)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results["aria2c"].append(time.perf_counter() - started)
                shutil.rmtree(work / f"mdist{round_}")
                shutil.rmtree(work / f"aria{round_}")
        ours, theirs = min(results["mdist"]), min(results["aria2c"])
        print_result("fetch", {
            "size_MB": args.size_mb, "mdist_s": round(ours, 2), "aria2c_s": round(theirs, 2),
            "mdist_MB_s": round(args.size_mb / ours, 1), "aria2c_MB_s": round(args.size_mb / theirs, 1),
            "ratio_vs_aria2c": round(theirs / ours, 3),
            "note": "times include process start-up, metadata and (for mdist) sha256 verification",
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
