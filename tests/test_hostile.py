"""Hostile checkpoints: every payload is refused, runs nothing, and leaves no output file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURE, run_mdist
from mdist.convert.checkpoint import Checkpoint
from mdist.convert.pickle_reader import STORAGE_TYPES, StorageRef, interpret_state_dict
from mdist.errors import CheckpointError
from pickle_payloads import VALID, payloads, write_archive, zip_bomb

PAYLOAD_NAMES = sorted(payloads(Path("/marker")))


def test_there_are_at_least_twenty_distinct_payloads() -> None:
    assert len(PAYLOAD_NAMES) >= 20


def test_the_hand_built_valid_archive_is_accepted(tmp_path: Path) -> None:
    """Positive control: the payloads differ from an accepted file only in their hostile part."""
    write_archive(tmp_path / "m" / "consolidated.00.pth", VALID)
    result = run_mdist("convert", str(tmp_path / "m"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "consolidated.safetensors").exists()


def _assert_refused(tmp_path: Path, archive_dir: Path, marker: Path) -> str:
    out = tmp_path / "out"
    result = run_mdist("convert", str(archive_dir), "--out", str(out), timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr
    assert not marker.exists(), "payload ran"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return lines[0]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payload_is_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    data, _ = payloads(marker)[name]
    write_archive(tmp_path / "m" / "consolidated.00.pth", data)
    _assert_refused(tmp_path, tmp_path / "m", marker)


@pytest.mark.parametrize("name", [n for n in PAYLOAD_NAMES if payloads(Path("/m"))[n][1]])
def test_payload_really_runs_under_plain_pickle(tmp_path: Path, name: str) -> None:
    """The payloads have teeth: pickle.loads executes them (in a throwaway subprocess)."""
    marker = tmp_path / "pwned-by-pickle"
    data, _ = payloads(marker)[name]
    (tmp_path / "p.pkl").write_bytes(data)
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
                    str(tmp_path / "p.pkl")], capture_output=True, timeout=60, cwd=tmp_path)
    assert marker.exists()


def test_refusal_names_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_archive(tmp_path / "m" / "consolidated.00.pth", payloads(marker)["os.system via REDUCE"][0])
    line = _assert_refused(tmp_path, tmp_path / "m", marker)
    assert "os.system" in line


def test_truncated_zip(tmp_path: Path) -> None:
    raw = (FIXTURE / "consolidated.00.pth").read_bytes()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "consolidated.00.pth").write_bytes(raw[: len(raw) // 2])
    _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")


def test_zip_bomb_storage(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    zip_bomb(tmp_path / "m" / "consolidated.00.pth")
    assert (tmp_path / "m" / "consolidated.00.pth").stat().st_size < 5 << 20
    line = _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")
    assert "zip bomb" in line


def test_oversized_data_pkl(tmp_path: Path) -> None:
    bomb = b"\x80\x02" + b"N0" * (40 << 20) + b"N."
    write_archive(tmp_path / "m" / "consolidated.00.pth", bomb, data_pkl_compression=zipfile.ZIP_DEFLATED)
    _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")


def test_two_data_pkl_entries(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "m" / "consolidated.00.pth", VALID)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", VALID)
    _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")


def _fixture_pickle() -> bytes:
    with zipfile.ZipFile(FIXTURE / "consolidated.00.pth") as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


FIXTURE_PKL = _fixture_pickle()


def _lookup(key: str, dtype, numel: int) -> StorageRef:
    if numel > 10**8:
        raise CheckpointError("too big")
    return StorageRef(key, dtype, numel)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(FIXTURE_PKL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(1, len(FIXTURE_PKL)))
def test_fuzzed_pickle_only_raises_checkpoint_error(mutations: list[tuple[int, int]], keep: int) -> None:
    data = bytearray(FIXTURE_PKL[:keep])
    for position, value in mutations:
        if position < len(data):
            data[position] = value
    try:
        interpret_state_dict(bytes(data), _lookup)
    except CheckpointError:
        pass


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(FIXTURE_PKL) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzzed_archive_only_raises_checkpoint_error(tmp_path_factory, mutations) -> None:
    data = bytearray(FIXTURE_PKL)
    for position, value in mutations:
        data[position] = value
    storages = {str(k): bytes(8) for k in range(3)}
    path = write_archive(tmp_path_factory.mktemp("fz") / "consolidated.00.pth", bytes(data), storages)
    try:
        with Checkpoint(path) as checkpoint:
            for tensor in checkpoint.tensors.values():
                for _ in checkpoint.iter_bytes(tensor):
                    pass
    except CheckpointError:
        pass


def test_all_storage_types_are_torch_names() -> None:
    import torch

    for name in STORAGE_TYPES:
        assert hasattr(torch, name)
