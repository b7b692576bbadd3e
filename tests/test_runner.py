"""mdist run: logits and greedy text equal transformers' MistralForCausalLM (an independent implementation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURE, copy_fixture, random_mistral, run_mdist
from mdist.convert import convert
from mdist.runner import Model, Sampler, StreamDecoder, Tokenizer


def hf_model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([list(tokens)])).logits[0].numpy()


def assert_relative_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= tolerance, f"relative error {error:.2e}"


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("fixture")
    mistral, hf = base / "mistral", base / "hf"
    convert(FIXTURE, mistral)
    convert(FIXTURE, hf, layout="hf")
    return mistral, hf


SHAPES = [
    dict(n_heads=4, n_kv_heads=4),  # GQA ratio 1, no window
    dict(n_heads=4, n_kv_heads=2, sliding_window=7),  # ratio 2, window shorter than the sequence
    dict(n_heads=8, n_kv_heads=2, head_dim=8, sliding_window=16, rope_theta=1e6),  # ratio 4
    dict(n_heads=4, n_kv_heads=1, rope_theta=1e6, dtype="float32"),
    dict(n_heads=2, n_kv_heads=1, dim=48, head_dim=32, hidden_dim=64, dtype="float16", sliding_window=3),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers_in_both_layouts(tmp_path: Path, shape: dict) -> None:
    src = random_mistral(tmp_path / "src", **shape)
    convert(src, tmp_path / "mistral")
    convert(src, tmp_path / "hf", layout="hf")
    tokens = np.random.default_rng(0).integers(0, 300, 40)
    expected = hf_logits(hf_model(tmp_path / "hf"), tokens)
    for layout in ("mistral", "hf"):
        actual = Model.load(tmp_path / layout).logits(tokens)
        assert actual.dtype == np.float32 and actual.shape == (40, 300)
        assert_relative_close(actual, expected)


def test_per_layer_conversion_path_gives_the_same_logits(tmp_path: Path) -> None:
    """Models too big for a float32 copy widen weights per layer; results must not change."""
    src = random_mistral(tmp_path / "src", sliding_window=9)
    convert(src, tmp_path / "m")
    tokens = np.arange(30) * 7 % 300
    cached = Model.load(tmp_path / "m")
    streamed = Model.load(tmp_path / "m", f32_budget_bytes=0)
    assert cached.weights.cached and not streamed.weights.cached
    expected = cached.logits(tokens)
    np.testing.assert_allclose(streamed.logits(tokens), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_streamed_bf16_decoding_matches_cached(tmp_path: Path, kernels: str) -> None:
    """Decoding with weights widened on the fly (compiled kernel or numpy) equals the cached path."""
    import subprocess
    import sys

    src = random_mistral(tmp_path / "src", sliding_window=6, dtype="bfloat16")
    convert(src, tmp_path / "m")
    script = f"""
import numpy as np, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from mdist.runner import Model
from mdist.runner.kernels import bf16_gemv
tokens = np.arange(20) * 11 % 300
cached = Model.load({str(tmp_path / "m")!r})
streamed = Model.load({str(tmp_path / "m")!r}, f32_budget_bytes=0)
assert (bf16_gemv() is not None) == ({kernels!r} == "numba")
cache = streamed.new_cache()
steps = np.concatenate([streamed.forward(tokens[:3], cache)]  # a short prompt takes the kernel too
                       + [streamed.forward(tokens[i:i + 1], cache) for i in range(3, 20)])
