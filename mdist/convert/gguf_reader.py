"""Read a GGUF file (llama.cpp's format) strictly, in bounded memory, whatever its header claims.

A GGUF from a stranger is untrusted input. The `gguf` package's GGUFReader trusts the header: a
count of 2**60 strings is an allocation, an offset past the end is a crash later. Here every
count, length and offset is checked against the file's size and against fixed limits before
anything is allocated, tensors must lie inside the data section without overlapping, types must
be known to ggml and shapes whole blocks. Only the `gguf` package's constants are used (type
ids, block sizes). Anything refused is one line (InputError, exit 2). Tensor data is
memory-mapped, read-only, from the descriptor whose header was checked.

Layout (version 2 and 3): magic "GGUF", u32 version, u64 tensor count, u64 key-value count, the
key-values, the tensor infos (name, u32 rank, u64 dims innermost first, u32 type, u64 offset from
the data section), padding to `general.alignment` (default 32), the data section.
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
from mdist.jsonio import open_regular, printable

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 had 32-bit counts and is long obsolete
DEFAULT_ALIGNMENT = 32
MAX_TENSORS = 1 << 16  # Mixtral 8x22B has 563 tensors; DeepSeek V3 ~1,900
MAX_KV = 1 << 12  # llama.cpp's converters write ~40 keys
MAX_KEY_BYTES = 1 << 10  # keys look like `llama.attention.head_count_kv`
MAX_NAME_BYTES = 1 << 10  # ggml names are at most 63 bytes; a little slack
MAX_STRING_BYTES = 1 << 20  # a chat template is ~10 KB
MAX_ARRAY_ITEMS = 1 << 20  # vocabularies reach 262k tokens, merges ~300k
MAX_TOTAL_ITEMS = 1 << 21  # over all arrays: a Python string costs ~50 bytes, so ~100 MB at most
MAX_HEADER_BYTES = 64 << 20  # everything before the data section: ~1 MB for Mistral 7B's 32k vocabulary
MAX_RANK = 4  # GGML_MAX_DIMS
MAX_DIM = 1 << 40

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALARS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
            U64: "<Q", I64: "<q", F64: "<d"}
_NUMPY = {U8: "<u1", I8: "<i1", U16: "<u2", I16: "<i2", U32: "<u4", I32: "<i4", F32: "<f4", BOOL: "<u1",
          U64: "<u8", I64: "<i8", F64: "<f8"}


_KIND_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _quant_sizes() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, elements per block, bytes per block), from the gguf package."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor info, checked: `dims` in ggml order (innermost first), `offset` absolute in the file."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    type_name: str
    offset: int
    nbytes: int
    block_size: int
    type_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The C-order (numpy, safetensors) shape: ggml's dims reversed."""
        return tuple(reversed(self.dims))

    @property
    def row_bytes(self) -> int:
        return self.dims[0] // self.block_size * self.type_size


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    alignment: int
    data_start: int
    size: int
    mapped: np.ndarray  # the whole file, read-only, from the descriptor whose header was checked

    def raw(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as read-only uint8 rows: shape (*shape[:-1], row_bytes)."""
        flat = self.mapped[tensor.offset : tensor.offset + tensor.nbytes]
        return flat.reshape(*tensor.shape[:-1], tensor.row_bytes)

    def numbers(self, key: str, length: int) -> np.ndarray | None:
        """The metadata array `key` when it holds `length` numbers (token scores, token types), else
        None: a string or a list of strings there is the file's error, not an internal one."""
        value = self.metadata.get(key)
        if isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.shape == (length,):
            return value
        return None

    def scalar(self, key: str, kind: type, default: Any = None) -> Any:
        """The metadata value `key` when it is one value of `kind` (str, int, float or bool; bool is
        no int, an int is a float), `default` when absent. Anything else there (an array, a string
        for a number) is the file's error, one line: a value compared or truth-tested as the wrong
        type was an internal error (numpy's 'truth value of an array is ambiguous') or a silent
        misreading ("false" taken as true)."""
        if key not in self.metadata:
            return default
        value = self.metadata[key]
        fits = type(value) is kind or (kind is float and type(value) is int)
        if not fits:
            shown = "an array" if isinstance(value, (list, np.ndarray)) else f"{value!r}"[:40]
            raise InputError(f"{printable(self.path.name)}: {printable(key)} must be one "
                             f"{_KIND_NAMES[kind]}, not {shown}")
        return value

    def array(self, tensor: GGUFTensor) -> np.ndarray:
        """F32/F16 as floats, BF16 as raw uint16 bits, in C order; other types as raw rows (uint8)."""
        raw = self.raw(tensor)
        view = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}.get(tensor.type_name)
        return raw if view is None else raw.view(view)


