"""Ctrl-C and SIGTERM stop long work promptly, with 130 / 143, whatever is still being hashed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPARSE_BYTES = 200 * 10**9  # hashing this takes minutes; a hole costs no disk


def start_verify(tmp_path: Path) -> subprocess.Popen:
    folder = tmp_path / "big"
    folder.mkdir()
    with open(folder / "big.bin", "wb") as handle:
        handle.truncate(SPARSE_BYTES)
    manifest = tmp_path / "big.json"
    manifest.write_text(json.dumps({
        "schema": "mdist-manifest/1", "name": "big", "title": "big", "files_complete": True,
        "files": {"big.bin": {"size": SPARSE_BYTES, "sha256": "0" * 64}},
    }))
    # a background job of a non-interactive shell ignores SIGINT: restore the default for the child
    return subprocess.Popen([sys.executable, "-m", "mdist", "verify", str(folder), "--manifest", str(manifest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_verify_stops_mid_hash(tmp_path: Path, signum: int, code: int) -> None:
    process = start_verify(tmp_path)
    try:
        time.sleep(3)  # well into hashing (start-up takes about a second)
        assert process.poll() is None, process.communicate()
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert "mdist: error" not in stderr and "interrupted" in stderr
    # generous on a loaded 2-core machine; without cancellation it takes minutes
    assert stopped_after < 10, stopped_after
