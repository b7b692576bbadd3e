"""What `mdist convert` reads: a raw checkpoint (a .pth, or its raw pieces) or Mistral-layout
safetensors (Mixtral 8x22B's release format), as tensors whose bytes stream.

Either way a tensor has its Mistral name, safetensors dtype, shape, a chunked byte stream (memory
stays flat whatever the model's size) and its rows as a read-only array of raw bits (for the
q/k row permutation of the HF layout).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from mdist.convert.checkpoint import Checkpoint
from mdist.convert.pickle_reader import TensorRef
from mdist.convert.safetensors_reader import dtype_name, open_safetensors
from mdist.errors import CheckpointError, InputError
from mdist.model_folder import MISTRAL, PTH, Layout, inspect_folder, model_path
from mdist.tokenizer_files import TOKENIZER_NAMES

CHUNK_BYTES = 16 << 20
SIDE_FILES = ("params.json", *TOKENIZER_NAMES)  # copied beside the output (tokenizer.model.v3, tekken.json too)


@dataclass(frozen=True)
class TensorInput:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterable[bytes]]
    rows: Callable[[], np.ndarray]
    file_range: tuple[int, int] | None = None  # (fd, offset) when the bytes lie verbatim in a file


@dataclass
class ConvertInput:
    kind: str  # PTH or MISTRAL
    paths: list[Path]  # the weight files read (the sources of what convert writes)
    side_dir: Path  # where params.json and tokenizer.model are
    tensors: dict[str, TensorInput]
    label: str


def array_chunks(array: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """An array's bytes in C order, a few rows at a time."""
    if array.size == 0:  # no bytes (and reshape(0, -1) of a (0, n) array would raise)
        return
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(-1, 1)
    step = max(1, chunk_bytes // max(1, rows[0].nbytes))
    for start in range(0, len(rows), step):
        yield np.ascontiguousarray(rows[start : start + step]).tobytes()


def _side_files_are_plain(folder: Path) -> None:
    for name in SIDE_FILES:  # read next to the weights: never through a link or from a FIFO
        side = folder / name
        if side.is_symlink() or (side.exists() and not side.is_file()):
            raise InputError(f"{side} is a symbolic link or special file; mdist never follows those "
                             f"in a model folder")


def find_input(src: Path, replacing: str | None = None) -> tuple[str, list[Path], Path]:
    """(kind, weight files, folder of the side files) for a .pth path or a model folder, as
    mdist.model_folder sees it (a known release holding foreign weights is refused, except files
    of the layout kind `replacing`, which `convert --force` is about to overwrite there)."""
    src = Path(src)
    if src.is_file() and src.suffix == ".pth":
        _side_files_are_plain(src.parent)
        return PTH, [src], src.parent
    if not src.exists():
        raise InputError(f"{src} does not exist")
    folder = model_path(src)
    contents = inspect_folder(folder)
    layout: Layout = (contents.choose_containing(src.name, "convert") if src.is_file()
                      else contents.choose("convert", replacing=replacing))
    if layout.kind == PTH and len(layout.weights) > 1 and layout.joined is None:
        raise InputError(f"{src} holds {len(layout.weights)} checkpoint shards; only single-file checkpoints are supported")
    return layout.kind, [folder / name for name in layout.weights], folder


def open_checkpoint(paths: list[Path]) -> Checkpoint:
    """A checkpoint from one file or from its raw pieces; pieces that do not join into a valid
    archive are a usage error (exit 2) that says so."""
    try:
        return Checkpoint(paths if len(paths) > 1 else paths[0])
    except (CheckpointError, InputError) as exc:
        if len(paths) == 1:
            raise
        raise InputError(f"the {len(paths)} pieces {paths[0].name} ... {paths[-1].name} do not join into a "
                         f"checkpoint (out of order, missing or of the wrong size?): {exc}") from None


@contextlib.contextmanager
def open_input(src: Path, replacing: str | None = None) -> Iterator[ConvertInput]:
    kind, paths, side_dir = find_input(src, replacing)
    if kind == PTH:
        with open_checkpoint(paths) as checkpoint:
            tensors = {name: _checkpoint_tensor(checkpoint, name, t) for name, t in checkpoint.tensors.items()}
            yield ConvertInput(kind, paths, side_dir, tensors, paths[0].name)
        return
    assert kind == MISTRAL
    tensors = {}
    for path in paths:
        for name, array in open_safetensors(path).items():
            if name in tensors:
                raise InputError(f"{path.name}: tensor {name} appears in more than one weight file")
            tensors[name] = _array_tensor(name, array)
    yield ConvertInput(kind, paths, side_dir, tensors, paths[0].name)


def _checkpoint_tensor(checkpoint: Checkpoint, name: str, tensor: TensorRef) -> TensorInput:
    return TensorInput(name, tensor.storage.dtype.safetensors_dtype, tensor.shape, tensor.nbytes,
                       lambda: checkpoint.iter_bytes(tensor), lambda: checkpoint.array(tensor),
                       checkpoint.file_range(tensor))


def _array_tensor(name: str, array: np.ndarray) -> TensorInput:
    return TensorInput(name, dtype_name(array), tuple(array.shape), array.nbytes,
                       lambda: array_chunks(array), lambda: array)