class _Cursor:
    """Reads the header from a descriptor in blocks; every read is checked against the file's size
    and the header limit before any buffer is sized by a value from the file."""

    BLOCK = 1 << 20

    def __init__(self, fd: int, size: int, label: str) -> None:
        self.fd, self.size, self.label = fd, size, label
        self.pos = 0
        self._buf, self._buf_pos = b"", 0
        self.items = 0  # array items read so far, against MAX_TOTAL_ITEMS

    def fail(self, detail: str) -> InputError:
        return InputError(f"{self.label}: invalid GGUF: {detail}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file (at byte {self.pos}, {n} bytes)")
        if self.pos + n > MAX_HEADER_BYTES:
            raise self.fail(f"the header is larger than {MAX_HEADER_BYTES >> 20} MiB")
        start = self.pos - self._buf_pos
        if start < 0 or start + n > len(self._buf):
            self._buf = os.pread(self.fd, max(n, self.BLOCK), self.pos)
            self._buf_pos = self.pos
            start = 0
            if len(self._buf) < n:
                raise self.fail("the file ended while being read (was it changed?)")
        self.pos += n
        return self._buf[start : start + n]

    def scalar(self, vtype: int, what: str) -> Any:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, limit: int, what: str) -> str:
        length = self.scalar(U64, what)
        if length > limit:
            raise self.fail(f"{what} is {length} bytes long, more than the {limit} allowed")
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def _value(cursor: _Cursor, vtype: int, key: str) -> Any:
    if vtype == STRING:
        return cursor.string(MAX_STRING_BYTES, f"the value of {key}")
    if vtype == ARRAY:
        item_type, count = cursor.scalar(U32, key), cursor.scalar(U64, key)
        if count > MAX_ARRAY_ITEMS:
            raise cursor.fail(f"{key} has {count} items, more than the {MAX_ARRAY_ITEMS} allowed")
        cursor.items += count
        if cursor.items > MAX_TOTAL_ITEMS:
            raise cursor.fail(f"the arrays hold more than {MAX_TOTAL_ITEMS} items in all")
        if item_type == STRING:
            return [cursor.string(MAX_STRING_BYTES, f"an item of {key}") for _ in range(count)]
        if item_type not in _NUMPY:
            raise cursor.fail(f"{key} is an array of type {item_type}, not of numbers or strings")
        item = np.dtype(_NUMPY[item_type])
        values = np.frombuffer(cursor.take(count * item.itemsize, key), dtype=item).copy()
        if item_type == BOOL and values.size and values.max() > 1:
            raise cursor.fail(f"{key} holds a boolean that is neither 0 nor 1")
        return values.astype(bool) if item_type == BOOL else values
    if vtype not in _SCALARS:
        raise cursor.fail(f"{key} has unknown value type {vtype}")
    value = cursor.scalar(vtype, key)
    if vtype == BOOL:
        if value > 1:
            raise cursor.fail(f"{key} is a boolean that is neither 0 nor 1")
        return bool(value)
    return value


