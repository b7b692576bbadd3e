"""Options that cannot apply are errors (one line, exit 2), never silently ignored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURE, copy_fixture, run_mdist

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
        "mdist: error: Invalid value for '--max-tokens': -3 is not in the range 0<=x<=32768. (see `mdist run --help`)"]


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


def test_verify_of_a_folder_without_a_model_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("hello")
    for folder in ("empty", "notes"):
        result = run_mdist("verify", str(tmp_path / folder))
        assert result.returncode == 2 and "holds no model" in result.stderr


def test_usage_errors_point_at_the_command_help() -> None:
    result = run_mdist("verify", "x", "--strictt")
    assert result.returncode == 2 and "(see `mdist verify --help`)" in result.stderr


def test_run_of_a_named_file_uses_that_file_or_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    copy_fixture(folder)  # the release alone
    assert run_mdist("convert", str(folder), "--layout", "hf").returncode == 0
    named = run_mdist("run", str(folder / "model-00001-of-00001.safetensors"), "--prompt", "x", "--max-tokens", "1")
    assert named.returncode == 0 and "converting" not in named.stderr  # the named HF shard, not the .pth
    by_pth = run_mdist("run", str(folder / "consolidated.00.pth"), "--prompt", "x", "--max-tokens", "1")
    assert by_pth.returncode == 0 and "converting" in by_pth.stderr  # the named .pth, not the HF shard
    again = run_mdist("run", str(folder / "consolidated.00.pth"), "--prompt", "x", "--max-tokens", "1")
    assert again.returncode == 0 and "converting" not in again.stderr  # converted once
    named = run_mdist("run", str(folder / "tokenizer.model"), "--prompt", "x")
    assert named.returncode == 2 and "is not a model folder" in named.stderr


def test_digest_says_which_layout_it_used(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    copy_fixture(folder)  # the release alone
    assert run_mdist("convert", str(folder)).returncode == 0
    result = run_mdist("digest", str(folder))
    assert result.returncode == 0 and "digest uses pth" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--type", "q8_0"], "--type applies to --layout gguf only"),
    (["--layout", "hf", "--type", "f16"], "--type applies to --layout gguf only"),
    (["--shard-size", "1GB"], "--shard-size applies to --layout hf only"),
])
def test_convert_options_of_another_layout_are_usage_errors(tmp_path: Path, args: list, message: str) -> None:
    result = run_mdist("convert", str(tmp_path), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_local_archive_is_told_to_come_by_url(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"\0" * 1024)
    result = run_mdist("fetch", str(tmp_path / "x.tar"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "mdist fetches archives by URL" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["digest", "{tmp}/missing"], ["verify", "{tmp}/missing"], ["fetch", "ftp://127.0.0.1/x.tar"],
                                  ["run", "{tmp}/missing", "--prompt", "x"]])
@pytest.mark.parametrize("where", ["before", "after", "none"])
def test_debug_is_taken_before_and_after_the_command(tmp_path: Path, args: list[str], where: str) -> None:
    """`mdist --debug CMD ...` and `mdist CMD ... --debug` both show the traceback above the one
    error line; without --debug the error line is all."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    full = {"before": ["--debug", *args], "after": [*args, "--debug"], "none": args}[where]
    result = run_mdist(*full, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("mdist: error: ") and "(see `" not in lines[-1], lines[-1]
    if where == "none":
        assert len(lines) == 1
    else:
        assert lines[0] == "Traceback (most recent call last):" and len(lines) > 3


def test_a_value_that_reads_debug_stays_a_value(fixture_copy: Path) -> None:
    """`--prompt --debug`: click gives --debug to --prompt as its text, never to the debug switch."""
    result = run_mdist("run", str(fixture_copy), "--prompt", "--debug", "--max-tokens", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["prompt_tokens"] > 1


def test_every_command_takes_debug_after_its_name() -> None:
    from mdist.cli import main

    for name, command in main.commands.items():
        assert "--debug" in [opt for param in command.params for opt in param.opts], name


PATH_COMMANDS = {  # command -> (arguments after the path, what an existing path of the wrong kind is told)
    "verify": ([], "is not a folder"),
    "manifest": (["--name", "x"], "is not a folder"),
    "sign": (["--private-key", "key.pem"], "is not a folder"),
    "seed": (["--no-dht"], "is not a folder"),
    "run": (["--prompt", "x"], "is not a model folder, nor a .pth, .safetensors or .gguf file"),
    "convert": ([], "is not a model folder, nor a .pth, .safetensors or .gguf file"),
    "digest": ([], "is not a model folder, nor a .pth, .safetensors or .gguf file"),
}


@pytest.mark.parametrize("command", sorted(PATH_COMMANDS))
@pytest.mark.parametrize("kind", ["missing", "dangling link", "a file"])
def test_a_mistyped_path_is_told_the_same_by_every_command(tmp_path: Path, command: str, kind: str) -> None:
    """Nothing there: 'does not exist' (a link to nothing says so); something of the wrong kind: what
    the command takes. One line, exit 2, nothing written."""
    path = tmp_path / "model"
    if kind == "dangling link":
        path.symlink_to(tmp_path / "gone")
    elif kind == "a file":
        path.write_text("notes")
    extra, wrong_kind = PATH_COMMANDS[command]
    result = run_mdist(command, str(path), *extra, cwd=tmp_path, timeout=60,
                       env={"XDG_STATE_HOME": str(tmp_path / "state")})
    expected = {"missing": f"{path} does not exist",
                "dangling link": f"{path} does not exist (a symbolic link to {tmp_path / 'gone'}, which does not exist)",
                "a file": f"{path} {wrong_kind}"}[kind]
    assert result.returncode == 2 and result.stderr.splitlines() == [f"mdist: error: {expected}"], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "state") == ([] if kind == "missing" else ["model"])


def on_a_terminal(*args: str, env: dict) -> tuple[int, str, str]:
    """Run mdist with stderr on a pseudo-terminal (stdout piped): (exit code, what the terminal
    showed without colour codes, stdout). Bounded: 120 s."""
    import os
    import pty
    import re
    import select
    import sys
    import time

    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "mdist", *args], stdout=subprocess.PIPE, stderr=slave,
                               env={**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "160"})
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # the terminal's other end closed: the process is done with it
                    break
                if not data:
                    break
                shown += data
            elif process.poll() is not None:
                break
        stdout = process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].decode()
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode("utf-8", "replace"))
    return process.returncode, text, stdout


