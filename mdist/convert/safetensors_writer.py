"""Write a safetensors file by streaming tensor bytes, so memory does not grow with the model.

The `safetensors` library serialises from in-memory arrays; a 14.5 GB checkpoint must not be
in memory, so the header is computed first and the bytes are streamed after it. The result is
read back by `safetensors.safe_open` in the tests.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mdist.atomic import atomic_writer
from mdist.convert.kernel_copy import copy_into
from mdist.convert.safetensors_reader import METADATA_KEY, check_tensor_name
from mdist.errors import InputError

_ALIGN = 8


@dataclass(frozen=True)
class TensorSource:
    """One tensor to write: its name, safetensors dtype, shape and a way to stream its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterable[bytes]]
    file_range: tuple[int, int] | None = None  # (fd, offset): the bytes lie verbatim in another file


def build_header(tensors: list[TensorSource], metadata: dict[str, str] | None) -> bytes:
    """The header, refusing names the reader refuses (a .pth key is anyone's text), before any byte is written."""
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = metadata
    offset = 0
    for tensor in tensors:
        check_tensor_name(tensor.name, "safetensors output")
        if tensor.name in header or tensor.name == METADATA_KEY:
            raise InputError(f"safetensors output: tensor name {tensor.name!r} is used twice or reserved")
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    target: Path,
    tensors: list[TensorSource],
    *,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write tensors (in the given order) to target atomically; return the file size."""
    header = build_header(tensors, metadata)
    written = len(header)
    with atomic_writer(target, overwrite=overwrite) as handle:
        handle.write(header)
        for tensor in tensors:
            count = copy_into(handle, tensor.file_range, tensor.nbytes, on_bytes, tensor.name) if tensor.file_range else 0
            if count == 0:
                for chunk in tensor.chunks():
                    handle.write(chunk)
                    count += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            if count != tensor.nbytes:
                raise ValueError(f"{tensor.name}: wrote {count} bytes, expected {tensor.nbytes}")
            written += count
    return written


def plan_shards(tensors: list[TensorSource], max_shard_bytes: int) -> list[list[TensorSource]]:
    """Split tensors, in order, into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    shards: list[list[TensorSource]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards
