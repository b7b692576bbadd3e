"""Read safetensors files as read-only memory maps (bf16 as raw uint16 bits).

The header is JSON from outside: it is bounded before it is read, parsed without recursion
errors or duplicate keys, and checked against a schema (types, ranges, coverage) before any
tensor is mapped. The `safetensors` library is the reference: every file it refuses is refused
here too (tests/test_documents_hostile.py feeds the same files to both); mdist is stricter in a
few places (header size, duplicate keys, control characters in names, absurd dimensions).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdist.errors import InputError
from mdist.jsonio import open_regular, printable, strict_loads

_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

# Mistral 7B's header is ~30 KB, Mixtral 8x22B's < 1 MB, and a single file holding every tensor of
# the largest open MoE models (~50k tensors) ~5 MB. Parsing JSON costs up to ~22x its size in
# memory (measured: 16 MiB of `[{},{},...]` peaks at ~370 MB), so 16 MiB bounds that cost while
# leaving 3x headroom. The library allows 100 MB, which took 2 GB.
MAX_HEADER_BYTES = 16 << 20
MAX_RANK = 32  # numpy's limit is 64; model weights have at most 4 dimensions
MAX_NBYTES = (1 << 63) - 1  # byte counts, offsets and element counts must fit in int64 (numpy, the library)
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class TensorEntry:
    """One checked header entry: offsets are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _refuse(what: str, detail: str) -> InputError:
    return InputError(f"{what}: invalid safetensors header: {detail}")


def parse_header_json(raw: bytes, what: str) -> dict[str, Any]:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, nesting errors as one line."""
    try:
        header = strict_loads(raw.decode("utf-8"))
    except RecursionError:
        raise _refuse(what, "JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise _refuse(what, f"not valid JSON ({printable(str(exc))})") from None
    if not isinstance(header, dict):
        raise _refuse(what, "not a JSON object")
    return header


def _check_text(text: Any, what: str, role: str) -> str:
    """Text the library would accept: a string without lone surrogates (JSON "\\udc80" escapes)."""
    if not isinstance(text, str):
        raise _refuse(what, f"{role} is not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(what, f"{role} {printable(text)!r} is not valid Unicode") from None
    return text


def check_tensor_name(name: str, what: str) -> str:
    """Tensor names reach messages, digests and converted files: no control characters either."""
    _check_text(name, what, "tensor name")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise _refuse(what, f"tensor name {printable(name)!r} holds a control character")
    return name


def _check_metadata(value: Any, what: str) -> dict[str, str] | None:
    """__metadata__ is a str -> str map (or null, as the library allows); never a tensor."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _refuse(what, f"{METADATA_KEY} is not an object of strings")
    for key, item in value.items():
        _check_text(key, what, f"{METADATA_KEY} key")
        _check_text(item, what, f"{METADATA_KEY} value of {printable(key)!r}")
    return value


def _non_negative_int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_NBYTES  # bool is not an int here


