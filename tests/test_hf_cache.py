"""A Hugging Face cache snapshot is a first-class input: links into the same repo's blobs/ are
followed and checked against their blob names; any other link is refused.

The cache is written by huggingface_hub itself (snapshot_download against a real olah mirror),
not by mdist, so mdist is checked against the layout the real tool produces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURE, random_mistral, run_mdist
from hubmirror import build_mirror_repo, olah_server
from mdist.convert import convert


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict[str, Path]:
    """HF_HOME holding snapshots of org/tiny-mistral (a known release) and org/random (unknown)."""
    base = tmp_path_factory.mktemp("hfcache")
    convert(FIXTURE, base / "tiny", layout="hf")
    convert(random_mistral(base / "random-raw"), base / "random", layout="hf")
    build_mirror_repo(base / "mirrors", "org", "tiny-mistral", base / "tiny")
    build_mirror_repo(base / "mirrors", "org", "random", base / "random")
    home = base / "home"
    with olah_server(base / "mirrors", base) as endpoint:
        script = ("import sys; from huggingface_hub import snapshot_download;"
                  "[print(snapshot_download(r)) for r in sys.argv[1:]]")
        env = dict(os.environ, HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")
        done = subprocess.run([sys.executable, "-c", script, "org/tiny-mistral", "org/random"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tiny, random = (Path(line) for line in done.stdout.split())
    assert (tiny / "config.json").is_symlink()  # what makes this a real cache layout
    return {"tiny": tiny, "random": random}


def report(result) -> tuple[str, dict[str, str]]:
    payload = json.loads(result.stdout)
    return payload["report"]["manifest"], {r["path"]: r["status"] for r in payload["report"]["files"]}


def test_snapshot_verifies_against_the_registry_and_its_blob_names(cache) -> None:
    result = run_mdist("verify", str(cache["tiny"]), "--json", "--strict")
    assert result.returncode == 0, result.stdout
    name, rows = report(result)
    assert name == "tiny-mistral-hf"
    assert set(rows.values()) == {"ok"} and "model-00001-of-00001.safetensors" in rows


def test_unknown_repo_verifies_by_blob_names_alone(cache) -> None:
    result = run_mdist("verify", str(cache["random"]), "--json")
    assert result.returncode == 0, result.stdout
    name, rows = report(result)
    assert name == "hf-cache models--org--random"
    assert rows and set(rows.values()) == {"ok"}


def test_snapshot_runs_and_digests_like_the_release(cache) -> None:
    expected = json.loads((FIXTURE.parents[2] / "checksums" / "tiny-mistral.json").read_text())["tensor_digest"]
    digest = run_mdist("digest", str(cache["tiny"]))
    assert digest.returncode == 0 and digest.stdout.split()[0] == expected
    run = run_mdist("run", str(cache["tiny"]), "--prompt", "ROMEO:", "--max-tokens", "4", "--json")
    assert run.returncode == 0, run.stderr


def test_a_changed_blob_and_a_foreign_link_are_named(cache, tmp_path: Path) -> None:
    snapshot = cache["random"]
    link = snapshot / "config.json"
    blob = Path(os.path.realpath(link))
    original = blob.read_bytes()
    try:
        blob.write_bytes(original.replace(b"\"vocab_size\": 300", b"\"vocab_size\": 301"))
        result = run_mdist("verify", str(snapshot), "--json")
        assert result.returncode == 1
        assert report(result)[1]["config.json"] == "mismatch"
    finally:
        blob.write_bytes(original)
    outside = tmp_path / "outside.txt"
    outside.write_text("not in the cache")
    extra = snapshot / "extra.txt"
    extra.symlink_to(outside)
    try:
        result = run_mdist("verify", str(snapshot), "--json")
        assert result.returncode == 1
        assert report(result)[1]["extra.txt"] == "refused"
    finally:
        extra.unlink()


@pytest.fixture(scope="module")
def served_cache(tmp_path_factory):
    """A real cache of org/tiny-mistral written by huggingface_hub, and the olah mirror that served it."""
    base = tmp_path_factory.mktemp("served")
    convert(FIXTURE, base / "tiny", layout="hf")
    build_mirror_repo(base / "mirrors", "org", "tiny-mistral", base / "tiny")
    home = base / "home"
    with olah_server(base / "mirrors", base) as endpoint:
        env = dict(os.environ, HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")
        done = subprocess.run([sys.executable, "-c", "from huggingface_hub import snapshot_download as s;"
                               "print(s('org/tiny-mistral'))"], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        yield endpoint, home, Path(done.stdout.strip())


def verify_hf(home: Path, *args: str):
    result = run_mdist("verify", "hf://org/tiny-mistral", "--json", *args, env={"HF_HOME": str(home)})
    return result, (json.loads(result.stdout) if result.stdout.startswith("{") else None)


def test_verify_hf_checks_the_cache_against_the_hub(served_cache) -> None:
    endpoint, home, snapshot = served_cache
    result, payload = verify_hf(home, "--endpoint", endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert payload["hub"]["checked"] == 7 and payload["hub"]["mismatches"] == []
    assert payload["snapshot"] == str(snapshot)


def test_verify_hf_offline_falls_back_to_blob_names(served_cache) -> None:
    _, home, _ = served_cache
    result, payload = verify_hf(home, "--endpoint", "http://127.0.0.1:9")  # nothing listens there
    assert result.returncode == 0, result.stdout + result.stderr
    assert payload["hub"] is None and any("hub not reachable" in n for n in payload["notes"])
    assert payload["report"]["manifest"] == "tiny-mistral-hf"


def test_verify_hf_names_a_changed_blob(served_cache, tmp_path: Path) -> None:
    endpoint, home, snapshot = served_cache
    blob = Path(os.path.realpath(snapshot / "generation_config.json"))
    original = blob.read_bytes()
    try:
        blob.write_bytes(original.replace(b"1", b"3"))
        result, payload = verify_hf(home, "--endpoint", endpoint)
        assert result.returncode == 1
        assert any(n.startswith("hub: generation_config.json: git-sha1 expected") for n in payload["notes"])
    finally:
        blob.write_bytes(original)


def test_verify_hf_unknown_repo_is_exit_2(served_cache) -> None:
    _, home, _ = served_cache
    result = run_mdist("verify", "hf://org/nothing", env={"HF_HOME": str(home)})
    assert result.returncode == 2 and "is not in the Hugging Face cache" in result.stderr


def test_verify_hf_never_hands_a_foreign_link_to_the_hub_check(served_cache, tmp_path: Path) -> None:
    endpoint, home, snapshot = served_cache
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)
    extra = snapshot / "extra.bin"
    extra.symlink_to(outside)
    try:
        result, payload = verify_hf(home, "--endpoint", endpoint)
    finally:
        extra.unlink()
    assert result.returncode == 1
    assert payload["hub"] is None and any("hub check skipped: extra.bin is refused" in n for n in payload["notes"])


def test_verify_hf_offline_answers_at_once(served_cache) -> None:
    import time
    _, home, _ = served_cache
    started = time.monotonic()
    result, _ = verify_hf(home, "--endpoint", "http://127.0.0.1:9")
    assert result.returncode == 0 and "Retry" not in result.stderr
    assert time.monotonic() - started < 20  # huggingface_hub alone retries for ~25 s
