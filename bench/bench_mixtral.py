"""Mixtral-shaped decode and convert: the runner against the bandwidth bound, the converter against `cp`.

A synthetic bf16 checkpoint with Mixtral 8x7B's dimensions (8 experts of 4096 x 14336, 32 heads,
8 kv heads, 32000 vocabulary) and as many layers as `--layers` (3 layers = 8.9 GB). The .pth is
written by torch.save from a sparse, memory-mapped file of zeros, so writing it needs no RAM.

- convert: `mdist convert` of the .pth, time against `cp` of the same file measured in the same
  run, and the converter's peak RSS (target <= 300 MB, >= 0.8x cp).
- decode: `mdist`'s runner on the converted consolidated.safetensors, file in the page cache,
  tokens/s against the bound = (bytes read per token: attention, router, the 2 active experts per
  layer, output head) / (read bandwidth of the same mapped file measured in the same run);
  private memory (RssAnon) after load and decode (target <= 3 GB). Weights of zeros route every
  token to the same two experts: the bytes read per token are the same as for real weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_7b import tensor_shapes as dense_shapes  # noqa: E402
from bench_convert import timed_child  # noqa: E402
from common import REPO, machine, print_result, rss_anon_mb  # noqa: E402

MIXTRAL_8X7B = dict(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
                    norm_eps=1e-5, vocab_size=32000, moe={"num_experts_per_tok": 2, "num_experts": 8})


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Mistral 7B's tensors (bench_7b) with each dense feed-forward replaced by a router and experts."""
    shapes = {name: shape for name, shape in dense_shapes(c).items() if ".feed_forward." not in name}
    for i in range(c["n_layers"]):
        p = f"layers.{i}.feed_forward."
        shapes[p + "gate.weight"] = (c["moe"]["num_experts"], c["dim"])
        for e in range(c["moe"]["num_experts"]):
            shapes.update({f"{p}experts.{e}.w1.weight": (c["hidden_dim"], c["dim"]),
                           f"{p}experts.{e}.w2.weight": (c["dim"], c["hidden_dim"]),
                           f"{p}experts.{e}.w3.weight": (c["hidden_dim"], c["dim"])})
    return shapes


def bytes_per_token(c: dict) -> int:
    """bf16 bytes the runner reads for one decoded token."""
    shapes = tensor_shapes(c)
    read = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        if name == "tok_embeddings.weight":
            size = c["dim"] * 2  # one row
        elif ".experts." in name:
            size = size * c["moe"]["num_experts_per_tok"] // c["moe"]["num_experts"]  # counted once per expert
        read += size
    return read


def write_pth(directory: Path, config: dict) -> None:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(config)
    total = sum(int(np.prod(s)) for s in shapes.values())
    backing = directory / "zeros.bin"
    with open(backing, "wb") as handle:
        handle.truncate(total * 2)  # sparse: reading it costs no disk and no RAM
    zeros = np.memmap(backing, dtype=np.int16, mode="c", shape=(total,))
    state, offset = {}, 0
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        state[name] = torch.from_numpy(zeros[offset : offset + count]).view(torch.bfloat16).view(shape)
        offset += count
    torch.save(state, directory / "consolidated.00.pth")
    backing.unlink()
    (directory / "params.json").write_text(json.dumps(config))


