"""Read safetensors files as read-only memory maps (bf16 as raw uint16 bits)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from mdist.errors import InputError

_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_header(path: Path) -> tuple[dict, int]:
    """Return (header dict, offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise InputError(f"{path} is not a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 << 20):
            raise InputError(f"{path} has an invalid safetensors header")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path} has an invalid safetensors header") from None
    if not isinstance(header, dict):
        raise InputError(f"{path} has an invalid safetensors header")
    return header, 8 + header_len


def dtype_name(array: np.ndarray) -> str:
    """The safetensors dtype name of an array returned by open_safetensors."""
    return {np.dtype(v): k for k, v in _DTYPES.items()}[array.dtype]


def open_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Map a safetensors file read-only; return name -> array (bf16 as raw uint16 bits).

    The format is an 8-byte header length, a JSON header and the tensor bytes. The library's
    numpy loader copies every tensor; a memory map is what keeps a 14.5 GB model off the heap.
    """
    path = Path(path)
    size = path.stat().st_size
    header, data_start = read_header(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise InputError(f"{path}: tensor {name} has a malformed header entry")
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InputError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(v) for v in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name} has a malformed header entry") from None
        itemsize = np.dtype(dtype).itemsize
        if not (0 <= begin <= end <= size - data_start) or end - begin != itemsize * int(np.prod(shape, dtype=np.int64)):
            raise InputError(f"{path}: tensor {name} has inconsistent offsets")
        arrays[name] = mapped[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return arrays
