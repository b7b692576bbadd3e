"""Mixtral as GGUF: experts stacked as llama.cpp's converter stores them, unstacked by digest and run.

The model is tests/test_mixtral.py's: made by transformers' MixtralForCausalLM, written in the
release's layout. transformers' GGUF loader (5.x) does not load a mixture of experts from a
`llama`-architecture GGUF (its llama mapping has no expert keys and no stacked-expert tensors), so
the logits are compared with transformers' in-memory model instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_mdist
from mdist.convert import convert
from mdist.convert.gguf_reader import read_gguf
from mdist.runner.model import Model
from mdist.verify.digest import root_digest, tensor_digests
from test_mixtral import HIDDEN, DIM, TOKENS, assert_close, make_mixtral, reference_logits

EXPERTS, TOP_K = 4, 2


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> dict:
    """A bf16 Mixtral release, its GGUF BF16 and Q8_0 (in one folder) and transformers' model."""
    base = tmp_path_factory.mktemp("moe")
    model, release, _, _ = make_mixtral(base, experts=EXPERTS, top_k=TOP_K, kv_heads=2, theta=1e6, seed=5, bf16=True)
    out = base / "gguf"
    files = {t: convert(release, out, layout="gguf", gguf_type=t).files[0] for t in ("bf16", "q8_0")}
    return {"model": model, "release": release, **files}


def test_experts_are_stacked_as_llama_cpp_stores_them(mixtral) -> None:
    for kind, matrix_type in (("bf16", "BF16"), ("q8_0", "Q8_0")):
        gguf = read_gguf(mixtral[kind])
        assert gguf.metadata["llama.expert_count"] == EXPERTS and gguf.metadata["llama.expert_used_count"] == TOP_K
        tensors = gguf.tensors
        assert not any(".experts." in name for name in tensors)
        for name, shape in (("ffn_gate_exps", (EXPERTS, HIDDEN, DIM)), ("ffn_up_exps", (EXPERTS, HIDDEN, DIM)),
                            ("ffn_down_exps", (EXPERTS, DIM, HIDDEN))):
            tensor = tensors[f"blk.1.{name}.weight"]
            assert tensor.shape == shape and tensor.dims == shape[::-1] and tensor.type_name == matrix_type
        router = tensors["blk.0.ffn_gate_inp.weight"]
        assert router.shape == (EXPERTS, DIM) and router.type_name == "F32"  # the converter keeps the router F32


def test_bf16_moe_gguf_digests_as_the_release(mixtral) -> None:
    assert root_digest(tensor_digests(mixtral["bf16"])) == root_digest(tensor_digests(mixtral["release"]))
    for kind in ("bf16", "q8_0"):  # Q8_0: the release re-quantised, compared byte for byte, expert by expert
        result = run_mdist("digest", str(mixtral["release"]), str(mixtral[kind]), "--json")
        assert result.returncode == 0 and '"same": true' in result.stdout, (kind, result.stdout, result.stderr)


def test_one_changed_expert_value_names_that_expert(mixtral, tmp_path: Path) -> None:
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(mixtral["bf16"].read_bytes())
    gguf = read_gguf(changed)
    tensor = gguf.tensors["blk.1.ffn_down_exps.weight"]
    with open(changed, "r+b") as handle:  # expert 2, row 3, value 5: one bf16 mantissa bit
        position = tensor.offset + ((2 * DIM + 3) * HIDDEN + 5) * 2
        handle.seek(position)
        value = handle.read(1)[0]
        handle.seek(position)
        handle.write(bytes([value ^ 1]))
    result = run_mdist("digest", str(mixtral["release"]), str(changed))
    assert result.returncode == 1 and "layers.1.feed_forward.experts.2.w2.weight" in result.stdout, result.stdout


def _run(path: Path, tokens: int) -> list[int]:
    result = run_mdist("run", str(path), "--prompt", "ROMEO:", "--max-tokens", str(tokens), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["token_ids"]


def test_run_on_the_moe_gguf_equals_the_release(mixtral) -> None:
    assert _run(mixtral["bf16"], 30) == _run(mixtral["release"], 30)
    expected = reference_logits(mixtral["model"], TOKENS)
    assert_close(Model.load(mixtral["bf16"]).logits(TOKENS), expected)


def test_q8_0_moe_gguf_runs_close_to_transformers(mixtral) -> None:
    expected = reference_logits(mixtral["model"], TOKENS)
    streamed = Model.load(mixtral["q8_0"], f32_budget_bytes=0)  # experts as per-expert Q8_0 views, on the fly
    assert streamed.weights.q8 and "layers.0.feed_forward.experts.3.w1.weight" in streamed.weights.q8
    widened = Model.load(mixtral["q8_0"]).logits(TOKENS)  # small: the weights widened once
    assert_close(widened, expected, rel=0.06)  # the weights' 8-bit rounding alone: measured 3.8 % (random model)
    cache = streamed.new_cache(32)  # one token at a time: the Q8_0 kernel, activations quantised as ggml does
    step = np.concatenate([streamed.forward(np.array([t]), cache) for t in TOKENS])
    assert_close(step, widened, rel=0.06)  # activations' 8-bit rounding, as ggml: measured 4.3 % (1.2-4.3 % per token)
