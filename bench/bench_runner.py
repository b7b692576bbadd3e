"""mdist run vs transformers MistralForCausalLM on a ~175M-parameter random Mistral (fp32, CPU).

Prints decode tok/s of both and their ratio (target >= 1.5), the memory-bandwidth bound
(weight bytes per token / measured copy bandwidth; target >= 85 %), and prefill GFLOP/s against
numpy's own GEMM (target >= 60 %).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMALL_175M, best_of, print_result  # noqa: E402


def make_model(directory: Path) -> None:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    c = SMALL_175M
    config = MistralConfig(hidden_size=c["dim"], intermediate_size=c["hidden_dim"], num_hidden_layers=c["n_layers"],
                           num_attention_heads=c["n_heads"], num_key_value_heads=c["n_kv_heads"],
                           head_dim=c["head_dim"], vocab_size=c["vocab_size"], sliding_window=None,
                           rms_norm_eps=c["norm_eps"], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory, safe_serialization=True)


def copy_bandwidth() -> float:
    src = np.ones(128 << 20, dtype=np.float32)  # 512 MB
    dst = np.empty_like(src)
    seconds = best_of(lambda: np.copyto(dst, src), 5)
    return 2 * src.nbytes / seconds  # read + write


def gemm_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((512, 1024), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 3584), dtype=np.float32)
    seconds = best_of(lambda: a @ b, 5)
    return 2 * 512 * 1024 * 3584 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=256)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from mdist.runner import Model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        make_model(path)
        ours = Model.load(path)
        theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        prompt = list(np.random.default_rng(0).integers(3, 32000, 16))
        n = args.new_tokens

        def ours_decode() -> float:
            cache = ours.new_cache(len(prompt) + n + 1)
            ours.forward(np.asarray(prompt), cache, last_only=True)
            started = time.perf_counter()
            token = 5
            for _ in range(n):
                token = int(np.argmax(ours.forward(np.asarray([token]), cache)[-1]))
            return n / (time.perf_counter() - started)

        def theirs_decode() -> float:
            ids = torch.tensor([prompt])
            with torch.no_grad():
                started = time.perf_counter()
                theirs.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
                prefill = time.perf_counter() - started
                started = time.perf_counter()
                theirs.generate(ids, max_new_tokens=n + 1, min_new_tokens=n + 1, do_sample=False, pad_token_id=0)
                total = time.perf_counter() - started
            return n / (total - prefill)

        ours_tps = max(ours_decode() for _ in range(2))
        theirs_tps = max(theirs_decode() for _ in range(2))
        weight_bytes = sum(a.nbytes for name, a in ours.weights._f32.items() if name != "tok_embeddings.weight")
        bandwidth = copy_bandwidth()
        bound = bandwidth / weight_bytes
        long_prompt = np.random.default_rng(2).integers(3, 32000, args.prefill_tokens)
        prefill_s = best_of(lambda: ours.forward(long_prompt, ours.new_cache(len(long_prompt))), 3)
        prefill_gflops = 2 * weight_bytes / 4 * len(long_prompt) / prefill_s / 1e9
        gemm = gemm_gflops()
        print_result("runner-175M", {
            "mdist_decode_tok_s": round(ours_tps, 2), "transformers_decode_tok_s": round(theirs_tps, 2),
            "decode_ratio_vs_transformers": round(ours_tps / theirs_tps, 3),
            "copy_bandwidth_GB_s": round(bandwidth / 1e9, 2), "weight_MB_per_token": round(weight_bytes / 1e6, 1),
            "bandwidth_bound_tok_s": round(bound, 2), "fraction_of_bandwidth_bound": round(ours_tps / bound, 3),
            "prefill_tok_s": round(len(long_prompt) / prefill_s, 1), "prefill_GFLOP_s": round(prefill_gflops, 1),
            "numpy_gemm_GFLOP_s": round(gemm, 1), "prefill_fraction_of_gemm": round(prefill_gflops / gemm, 3),
        })


if __name__ == "__main__":
    main()
