"""mdist.convert.safetensors_reader, in process: every header check at its edges, with its message.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_documents_hostile.py
compares mdist with the safetensors library on hostile files; these pin each bound and message.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mdist.convert import safetensors_reader as sr
from mdist.errors import InputError

MAX = (1 << 63) - 1


def raw_file(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def refused(match: str, func, *args) -> str:
    with pytest.raises(InputError) as info:
        func(*args)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_limits() -> None:
    assert (sr.MAX_HEADER_BYTES, sr.MAX_RANK, sr.MAX_NBYTES) == (16 << 20, 32, MAX)
    assert sr.METADATA_KEY == "__metadata__"


def test_parse_header_json() -> None:
    assert sr.parse_header_json(b'{"a": 1}', "w") == {"a": 1}
    assert refused("", sr.parse_header_json, b"[]", "w") == "w: invalid safetensors header: not a JSON object"
    assert refused("", sr.parse_header_json, b"[" * 100_000, "w") == (
        "w: invalid safetensors header: JSON nested too deeply")
    assert refused("", sr.parse_header_json, b"\xff", "w").startswith("w: invalid safetensors header: not valid JSON (")
    refused("duplicate key", sr.parse_header_json, b'{"a": 1, "a": 2}', "w")
    refused("not valid JSON", sr.parse_header_json, b'{"a": NaN}', "w")
    text = refused("not valid JSON", sr.parse_header_json, b'{"' + "\u00e9".encode() * 300, "w")
    assert text.isascii() and len(text) < 200


def test_text_and_names() -> None:
    assert sr._check_text("é", "w", "r") == "é"
    assert refused("", sr._check_text, 1, "w", "role") == "w: invalid safetensors header: role is not a string"
    assert refused("", sr._check_text, "a\udc80", "w", "role") == (
        "w: invalid safetensors header: role 'a\\\\udc80' is not valid Unicode")
    for good in ["a", " ", "~", "\u00a0", "é", "layers.0.attention.wq.weight"]:
        assert sr.check_tensor_name(good, "w") == good
    for bad in ["\x00", "a\x1f", "\x7f", "\x80", "\x9f", "a\nb"]:
        assert refused("", sr.check_tensor_name, bad, "w") == (
            f"w: invalid safetensors header: tensor name {sr.printable(bad)!r} holds a control character")
    refused("tensor name is not a string", sr.check_tensor_name, 1, "w")


def test_metadata() -> None:
    assert sr._check_metadata(None, "w") is None
    meta = {"format": "pt", "k": ""}
    assert sr._check_metadata(meta, "w") is meta
    assert sr._check_metadata({}, "w") == {}
    assert refused("", sr._check_metadata, [], "w") == "w: invalid safetensors header: __metadata__ is not an object of strings"
    assert refused("", sr._check_metadata, {"k": 1}, "w") == (
        "w: invalid safetensors header: __metadata__ value of 'k' is not a string")
    assert refused("", sr._check_metadata, {"k\udc80": "v"}, "w") == (
        "w: invalid safetensors header: __metadata__ key 'k\\\\udc80' is not valid Unicode")


def test_non_negative_int() -> None:
    assert sr._non_negative_int(0) and sr._non_negative_int(MAX)
    for bad in [-1, MAX + 1, True, False, 1.0, "1", None]:
        assert not sr._non_negative_int(bad), bad


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_entries() -> None:
    assert sr._check_entry("t", entry(), "w") == sr.TensorEntry("t", "F32", (2,), 0, 8)
    assert sr._check_entry("t", entry("BF16", (2, 3), (10, 22)), "w") == sr.TensorEntry("t", "BF16", (2, 3), 10, 22)
    assert sr._check_entry("t", entry("U8", (), (0, 1)), "w").shape == ()
    assert sr._check_entry("t", entry("F64", [1] * 32, (0, 8)), "w").shape == (1,) * 32
    assert sr._check_entry("t", entry("I8", (0, 5), (3, 3)), "w").end == 3
    for dtype, size in [("F16", 2), ("F64", 8), ("I64", 8), ("I32", 4), ("I16", 2), ("I8", 1), ("U8", 1),
                        ("BOOL", 1), ("BF16", 2), ("F32", 4)]:
        assert sr._check_entry("t", entry(dtype, (3,), (0, 3 * size)), "w").dtype == dtype


@pytest.mark.parametrize("info, message", [
    ([], "tensor 't' must hold exactly dtype, shape and data_offsets"),
    ({"dtype": "F32", "shape": [2]}, "tensor 't' must hold exactly dtype, shape and data_offsets"),
    ({**entry(), "x": 1}, "tensor 't' must hold exactly dtype, shape and data_offsets"),
    (entry("F8"), "tensor 't' has unsupported dtype 'F8'"),
    (entry(1), "tensor 't' has unsupported dtype 1"),
    (entry("f32"), "tensor 't' has unsupported dtype 'f32'"),
    ({**entry(), "shape": 2}, "tensor 't' has a shape that is not a list of at most 32 non-negative integers"),
    (entry("U8", [1] * 33, (0, 1)), "has a shape that is not a list of at most 32"),
    (entry("U8", (-1,), (0, 1)), "has a shape that is not a list"),
    (entry("U8", (True,), (0, 1)), "has a shape that is not a list"),
    (entry("U8", (MAX + 1,), (0, 1)), "has a shape that is not a list"),
    ({**entry(), "data_offsets": 0}, "tensor 't' has data_offsets that are not two non-negative integers"),
    (entry(offsets=(0,)), "has data_offsets that are not two"),
    (entry(offsets=(0, 8, 8)), "has data_offsets that are not two"),
    (entry(offsets=(-1, 8)), "has data_offsets that are not two"),
    (entry(offsets=(0, 8.0)), "has data_offsets that are not two"),
    (entry(offsets=(0, MAX + 1)), "has data_offsets that are not two"),
    (entry("F16", (1 << 62,), (0, 0)), "tensor 't' has a shape too large for 64-bit sizes"),
    (entry("F32", (0, 1 << 62), (0, 0)), "tensor 't' has a shape too large for 64-bit sizes"),
    (entry("U8", (1 << 62, 3), (0, 0)), "tensor 't' has a shape too large for 64-bit sizes"),
    (entry(offsets=(8, 0)), "tensor 't' spans -8 bytes, its shape and dtype need 8"),
    (entry(offsets=(0, 9)), "tensor 't' spans 9 bytes, its shape and dtype need 8"),
    (entry(offsets=(1, 8)), "tensor 't' spans 7 bytes, its shape and dtype need 8"),
    (entry("F32", (0, 2), (0, 4)), "spans 4 bytes, its shape and dtype need 0"),
])
def test_bad_entries(info, message: str) -> None:
    text = refused(message, sr._check_entry, "t", info, "w")
    assert text.startswith("w: invalid safetensors header: ")


def test_the_largest_sizes_that_fit() -> None:
    assert sr._check_entry("t", entry("U8", (MAX,), (0, MAX)), "w").end == MAX
    assert sr._check_entry("t", entry("U8", (0, MAX), (5, 5)), "w").shape == (0, MAX)


def test_coverage() -> None:
    e = lambda name, b, n: sr.TensorEntry(name, "U8", (n - b,), b, n)  # noqa: E731
    sr._check_coverage([], 0, "w")
    sr._check_coverage([e("b", 4, 8), e("a", 0, 4)], 8, "w")
    sr._check_coverage([e("big", 0, 4), e("empty", 0, 0)], 4, "w")  # a 0-byte tensor sorts first at its offset
    sr._check_coverage([e("a", 0, 4), e("empty", 4, 4)], 4, "w")
    assert refused("", sr._check_coverage, [e("a", 0, 4), e("b", 2, 6)], 6, "w") == (
        "w: invalid safetensors header: tensor 'b' overlaps another tensor")
    assert refused("", sr._check_coverage, [e("a", 0, 4), e("b", 5, 6)], 6, "w") == (
        "w: invalid safetensors header: tensor 'b' leaves a gap before it")
    refused("tensor 'a' leaves a gap before it", sr._check_coverage, [e("a", 1, 4)], 4, "w")
    assert refused("", sr._check_coverage, [e("a", 0, 4)], 5, "w") == (
        "w: invalid safetensors header: tensors cover 4 bytes of a 5-byte data section")
    refused("tensors cover 0 bytes of a 1-byte data section", sr._check_coverage, [], 1, "w")
    refused("tensors cover 4 bytes of a 3-byte", sr._check_coverage, [e("a", 0, 4)], 3, "w")


def test_check_header_keeps_the_order_and_skips_metadata() -> None:
    header = {"b": entry("U8", (4,), (4, 8)), "__metadata__": {"k": "v"}, "a": entry("U8", (4,), (0, 4))}
    metadata, entries = sr.check_header(header, 8, "w")
    assert metadata == {"k": "v"} and [x.name for x in entries] == ["b", "a"]
    assert sr.check_header({}, 0, "w") == (None, [])
    refused("holds a control character", sr.check_header, {"a\n": entry("U8", (0,), (0, 0))}, 0, "w")
    refused("__metadata__ is not an object", sr.check_header, {"__metadata__": 1}, 0, "w")


def test_read_exact(tmp_path: Path) -> None:
    data = bytes(range(256)) * (5 * 4096 + 3)  # more than one 1 MiB read
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert sr._read_exact(fd, 0, len(data)) == data
        assert sr._read_exact(fd, 7, 100) == data[7:107]
        assert sr._read_exact(fd, len(data) - 5, 10) == data[-5:]
        assert sr._read_exact(fd, 0, 0) == b""
    finally:
        os.close(fd)


def test_read_header_of_a_real_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64),
              "h": np.array([1.5], dtype=np.float16)}
    save_file(arrays, str(tmp_path / "m.safetensors"), metadata={"format": "np"})
    header, start = sr.read_header(tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    assert start == 8 + struct.unpack("<Q", raw[:8])[0]
    assert header["__metadata__"] == {"format": "np"}
    assert header["w"]["dtype"] == "F32" and header["w"]["shape"] == [2, 3]
    assert header["w"]["data_offsets"][1] - header["w"]["data_offsets"][0] == 24
    opened = sr.open_safetensors(tmp_path / "m.safetensors")
    assert set(opened) == {"w", "b", "h"}
    for name, array in arrays.items():
        assert opened[name].dtype == array.dtype and np.array_equal(opened[name], array)
        assert sr.dtype_name(opened[name]) == {"w": "F32", "b": "I64", "h": "F16"}[name]
    assert not opened["w"].flags.writeable
    save_file({"x": np.zeros(1, np.uint8)}, str(tmp_path / "n.safetensors"))
    assert "__metadata__" not in sr.read_header(tmp_path / "n.safetensors")[0]


def test_bf16_is_read_as_raw_bits(tmp_path: Path) -> None:
    bits = np.array([0x3F80, 0xC000], dtype=np.uint16)
    path = raw_file(tmp_path / "f", {"t": entry("BF16", (2,), (0, 4))}, bits.tobytes())
    opened = sr.open_safetensors(path)
    assert opened["t"].dtype == np.uint16 and opened["t"].tolist() == [0x3F80, 0xC000]
    assert sr.dtype_name(opened["t"]) == "BF16"


def test_an_empty_file_maps_nothing(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {})
    assert sr.open_safetensors(path) == {}
    assert sr.read_header(path) == ({}, 10)
    path = raw_file(tmp_path / "g", {"__metadata__": None})
    assert sr.read_header(path) == ({}, 8 + len(b'{"__metadata__": null}'))


def test_header_lengths(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"1234567")
    assert refused("", sr.read_header, tmp_path / "short") == (
        f"{tmp_path / 'short'} is not a safetensors file (shorter than 8 bytes)")
    refused("shorter than 8 bytes", sr.open_safetensors, tmp_path / "short")
    path = raw_file(tmp_path / "huge", b"{}", length=(16 << 20) + 1)
    assert refused("", sr.read_header, path) == (
        f"{path}: invalid safetensors header: header of {(16 << 20) + 1} bytes exceeds mdist's limit of {16 << 20}")
    path = raw_file(tmp_path / "long", b"{}", length=3)
    assert refused("", sr.read_header, path) == (
        f"{path}: invalid safetensors header: header of 3 bytes is longer than the file")
    path = raw_file(tmp_path / "exact", b"{}  ", length=4)
    assert sr.read_header(path) == ({}, 12)
    path = raw_file(tmp_path / "max", b"{" + b" " * ((16 << 20) - 2) + b"}")
    assert sr.read_header(path) == ({}, 8 + (16 << 20))


def test_a_file_that_shrinks_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = raw_file(tmp_path / "f", b'{"t": {}}')
    original = sr._read_exact
    monkeypatch.setattr(sr, "_read_exact", lambda fd, offset, count: original(fd, offset, count)[:-1]
                        if offset == 8 else original(fd, offset, count))
    assert refused("", sr.read_header, path) == f"{path}: invalid safetensors header: the file ended inside the header"


def test_data_length_is_what_follows_the_header(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"t": entry("U8", (4,), (0, 4))}, b"abcd")
    assert sr.read_header(path)[0]["t"]["data_offsets"] == [0, 4]
    path = raw_file(tmp_path / "g", {"t": entry("U8", (4,), (0, 4))}, b"abcde")
    refused("tensors cover 4 bytes of a 5-byte data section", sr.read_header, path)
    path = raw_file(tmp_path / "h", {"t": entry("U8", (4,), (0, 4))}, b"abc")
    refused("tensors cover 4 bytes of a 3-byte data section", sr.open_safetensors, path)


def test_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError):
        sr.read_header(tmp_path / "fifo")
    with pytest.raises(InputError):
        sr.open_safetensors(tmp_path / "fifo")


def test_read_exact_never_returns_more_than_asked(tmp_path: Path) -> None:
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        for count in ((1 << 20) + 5, (2 << 20) + 1, 3 << 20):
            assert sr._read_exact(fd, 3, count) == data[3:3 + count]
    finally:
        os.close(fd)


def test_a_header_length_past_int64_is_refused_as_too_large(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", b"{}", length=1 << 63)
    assert refused("", sr.read_header, path) == (
        f"{path}: invalid safetensors header: header of {1 << 63} bytes exceeds mdist's limit of {16 << 20}")
    path = raw_file(tmp_path / "g", b"{}", length=(1 << 64) - 1)
    refused(f"header of {(1 << 64) - 1} bytes exceeds", sr.open_safetensors, path)


def test_what_is_not_a_regular_file_is_named(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for func in (sr.read_header, sr.open_safetensors):
        with pytest.raises(InputError) as info:
            func(tmp_path / "fifo")
        assert str(info.value).startswith(f"{tmp_path / 'fifo'} is not a regular file"), str(info.value)
