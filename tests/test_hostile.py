"""Hostile checkpoints: every payload is refused, runs nothing, and leaves no output file."""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import pickletools
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURE, run_mdist
from mdist.convert.checkpoint import Checkpoint
from mdist.convert.pickle_reader import MAX_PICKLE_BYTES, STORAGE_TYPES, StorageRef, interpret_state_dict
from mdist.errors import CheckpointError, MdistError
from pickle_payloads import VALID, payloads, run_mdist_capped, write_archive, zip_bomb

PAYLOAD_NAMES = sorted(payloads(Path("/marker")))


def test_the_hand_built_valid_archive_is_accepted(tmp_path: Path) -> None:
    """Positive control: the payloads differ from an accepted file only in their hostile part."""
    write_archive(tmp_path / "m" / "consolidated.00.pth", VALID)
    result = run_mdist("convert", str(tmp_path / "m"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "consolidated.safetensors").exists()


def _assert_refused(tmp_path: Path, archive_dir: Path, marker: Path, exit_code: int = 1) -> str:
    """Exit 1 for refused content, 2 for a file that is not a checkpoint at all; one line; nothing ran or written."""
    out = tmp_path / "out"
    result = run_mdist_capped("convert", str(archive_dir), "--out", str(out))
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr
    assert not marker.exists(), "payload ran"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return lines[0]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payload_is_refused(tmp_path: Path, name: str) -> None:
    """Refused for its own cause: a payload refused for another reason would hide a gap in that check."""
    marker = tmp_path / "pwned"
    payload = payloads(marker)[name]
    write_archive(tmp_path / "m" / "consolidated.00.pth", payload.data, payload.storages)
    line = _assert_refused(tmp_path, tmp_path / "m", marker)
    assert payload.cause in line, line


def test_an_unknown_global_is_refused_even_where_nothing_else_would_refuse() -> None:
    """The allow-list must raise, not answer with an inert stand-in: here the global is popped unused."""
    data = payloads(Path("/m"))["unknown global popped unused"].data
    with pytest.raises(CheckpointError, match=r"refused global os\.system"):
        interpret_state_dict(data, lambda key, dtype, numel: StorageRef(key, dtype, numel))


@pytest.mark.parametrize("name", [n for n in PAYLOAD_NAMES if payloads(Path("/m"))[n].teeth])
def test_payload_really_runs_under_plain_pickle(tmp_path: Path, name: str) -> None:
    """The payloads have teeth: pickle.loads executes them (in a throwaway subprocess)."""
    marker = tmp_path / "pwned-by-pickle"
    data = payloads(marker)[name].data
    (tmp_path / "p.pkl").write_bytes(data)
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
                    str(tmp_path / "p.pkl")], capture_output=True, timeout=60, cwd=tmp_path)
    assert marker.exists()


def test_refusal_names_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_archive(tmp_path / "m" / "consolidated.00.pth", payloads(marker)["os.system via REDUCE"].data)
    line = _assert_refused(tmp_path, tmp_path / "m", marker)
    assert "os.system" in line


