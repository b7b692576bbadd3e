"""Run every benchmark, print a table of ratios against the peers measured in the same run, and
record the results in docs/benchmarks.md (machine, date, commit).

    python bench/run_all.py            # everything (writes ~45 GB of temporary files, ~10 min)
    python bench/run_all.py --quick    # smaller inputs, for a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, commit, machine  # noqa: E402

TARGETS = [
    # (bench, key, what, target)
    ("runner-175M", "decode_ratio_vs_transformers", "run: decode tok/s vs transformers (175M, fp32)", ">= 1.5"),
    ("runner-175M", "fraction_of_bandwidth_bound", "run: decode vs memory-bandwidth bound (175M)", ">= 0.85"),
    ("runner-175M", "prefill_fraction_of_gemm", "run: prefill GFLOP/s vs numpy GEMM", ">= 0.60"),
    ("runner-7b-bf16", "decode_tok_s", "run: Mistral-7B-shaped bf16 decode tok/s", ">= 1.0"),
    ("runner-7b-bf16", "rss_anon_MB", "run: 7B private RSS beyond the mapped file (MB)", "<= 3000"),
    ("convert", "ratio_vs_cp", "convert: throughput vs cp (7B-shaped .pth)", "reported"),
    ("convert", "peak_rss_MB", "convert: peak RSS (MB)", "<= 300"),
    ("verify", "one_file_ratio", "verify: one large file vs sha256sum", ">= 0.95"),
    ("verify", "multi_file_ratio", "verify: multi-file release vs sha256sum", ">= 1.5"),
    ("fetch", "ratio_vs_aria2c", "fetch: loopback download vs aria2c", ">= 1.0"),
]


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{script} printed no result:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    results = {}
    plan = [("bench_runner.py", []), ("bench_verify.py", ["--size-mb", "256" if args.quick else "2048"]),
            ("bench_fetch.py", ["--size-mb", "128" if args.quick else "512"]),
            ("bench_convert.py", ["--layers", "2" if args.quick else "32"]),
            ("bench_7b.py", ["--tokens", "3" if args.quick else "5"])]
    for script, extra in plan:
        print(f"running {script} {' '.join(extra)}", file=sys.stderr)
        result = run(script, *extra)
        results[result["bench"]] = result
    rows = []
    for bench, key, what, target in TARGETS:
        value = results.get(bench, {}).get(key)
        rows.append(f"| {what} | {value} | {target} |")
    table = "| measure | result | target |\n| --- | --- | --- |\n" + "\n".join(rows)
    print(table)
    if not args.no_write:
        stamp = datetime.date.today().isoformat()
        raw = "\n".join(json.dumps(r) for r in results.values())
        text = (f"# Benchmarks\n\nMeasured by `python bench/run_all.py{' --quick' if args.quick else ''}` on "
                f"{stamp}, commit {commit()}, on {machine()}. Ratios compare against a peer measured in the same "
                f"run; absolute numbers on these shared machines are noisy.\n\n{table}\n\n"
                f"## Raw results\n\n```\n{raw}\n```\n")
        target = REPO / "docs" / "benchmarks.md"
        marker = "## How to read these numbers"
        previous = target.read_text() if target.exists() else ""
        if marker in previous:  # the hand-written notes survive a new measurement
            text += "\n" + previous[previous.index(marker):]
        target.write_text(text)


if __name__ == "__main__":
    main()
