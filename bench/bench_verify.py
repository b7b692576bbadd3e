"""Verify throughput vs sha256sum over the same files: one large file, and a multi-file release.

Targets: >= 0.95x sha256sum for one large file; >= 1.5x for several files on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, print_result  # noqa: E402


def make_files(directory: Path, sizes: list[int]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, size in enumerate(sizes):
        path = directory / f"file{index}.bin"
        with open(path, "wb") as handle:
            block = os.urandom(16 << 20)
            written = 0
            while written < size:
                handle.write(block[: size - written])
                written += min(len(block), size - written)
        paths.append(path)
    return paths


def compare(paths: list[Path]) -> tuple[float, float]:
    from mdist.verify.hashing import hash_files

    for path in paths:  # warm the page cache for both
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    theirs = best_of(lambda: subprocess.run(["sha256sum", *map(str, paths)], stdout=subprocess.DEVNULL, check=True))
    ours = best_of(lambda: hash_files({p: ("sha256",) for p in paths}))
    return theirs, ours


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdist-verify-"))
    try:
        size = args.size_mb << 20
        one = make_files(work / "one", [size])
        many = make_files(work / "many", [size // 4] * 4)
        t1, o1 = compare(one)
        t2, o2 = compare(many)
        print_result("verify", {
            "one_file_MB": args.size_mb, "sha256sum_s": round(t1, 3), "mdist_s": round(o1, 3),
            "one_file_ratio": round(t1 / o1, 3),
            "multi_file_MB": args.size_mb, "multi_sha256sum_s": round(t2, 3), "multi_mdist_s": round(o2, 3),
            "multi_file_ratio": round(t2 / o2, 3),
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
