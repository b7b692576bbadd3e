"""Mixtral (mixture of experts) end to end, against transformers' MixtralForCausalLM.

Each model is made by transformers (random weights, a decisive router so that no two experts
tie), saved by transformers in the hub's layout (per-expert names), and written by this test in
the release's layout (Mistral names, interleaved q/k rows, `moe` in params.json) with torch.save.
mdist must reproduce transformers' logits and greedy tokens from both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralConfig, MixtralForCausalLM

from conftest import FIXTURE, run_mdist
from mdist.runner.model import Model

DIM, LAYERS, HEADS, HEAD_DIM, HIDDEN, VOCAB = 64, 2, 4, 16, 96, 2048  # the fixture's tokenizer has 2048 pieces
TOKENS = [1, 17, 300, 1999, 42, 7, 7, 512, 1024, 88, 3, 640, 5, 900]


def _hf_model(experts: int, top_k: int, kv_heads: int, theta: float, seed: int, bf16: bool) -> MixtralForCausalLM:
    config = MixtralConfig(
        hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=kv_heads, head_dim=HEAD_DIM, num_local_experts=experts, num_experts_per_tok=top_k,
        vocab_size=VOCAB, rms_norm_eps=1e-5, sliding_window=None, rope_theta=theta, tie_word_embeddings=False,
        max_position_embeddings=4096, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("mlp.gate.weight"):  # the router: large weights, decisive choices
                param.copy_(2.0 * torch.randn_like(param))
            elif "embed" in name:
                param.copy_(0.5 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / param.shape[-1] ** 0.5)
            if bf16:  # the release is bf16: both sides use the same rounded values
                param.copy_(param.to(torch.bfloat16).float())
    return model


def _to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo transformers' permute (its convert script: interleaved pairs -> two halves per head)."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _release_state_dict(hf: dict[str, torch.Tensor], kv_heads: int) -> dict[str, torch.Tensor]:
    """The hub's names -> Mistral's release names, written here independently of mdist.layout."""
    out = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"],
           "output.weight": hf["lm_head.weight"]}
    for layer in range(LAYERS):
        h, m = f"model.layers.{layer}.", f"layers.{layer}."
        out[m + "attention.wq.weight"] = _to_interleaved(hf[h + "self_attn.q_proj.weight"], HEADS)
        out[m + "attention.wk.weight"] = _to_interleaved(hf[h + "self_attn.k_proj.weight"], kv_heads)
        out[m + "attention.wv.weight"] = hf[h + "self_attn.v_proj.weight"]
        out[m + "attention.wo.weight"] = hf[h + "self_attn.o_proj.weight"]
        out[m + "attention_norm.weight"] = hf[h + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = hf[h + "post_attention_layernorm.weight"]
        out[m + "feed_forward.gate.weight"] = hf[h + "block_sparse_moe.gate.weight"]
        expert = 0
        while f"{h}block_sparse_moe.experts.{expert}.w1.weight" in hf:
            for w in ("w1", "w2", "w3"):
                out[f"{m}feed_forward.experts.{expert}.{w}.weight"] = hf[f"{h}block_sparse_moe.experts.{expert}.{w}.weight"]
            expert += 1
    return {k: v.contiguous() for k, v in out.items()}


def make_mixtral(root: Path, *, experts: int = 4, top_k: int = 2, kv_heads: int = 2, theta: float | None = None,
                 seed: int = 0, bf16: bool = False) -> tuple[MixtralForCausalLM, Path, Path, dict]:
    """(transformers model, release folder, transformers' own HF folder, params.json)."""
    model = _hf_model(experts, top_k, kv_heads, theta or 1e6, seed, bf16)
    hf_dir, release = root / "transformers-hf", root / "release"
    model.save_pretrained(hf_dir)
    shutil.copy(FIXTURE / "tokenizer.model", hf_dir / "tokenizer.model")
    hf = load_file(hf_dir / "model.safetensors")
    assert any(".block_sparse_moe.experts.0.w1.weight" in k for k in hf), "transformers saved per-expert names"
    state = _release_state_dict(hf, kv_heads)
    if bf16:
        state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    release.mkdir(parents=True)
    torch.save(state, release / "consolidated.00.pth")
    params = {"dim": DIM, "n_layers": LAYERS, "head_dim": HEAD_DIM, "hidden_dim": HIDDEN, "n_heads": HEADS,
              "n_kv_heads": kv_heads, "norm_eps": 1e-05, "vocab_size": VOCAB,
              "moe": {"num_experts_per_tok": top_k, "num_experts": experts}}
    if theta is not None:  # Mixtral 8x7B's params.json has no rope_theta: 1e6 is implied by `moe`
        params["rope_theta"] = theta
    (release / "params.json").write_text(json.dumps(params))
    shutil.copy(FIXTURE / "tokenizer.model", release / "tokenizer.model")
    return model, release, hf_dir, params


def error_line(result) -> str:
    """The one error line (notes such as "converting ..." may precede it); never a traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("mdist: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def reference_logits(model: MixtralForCausalLM, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    error = float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
    assert error <= rel, f"relative error {error:.2e} > {rel:.0e}"


CASES = {
    "4 experts top-1 GQA theta 1e4": dict(experts=4, top_k=1, kv_heads=2, theta=1e4),
    "8 experts top-2 GQA theta implied 1e6": dict(experts=8, top_k=2, kv_heads=2, theta=None),
    "8 experts top-2 MHA theta 1e6": dict(experts=8, top_k=2, kv_heads=4, theta=1e6, seed=3),
    "4 experts top-2 MQA bf16": dict(experts=4, top_k=2, kv_heads=1, theta=1e4, seed=5, bf16=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_logits_equal_transformers_from_both_layouts(tmp_path: Path, case: dict) -> None:
    model, release, hf_dir, _ = make_mixtral(tmp_path, **case)
    expected = reference_logits(model, TOKENS)
    assert_close(Model.load(release).logits(TOKENS), expected)  # the raw release (converted once)
    assert_close(Model.load(hf_dir).logits(TOKENS), expected)  # transformers' own files


def test_routing_is_top_k_renormalised(tmp_path: Path) -> None:
    """With top-2 of 8, a forgotten renormalisation or a softmax over all experts changes the
    logits far beyond the tolerance: the reference really distinguishes them."""
    model, release, _, _ = make_mixtral(tmp_path, experts=8, top_k=2, theta=1e4, seed=7)
    expected = reference_logits(model, TOKENS)
    mdist_model = Model.load(release)
    assert_close(mdist_model.logits(TOKENS), expected)
    import mdist.runner.model as runner_model

    original = runner_model.softmax
    try:  # the kept weights not renormalised: softmax over all experts, then cut to the top k
        def unnormalised(x):
            return original(x) * np.float32(0.5)
        runner_model.softmax = unnormalised
        wrong = mdist_model.logits(TOKENS)
    finally:
        runner_model.softmax = original
    error = float(np.max(np.abs(wrong - expected)) / np.max(np.abs(expected)))
    assert error > 1e-2


def test_incremental_decoding_equals_full_recomputation(tmp_path: Path) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=8, top_k=2, theta=1e6, seed=11)
    model = Model.load(release)
    full = model.logits(TOKENS)
    cache = model.new_cache(len(TOKENS))
    steps = np.concatenate([model.forward(np.array([t]), cache) for t in TOKENS])
    assert_close(steps, full, rel=1e-5)
    cache = model.new_cache(len(TOKENS))  # a prompt in one go, then one token at a time
    mixed = np.concatenate([model.forward(np.array(TOKENS[:9]), cache)] +
                           [model.forward(np.array([t]), cache) for t in TOKENS[9:]])
    assert_close(mixed, full, rel=1e-5)


def test_greedy_run_equals_transformers_generate(tmp_path: Path) -> None:
    model, release, _, _ = make_mixtral(tmp_path, experts=8, top_k=2, theta=None, seed=13)
    result = run_mdist("run", str(release), "--prompt", "To be, or not", "--max-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    prompt = out["prompt_token_ids"]
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, len(prompt):].tolist()
    assert len(out["token_ids"]) == 16
    assert out["token_ids"] == generated


def _digest(path: Path) -> str:
    result = run_mdist("digest", str(path), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["paths"][0]["root"]


def test_hf_conversion_loads_in_transformers_and_digests_agree(tmp_path: Path) -> None:
    model, release, hf_dir, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=17)
    out = tmp_path / "mdist-hf"
    result = run_mdist("convert", str(release), "--layout", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 4
    assert config["num_experts_per_tok"] == 2 and config["sliding_window"] is None
    loaded, info = MixtralForCausalLM.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert loaded.dtype == torch.float32  # config.json says the weights' own dtype
    assert loaded.config.rope_parameters["rope_theta"] == 1e4
    assert_close(reference_logits(loaded.float().eval(), TOKENS), reference_logits(model, TOKENS), rel=1e-6)
    roots = {_digest(release), _digest(release / "consolidated.00.pth"), _digest(out), _digest(hf_dir)}
    assert len(roots) == 1, roots


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for size in sizes:
        pieces.append(data[start : start + size])
        start += size
    pieces.append(data[start:])
    return pieces


def _pieces_folder(release: Path, target: Path, count: int = 11) -> list[Path]:
    """The release with its .pth cut like `split` into `count` raw pieces (split10 after split9)."""
    target.mkdir()
    for name in ("params.json", "tokenizer.model"):
        shutil.copy(release / name, target / name)
    data = (release / "consolidated.00.pth").read_bytes()
    rng = np.random.default_rng(0)
    cuts = sorted(rng.choice(np.arange(1, len(data)), count - 1, replace=False))
    sizes = np.diff([0, *cuts]).tolist()
    paths = []
    for number, piece in enumerate(_split(data, sizes)):
        path = target / f"consolidated.00.pth-split{number}"
        path.write_bytes(piece)
        paths.append(path)
    return paths


def test_split_pieces_convert_bit_identically_and_run(tmp_path: Path) -> None:
    model, release, _, params = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=19, bf16=True)
    pieces = _pieces_folder(release, tmp_path / "pieces")
    whole = tmp_path / "whole"
    assert run_mdist("convert", str(release), "--out", str(whole)).returncode == 0
    converted = tmp_path / "from-pieces"
    result = run_mdist("convert", str(pieces[0].parent), "--out", str(converted))
    assert result.returncode == 0, result.stderr
    assert (converted / "consolidated.safetensors").read_bytes() == (whole / "consolidated.safetensors").read_bytes()
    assert not (pieces[0].parent / "consolidated.00.pth").exists()  # never joined on disk
    assert _digest(pieces[0].parent) == _digest(release)
    assert_close(Model.load(pieces[0].parent).logits(TOKENS), reference_logits(model, TOKENS))


def _manifest(tmp_path: Path, release: Path) -> Path:
    md5 = hashlib.md5((release / "consolidated.00.pth").read_bytes()).hexdigest()
    manifest = {"schema": "mdist-manifest/1", "name": "test-mixtral", "title": "a test Mixtral",
                "files_complete": False,
                "files": {"consolidated.00.pth": {"md5": md5},
                          "params.json": {"json": json.loads((release / "params.json").read_text())}},
                "provenance": [{"fields": ["files"], "source": "made by the test"}]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_verify_checks_the_md5_of_the_joined_pieces(tmp_path: Path) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=1, theta=1e4, seed=23, bf16=True)
    pieces = _pieces_folder(release, tmp_path / "pieces")
    manifest = _manifest(tmp_path, release)
    result = run_mdist("verify", str(pieces[0].parent), "--manifest", str(manifest), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = {f["path"]: f for f in json.loads(result.stdout)["report"]["files"]}
    assert report["consolidated.00.pth"]["status"] == "ok"
    assert report["consolidated.00.pth"]["actual"] == json.loads(manifest.read_text())["files"]["consolidated.00.pth"]["md5"]
    assert all(report[p.name]["status"] == "ok" for p in pieces)
    assert not (pieces[0].parent / "consolidated.00.pth").exists()
    # one byte changed in one piece: the joined md5 differs
    data = bytearray(pieces[5].read_bytes())
    data[len(data) // 2] ^= 1
    pieces[5].write_bytes(bytes(data))
    result = run_mdist("verify", str(pieces[0].parent), "--manifest", str(manifest), "--json")
    assert result.returncode == 1
    report = {f["path"]: f for f in json.loads(result.stdout)["report"]["files"]}
    assert report["consolidated.00.pth"]["status"] == "mismatch"
    assert report["consolidated.00.pth-split5"]["status"] == "mismatch"


@pytest.mark.parametrize("damage", ["swapped", "missing", "truncated", "duplicate number"])
def test_bad_pieces_are_a_clear_error(tmp_path: Path, damage: str) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=1, theta=1e4, seed=29)
    pieces = _pieces_folder(release, tmp_path / "pieces", count=4)
    folder = pieces[0].parent
    if damage == "swapped":  # pieces 1 and 2 exchanged (both renamed)
        a, b = pieces[1].read_bytes(), pieces[2].read_bytes()
        pieces[1].write_bytes(b)
        pieces[2].write_bytes(a)
    elif damage == "missing":
        pieces[2].unlink()
    elif damage == "truncated":
        pieces[3].write_bytes(pieces[3].read_bytes()[:-100])
    else:
        pieces[1].rename(folder / "consolidated.00.pth-split02")
        shutil.copy(folder / "consolidated.00.pth-split02", folder / "consolidated.00.pth-split2")
    for command in (["convert", str(folder), "--out", str(tmp_path / "out")], ["digest", str(folder)],
                    ["run", str(folder), "--prompt", "a", "--max-tokens", "1"]):
        result = run_mdist(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "piece" in error_line(result), result.stderr
    assert not (tmp_path / "out" / "consolidated.safetensors").exists()


def _edit_params(release: Path, **changes) -> None:
    params = json.loads((release / "params.json").read_text())
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    (release / "params.json").write_text(json.dumps(params))


@pytest.mark.parametrize("change, message", [
    ({"moe": {"num_experts_per_tok": 2, "num_experts": 8}}, "the config says 8 experts but the weights hold 4 (layers.0.feed_forward.gate.weight routes to 4)"),
    ({"moe": {"num_experts_per_tok": 2, "num_experts": 2}}, "the config says 2 experts but the weights hold 4 (layers.0.feed_forward.gate.weight routes to 4)"),
    ({"moe": None}, "the weights are a mixture of experts but the config has no `moe` block (params.json) or num_local_experts (config.json)"),
    ({"moe": {"num_experts_per_tok": 5, "num_experts": 4}}, "model config: experts per token must be an integer in 1..4, got 5"),
    ({"moe": {"num_experts": 4}}, "params.json lacks the key 'num_experts_per_tok'"),
    ({"moe": [4, 2]}, "params.json: moe must be an object"),
    ({"moe": {"num_experts_per_tok": 0, "num_experts": 0}}, "params.json: moe must name at least one expert, got num_experts 0"),
    ({"hidden_dim": 64}, "tensor layers.0.feed_forward.experts.0.w1.weight has shape (96, 64), config implies (64, 64)"),
])
def test_moe_block_disagreeing_with_the_tensors_is_one_line(tmp_path: Path, change: dict, message: str) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=31)
    assert run_mdist("convert", str(release)).returncode == 0  # the safetensors run loads
    _edit_params(release, **change)
    result = run_mdist("run", str(release), "--prompt", "a", "--max-tokens", "1")
    assert result.returncode == 2, result.stderr
    assert error_line(result) == f"mdist: error: {message}"
    # convert writes for transformers and llama.cpp only what the config describes (it wrote files
    # neither could load, exit 0): the same line, and nothing written
    for layout in ("hf", "gguf"):
        out = tmp_path / f"out-{layout}"
        converted = run_mdist("convert", str(release), "--layout", layout, "--out", str(out))
        assert converted.returncode == 2, (layout, converted.stderr)
        assert error_line(converted) == f"mdist: error: {message}", layout
        assert not out.exists() or not any(out.iterdir()), layout


def test_a_missing_expert_is_named(tmp_path: Path) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=37)
    state = torch.load(release / "consolidated.00.pth", weights_only=True)  # the test's own file
    del state["layers.1.feed_forward.experts.3.w2.weight"]
    torch.save(state, release / "consolidated.00.pth")
    result = run_mdist("run", str(release), "--prompt", "a", "--max-tokens", "1")
    assert result.returncode == 2
    assert error_line(result) == ("mdist: error: weights lack tensor layers.1.feed_forward.experts.3.w2.weight "
                                  "(the config says 4 experts)")


def test_mistral_layout_safetensors_shards(tmp_path: Path) -> None:
    """Mixtral 8x22B's format: consolidated-0000N-of-0000M.safetensors with a `moe` params.json."""
    model, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e6, seed=41, bf16=True)
    state = torch.load(release / "consolidated.00.pth", weights_only=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    names = sorted(state)
    save_file({k: state[k] for k in names[: len(names) // 2]}, shards / "consolidated-00001-of-00002.safetensors")
    save_file({k: state[k] for k in names[len(names) // 2 :]}, shards / "consolidated-00002-of-00002.safetensors")
    for name in ("params.json", "tokenizer.model"):
        shutil.copy(release / name, shards / name)
    assert_close(Model.load(shards).logits(TOKENS), reference_logits(model, TOKENS))
    assert _digest(shards) == _digest(release)
    out = tmp_path / "hf"
    result = run_mdist("convert", str(shards), "--layout", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded, info = MixtralForCausalLM.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert _digest(out) == _digest(release)
    result = run_mdist("convert", str(shards))
    assert result.returncode == 2 and "already in the mistral layout" in result.stderr
    (shards / "consolidated-00002-of-00002.safetensors").unlink()
    result = run_mdist("run", str(shards), "--prompt", "a", "--max-tokens", "1")
    assert result.returncode == 2
    assert "consolidated-00002-of-00002.safetensors is missing" in result.stderr


def test_weights_larger_than_ram_are_said_to_be_disk_bound() -> None:
    from types import SimpleNamespace

    from mdist.runner.session import _weights_versus_ram
    from mdist.runner.weights import WeightStore

    ram = __import__("os").sysconf("SC_PAGE_SIZE") * __import__("os").sysconf("SC_PHYS_PAGES")
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint16), shape=(ram // 2 + 1,), strides=(0,))  # no memory
    small = np.zeros(8, np.uint16)
    big_model = SimpleNamespace(weights=WeightStore({"a": huge, "b": small}, f32_budget_bytes=0))  # never widened
    assert _weights_versus_ram(big_model) == {"weights_bytes": huge.nbytes + 16, "ram_bytes": ram, "disk_bound": True}
    assert _weights_versus_ram(SimpleNamespace(weights=WeightStore({"b": small})))["disk_bound"] is False


def test_the_8x7b_mirror_layout_is_recognised_and_held_to_the_published_md5(tmp_path: Path) -> None:
    """Pieces named as on the hub mirror, beside 8x7B's published params.json: the folder is
    recognised as the release and the joined bytes are compared with the published md5."""
    from mdist.verify.manifest import load_registry

    published = next(r for r in load_registry() if r.name == "mixtral-8x7b-v0.1")
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=1, theta=1e4, seed=43)
    pieces = _pieces_folder(release, tmp_path / "mirror")
    (pieces[0].parent / "params.json").write_text(json.dumps(published.files["params.json"].json))
    result = run_mdist("verify", str(pieces[0].parent), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["manifest"] == "mixtral-8x7b-v0.1" and report["identified"]
    files = {f["path"]: f for f in report["files"]}
    joined = files["consolidated.00.pth"]
    assert joined["status"] == "mismatch" and joined["expected"] == published.files["consolidated.00.pth"].md5
    assert joined["actual"] == hashlib.md5((release / "consolidated.00.pth").read_bytes()).hexdigest()
    assert {files[p.name]["status"] for p in pieces} == {"mismatch"}
    assert files["params.json"]["status"] == "ok"


def test_weights_widened_on_the_fly_give_the_same_logits(tmp_path: Path) -> None:
    """The path of models larger than the float32 budget (Mixtral 8x7B): bf16 kept as stored, the
    router widened whole, experts through the decode kernel one token at a time."""
    model, release, _, _ = make_mixtral(tmp_path, experts=8, top_k=2, theta=1e6, seed=47, bf16=True)
    expected = reference_logits(model, TOKENS)
    streamed = Model.load(release, f32_budget_bytes=0)
    assert not streamed.weights.cached
    assert_close(streamed.logits(TOKENS), expected)
    cache = streamed.new_cache(len(TOKENS))
    assert_close(np.concatenate([streamed.forward(np.array([t]), cache) for t in TOKENS]), expected)


def test_weights_that_are_not_numbers_stop_the_run_in_one_line(tmp_path: Path) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=53)
    state = torch.load(release / "consolidated.00.pth", weights_only=True)  # the test's own file
    state["layers.0.feed_forward.gate.weight"][:] = float("nan")
    torch.save(state, release / "consolidated.00.pth")
    result = run_mdist("run", str(release), "--prompt", "a", "--max-tokens", "3")
    assert result.returncode == 2 and result.stdout == ""
    assert error_line(result).startswith("mdist: error: the model's output scores are not finite")


@pytest.mark.parametrize("key", ["rope_theta", "head_dim", "num_key_value_heads", "num_local_experts"])
def test_a_zero_in_config_json_is_refused_not_replaced_by_a_default(tmp_path: Path, key: str) -> None:
    from mdist.errors import InputError
    from mdist.modelconfig import MistralConfig

    _, _, hf_dir, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=59)
    config = json.loads((hf_dir / "config.json").read_text())
    assert MistralConfig.from_hf_config(config).n_experts == 4
    config[key] = 0
    config.get("rope_parameters", {}).pop("rope_theta", None) if key == "rope_theta" else None
    with pytest.raises(InputError, match="must be"):
        MistralConfig.from_hf_config(config)


def test_pieces_convert_to_gguf(tmp_path: Path) -> None:
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=2, theta=1e4, seed=61, bf16=True)
    pieces = _pieces_folder(release, tmp_path / "pieces", count=5)
    out = tmp_path / "gguf"
    result = run_mdist("convert", str(pieces[0].parent), "--layout", "gguf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    (gguf,) = out.glob("*.gguf")
    same = run_mdist("digest", str(release), str(gguf), "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["same"], same.stdout + same.stderr


def test_a_file_beside_its_own_pieces_is_refused_everywhere(tmp_path: Path) -> None:
    """Two candidates for the same bytes: run, digest and convert refuse to guess; verify agrees."""
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=1, theta=1e4, seed=67)
    pieces = _pieces_folder(release, tmp_path / "both", count=3)
    folder = pieces[0].parent
    shutil.copy(release / "consolidated.00.pth", folder / "consolidated.00.pth")
    for command in (["run", str(folder), "--prompt", "a", "--max-tokens", "1"], ["digest", str(folder)],
                    ["convert", str(folder), "--out", str(tmp_path / "out")]):
        result = run_mdist(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "holds both consolidated.00.pth and its raw pieces" in error_line(result)
    manifest = _manifest(tmp_path, release)
    verified = run_mdist("verify", str(folder), "--manifest", str(manifest), "--json")
    assert verified.returncode == 1
    files = {f["path"]: f for f in json.loads(verified.stdout)["report"]["files"]}
    assert files["consolidated.00.pth"]["status"] == "ok"
    assert {files[p.name]["status"] for p in pieces} == {"refused"}


def test_verify_says_which_piece_is_missing(tmp_path: Path) -> None:
    from mdist.verify.manifest import load_registry

    published = next(r for r in load_registry() if r.name == "mixtral-8x7b-v0.1")
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=1, theta=1e4, seed=71)
    pieces = _pieces_folder(release, tmp_path / "mirror", count=4)
    (pieces[0].parent / "params.json").write_text(json.dumps(published.files["params.json"].json))
    pieces[2].unlink()
    result = run_mdist("verify", str(pieces[0].parent))
    assert result.returncode == 1
    assert "piece 2 of consolidated.00.pth is missing" in result.stdout + result.stderr


def test_zero_padded_piece_names_and_their_errors(tmp_path: Path) -> None:
    """`split -a 2` names pieces split00, split01, ...: read the same; a missing one is named by
    its neighbour (never by a name that does not exist), and a doubled number is one problem."""
    _, release, _, _ = make_mixtral(tmp_path, experts=4, top_k=1, theta=1e4, seed=73)
    pieces = _pieces_folder(release, tmp_path / "padded", count=5)
    for number, piece in enumerate(pieces):
        piece.rename(piece.with_name(f"consolidated.00.pth-split{number:02d}"))
    folder = pieces[0].parent
    assert _digest(folder) == _digest(release)
    (folder / "consolidated.00.pth-split03").unlink()
    result = run_mdist("digest", str(folder))
    assert result.returncode == 2
    assert ("piece 3 of consolidated.00.pth is missing, after consolidated.00.pth-split02: the pieces cannot "
            "be joined") in error_line(result)
    shutil.copy(folder / "consolidated.00.pth-split02", folder / "consolidated.00.pth-split2")
    result = run_mdist("digest", str(folder))
    assert result.returncode == 2 and "are both piece 2 of consolidated.00.pth" in error_line(result)
