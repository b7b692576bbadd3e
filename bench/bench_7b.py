"""Mistral-7B-shaped synthetic bf16 model: decode tok/s and private memory of `mdist run`'s runner.

Writes a 14.5 GB consolidated.safetensors (random bf16 weights, tiled) into --workdir, loads it
memory-mapped, and decodes a few tokens. Targets: >= 1.0 tok/s; RssAnon <= 3 GB beyond the map.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MISTRAL_7B, print_result, rss_anon_mb  # noqa: E402


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    shapes = {"tok_embeddings.weight": (c["vocab_size"], c["dim"]), "norm.weight": (c["dim"],),
              "output.weight": (c["vocab_size"], c["dim"])}
    for i in range(c["n_layers"]):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wq.weight": (c["n_heads"] * c["head_dim"], c["dim"]),
            p + "attention.wk.weight": (c["n_kv_heads"] * c["head_dim"], c["dim"]),
            p + "attention.wv.weight": (c["n_kv_heads"] * c["head_dim"], c["dim"]),
            p + "attention.wo.weight": (c["dim"], c["n_heads"] * c["head_dim"]),
            p + "feed_forward.w1.weight": (c["hidden_dim"], c["dim"]),
            p + "feed_forward.w2.weight": (c["dim"], c["hidden_dim"]),
            p + "feed_forward.w3.weight": (c["hidden_dim"], c["dim"]),
            p + "attention_norm.weight": (c["dim"],), p + "ffn_norm.weight": (c["dim"],),
        })
    return shapes


def write_model(directory: Path, config: dict) -> None:
    from mdist.convert.safetensors_writer import TensorSource, write_safetensors

    rng = np.random.default_rng(0)
    block = (rng.standard_normal(8 << 20, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    block = block.astype(np.uint16).tobytes()  # 16 MB of bf16 values
    ones = np.full(1, 0x3F80, dtype=np.uint16).tobytes()  # bf16 1.0

    def chunks(nbytes: int, norm: bool):
        if norm:
            yield ones * (nbytes // 2)
            return
        while nbytes:
            piece = block[: min(len(block), nbytes)]
            nbytes -= len(piece)
            yield piece

    sources = []
    for name, shape in tensor_shapes(config).items():
        nbytes = int(np.prod(shape)) * 2
        sources.append(TensorSource(name, "BF16", shape, nbytes,
                                    lambda n=nbytes, norm=len(shape) == 1: chunks(n, norm)))
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "consolidated.safetensors", sources, metadata={"format": "pt"}, overwrite=True)
    (directory / "params.json").write_text(json.dumps(config))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, help="where to write the 14.5 GB model (default: a temp dir)")
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from mdist.runner import Model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mdist-7b-"))
    try:
        model_dir = work / "mistral-7b-synthetic"
        if not (model_dir / "consolidated.safetensors").is_file():
            started = time.perf_counter()
            write_model(model_dir, MISTRAL_7B)
            print(f"wrote the synthetic model in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        started = time.perf_counter()
        model = Model.load(model_dir)
        load_s = time.perf_counter() - started
        cache = model.new_cache(64)
        model.forward(np.array([1, 100, 200, 300]), cache, last_only=True)
        times = []
        token = 5
        for _ in range(args.tokens):
            started = time.perf_counter()
            token = int(np.argmax(model.forward(np.array([token]), cache)[-1]))
            times.append(time.perf_counter() - started)
        tok_s = 1 / (sum(times[1:]) / max(1, len(times) - 1)) if len(times) > 1 else 1 / times[0]
        print_result("runner-7b-bf16", {
            "load_s": round(load_s, 2), "decode_tok_s": round(tok_s, 3),
            "seconds_per_token": [round(t, 2) for t in times],
            "rss_anon_MB": round(rss_anon_mb(), 0), "weights_cached_f32": model.weights.cached,
        })
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