def read_gguf(path: Path) -> GGUFFile:
    """Parse and check a GGUF file's header; tensors are mapped only when asked for."""
    path = Path(path)
    label = printable(path.name)
    fd = open_regular(path, str(path))
    try:
        size = os.fstat(fd).st_size
        cursor = _Cursor(fd, size, label)
        if size < 24 or os.pread(fd, 4, 0) != MAGIC:
            raise InputError(f"{label} is not a GGUF file (no GGUF magic)")
        cursor.take(4, "magic")
        version = cursor.scalar(U32, "version")
        if version not in VERSIONS:
            raise cursor.fail(f"version {version} is not supported (only {', '.join(map(str, VERSIONS))})")
        n_tensors, n_kv = cursor.scalar(U64, "tensor count"), cursor.scalar(U64, "key-value count")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise cursor.fail(f"{n_tensors} tensors and {n_kv} keys is more than allowed "
                              f"({MAX_TENSORS} tensors, {MAX_KV} keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cursor.string(MAX_KEY_BYTES, "a key")
            if key in metadata:
                raise cursor.fail(f"key {printable(key)!r} appears twice")
            metadata[key] = _value(cursor, cursor.scalar(U32, key), printable(key))
        infos = [_tensor_info(cursor) for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or not (
                0 < alignment <= 1 << 16 and alignment & (alignment - 1) == 0):
            raise cursor.fail("general.alignment must be a power of two up to 65536")
        data_start = -(-cursor.pos // alignment) * alignment
        tensors = _place(cursor, infos, alignment, data_start)
        with os.fdopen(os.dup(fd), "rb") as handle:  # mmap keeps its own reference to the file
            mapped = np.memmap(handle, dtype=np.uint8, mode="r", shape=(size,))
        return GGUFFile(path, version, metadata, tensors, alignment, data_start, size, mapped)
    finally:
        os.close(fd)


def _tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string(MAX_NAME_BYTES, "a tensor name")
    shown = printable(name)
    if not name or any(ord(c) < 32 for c in name):
        raise cursor.fail(f"tensor name {shown!r} is empty or holds control characters")
    rank = cursor.scalar(U32, name)
    if not 1 <= rank <= MAX_RANK:
        raise cursor.fail(f"tensor {shown} has {rank} dimensions (1 to {MAX_RANK} allowed)")
    dims = tuple(cursor.scalar(U64, name) for _ in range(rank))
    if any(not 1 <= d <= MAX_DIM for d in dims):
        raise cursor.fail(f"tensor {shown} has a dimension outside 1..{MAX_DIM}: {list(dims)}")
    return name, dims, cursor.scalar(U32, name), cursor.scalar(U64, name)


def _place(cursor: _Cursor, infos: list[tuple[str, tuple[int, ...], int, int]], alignment: int,
           data_start: int) -> dict[str, GGUFTensor]:
    """Sizes from types and shapes; every tensor aligned, inside the file, none overlapping."""
    sizes = _quant_sizes()
    tensors: dict[str, GGUFTensor] = {}
    for name, dims, type_id, offset in infos:
        shown = printable(name)
        if name in tensors:
            raise cursor.fail(f"tensor {shown} appears twice")
        if type_id not in sizes:
            raise cursor.fail(f"tensor {shown} has unknown type {type_id}")
        type_name, block, type_size = sizes[type_id]
        if dims[0] % block:
            raise cursor.fail(f"tensor {shown}: {dims[0]} is not a whole number of {type_name} blocks of {block}")
        nbytes = math.prod(dims) // block * type_size
        if offset % alignment:
            raise cursor.fail(f"tensor {shown} is not aligned to {alignment} bytes")
        if nbytes > cursor.size or data_start + offset + nbytes > cursor.size:
            raise cursor.fail(f"tensor {shown} ({nbytes} bytes at offset {offset}) runs past the end of the file")
        tensors[name] = GGUFTensor(name, dims, type_id, type_name, data_start + offset, nbytes, block, type_size)
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:]):
        if before.offset + before.nbytes > after.offset:
            raise cursor.fail(f"tensors {printable(before.name)} and {printable(after.name)} overlap")
    return tensors