expected = cached.logits(tokens)
np.testing.assert_allclose(steps, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
print("ok")
"""
    env = dict(__import__("os").environ, MDIST_KERNELS=kernels)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.skipif(__import__("mdist.runner.kernels", fromlist=["x"]).bf16_gemv() is None,
                    reason="numba missing or MDIST_KERNELS=numpy")
@pytest.mark.parametrize(("rows", "cols", "tokens"), [(257, 4096, 1), (64, 100, 3)])
def test_bf16_kernel_is_the_float_product_and_the_same_on_one_core_or_all(rows: int, cols: int, tokens: int) -> None:
    """The kernel against numpy's float64 product of the widened weights; one token's rows computed
    on one core or split across cores (chosen by the machine's load) give identical bits."""
    from mdist.runner.kernels import bf16_gemv

    rng = np.random.default_rng(rows)
    bits = (rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    x = rng.standard_normal((tokens, cols), dtype=np.float32)
    widened = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    out = {}
    for parallel in (False, True):
        out[parallel] = np.full((tokens, rows), np.nan, dtype=np.float32)
        bf16_gemv()(bits, x, out[parallel], parallel=parallel)
        expected = x.astype(np.float64) @ widened.T
        assert np.abs(out[parallel] - expected).max() < 1e-5 * np.abs(expected).max()
    assert np.array_equal(out[False], out[True])


def test_fixture_logits_on_300_tokens(fixture_models) -> None:
    mistral, hf = fixture_models
    tokens = np.random.default_rng(3).integers(0, 2048, 300)
    expected = hf_logits(hf_model(hf), tokens)
    assert_relative_close(Model.load(mistral).logits(tokens), expected)
    assert_relative_close(Model.load(hf).logits(tokens), expected)


def test_fixture_greedy_200_tokens_equal_transformers(fixture_models) -> None:
    mistral, hf = fixture_models
    tokenizer = Tokenizer(FIXTURE / "tokenizer.model")
    prompt = tokenizer.encode("ROMEO:")
    with torch.no_grad():
        out = hf_model(hf).generate(torch.tensor([prompt]), max_new_tokens=200, do_sample=False,
                                    min_new_tokens=200, pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    result = run_mdist("run", str(mistral), "--prompt", "ROMEO:", "--max-tokens", "200", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["token_ids"] == expected
    assert payload["text"] == tokenizer.decode(expected)


def test_incremental_decoding_beyond_the_window_equals_full_recompute(fixture_models) -> None:
    model = Model.load(fixture_models[0])
    tokens = np.random.default_rng(5).integers(0, 2048, 150)  # window is 64
    full = model.logits(tokens)
    cache = model.new_cache()
    steps = [model.forward(tokens[:10], cache)] + [model.forward(tokens[i : i + 1], cache) for i in range(10, 150)]
    assert cache.k.shape[2] == 64  # a rolling buffer of W slots
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=0, atol=2e-5 * np.abs(full).max())


def test_stdout_carries_only_the_text_and_stderr_the_stats(fixture_models) -> None:
    result = run_mdist("run", str(fixture_models[0]), "--prompt", "ROMEO:", "--max-tokens", "20")
    assert result.returncode == 0, result.stderr
    as_json = json.loads(run_mdist("run", str(fixture_models[0]), "--prompt", "ROMEO:", "--max-tokens", "20",
                                   "--json").stdout)
    assert result.stdout == as_json["text"] + "\n"
    assert "ROMEO:" not in result.stdout.split("\n")[0] or as_json["text"].startswith("ROMEO:")
    assert "decode" in result.stderr and "tok/s" in result.stderr


def test_raw_pth_is_converted_once_and_reused(tmp_path: Path) -> None:
    model_dir = tmp_path / "raw"
    copy_fixture(model_dir)
    first = run_mdist("run", str(model_dir), "--prompt", "KING:", "--max-tokens", "5")
    assert first.returncode == 0, first.stderr
    assert "converting" in first.stderr
    assert (model_dir / "consolidated.safetensors").is_file()
    second = run_mdist("run", str(model_dir), "--prompt", "KING:", "--max-tokens", "5")
    assert "converting" not in second.stderr and second.stdout == first.stdout


def test_sampling_is_reproducible_with_a_seed(fixture_models) -> None:
    args = ["run", str(fixture_models[0]), "--prompt", "KING:", "--max-tokens", "30", "--temperature", "1.0",
            "--top-p", "0.9", "--json"]
    a = json.loads(run_mdist(*args, "--seed", "1").stdout)
    b = json.loads(run_mdist(*args, "--seed", "1").stdout)
    c = json.loads(run_mdist(*args, "--seed", "2").stdout)
    assert a["token_ids"] == b["token_ids"] and a["token_ids"] != c["token_ids"]


def test_greedy_picks_the_lowest_id_on_ties() -> None:
    assert Sampler(0.0)(np.array([0.0, 3.0, 1.0, 3.0])) == 1


def test_top_p_keeps_only_the_nucleus() -> None:
    sampler = Sampler(1.0, top_p=0.5, seed=0)
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    assert {sampler(logits) for _ in range(200)} == {0}
    wider = Sampler(1.0, top_p=0.8, seed=0)
    assert {wider(logits) for _ in range(400)} == {0, 1}


def test_chat_template_and_safe_prompt() -> None:
    tokenizer = Tokenizer(FIXTURE / "tokenizer.model")
    chat = tokenizer.encode_prompt("hello", chat=True)
    assert chat[0] == 1 and tokenizer.decode(chat[1:]) == "[INST] hello [/INST]"
    safe = tokenizer.decode(tokenizer.encode_prompt("hello", safe_prompt=True)[1:])
    assert safe.startswith("[INST] Always assist with care, respect, and truth.") and safe.endswith("hello [/INST]")


def test_stream_decoder_keeps_multibyte_characters_whole() -> None:
    tokenizer = Tokenizer(FIXTURE / "tokenizer.model")
    text = "Oh — café ✓"
    ids = tokenizer.encode(text, bos=False)
    assert any(tokenizer.piece(i).startswith("<0x") for i in ids)  # byte fallback in play
    decoder = StreamDecoder(tokenizer, [1])
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "✓" in deltas or any("✓" in d for d in deltas)


@pytest.mark.parametrize("case", ["missing tokenizer", "malformed params", "unknown architecture", "long prompt",
                                  "non-utf8 prompt", "no weights"])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, fixture_models, case: str) -> None:
    model = tmp_path / "m"
    shutil.copytree(fixture_models[0] if case != "unknown architecture" else fixture_models[1], model)
    prompt = "hi"
    if case == "missing tokenizer":
        (model / "tokenizer.model").unlink()
    elif case == "malformed params":
        (model / "params.json").write_text('{"dim": 256, "n_layers": ')
    elif case == "unknown architecture":
        config = json.loads((model / "config.json").read_text())
        config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
        (model / "config.json").write_text(json.dumps(config))
    elif case == "long prompt":
        prompt = "word " * 22_000  # 110,000 characters: over the bound, under the argv limit
    elif case == "non-utf8 prompt":
        prompt = "caf\udce9"  # what Python makes of the byte 0xE9 in argv
    elif case == "no weights":
        (model / "consolidated.safetensors").unlink()
    result = run_mdist("run", str(model), "--prompt", prompt, "--max-tokens", "2",
                       env={"PYTHONUTF8": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr


@pytest.mark.parametrize("params", [
    {"dim": 64, "n_layers": 2, "vocab_size": 300, "n_groups": 1, "rms_norm": True, "residual_in_fp32": True,
     "fused_add_norm": True, "pad_vocab_size_multiple": 1, "tie_embeddings": False},
    {"dim": 64, "n_layers": 2, "vocab_size": 300, "model_type": "mamba"},
], ids=["state-space keys", "model_type mamba"])
def test_a_mamba_release_is_digested_but_not_run(tmp_path: Path, params: dict) -> None:
    """Codestral Mamba is a Mamba 2 model: `run` says so in one line; digest still works."""
    from safetensors.torch import save_file

    folder = tmp_path / "mamba"
    folder.mkdir()
    save_file({"backbone.embeddings.weight": torch.randn(300, 64), "lm_head.weight": torch.randn(300, 64)},
              folder / "consolidated.safetensors")
    (folder / "params.json").write_text(json.dumps(params))
    shutil.copy(FIXTURE / "tokenizer.model", folder / "tokenizer.model")
    result = run_mdist("run", str(folder), "--prompt", "a", "--max-tokens", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("mdist: error: params.json: ") and result.stderr.count("\n") == 1
    assert "not the Mistral transformer architecture" in result.stderr and "Mamba" in result.stderr
    digest = run_mdist("digest", str(folder), "--json")
    assert digest.returncode == 0, digest.stderr
    assert json.loads(digest.stdout)["paths"][0]["tensors"] == 2


def test_a_long_prompt_runs_in_bounded_memory(fixture_copy: Path, monkeypatch) -> None:
    """Attention scores are heads x tokens x keys floats: a 6,000-token prompt in one pass needed
    1.15 GB for them alone (and 12,000 tokens ~10 GB). In chunks, memory stays flat, same logits."""
    import tracemalloc

    import mdist.runner.model as runner_model

    model = Model.load(fixture_copy)
    tokens = np.random.default_rng(0).integers(3, 2048, 6000)
    tracemalloc.start()
    try:
        last = model.forward(tokens, model.new_cache(len(tokens)), last_only=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 400 << 20, f"peak {peak / 2**20:.0f} MiB"
    monkeypatch.setattr(runner_model, "_SCORES_BYTES", 1)  # the smallest chunks (16 tokens)
    assert model._chunk(6000) == 16
    small = model.forward(tokens[:700], model.new_cache(700))
    monkeypatch.undo()
    whole = model.forward(tokens[:700], model.new_cache(700))
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-5)
    assert last.shape == (1, 2048) and np.isfinite(last).all()


def test_a_folder_without_write_bits_is_not_written_even_by_root(fixture_copy: Path, tmp_path: Path) -> None:
    """root passes os.access(W_OK) everywhere; a folder marked read-only must still be left alone
    (the conversion goes to the per-user cache)."""
    fixture_copy.chmod(0o555)
    try:
        result = run_mdist("run", str(fixture_copy), "--prompt", "ROMEO:", "--max-tokens", "2",
                           env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in fixture_copy.iterdir()) == ["consolidated.00.pth", "params.json",
                                                                   "tokenizer.model"]
        assert list((tmp_path / "cache" / "mdist" / "converted").glob("*/consolidated.safetensors"))
    finally:
        fixture_copy.chmod(0o755)
