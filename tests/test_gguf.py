"""GGUF: mdist's bounded reader, `convert --layout gguf`, digests against the release, `run` on a GGUF.

transformers (an independent GGUF loader: the gguf package's reader, its own dequantisation and
q/k permutation) is the reference that the files mdist writes are what llama.cpp's converter writes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdist.convert.gguf_reader import MAX_ARRAY_ITEMS, MAX_TENSORS, read_gguf
from mdist.errors import InputError


# -- hand-made GGUF bytes -----------------------------------------------------------------------
def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv_u32(key: str, value: int) -> bytes:
    return _str(key) + struct.pack("<II", 4, value)


def _info(name: str | bytes, dims: list[int], type_id: int, offset: int) -> bytes:
    return _str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack(
        "<IQ", type_id, offset)


def make_gguf(kvs: list[bytes], infos: list[bytes], data: bytes, *, version: int = 3,
              n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % 32)
    return body + data


def _valid() -> bytes:
    """Two F32 tensors of 4x8 and 8 values, and an array of strings."""
    kvs = [_str("general.architecture") + struct.pack("<I", 8) + _str("llama"),
           _str("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + _str("a") + _str("b") + _str("c"),
           _kv_u32("llama.block_count", 1)]
    infos = [_info("token_embd.weight", [8, 4], 0, 0), _info("output_norm.weight", [8], 0, 128)]
    return make_gguf(kvs, infos, np.arange(40, dtype=np.float32).tobytes())


def _write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reader_reads_a_valid_file(tmp_path: Path) -> None:
    gguf = read_gguf(_write(tmp_path, _valid()))
    assert gguf.metadata["general.architecture"] == "llama"
    assert gguf.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    embd = gguf.tensors["token_embd.weight"]
    assert embd.shape == (4, 8) and embd.type_name == "F32"
    assert gguf.array(embd).tolist() == np.arange(32, dtype=np.float32).reshape(4, 8).tolist()
    assert gguf.array(gguf.tensors["output_norm.weight"]).tolist() == list(range(32, 40))


HOSTILE = {
    "not gguf": (b"GGML" + b"\0" * 40, "not a GGUF file"),
    "version 1": (make_gguf([], [], b"", version=1), "version 1"),
    "tensor count": (make_gguf([], [], b"", n_tensors=1 << 62), "more than allowed"),
    "kv count beyond the file": (make_gguf([], [], b"", n_kv=1000), "past the end"),
    "huge string": (make_gguf([_str("k") + struct.pack("<IQ", 8, 1 << 60)], [], b""), "allowed"),
    "string past the end": (make_gguf([_str("k") + struct.pack("<IQ", 8, 5000)], [], b""), "past the end"),
    "huge key": (make_gguf([struct.pack("<Q", 1 << 40)], [], b""), "allowed"),
    "huge array": (make_gguf([_str("k") + struct.pack("<IIQ", 9, 4, 1 << 40)], [], b""), "allowed"),
    "array of arrays": (make_gguf([_str("k") + struct.pack("<IIQ", 9, 9, 1)], [], b"\0" * 64), "not of numbers"),
    "unknown value type": (make_gguf([_str("k") + struct.pack("<I", 77)], [], b"\0" * 64), "unknown value type"),
    "bad bool": (make_gguf([_str("k") + struct.pack("<IB", 7, 2)], [], b"\0" * 64), "neither 0 nor 1"),
    "duplicate key": (make_gguf([_kv_u32("k", 1), _kv_u32("k", 2)], [], b""), "twice"),
    "unknown tensor type": (make_gguf([], [_info("t", [8], 99, 0)], b"\0" * 32), "unknown type 99"),
    "absurd dimension": (make_gguf([], [_info("t", [1 << 50], 0, 0)], b""), "dimension outside"),
    "zero dimension": (make_gguf([], [_info("t", [0], 0, 0)], b""), "dimension outside"),
    "rank 5": (make_gguf([], [_info("t", [1] * 5, 0, 0)], b""), "dimensions"),
    "tensor past the end": (make_gguf([], [_info("t", [1 << 30], 0, 0)], b"\0" * 32), "past the end"),
    "offset past the end": (make_gguf([], [_info("t", [8], 0, 1 << 62)], b"\0" * 32), "past the end"),
    "overlap": (make_gguf([], [_info("a", [16], 0, 0), _info("b", [16], 0, 32)], b"\0" * 128), "overlap"),
    "unaligned": (make_gguf([], [_info("a", [8], 0, 4)], b"\0" * 64), "aligned"),
    "duplicate tensor": (make_gguf([], [_info("a", [8], 0, 0), _info("a", [8], 0, 32)], b"\0" * 64), "twice"),
    "partial block": (make_gguf([], [_info("q", [33], 8, 0)], b"\0" * 128), "blocks"),
    "bad alignment": (make_gguf([_kv_u32("general.alignment", 3)], [], b""), "power of two"),
    "name not utf-8": (make_gguf([], [_info(b"\xff\xfe", [8], 0, 0)], b"\0" * 32), "UTF-8"),
    "control character": (make_gguf([], [_info("a\nb", [8], 0, 0)], b"\0" * 32), "control"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_reader_refuses_hostile_headers_with_one_line(tmp_path: Path, case: str) -> None:
    data, expected = HOSTILE[case]
    with pytest.raises(InputError) as error:
        read_gguf(_write(tmp_path, data))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_reader_limits_are_far_above_real_models() -> None:
    assert MAX_TENSORS >= 1 << 14 and MAX_ARRAY_ITEMS >= 262144  # DeepSeek V3's tensors, Gemma 3's vocabulary


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=9)), max_size=4),
       cut=st.integers(0, 500))
def test_fuzzed_headers_give_only_mdists_error(tmp_path: Path, edits, cut) -> None:
    data = bytearray(_valid())
    for position, patch in edits:
        data[position : position + len(patch)] = patch
    data = bytes(data[: max(cut, 24)]) if cut < len(data) else bytes(data)
    path = _write(tmp_path, data, "fuzzed.gguf")
    try:
        gguf = read_gguf(path)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    for tensor in gguf.tensors.values():  # whatever was accepted lies inside the file
        assert tensor.offset + tensor.nbytes <= len(data)
        assert gguf.raw(tensor).nbytes == tensor.nbytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(0, (1 << 64) - 1), length=st.integers(0, (1 << 64) - 1),
       dims=st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=4), offset=st.integers(0, (1 << 64) - 1),
       type_id=st.integers(0, (1 << 32) - 1))
def test_fuzzed_header_fields_give_only_mdists_error(tmp_path: Path, count, length, dims, offset, type_id) -> None:
    kvs = [_str("k") + struct.pack("<IIQ", 9, 8, count) + struct.pack("<Q", length) + b"x" * 8]
    infos = [_str("t") + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
             + struct.pack("<IQ", type_id, offset)]
    path = _write(tmp_path, make_gguf(kvs, infos, b"\0" * 256), "fields.gguf")
    with pytest.raises(InputError):
        read_gguf(path)
