"""mdist convert vs `cp` on a Mistral-7B-shaped .pth written by torch.save; peak RSS of the converter.

Targets: peak RSS <= 300 MB whatever the checkpoint size; throughput reported as a ratio to cp.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_7b import tensor_shapes  # noqa: E402
from common import MISTRAL_7B, print_result  # noqa: E402


def write_pth(directory: Path, config: dict) -> int:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    state = {name: torch.zeros(shape, dtype=torch.bfloat16) for name, shape in tensor_shapes(config).items()}
    torch.save(state, directory / "consolidated.00.pth")
    (directory / "params.json").write_text(json.dumps(config))
    return (directory / "consolidated.00.pth").stat().st_size


def timed_child(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process, measured by GNU time (ru_maxrss of a forked
    child would count the parent's pages until exec)."""
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        return seconds, int(report.read().split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=MISTRAL_7B["n_layers"], help="fewer layers = smaller file")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_only:
        write_pth(args.write_only, dict(MISTRAL_7B, n_layers=args.layers))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mdist-convert-"))
    try:
        src = work / "src"
        if not (src / "consolidated.00.pth").exists():  # in a child, so this process stays small
            subprocess.run([sys.executable, __file__, "--write-only", str(src), "--layers", str(args.layers)],
                           check=True)
        size = (src / "consolidated.00.pth").stat().st_size
        subprocess.run(["cat", str(src / "consolidated.00.pth")], stdout=subprocess.DEVNULL, check=True)  # warm
        cp_s, _ = timed_child(["cp", str(src / "consolidated.00.pth"), str(work / "copy.pth")])
        started = time.perf_counter()
        subprocess.run(["sync"], check=True)
        cp_sync_s = cp_s + time.perf_counter() - started
        (work / "copy.pth").unlink()
        subprocess.run(["sync"], check=True)
        convert_s, peak = timed_child([sys.executable, "-m", "mdist", "convert", str(src), "--out", str(work / "out"),
                                       "--force"])
        print_result("convert", {
            "checkpoint_GB": round(size / 1e9, 2), "cp_s": round(cp_s, 2), "convert_s": round(convert_s, 2),
            "convert_GB_s": round(size / convert_s / 1e9, 2), "ratio_vs_cp": round(cp_s / convert_s, 3),
            "cp_then_sync_s": round(cp_sync_s, 2), "ratio_vs_cp_then_sync": round(cp_sync_s / convert_s, 3),
            "note": "convert fsyncs its output (cp does not); its time includes Python start-up",
            "peak_rss_MB": round(peak, 0),
        })
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