def read_bandwidth(path: Path, seconds: float = 3.0) -> float:
    """Bytes/s reading the page-cached file through a memory map, with one thread per core."""
    data = np.memmap(path, dtype=np.uint64, mode="r")
    workers = os.cpu_count() or 1
    chunk = (256 << 20) // 8
    done = [0] * workers

    def reader(index: int, stop: float) -> None:
        position = index * chunk
        while time.perf_counter() < stop:
            if position + chunk > len(data):
                position = index * chunk % max(1, len(data) - chunk)
            np.bitwise_or.reduce(data[position : position + chunk])  # the fastest full read numpy has
            done[index] += chunk * 8
            position += workers * chunk

    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    threads = [threading.Thread(target=reader, args=(i, stop)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def decode(folder: Path, tokens: int) -> dict:
    """In a child process of its own: load, prefill 4 tokens, decode; RssAnon along the way."""
    from mdist.runner.model import Model

    model = Model.load(folder)
    after_load = rss_anon_mb()
    cache = model.new_cache(4 + tokens)
    model.forward(np.array([1, 2, 3, 4]), cache, last_only=True)
    started = time.perf_counter()
    for step in range(tokens):
        model.forward(np.array([5 + step]), cache)
    seconds = time.perf_counter() - started
    return {"tok_s": tokens / seconds, "rss_anon_after_load_MB": after_load, "rss_anon_after_decode_MB": rss_anon_mb(),
            "weights_cached_f32": model.weights.cached}


def convert_bench(pth: Path, src: Path, out: Path, work: Path, layers: int) -> None:
    size = pth.stat().st_size
    subprocess.run(["cat", str(pth)], stdout=subprocess.DEVNULL, check=True)  # in the page cache for both
    cp_s, _ = timed_child(["cp", str(pth), str(work / "copy.pth")])
    (work / "copy.pth").unlink()
    convert_s, peak = timed_child([sys.executable, "-m", "mdist", "convert", str(src), "--out", str(out), "--force"])
    print_result("mixtral-convert", {
        "machine": machine(), "layers": layers, "checkpoint_GB": round(size / 1e9, 2),
        "cp_s": round(cp_s, 2), "convert_s": round(convert_s, 2), "ratio_vs_cp": round(cp_s / convert_s, 3),
        "peak_rss_MB": round(peak), "targets": "ratio >= 0.8, peak RSS <= 300 MB",
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=3, help="3 layers = 8.9 GB (8x7B has 32)")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="bandwidth and decode alternated; the median is reported")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--skip-convert", action="store_true", help="decode only, from WORKDIR/out of an earlier run")
    parser.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--decode-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = dict(MIXTRAL_8X7B, n_layers=args.layers)
    if args.write_only:
        write_pth(args.write_only, config)
        return
    if args.decode_only:
        print(json.dumps(decode(args.decode_only, args.tokens)))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mdist-mixtral-"))
    try:
        src, out = work / "src", work / "out"
        if args.skip_convert:
            pass
        elif not (src / "consolidated.00.pth").exists():
            subprocess.run([sys.executable, __file__, "--write-only", str(src), "--layers", str(args.layers)], check=True)
        pth = src / "consolidated.00.pth"
        if not args.skip_convert:
            convert_bench(pth, src, out, work, args.layers)
        weights = out / "consolidated.safetensors"
        subprocess.run(["cat", str(weights)], stdout=subprocess.DEVNULL, check=True)
        per_token = bytes_per_token(config)
        rounds = []
        for _ in range(args.rounds):  # alternated, so both see the same load on a shared machine
            bandwidth = read_bandwidth(weights)
            child = subprocess.run([sys.executable, __file__, "--decode-only", str(out), "--tokens", str(args.tokens),
                                    "--layers", str(args.layers)], capture_output=True, text=True, cwd=REPO)
            if child.returncode:
                raise SystemExit(f"decode failed: {child.stderr[-2000:]}")
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            rounds.append((bandwidth, measured))
        ratios = sorted(m["tok_s"] / (b / per_token) for b, m in rounds)
        bandwidth, measured = sorted(rounds, key=lambda r: r[1]["tok_s"] / (r[0] / per_token))[len(rounds) // 2]
        print_result("mixtral-decode", {
            "machine": machine(), "layers": args.layers, "weights_GB": round(weights.stat().st_size / 1e9, 2),
            "bytes_read_per_token_GB": round(per_token / 1e9, 3), "read_bandwidth_GB_s": round(bandwidth / 1e9, 2),
            "bound_tok_s": round(bandwidth / per_token, 3), "tok_s": round(measured["tok_s"], 3),
            "ratio_vs_bound_median": round(ratios[len(ratios) // 2], 3), "ratios": [round(r, 3) for r in ratios],
            "rss_anon_after_load_MB": round(measured["rss_anon_after_load_MB"]),
            "rss_anon_after_decode_MB": round(max(m["rss_anon_after_decode_MB"] for _, m in rounds)),
            "weights_cached_f32": measured["weights_cached_f32"], "targets": "ratio >= 0.85, RssAnon <= 3 GB",
        })
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
