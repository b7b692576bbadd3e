"""Shared test helpers: the bundled fixture, random Mistral checkpoints written by real torch.save."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "mdist" / "data" / "tiny-mistral"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_mdist(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
              input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `mdist` CLI in a subprocess (bounded in time)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mdist", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=full_env, input=input,
    )


def random_mistral(directory: Path, *, dim=64, n_layers=2, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2,
                   vocab_size=300, sliding_window=None, rope_theta=None, dtype="bfloat16", seed=0,
                   tokenizer: bool = True) -> Path:
    """Write a random-weight Mistral checkpoint with torch.save, in the torrent's layout."""
    import torch

    torch.manual_seed(seed)
    tdtype = getattr(torch, dtype)
    sd = {"tok_embeddings.weight": torch.randn(vocab_size, dim) * 0.5}
    for layer in range(n_layers):
        p = f"layers.{layer}."
        sd[p + "attention.wq.weight"] = torch.randn(n_heads * head_dim, dim) / dim**0.5
        sd[p + "attention.wk.weight"] = torch.randn(n_kv_heads * head_dim, dim) / dim**0.5
        sd[p + "attention.wv.weight"] = torch.randn(n_kv_heads * head_dim, dim) / dim**0.5
        sd[p + "attention.wo.weight"] = torch.randn(dim, n_heads * head_dim) / (n_heads * head_dim) ** 0.5
        sd[p + "feed_forward.w1.weight"] = torch.randn(hidden_dim, dim) / dim**0.5
        sd[p + "feed_forward.w2.weight"] = torch.randn(dim, hidden_dim) / hidden_dim**0.5
        sd[p + "feed_forward.w3.weight"] = torch.randn(hidden_dim, dim) / dim**0.5
        sd[p + "attention_norm.weight"] = 1 + 0.1 * torch.randn(dim)
        sd[p + "ffn_norm.weight"] = 1 + 0.1 * torch.randn(dim)
    sd["norm.weight"] = 1 + 0.1 * torch.randn(dim)
    sd["output.weight"] = torch.randn(vocab_size, dim) / dim**0.5
    sd = {k: v.to(tdtype) for k, v in sd.items()}
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(sd, directory / "consolidated.00.pth")
    params = {"dim": dim, "n_layers": n_layers, "head_dim": head_dim, "hidden_dim": hidden_dim, "n_heads": n_heads,
              "n_kv_heads": n_kv_heads, "norm_eps": 1e-5, "vocab_size": vocab_size}
    if sliding_window:
        params["sliding_window"] = sliding_window
    if rope_theta:
        params["rope_theta"] = rope_theta
    (directory / "params.json").write_text(json.dumps(params))
    if tokenizer:
        shutil.copy(FIXTURE / "tokenizer.model", directory / "tokenizer.model")
    return directory


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path / "tiny-mistral")


FIXTURE_FILES = ("consolidated.00.pth", "params.json", "tokenizer.model")


def copy_fixture(target: Path) -> Path:
    """A writable copy of the bundled release's three files alone: anything a run left beside them in
    the package (a conversion, a .mdist/ folder; gitignored) would change what a test sees."""
    target = Path(target)
    target.mkdir(parents=True)
    for name in FIXTURE_FILES:
        shutil.copyfile(FIXTURE / name, target / name)
        (target / name).chmod(0o644)
    return target
