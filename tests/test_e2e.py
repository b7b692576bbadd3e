"""End to end: `mdist demo`, the hub pipeline, and cross-source identity of the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURE, run_mdist
from hubmirror import build_mirror_repo, olah_server
from mdist.convert import convert
from mdist.runner import Tokenizer
from swarm import copy_release, mdist_seeder


def transformers_greedy(hf_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = Tokenizer(FIXTURE / "tokenizer.model").encode(prompt)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_demo_generates_what_transformers_generates(tmp_path: Path) -> None:
    result = run_mdist("demo", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [s["title"] for s in payload["steps"]] == ["seed", "fetch", "verify", "convert", "run"]
    assert payload["prompt"] == "ROMEO:" and len(payload["token_ids"]) == 80
    assert not Path(payload["workdir"]).exists()  # cleaned up without --keep
    convert(FIXTURE, tmp_path / "hf", layout="hf")
    expected = transformers_greedy(tmp_path / "hf", "ROMEO:", 80)
    assert payload["token_ids"] == expected
    assert payload["text"] == Tokenizer(FIXTURE / "tokenizer.model").decode(expected)


def test_demo_keeps_its_workdir_when_asked(tmp_path: Path) -> None:
    result = run_mdist("demo", "--workdir", str(tmp_path / "w"), "--max-tokens", "5", "--prompt", "KING:", timeout=300)
    assert result.returncode == 0, result.stderr
    for step in ("seed", "fetch", "verify", "convert", "run"):
        assert step in result.stdout
    assert (tmp_path / "w" / "fetched" / "consolidated.safetensors").is_file()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-hub")
    convert(FIXTURE, base / "hf", layout="hf")
    build_mirror_repo(base / "mirrors", "org", "tiny-mistral", base / "hf")
    with olah_server(base / "mirrors", base) as endpoint:
        yield endpoint


def test_hub_pipeline_fetch_verify_run(hub: str, tmp_path: Path) -> None:
    out = tmp_path / "hub"
    fetched = run_mdist("fetch", "hf://org/tiny-mistral", "--endpoint", hub, "--out", str(out), timeout=180)
    assert fetched.returncode == 0, fetched.stderr
    verified = run_mdist("verify", str(out), "--json", "--tensors")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    payload = json.loads(verified.stdout)
    assert payload["report"]["manifest"] == "tiny-mistral-hf" and payload["tensor_digest"]["actual"]
    ran = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "30", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["generated_tokens"] == 30


def test_magnet_and_mirror_deliver_the_same_weights(hub: str, tmp_path: Path) -> None:
    release = copy_release(FIXTURE, tmp_path / "seed" / "tiny-mistral")
    with mdist_seeder(release) as magnet:
        by_magnet = run_mdist("fetch", magnet, "--out", str(tmp_path / "bt"), "--no-dht", "--timeout", "30")
    assert by_magnet.returncode == 0, by_magnet.stderr
    by_hub = run_mdist("fetch", "hf://org/tiny-mistral", "--endpoint", hub, "--out", str(tmp_path / "hub"),
                       timeout=180)
    assert by_hub.returncode == 0, by_hub.stderr
    compared = run_mdist("digest", str(tmp_path / "bt"), str(tmp_path / "hub"), "--json")
    assert compared.returncode == 0, compared.stdout
    payload = json.loads(compared.stdout)
    assert payload["same"] and payload["paths"][0]["root"] == payload["paths"][1]["root"]
    assert not (tmp_path / "bt" / "consolidated.safetensors").exists()  # one is a .pth, the other HF shards
