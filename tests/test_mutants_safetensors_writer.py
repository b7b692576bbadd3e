"""mdist.convert.safetensors_writer, in process: the header byte for byte, the streamed and the
kernel-copied bytes, and the shard plan.

Written for mutation testing (bench/mutation.py, docs/testing.md). Files are read back with the
`safetensors` library; headers are compared with bytes written out here by hand.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mdist.convert import kernel_copy
from mdist.convert.kernel_copy import copy_into
from mdist.convert.safetensors_writer import TensorSource, build_header, plan_shards, write_safetensors
from mdist.errors import InputError


def source(name: str, data: bytes, dtype: str = "U8", shape: tuple | None = None, pieces: int = 1,
           file_range=None) -> TensorSource:
    shape = (len(data),) if shape is None else shape
    step = max(1, -(-len(data) // pieces))
    return TensorSource(name, dtype, shape, len(data),
                        lambda: [data[i:i + step] for i in range(0, len(data), step)], file_range)


def test_header_bytes() -> None:
    tensors = [source("a", bytes(24), "F32", (2, 3)), source("b", bytes(5))]
    text = ('{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},'
            '"b":{"dtype":"U8","shape":[5],"data_offsets":[24,29]}}')
    assert len(text) == 142  # + 8 = 150: two spaces to 152
    assert build_header(tensors, {"format": "pt"}) == struct.pack("<Q", 144) + text.encode() + b"  "
    bare = '{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"U8","shape":[5],"data_offsets":[24,29]}}'
    for metadata in (None, {}):
        assert len(bare) == 111  # + 8 = 119: one space to 120
        assert build_header(tensors, metadata) == struct.pack("<Q", 112) + bare.encode() + b" "


@pytest.mark.parametrize("length", range(1, 9))
def test_header_padding_is_the_least_that_aligns(length: int) -> None:
    header = build_header([source("x" * length, b"\0")], None)
    size = struct.unpack("<Q", header[:8])[0]
    assert size == len(header) - 8 and len(header) % 8 == 0
    text = header[8:].rstrip(b" ")
    assert json.loads(text) == {"x" * length: {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    assert len(header) - 8 - len(text) < 8


def test_reserved_and_repeated_names_are_refused_with_the_name() -> None:
    for names, shown in ((["a", "a"], "'a'"), (["__metadata__"], "'__metadata__'")):
        with pytest.raises(InputError) as caught:
            build_header([source(n, b"\0") for n in names], None)
        assert str(caught.value) == f"safetensors output: tensor name {shown} is used twice or reserved"
    with pytest.raises(InputError) as caught:
        build_header([source("a\n", b"\0")], None)
    assert str(caught.value).startswith("safetensors output")


def test_written_file_reads_back_with_the_library(tmp_path: Path) -> None:
    from safetensors import safe_open

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(7, dtype=np.int16),
              "e": np.zeros((0, 3), dtype=np.float16)}
    dtypes = {np.float32: "F32", np.int16: "I16", np.float16: "F16"}
    tensors = [source(n, a.tobytes(), dtypes[a.dtype.type], a.shape, pieces=3) for n, a in arrays.items()]
    seen: list[int] = []
    size = write_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt"}, on_bytes=seen.append)
    assert size == (tmp_path / "m.safetensors").stat().st_size
    assert sum(seen) == sum(a.nbytes for a in arrays.values()) and len(seen) == 6  # 3 + 3 pieces, none empty
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert list(f.keys()) == sorted(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(f.get_tensor(name), array)
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_a_tensor_of_the_wrong_size_writes_nothing(tmp_path: Path) -> None:
    short = TensorSource("t", "U8", (4,), 4, lambda: [b"abc"])
    with pytest.raises(ValueError) as caught:
        write_safetensors(tmp_path / "m.safetensors", [source("a", b"x"), short])
    assert str(caught.value) == "t: wrote 3 bytes, expected 4"
    assert os.listdir(tmp_path) == []


def test_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(InputError):
        write_safetensors(target, [source("a", b"x")])
    assert target.read_bytes() == b"old"
    write_safetensors(target, [source("a", b"x")], overwrite=True)
    assert target.read_bytes().endswith(b"x")


def test_file_ranges_are_copied_from_their_offset(tmp_path: Path) -> None:
    from safetensors import safe_open

    src = tmp_path / "src.bin"
    src.write_bytes(b"HEAD" + bytes(range(200)) + b"TAIL")
    fd = os.open(src, os.O_RDONLY)
    try:
        never = TensorSource("r", "U8", (200,), 200, lambda: pytest.fail("streamed although the kernel copies"),
                             (fd, 4))
        seen: list[int] = []
        write_safetensors(tmp_path / "m.safetensors", [source("a", b"xy"), never], on_bytes=seen.append)
    finally:
        os.close(fd)
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.get_tensor("r").tobytes() == bytes(range(200))
        assert f.get_tensor("a").tobytes() == b"xy"
    assert sum(seen) == 202


class _Handle:
    def __init__(self) -> None:
        self.flushed = 0

    def flush(self) -> None:
        self.flushed += 1

    def fileno(self) -> int:
        return 99

    def tell(self) -> int:
        return 5

    def seek(self, position: int) -> None:
        self.position = position


def test_copy_range_asks_64_mib_at_a_time(monkeypatch) -> None:
    calls: list[tuple] = []

    def fake(src, dst, count, offset):
        calls.append((src, dst, count, offset))
        return count

    monkeypatch.setattr(kernel_copy.os, "copy_file_range", fake)
    seen: list[int] = []
    handle = _Handle()
    assert copy_into(handle, (7, 1000), 200 << 20, seen.append, "big") == 200 << 20
    assert handle.flushed == 1
    assert handle.position == 5 + (200 << 20)  # the buffered handle is told where the kernel left the file
    mib = 1 << 20
    assert calls == [(7, 99, 64 * mib, 1000), (7, 99, 64 * mib, 1000 + 64 * mib), (7, 99, 64 * mib, 1000 + 128 * mib),
                     (7, 99, 8 * mib, 1000 + 192 * mib)]
    assert seen == [64 * mib, 64 * mib, 64 * mib, 8 * mib]
    assert copy_into(_Handle(), (7, 1000), 200 << 20, None, "big") == 200 << 20  # no progress callback


def test_copy_range_follows_short_copies(monkeypatch) -> None:
    calls: list[tuple] = []

    def fake(src, dst, count, offset):
        calls.append((count, offset))
        return min(count, 3)

    monkeypatch.setattr(kernel_copy.os, "copy_file_range", fake)
    assert copy_into(_Handle(), (5, 10), 8, None, "t") == 8
    assert calls == [(8, 10), (5, 13), (2, 16)]


@pytest.mark.parametrize("failure", ["error", "zero"])
def test_copy_range_that_cannot_start_leaves_it_to_streaming(monkeypatch, failure: str) -> None:
    def fake(src, dst, count, offset):
        if failure == "error":
            raise OSError(18, "Invalid cross-device link")
        return 0

    monkeypatch.setattr(kernel_copy.os, "copy_file_range", fake)
    assert copy_into(_Handle(), (5, 10), 8, None, "t") == 0


def test_copy_range_that_stops_midway_is_an_error(monkeypatch, tmp_path: Path) -> None:
    answers = iter([3])
    monkeypatch.setattr(kernel_copy.os, "copy_file_range", lambda *a: next(answers, 0))
    with pytest.raises(OSError) as caught:
        copy_into(_Handle(), (5, 10), 8, None, "t")
    assert str(caught.value) == "t: copy stopped after 3 of 8 bytes"
    answers = iter([3])
    never = TensorSource("t", "U8", (8,), 8, lambda: pytest.fail("streamed after a partial copy"), (5, 10))
    with pytest.raises(InputError) as caught:
        write_safetensors(tmp_path / "m.safetensors", [never])
    assert "t: copy stopped after 3 of 8 bytes" in str(caught.value)  # the tensor named
    assert os.listdir(tmp_path) == []


def test_falls_back_to_streaming_when_the_kernel_cannot_copy(monkeypatch, tmp_path: Path) -> None:
    from safetensors import safe_open

    def refuse(*args):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(kernel_copy.os, "copy_file_range", refuse)
    seen: list[int] = []
    write_safetensors(tmp_path / "m.safetensors", [source("t", b"abcdefgh", pieces=2, file_range=(5, 0))],
                      on_bytes=seen.append)
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.get_tensor("t").tobytes() == b"abcdefgh"
    assert seen == [4, 4]


def _sizes(shards: list[list[TensorSource]]) -> list[list[int]]:
    return [[t.nbytes for t in shard] for shard in shards]


def test_plan_shards() -> None:
    def tensors(*sizes: int) -> list[TensorSource]:
        return [source(f"t{i}", bytes(n)) for i, n in enumerate(sizes)]

    assert _sizes(plan_shards(tensors(3, 3, 3), 6)) == [[3, 3], [3]]  # exactly full stays together
    assert _sizes(plan_shards(tensors(3, 3, 3), 5)) == [[3], [3], [3]]
    assert _sizes(plan_shards(tensors(10, 1, 1), 5)) == [[10], [1, 1]]  # too big: alone, no empty shard first
    assert _sizes(plan_shards(tensors(1, 10, 1), 5)) == [[1], [10], [1]]
    assert _sizes(plan_shards(tensors(2, 2, 2, 2, 2), 4)) == [[2, 2], [2, 2], [2]]  # the size restarts per shard
    assert _sizes(plan_shards([], 5)) == [[]]
    names = [t.name for shard in plan_shards(tensors(1, 2, 3, 4), 4) for t in shard]
    assert names == ["t0", "t1", "t2", "t3"]
