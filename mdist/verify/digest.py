"""Per-tensor digests that do not depend on the file format.

The canonical form of a tensor is its Mistral name, its safetensors dtype, its shape and its
bytes in C order with the interleaved rotary layout. So a `consolidated.00.pth`, its
`consolidated.safetensors` and its HF-layout conversion all have the same root digest: proof
that they hold the same weights, whichever source delivered them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mdist.convert.sources import array_chunks, open_checkpoint
from mdist.convert.safetensors_reader import dtype_name, open_safetensors
from mdist.errors import InputError
from mdist.layout import half_to_interleaved_rows, heads_for, hf_to_mistral_name
from mdist.model_folder import HF, MISTRAL, PTH, Layout, inspect_folder, read_config
from mdist.modelconfig import MistralConfig

DOMAIN = b"mdist-tensor-digest/1\n"
_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorDigest:
    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def line(self) -> str:
        return f"{self.name}\t{self.dtype}\t{','.join(map(str, self.shape))}\t{self.sha256}"


def root_digest(tensors: list[TensorDigest]) -> str:
    hasher = hashlib.sha256(DOMAIN)
    for tensor in sorted(tensors, key=lambda t: t.name):
        hasher.update(tensor.line().encode() + b"\n")
    return hasher.hexdigest()


def _sha(chunks: Iterator[bytes]) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


def _array_chunks(array: np.ndarray) -> Iterator[bytes]:
    return array_chunks(array, _CHUNK)


def tensor_digests(path: Path, note: Callable[[str], None] | None = None) -> list[TensorDigest]:
    """Digests of every tensor in a .pth, a safetensors file, or a model folder (the layout that
    mdist.model_folder chooses for `digest`: the release's own files first)."""
    digests = _digests(Path(path), note)
    seen: set[str] = set()
    for tensor in digests:
        if tensor.name in seen:
            raise InputError(f"{path}: tensor {tensor.name} appears more than once")
        seen.add(tensor.name)
    return digests


def _digests(path: Path, note: Callable[[str], None] | None) -> list[TensorDigest]:
    if path.is_dir():
        contents = inspect_folder(path)
        return _layout_digests(path, contents.choose("digest", note=note))
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.suffix == ".pth":
        return _pth_digests([path])
    if path.suffix == ".safetensors":
        contents = inspect_folder(path.parent)
        for layout in contents.layouts:  # a shard of an HF layout: its whole layout, HF names undone
            if layout.kind == HF and path.name in layout.weights:
                contents.choose("digest")  # the same refusals as for the folder (foreign weights, links)
                return _layout_digests(path.parent, layout)
        return _safetensors_digests([path])
    if path.suffix == ".gguf":  # read by mdist's bounded reader; GGUF names and dimension order undone
        from mdist.verify.gguf_digest import gguf_digests

        return gguf_digests(path)
    raise InputError(f"{path}: not a .pth, .safetensors, .gguf or model folder")


def _layout_digests(directory: Path, layout: Layout) -> list[TensorDigest]:
    if layout.kind == "gguf":
        from mdist.verify.gguf_digest import gguf_digests

        return gguf_digests(directory / layout.weights[0])
    files = [directory / name for name in layout.weights]
    if layout.kind == PTH:
        if len(files) > 1 and layout.joined is None:
            raise InputError(f"{directory} holds {len(layout.weights)} checkpoint shards; only single-file "
                             f"checkpoints are supported")
        return _pth_digests(files)  # one file, or the raw pieces of one, read as one file
    if layout.kind == MISTRAL:
        return _safetensors_digests(files)
    return _hf_digests(read_config(directory, layout), files)


def _pth_digests(paths: list[Path]) -> list[TensorDigest]:
    with open_checkpoint(paths) as checkpoint:
        return [
            TensorDigest(name, t.storage.dtype.safetensors_dtype, t.shape, _sha(checkpoint.iter_bytes(t)))
            for name, t in checkpoint.tensors.items()
        ]


def _safetensors_digests(files: list[Path]) -> list[TensorDigest]:
    result = []
    for file in files:
        for name, array in open_safetensors(file).items():
            result.append(TensorDigest(name, dtype_name(array), tuple(array.shape), _sha(_array_chunks(array))))
    return result


def _hf_digests(config: MistralConfig, files: list[Path]) -> list[TensorDigest]:
    result = []
    for file in files:
        for hf_name, array in open_safetensors(file).items():
            try:
                name = hf_to_mistral_name(hf_name)
            except KeyError:
                name = hf_name  # not a Mistral tensor: digested under its own name
            heads = heads_for(name, config)
            if heads is not None:
                array = array[half_to_interleaved_rows(heads, config.head_dim)]
            result.append(TensorDigest(name, dtype_name(array), tuple(array.shape), _sha(_array_chunks(array))))
    return result


def compare(a: list[TensorDigest], b: list[TensorDigest]) -> list[str]:
    """Names of tensors that differ (or exist on one side only), in name order."""
    left = {t.name: t for t in a}
    right = {t.name: t for t in b}
    return sorted(n for n in set(left) | set(right) if left.get(n) != right.get(n))
