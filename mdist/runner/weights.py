"""Model weights for the runner: memory-mapped safetensors, kept as stored, converted per use.

Weights stay bf16 (or whatever they are stored as) in a read-only memory map. A model whose
float32 copy fits in `f32_budget_bytes` is converted once at load; a larger one (Mistral 7B)
is converted tensor by tensor into a few reusable float32 buffers as each layer runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdist.errors import InputError
from mdist.convert.safetensors_reader import open_safetensors
from mdist.layout import hf_to_mistral_name

DEFAULT_F32_BUDGET = 4 << 30


def load_tensors(directory: Path, layout: str) -> dict[str, np.ndarray]:
    """Return every tensor under its Mistral name, from either layout's safetensors files."""
    if layout == "mistral":
        path = directory / "consolidated.safetensors"
        if not path.is_file():
            raise InputError(f"{directory} has no consolidated.safetensors (run `mdist convert` first)")
        return {name: _runnable(path, name, array) for name, array in open_safetensors(path).items()}
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        raise InputError(f"{directory} has config.json but no model*.safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        for name, array in open_safetensors(file).items():
            try:
                tensors[hf_to_mistral_name(name)] = _runnable(file, name, array)
            except KeyError:
                raise InputError(f"{file.name}: tensor {name} is not part of the Mistral architecture") from None
    return tensors


def _runnable(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype not in (np.uint16, np.float16, np.float32):
        raise InputError(f"{path.name}: tensor {name} is {array.dtype}; the runner takes bf16, f16 or f32 weights")
    return array


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
