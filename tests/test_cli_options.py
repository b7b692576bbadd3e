"""Options that cannot apply are errors (one line, exit 2), never silently ignored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURE, run_mdist

MAGNET = "magnet:?xt=urn:btih:208b101a0f51514ecf285885a8b0f6fb1a1e4d7d&dn=x"


@pytest.mark.parametrize("args, cause", [
    ((MAGNET, "--include", "*.json"), "--include applies to hf:// sources only"),
    ((MAGNET, "--to-hf-cache"), "--to-hf-cache applies to hf:// sources only"),
    (("hf://org/model", "--peer", "127.0.0.1:1"), "--peer applies to BitTorrent sources only"),
    (("hf://org/model", "--seed"), "--seed applies to BitTorrent sources only"),
    (("hf://org/model", "--to-hf-cache", "--out", "x"), "--out and --to-hf-cache exclude each other"),
])
def test_options_that_do_not_apply(args: tuple[str, ...], cause: str, tmp_path: Path) -> None:
    result = run_mdist("fetch", *args, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and cause in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_usage_errors_are_one_line() -> None:
    result = run_mdist("run", "x", "--max-tokens", "-3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mdist: error: Invalid value for '--max-tokens': -3 is not in the range 0<=x<=32768. (see `mdist --help`)"]


def test_manifest_of_a_git_clone_skips_git_and_reads_back(tmp_path: Path) -> None:
    folder = tmp_path / "clone"
    folder.mkdir()
    (folder / "params.json").write_bytes((FIXTURE / "params.json").read_bytes())
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    out = tmp_path / "m.json"
    assert run_mdist("manifest", str(folder), "--name", "clone", "--out", str(out)).returncode == 0
    assert list(json.loads(out.read_text())["files"]) == ["params.json"]
    verified = run_mdist("verify", str(folder), "--manifest", str(out), "--json")
    assert verified.returncode == 0, verified.stdout