def test_truncated_zip(tmp_path: Path) -> None:
    """Unreadable input (exit 2), not refused content."""
    raw = (FIXTURE / "consolidated.00.pth").read_bytes()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "consolidated.00.pth").write_bytes(raw[: len(raw) // 2])
    line = _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none", exit_code=2)
    assert "is not a torch.save zip archive" in line


def test_zip_bomb_storage(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    zip_bomb(tmp_path / "m" / "consolidated.00.pth")
    assert (tmp_path / "m" / "consolidated.00.pth").stat().st_size < 5 << 20
    line = _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")
    assert "zip bomb" in line


def test_oversized_data_pkl(tmp_path: Path) -> None:
    """Stored, so no compression ratio check stands in front of the size check."""
    bomb = b"\x80\x02" + b"N0" * (MAX_PICKLE_BYTES // 2) + b"N."
    write_archive(tmp_path / "m" / "consolidated.00.pth", bomb)
    line = _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")
    assert f"data.pkl is larger than allowed ({len(bomb)} > {MAX_PICKLE_BYTES} bytes)" in line


def test_two_data_pkl_entries(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "m" / "consolidated.00.pth", VALID)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", VALID)
    line = _assert_refused(tmp_path, tmp_path / "m", tmp_path / "none")
    assert "exactly one */data.pkl" in line


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


@functools.lru_cache(maxsize=1)
def _torch_archive() -> bytes:
    """A real torch.save archive, small, with every storage present and views that share storages."""
    import torch

    torch.manual_seed(0)
    base = torch.randn(6, 5)
    state = {"base": base, "rows": base[2:], "t": base.t(), "column": base[:, 1], "every_other": base[::2, 1::2],
             "half": torch.randn(3, 4).half(), "ints": torch.arange(6).reshape(2, 3), "empty": torch.zeros(0, 3)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _archive_regions(raw: bytes) -> dict[str, list[int]]:
    """Byte positions of a torch.save archive by what they hold, for mutations aimed at each reader layer."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
        cd_start = archive.start_dir
    regions: dict[str, list[int]] = {"structure": list(range(cd_start, len(raw))), "storage data": []}
    for info, following in zip(infos, [i.header_offset for i in infos[1:]] + [cd_start]):
        name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
        data = range(info.header_offset + 30 + name_len + extra_len, info.header_offset + 30 + name_len + extra_len
                     + info.compress_size)
        regions["structure"] += [*range(info.header_offset, data.start), *range(data.stop, following)]
        if info.filename.endswith("/data.pkl"):
            regions["pickle"] = list(data)
            regions["tensor geometry"] = [data.start + pos + 1 for op, _, pos in pickletools.genops(raw[data.start:])
                                          if op.name in ("BININT1", "BININT2", "BININT")]
        elif "/data/" in info.filename:
            regions["storage data"] += list(data)
    return regions


def _assert_same_as_torch(path: Path, checkpoint: Checkpoint, tensors: dict[str, bytes]) -> bool:
    """Where torch.load also reads the mutated file, it must see what mdist read. False if torch refuses it."""
    import torch

    try:
        expected = torch.load(path, weights_only=True)
    except Exception:
        return False
    assert sorted(expected) == sorted(tensors)
    for name, tensor in expected.items():
        assert tuple(tensor.shape) == checkpoint.tensors[name].shape, name
        assert tensor.numpy().tobytes() == tensors[name], name  # numpy: C order whatever the strides
    return True


@contextlib.contextmanager
def _address_space_headroom(headroom: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_AS to its current size + headroom: a bomb raises MemoryError, not OOM."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    status = Path("/proc/self/status").read_text()
    current = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmSize:"))) * 1024
    limit = current + headroom if hard == resource.RLIM_INFINITY else min(hard, current + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_fuzzed_archive_only_raises_mdist_errors(tmp_path: Path) -> None:
    """Mutate a real torch.save archive (tensor geometry, any pickle byte, zip structure, storage bytes, anywhere).

    Only MdistError may come out, within 1 GiB of extra address space; whenever both mdist and
    torch.load read a mutant, they must see the same tensors; and a fair share of mutants must get
    past opening to tensor reading, or the fuzzer would test nothing but the door.
    """
    raw = _torch_archive()
    regions = _archive_regions(raw)
    path = tmp_path / "consolidated.00.pth"
    outcomes: collections.Counter[str] = collections.Counter()
    kinds = {
        "tensor geometry": st.tuples(st.sampled_from(regions["tensor geometry"]), st.integers(0, 16)),
        **{kind: st.tuples(st.sampled_from(regions[kind]), st.integers(0, 255))
           for kind in ("pickle", "structure", "storage data")},
        "anywhere": st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
    }

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(kinds)).flatmap(
        lambda kind: st.tuples(st.just(kind), st.lists(kinds[kind], min_size=1, max_size=3))))
    def run(mutation: tuple[str, list[tuple[int, int]]]) -> None:
        kind, changes = mutation
        data = bytearray(raw)
        for at, value in changes:
            data[at] = value
        path.write_bytes(bytes(data))
        outcomes["examples"] += 1
        try:
            with Checkpoint(path) as checkpoint:
                outcomes["opened"] += 1
                outcomes["opened: " + kind] += 1
                tensors = {name: b"".join(checkpoint.iter_bytes(t)) for name, t in checkpoint.tensors.items()}
                for tensor in checkpoint.tensors.values():
                    checkpoint.array(tensor)
                outcomes["same as torch.load" if _assert_same_as_torch(path, checkpoint, tensors)
                         else "torch.load refuses"] += 1
        except MdistError as exc:
            outcomes[type(exc).__name__] += 1

    with _address_space_headroom(1 << 30):
        run()
    assert outcomes["opened"] >= 0.2 * outcomes["examples"], outcomes
    assert all(outcomes["opened: " + kind] for kind in kinds), outcomes
    assert outcomes["CheckpointError"] and outcomes["same as torch.load"], outcomes


def test_all_storage_types_are_torch_names() -> None:
    import torch

    for name in STORAGE_TYPES:
        assert hasattr(torch, name)
