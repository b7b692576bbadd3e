"""Model weights for the runner: memory-mapped safetensors, kept as stored, converted per use.

Weights stay bf16 (or whatever they are stored as) in a read-only memory map. A model whose
float32 copy fits in `f32_budget_bytes` is converted once at load; a larger one (Mistral 7B)
is converted tensor by tensor into a few reusable float32 buffers as each layer runs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from mdist.errors import InputError
from mdist.layout import hf_to_mistral_name

_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
DEFAULT_F32_BUDGET = 4 << 30


def open_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Map a safetensors file read-only; return name -> array (bf16 as raw uint16 bits).

    The format is an 8-byte header length, a JSON header and the tensor bytes. The library's
    numpy loader copies every tensor; a memory map is what keeps a 14.5 GB model off the heap.
    """
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
    data_start = 8 + header_len
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InputError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        itemsize = np.dtype(dtype).itemsize
        if not (0 <= begin <= end <= size - data_start) or end - begin != itemsize * int(np.prod(shape, dtype=np.int64)):
            raise InputError(f"{path}: tensor {name} has inconsistent offsets")
        arrays[name] = mapped[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return arrays


def load_tensors(directory: Path, layout: str) -> dict[str, np.ndarray]:
    """Return every tensor under its Mistral name, from either layout's safetensors files."""
    if layout == "mistral":
        path = directory / "consolidated.safetensors"
        if not path.is_file():
            raise InputError(f"{directory} has no consolidated.safetensors (run `mdist convert` first)")
        return open_safetensors(path)
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        raise InputError(f"{directory} has config.json but no model*.safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        for name, array in open_safetensors(file).items():
            try:
                tensors[hf_to_mistral_name(name)] = array
            except KeyError:
                raise InputError(f"{file.name}: tensor {name} is not part of the Mistral architecture") from None
    return tensors


def to_float32(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Widen stored weights to float32 (bf16 is the top half of a float32's bits)."""
    if array.dtype == np.float32 and out is None:
        return array
    if out is None:
        out = np.empty(array.shape, dtype=np.float32)
    if array.dtype == np.uint16:
        np.left_shift(array, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        out[...] = array
    return out


class WeightStore:
    """Float32 views of the weights: cached whole when they fit the budget, else per use."""

    def __init__(self, tensors: dict[str, np.ndarray], f32_budget_bytes: int = DEFAULT_F32_BUDGET) -> None:
        self.stored = tensors
        total_f32 = sum(a.size * 4 for a in tensors.values())
        self.cached = total_f32 <= f32_budget_bytes
        self._buffers: dict[str, np.ndarray] = {}
        self._f32: dict[str, np.ndarray] = {}
        if self.cached:
            self._f32 = {name: np.ascontiguousarray(to_float32(a)) for name, a in tensors.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.stored

    def shape(self, name: str) -> tuple[int, ...]:
        return self.stored[name].shape

    def get(self, name: str) -> np.ndarray:
        """Float32 weight; when not cached, valid only until the next get() of the same role."""
        if self.cached:
            return self._f32[name]
        array = self.stored[name]
        if array.dtype == np.float32:
            return array
        role = name.split(".", 2)[-1] if name.startswith("layers.") else name
        buffer = self._buffers.get(role)
        if buffer is None or buffer.shape != array.shape:
            buffer = self._buffers[role] = np.empty(array.shape, dtype=np.float32)
        return to_float32(array, buffer)

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Selected rows as float32 (the embedding lookup), without widening the whole table."""
        source = self._f32[name] if self.cached else self.stored[name]
        return to_float32(source[index]) if source.dtype != np.float32 else source[index].copy()