def _check_entry(name: str, info: Any, what: str) -> TensorEntry:
    """Types and ranges of one tensor entry; its byte count must match its shape and dtype."""
    where = f"tensor {printable(name)!r}"
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        raise _refuse(what, f"{where} must hold exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _refuse(what, f"{where} has unsupported dtype {printable(repr(dtype))}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_non_negative_int(d) for d in shape):
        raise _refuse(what, f"{where} has a shape that is not a list of at most {MAX_RANK} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_non_negative_int(o) for o in offsets):
        raise _refuse(what, f"{where} has data_offsets that are not two non-negative integers")
    itemsize = np.dtype(_DTYPES[dtype]).itemsize
    nonzero = itemsize
    for d in shape:  # Python ints: no overflow; (0, 2**64-1) is refused, not mapped and crashed on later
        nonzero *= max(d, 1)
        if nonzero > MAX_NBYTES:
            raise _refuse(what, f"{where} has a shape too large for 64-bit sizes")
    begin, end = offsets
    nbytes = itemsize * math.prod(shape)
    if end < begin or end - begin != nbytes:
        raise _refuse(what, f"{where} spans {end - begin} bytes, its shape and dtype need {nbytes}")
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _check_coverage(entries: list[TensorEntry], data_length: int, what: str) -> None:
    """Like the library: tensors, sorted by offsets, tile the data section exactly (no overlap, hole or tail)."""
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            kind = "overlaps another tensor" if entry.begin < position else "leaves a gap before it"
            raise _refuse(what, f"tensor {printable(entry.name)!r} {kind}")
        position = entry.end
    if position != data_length:
        raise _refuse(what, f"tensors cover {position} bytes of a {data_length}-byte data section")


def check_header(header: dict[str, Any], data_length: int, what: str) -> tuple[dict[str, str] | None, list[TensorEntry]]:
    """Validate a parsed header against the schema; return (metadata, entries in header order)."""
    metadata = _check_metadata(header.get(METADATA_KEY), what)
    entries = []
    for name, info in header.items():
        if name == METADATA_KEY:
            continue
        check_tensor_name(name, what)
        entries.append(_check_entry(name, info, what))
    _check_coverage(entries, data_length, what)
    return metadata, entries


def _read_exact(fd: int, offset: int, count: int) -> bytes:
    chunks, done = [], 0
    while done < count:
        chunk = os.pread(fd, min(count - done, 1 << 20), offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _read_header_fd(fd: int, what: str) -> tuple[dict[str, str] | None, list[TensorEntry], int]:
    """(metadata, entries, data start) of an open file; the length is checked before reading."""
    size = os.fstat(fd).st_size
    head = _read_exact(fd, 0, 8)
    if len(head) != 8:
        raise InputError(f"{what} is not a safetensors file (shorter than 8 bytes)")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > MAX_HEADER_BYTES:
        raise _refuse(what, f"header of {header_len} bytes exceeds mdist's limit of {MAX_HEADER_BYTES}")
    if header_len > size - 8:
        raise _refuse(what, f"header of {header_len} bytes is longer than the file")
    raw = _read_exact(fd, 8, header_len)
    if len(raw) != header_len:
        raise _refuse(what, "the file ended inside the header")
    header = parse_header_json(raw, what)
    metadata, entries = check_header(header, size - 8 - header_len, what)
    return metadata, entries, 8 + header_len


def read_header(path: Path) -> tuple[dict, int]:
    """Return (checked header dict, offset of the data section)."""
    path = Path(path)
    fd = open_regular(path, str(path))
    try:
        metadata, entries, data_start = _read_header_fd(fd, str(path))
    finally:
        os.close(fd)
    header: dict[str, Any] = {METADATA_KEY: metadata} if metadata is not None else {}
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    return header, data_start


def dtype_name(array: np.ndarray) -> str:
    """The safetensors dtype name of an array returned by open_safetensors."""
    return {np.dtype(v): k for k, v in _DTYPES.items()}[array.dtype]


def open_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Map a safetensors file read-only; return name -> array (bf16 as raw uint16 bits).

    The format is an 8-byte header length, a JSON header and the tensor bytes. The library's
    numpy loader copies every tensor; a memory map is what keeps a 14.5 GB model off the heap.
    The map is made from the descriptor whose header was checked, so the file cannot be swapped.
    """
    path = Path(path)
    fd = open_regular(path, str(path))
    with os.fdopen(fd, "rb") as handle:
        _, entries, data_start = _read_header_fd(fd, str(path))
        if not entries:
            return {}
        mapped = np.memmap(handle, dtype=np.uint8, mode="r")
    arrays: dict[str, np.ndarray] = {}
    for e in entries:
        arrays[e.name] = mapped[data_start + e.begin : data_start + e.end].view(_DTYPES[e.dtype]).reshape(e.shape)
    return arrays