def test_digest_says_its_layout_once_and_shows_progress_only_on_a_terminal(tmp_path: Path) -> None:
    """Compared with a Q8_0 GGUF, the release is read twice (digests, then re-encoded): its 'several
    layouts' note is said once. On a terminal a bar shows each path being digested and the
    re-encoding; piped or with --json, stderr holds the note alone."""

    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    folder = tmp_path / "m"
    copy_fixture(folder)
    assert run_mdist("convert", str(folder), env=env).returncode == 0
    gguf = run_mdist("convert", str(folder), "--layout", "gguf", "--type", "q8_0", "--out", str(tmp_path / "g"),
                     "--json", env=env)
    assert gguf.returncode == 0, gguf.stderr
    note = f"mdist: {folder} holds several layouts (mistral, pth); digest uses pth (consolidated.00.pth)"
    for extra in ([], ["--json"]):
        piped = run_mdist("digest", str(folder), str(tmp_path / "g"), *extra, env=env)
        assert piped.returncode == 0 and piped.stderr.splitlines() == [note], piped.stderr
    code, shown, stdout = on_a_terminal("digest", str(folder), str(tmp_path / "g"), env=env)
    assert code == 0 and "same weights" in stdout
    assert shown.count("holds several layouts") == 1
    assert f"digest {folder}" in shown and f"digest {tmp_path / 'g'}" in shown
    assert "re-encoding the release into the GGUF's types" in shown
    code, shown, stdout = on_a_terminal("digest", str(folder), str(tmp_path / "g"), "--json", env=env)
    assert code == 0 and json.loads(stdout)["same"] is True
    assert shown.strip().splitlines() == [note]
