"""A real Hugging Face mirror for tests: olah (offline) serving a local git repo with LFS objects."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from swarm import free_port, wait_for_port

LFS_SUFFIXES = (".safetensors", ".model", ".pth", ".bin")


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", GIT_AUTHOR_DATE="2026-01-01T00:00:00", GIT_COMMITTER_DATE="2026-01-01T00:00:00")
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


def build_mirror_repo(mirrors: Path, org: str, name: str, files_from: Path) -> tuple[Path, str]:
    """A git repo at mirrors/models/ORG/NAME holding files_from's files; big ones as LFS pointers
    with their objects under .git/lfs/objects (the layout git-lfs uses). Returns (repo, commit)."""
    repo = mirrors / "models" / org / name
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for source in sorted(files_from.iterdir()):
        if not source.is_file():
            continue
        data = source.read_bytes()
        if source.suffix in LFS_SUFFIXES:
            oid = hashlib.sha256(data).hexdigest()
            objects = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4]
            objects.mkdir(parents=True, exist_ok=True)
            (objects / oid).write_bytes(data)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
            (repo / source.name).write_text(pointer)
        else:
            shutil.copy(source, repo / source.name)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "model")
    return repo, git(repo, "rev-parse", "HEAD")


@contextmanager
def olah_server(mirrors: Path, workdir: Path) -> Iterator[str]:
    """olah on 127.0.0.1 with offline = true; yields its endpoint URL."""
    port = free_port()
    config = workdir / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{workdir / "repos"}"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    exe = Path(sys.executable).parent / "olah-cli"
    log = open(workdir / "olah.log", "w")
    proc = subprocess.Popen([str(exe), "-c", str(config)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        time.sleep(0.1)
