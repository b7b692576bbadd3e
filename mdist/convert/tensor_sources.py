"""A model's tensors as row chunks under their Mistral names, from any layout mdist reads.

GGUF conversion and GGUF checking both re-encode the release's tensors row by row; they read them
through here so that memory stays a few chunks whatever the model's size. A `.pth` is read with
`pread` (Checkpoint.iter_bytes), never memory-mapped, so its pages do not pile up in the process's
resident set; safetensors files are memory-mapped (HF q/k rows are permuted back to Mistral's
interleaved order, which needs random access to rows).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mdist.convert.checkpoint import Checkpoint
from mdist.convert.safetensors_reader import dtype_name, open_safetensors
from mdist.convert.sources import open_checkpoint
from mdist.errors import InputError
from mdist.layout import half_to_interleaved_rows, heads_for, hf_to_mistral_name
from mdist.model_folder import HF, MISTRAL, PTH, Layout, inspect_folder, model_path, read_config
from mdist.modelconfig import MistralConfig, read_json

_RAW = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


@dataclass(frozen=True)
class SourceTensor:
    """One tensor: Mistral name, safetensors dtype, C-order shape, and its rows in order, as raw
    arrays of at most about `max_bytes` each (2-D: rows x last dimension; bf16 as uint16 bits).
    `file_range` is (fd, offset) when its bytes lie verbatim in an open file, for the kernel to copy."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    rows: Callable[[int], Iterator[np.ndarray]]
    file_range: tuple[int, int] | None = None


@dataclass
class ModelSource:
    folder: Path
    layout: Layout
    config: MistralConfig
    tensors: list[SourceTensor]
    files: list[Path]  # what the tensors and config were read from (derived records name them)
    tokenizer: Path | None


def _width(shape: tuple[int, ...]) -> int:
    return shape[-1] if shape else 1


def _checked_dtype(name: str, dtype: str) -> np.dtype:
    if dtype not in _RAW:
        raise InputError(f"tensor {name} is {dtype}; GGUF conversion takes BF16, F16 or F32 weights")
    return np.dtype(_RAW[dtype])


def _pth_tensor(checkpoint: Checkpoint, name: str, ref) -> SourceTensor:
    dtype = ref.storage.dtype.safetensors_dtype
    raw = _checked_dtype(name, dtype)
    width = _width(ref.shape)

    def rows(max_bytes: int) -> Iterator[np.ndarray]:
        row_bytes = width * raw.itemsize
        step = max(1, max_bytes // max(1, row_bytes)) * row_bytes
        pending = bytearray()
        for chunk in checkpoint.iter_bytes(ref, chunk_bytes=step):
            if not pending and len(chunk) % row_bytes == 0:  # the usual case: whole rows, no copy
                yield np.frombuffer(chunk, dtype=raw).reshape(-1, width)
                continue
            pending += chunk
            whole = len(pending) - len(pending) % row_bytes
            if whole:
                yield np.frombuffer(bytes(pending[:whole]), dtype=raw).reshape(-1, width)
                del pending[:whole]
        if pending:
            raise InputError(f"tensor {name}: its bytes are not whole rows")

    return SourceTensor(name, dtype, tuple(ref.shape), rows, checkpoint.file_range(ref))


def _array_tensor(name: str, array: np.ndarray, order: np.ndarray | None) -> SourceTensor:
    dtype = dtype_name(array)
    raw = _checked_dtype(name, dtype)
    matrix = array.reshape(-1, _width(array.shape)) if array.ndim else array.reshape(1, 1)

    def rows(max_bytes: int) -> Iterator[np.ndarray]:
        step = max(1, max_bytes // max(1, matrix.shape[1] * raw.itemsize))
        for start in range(0, matrix.shape[0], step):
            index = slice(start, start + step) if order is None else order[start : start + step]
            yield np.ascontiguousarray(matrix[index]).view(raw)

    return SourceTensor(name, dtype, tuple(array.shape), rows)


@contextlib.contextmanager
def open_model(src: Path, note: Callable[[str], None] | None = None) -> Iterator[ModelSource]:
    """The release's tensors from a .pth file, or from the folder's layout that `digest` would use
    (the release's own .pth first, then consolidated.safetensors, then an HF layout)."""
    src = Path(src)
    folder = model_path(src)
    contents = inspect_folder(folder)
    if src.is_file():
        layout = contents.choose_containing(src.name, "digest")
    else:
        layout = contents.choose("digest", note=note)
    if layout.kind not in (PTH, MISTRAL, HF):
        raise InputError(f"{folder} holds no release weights to read (a .pth, consolidated.safetensors or an HF layout)")
    if layout.config is None:
        raise InputError(f"{folder} has no params.json next to {layout.weights[0]}")
    config = read_config(folder, layout) if layout.kind == HF else MistralConfig.from_params(
        read_json(folder / layout.config))
    files = [folder / name for name in layout.weights] + [folder / layout.config]
    tokenizer = folder / "tokenizer.model" if contents.tokenizer else None
    if layout.kind == PTH:
        if len(layout.weights) > 1 and layout.joined is None:
            raise InputError(f"{folder} holds {len(layout.weights)} checkpoint shards; only single-file "
                             f"checkpoints are supported")
        with open_checkpoint([folder / name for name in layout.weights]) as checkpoint:  # raw pieces: one file
            tensors = [_pth_tensor(checkpoint, name, ref) for name, ref in checkpoint.tensors.items()]
            yield ModelSource(folder, layout, config, tensors, files, tokenizer)
        return
    tensors = []
    for path in files[: len(layout.weights)]:
        for stored, array in open_safetensors(path).items():
            name, order = stored, None
            if layout.kind == HF:
                try:
                    name = hf_to_mistral_name(stored)
                except KeyError:
                    raise InputError(f"{path.name}: tensor {stored[:100]} is not part of the Mistral architecture") from None
                heads = heads_for(name, config)
                if heads is not None:
                    if array.ndim != 2 or array.shape[0] != heads * config.head_dim:
                        raise InputError(f"{stored} has shape {list(array.shape)}, expected {heads} heads x "
                                         f"{config.head_dim} rows")
                    order = half_to_interleaved_rows(heads, config.head_dim)
            tensors.append(_array_tensor(name, array, order))
    yield ModelSource(folder, layout, config, tensors, files, tokenizer)
