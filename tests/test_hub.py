"""mdist fetch hf://… against a real mirror (olah, offline, on loopback) and a lying one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURE, run_mdist
from hubmirror import build_mirror_repo, flip_middle_byte, git_blob_id, lying_proxy, olah_server
from mdist.convert import convert
from swarm import free_port


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """olah serving org/tiny-mistral: the fixture in HF layout (weights and tokenizer as LFS)."""
    base = tmp_path_factory.mktemp("hub")
    hf = base / "hf"
    convert(FIXTURE, hf, layout="hf")
    _, commit = build_mirror_repo(base / "mirrors", "org", "tiny-mistral", hf)
    with olah_server(base / "mirrors", base) as endpoint:
        yield endpoint, commit, hf


def fetch(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    result = run_mdist("fetch", *args, "--json", timeout=180, env=env)
    return result, json.loads(result.stdout) if result.returncode == 0 else None


def test_fetch_verify_and_run_from_the_mirror(mirror, tmp_path: Path) -> None:
    endpoint, commit, hf = mirror
    out = tmp_path / "got"
    result, payload = fetch("hf://org/tiny-mistral", "--endpoint", endpoint, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert payload["commit"] == commit and commit in result.stderr
    assert "sha256 of 2 LFS files" in payload["verification"]
    for name in payload["files"]:
        assert (out / name).read_bytes() == (hf / name).read_bytes()
    assert (out / ".mdist" / "complete.json").is_file()
    run = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "20", "--json")
    assert run.returncode == 0, run.stderr
    direct = run_mdist("run", str(hf), "--prompt", "ROMEO:", "--max-tokens", "20", "--json")
    assert json.loads(run.stdout)["token_ids"] == json.loads(direct.stdout)["token_ids"]


def test_hf_endpoint_variable_and_revision_pinning(mirror, tmp_path: Path) -> None:
    endpoint, commit, _ = mirror
    result, payload = fetch(f"hf://org/tiny-mistral@{commit}", "--out", str(tmp_path / "got"),
                            "--include", "*.json", env={"HF_ENDPOINT": endpoint})
    assert result.returncode == 0, result.stderr
    assert payload["commit"] == commit and all(f.endswith(".json") for f in payload["files"])
    assert not (tmp_path / "got" / "model-00001-of-00001.safetensors").exists()


def test_tampered_mirror_is_detected(mirror, tmp_path: Path) -> None:
    endpoint, commit, _ = mirror
    out = tmp_path / "got"
    with lying_proxy(endpoint, lambda path: path.endswith(".safetensors")) as liar:
        result, _ = fetch("hf://org/tiny-mistral", "--endpoint", liar, "--out", str(out))
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "model-00001-of-00001.safetensors" in line and "sha256 mismatch" in line and "expected" in line
    assert not (out / "model-00001-of-00001.safetensors").exists()
    assert not (out / ".mdist" / "complete.json").exists()


def test_tampered_small_file_is_detected(mirror, tmp_path: Path) -> None:
    """A small (non-LFS) file is checked by its git blob id: a mirror altering config.json under
    the original id is refused, the file removed, both hashes named."""
    endpoint, _, hf = mirror
    out = tmp_path / "got"
    with lying_proxy(endpoint, lambda path: path.endswith("/config.json")) as liar:
        result, _ = fetch("hf://org/tiny-mistral", "--endpoint", liar, "--out", str(out))
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    data = (hf / "config.json").read_bytes()
    expected = git_blob_id(data)
    altered = git_blob_id(flip_middle_byte(data))
    assert "config.json" in line and "git blob sha1 mismatch" in line, line
    assert expected in line and altered in line, line
    assert not (out / "config.json").exists()
    assert not (out / ".mdist" / "complete.json").exists()


def test_to_hf_cache_then_transformers_offline(mirror, tmp_path: Path) -> None:
    endpoint, commit, _ = mirror
    home = tmp_path / "hf-home"
    result, payload = fetch("hf://org/tiny-mistral", "--endpoint", endpoint, "--to-hf-cache",
                            env={"HF_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert (home / "hub" / "models--org--tiny-mistral" / "refs" / "main").read_text() == commit
    script = ("from transformers import AutoModelForCausalLM; import torch;"
              "m = AutoModelForCausalLM.from_pretrained('org/tiny-mistral', dtype=torch.float32);"
              "print(m(torch.tensor([[1, 5, 9]])).logits.shape)")
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "torch.Size([1, 3, 2048])" in loaded.stdout


@pytest.mark.parametrize("case", ["unknown repo", "unknown revision", "server down"])
def test_clear_errors(mirror, tmp_path: Path, case: str) -> None:
    endpoint, _, _ = mirror
    source, url = {
        "unknown repo": ("hf://org/nope", endpoint),
        "unknown revision": ("hf://org/tiny-mistral@no-such-branch", endpoint),
        "server down": ("hf://org/tiny-mistral", f"http://127.0.0.1:{free_port()}"),
    }[case]
    result = run_mdist("fetch", source, "--endpoint", url, "--out", str(tmp_path / "x"), timeout=120,
                       env={"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr


def test_release_falls_back_from_a_dead_swarm_to_the_hub(mirror, tmp_path: Path) -> None:
    """A release listing a magnet and a hub repo: with no peer delivering, the hub is used."""
    endpoint, commit, hf = mirror
    registry = json.loads((Path(__file__).resolve().parents[1] / "checksums" / "tiny-mistral.json").read_text())
    manifest = {
        "schema": "mdist-manifest/1", "name": "tiny-mistral-both", "title": "test release", "files_complete": False,
        "files": {"tokenizer.model": registry["files"]["tokenizer.model"]},
        "sources": {"btih": registry["sources"]["btih"], "hub": {"repo": "org/tiny-mistral"}},
        "provenance": [{"fields": ["files"], "source": "test"}],
    }
    path = tmp_path / "tiny-mistral-both.json"
    path.write_text(json.dumps(manifest))
    out = tmp_path / "got"
    result, payload = fetch(str(path), "--no-dht", "--timeout", "3", "--endpoint", endpoint, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "falling back to the hub" in result.stderr
    assert payload["via"] == "hub" and payload["commit"] == commit and payload["manifest"] == "tiny-mistral-both"
    assert "1 files also against tiny-mistral-both" in payload["verification"]
    forced, _ = fetch(str(path), "--no-dht", "--timeout", "3", "--source", "torrent", "--out", str(tmp_path / "t"))
    assert forced.returncode == 2 and "no progress" in forced.stderr
