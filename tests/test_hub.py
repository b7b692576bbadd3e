"""mdist fetch hf://… against a real mirror (olah, offline, on loopback) and a lying one."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import FIXTURE, run_mdist
from hubmirror import build_mirror_repo, olah_server
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


class _LyingProxy(BaseHTTPRequestHandler):
    """Forwards to the real mirror, but flips one byte of every safetensors body it serves.
    Headers (sizes, ETags, the LFS oid) stay the mirror's: the hashes still advertise the original."""

    upstream = ""

    def _forward(self, method: str) -> None:
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "range")}
        conn.request(method, self.path, headers=headers)
        response = conn.getresponse()
        body = response.read() if method == "GET" else b""
        if method == "GET" and "/resolve/" in self.path and self.path.endswith(".safetensors") and body:
            body = bytearray(body)
            body[len(body) // 2] ^= 0x01
            body = bytes(body)
        self.send_response(response.status)
        mine = f"127.0.0.1:{self.server.server_address[1]}"
        for key, value in response.getheaders():
            if key.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            self.send_header(key, value.replace(target.netloc, mine))
        length = response.getheader("Content-Length") if method == "HEAD" else str(len(body))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._forward("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._forward("HEAD")

    def log_message(self, *args) -> None:
        pass


def test_tampered_mirror_is_detected(mirror, tmp_path: Path) -> None:
    endpoint, commit, _ = mirror
    _LyingProxy.upstream = endpoint
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "got"
        result, _ = fetch("hf://org/tiny-mistral", "--endpoint", f"http://127.0.0.1:{server.server_address[1]}",
                          "--out", str(out))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "model-00001-of-00001.safetensors" in line and "sha256 mismatch" in line and "expected" in line
    assert not (out / "model-00001-of-00001.safetensors").exists()
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
