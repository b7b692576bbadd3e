"""`mdist convert --layout gguf`: one .gguf file as llama.cpp's converter writes Mistral 7B.

The header and metadata are written by the `gguf` package's GGUFWriter (llama.cpp's own library),
so the format is theirs, not a re-implementation; the tensor data is streamed after it chunk by
chunk (GGUFWriter wants whole arrays in memory), into a temporary file that is fsynced and renamed
(mdist.atomic), and recorded as derived like the other layouts. Names, stored types and encodings
come from mdist.convert.gguf_layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mdist.atomic import atomic_writer, require_free_space, require_output_folder, write_bytes_atomic
from mdist.convert import gguf_layout as gl
from mdist.convert.kernel_copy import copy_into
from mdist.convert.tensor_sources import ModelSource, SourceTensor, open_model
from mdist.derived import record_derived
from mdist.errors import InputError
from mdist.jsonio import read_small_file
from mdist.locks import reclaim_leftovers
from mdist.modelconfig import MistralConfig, check_tensor_shapes
from mdist.tokenizer_files import SENTENCEPIECE, TEKKEN, TOKENIZER_NAMES

MAX_TOKENIZER_BYTES = 64 << 20


@dataclass(frozen=True)
class Planned:
    """One GGUF tensor: its name, C-order shape, stored type, and the source tensors it is made of
    (one, or a layer's experts stacked along a new first axis)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    parts: tuple[SourceTensor, ...]

    @property
    def nbytes(self) -> int:
        return gl.nbytes(self.shape, self.ggml_type)


@dataclass
class GGUFResult:
    path: Path
    tensors: int
    bytes: int
    ggml_type: str
    side_files: tuple[Path, ...] = ()  # the tokenizer.model copied beside the GGUF, where it was


def plan(tensors: list[SourceTensor], wanted: str, n_experts: int = 0) -> list[Planned]:
    """GGUF tensors in source order; a layer's experts become one stacked tensor at the first's place."""
    groups: dict[str, list[tuple[int | None, SourceTensor]]] = {}
    for tensor in tensors:
        name, expert = gl.gguf_name(tensor.name)
        groups.setdefault(name, []).append((expert, tensor))
    planned = []
    for name, members in groups.items():
        if members[0][0] is None:
            if len(members) != 1:
                raise InputError(f"two tensors map to the GGUF tensor {name}")
            tensor = members[0][1]
            planned.append(Planned(name, tensor.shape, gl.stored_type(name, tensor.shape, wanted), (tensor,)))
            continue
        members.sort(key=lambda m: m[0])  # type: ignore[arg-type, return-value]
        if [m[0] for m in members] != list(range(n_experts)):
            raise InputError(f"{name}: the experts present are not 0..{n_experts - 1}")
        first = members[0][1]
        if any(m[1].shape != first.shape or m[1].dtype != first.dtype for m in members):
            raise InputError(f"{name}: the experts differ in shape or dtype")
        shape = (n_experts, *first.shape)
        planned.append(Planned(name, shape, gl.stored_type(name, shape, wanted), tuple(m[1] for m in members)))
    return planned


def _vocabulary(tokenizer: Path, vocab_size: int) -> tuple[list[str], list[float], list[int], dict[str, int]]:
    """Pieces, scores and token types as llama.cpp's converter reads a SentencePiece model."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(read_small_file(tokenizer, MAX_TOKENIZER_BYTES))
    except (RuntimeError, OSError) as exc:
        raise InputError(f"{tokenizer} is not a SentencePiece model: {exc}") from None
    size = sp.GetPieceSize()
    if size > vocab_size:
        raise InputError(f"{tokenizer} has {size} pieces, more than the model's vocab_size {vocab_size}")
    tokens, scores, types = [], [], []
    for i in range(size):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        kind = 1  # gguf.TokenType: NORMAL 1, UNKNOWN 2, CONTROL 3, UNUSED 5, BYTE 6
        if sp.IsUnknown(i):
            kind = 2
        elif sp.IsControl(i):
            kind = 3
        elif sp.IsUnused(i):
            kind = 5
        elif sp.IsByte(i):
            kind = 6
        types.append(kind)
    for i in range(size, vocab_size):  # the converter pads a short vocabulary the same way
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(5)
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    return tokens, scores, types, ids


def model_name(source: ModelSource) -> str:
    """general.name: the release's name, else the folder's. Never exactly `mistral`: transformers'
    GGUF loader then switches to an architecture the gguf package does not know."""
    from mdist.model_folder import inspect_folder

    release = inspect_folder(source.folder).release
    name = release.name if release is not None else source.folder.resolve().name
    return f"{name}-model" if name == "mistral" else (name or "model")


def add_metadata(writer: Any, config: MistralConfig, name: str, ggml_type: str, tokenizer: Path) -> None:
    """The keys llama.cpp's converter writes for a Mistral model (`llama` architecture)."""
    from gguf.constants import GGML_QUANT_VERSION

    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.to_hf_config().get("max_position_embeddings", 32768))
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.norm_eps))
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.dim // config.n_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if config.sliding_window:  # the format's key; llama.cpp's `llama` graph ignores it, mdist's runner uses it
        writer.add_sliding_window(config.sliding_window)
    if getattr(config, "is_moe", False):
        writer.add_expert_count(config.n_experts)
        writer.add_expert_used_count(config.n_experts_per_tok)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gl.FILE_TYPES[ggml_type])
    writer.add_quantization_version(GGML_QUANT_VERSION)
    tokens, scores, types, ids = _vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_unk_token_id(ids["unk"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_gguf(target: Path, planned: list[Planned], metadata: Callable[[Any], None], *, overwrite: bool,
               on_bytes: Callable[[int], None] | None = None) -> int:
    """Header and metadata through GGUFWriter, then each tensor's data streamed chunk by chunk."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.gguf_writer import WriterState

    writer = GGUFWriter(path=None, arch=gl.ARCH)
    metadata(writer)
    for tensor in planned:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), tensor.nbytes,
                               raw_dtype=GGMLQuantizationType[tensor.ggml_type])
    with atomic_writer(target, overwrite=overwrite) as handle:
        writer.fout, writer.path, writer.state = [handle], target, WriterState.EMPTY  # our temporary file
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            writer.write_padding(handle, handle.tell())
            for tensor in planned:
                written = 0
                for part in tensor.parts:
                    if part.dtype == tensor.ggml_type and part.file_range is not None:
                        copied = copy_into(handle, part.file_range, gl.nbytes(part.shape, part.dtype), on_bytes, tensor.name)
                        if copied:
                            written += copied
                            continue
                    for rows in part.rows(gl.CHUNK_BYTES):
                        data = gl.encode(rows, part.dtype, tensor.ggml_type)
                        handle.write(memoryview(data).cast("B"))
                        written += data.nbytes
                        if on_bytes:
                            on_bytes(data.nbytes)
                if written != tensor.nbytes:
                    raise InputError(f"{tensor.name}: wrote {written} bytes, expected {tensor.nbytes}")
                writer.write_padding(handle, written)
            size = handle.tell()
        finally:
            writer.fout = None  # the atomic writer closes (or removes) the file, not GGUFWriter
    return size


def _require_sentencepiece(source: ModelSource) -> None:
    """A GGUF carries the vocabulary of the SentencePiece tokenizer (tokenizer.model), and `run`
    reads that file beside it: a folder without one is told what it has instead."""
    if source.tokenizer is not None and os.path.lexists(source.tokenizer):
        return
    try:
        names = set(os.listdir(source.folder))
    except OSError:
        names = set()
    others = [name for name in TOKENIZER_NAMES if name in names and name != SENTENCEPIECE]
    if TEKKEN in others:
        raise InputError(f"{source.folder} has {TEKKEN} and no {SENTENCEPIECE}: GGUF conversion needs the "
                         f"SentencePiece tokenizer ({SENTENCEPIECE}); a tekken tokenizer is not supported for GGUF")
    if others:
        raise InputError(f"{source.folder} has {others[0]} and no {SENTENCEPIECE}: GGUF conversion reads the "
                         f"SentencePiece tokenizer named {SENTENCEPIECE} (the GGUF carries its vocabulary)")
    raise InputError(f"{source.folder} has no {SENTENCEPIECE}; a GGUF carries the vocabulary of the SentencePiece "
                     f"tokenizer")


def convert_gguf(src: Path, out: Path | None = None, *, ggml_type: str = "bf16", force: bool = False,
                 on_start: Callable[[int], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None,
                 note: Callable[[str], None] | None = None) -> GGUFResult:
    """Convert the release at `src` (a .pth, or a folder) into DIR/NAME-TYPE.gguf."""
    if ggml_type.lower() not in gl.TYPES:
        raise InputError(f"unknown GGUF type {ggml_type!r}: use one of {', '.join(gl.TYPES)}")
    wanted = ggml_type.upper()
    if out is not None:  # said before the input is read
        require_output_folder(Path(out))
    with open_model(src, note) as source:
        _require_sentencepiece(source)
        out = Path(out) if out is not None else source.folder
        name = model_name(source)
        target = out / f"{name}-{wanted}.gguf"
        if target.exists() and not force:
            raise InputError(f"{target} exists; use --force to overwrite")
        check_tensor_shapes({t.name: tuple(t.shape) for t in source.tensors}, source.config)
        planned = plan(source.tensors, wanted, getattr(source.config, "n_experts", 0))
        total = sum(t.nbytes for t in planned)
        out.mkdir(parents=True, exist_ok=True)
        reclaim_leftovers([target, out / "tokenizer.model"])  # under convert's derivation_lock
        require_free_space(out, total + (64 << 20), what="the GGUF file")
        if on_start:
            on_start(total)
        tokenizer = source.tokenizer
        size = write_gguf(target, planned, lambda w: add_metadata(w, source.config, name, wanted, tokenizer),
                          overwrite=True, on_bytes=on_bytes)
        outputs = [target]
        copied = out / "tokenizer.model"
        if copied.resolve() != tokenizer.resolve():  # `run` reads the vocabulary's SentencePiece model beside the GGUF
            data = read_small_file(tokenizer, MAX_TOKENIZER_BYTES)
            if os.path.lexists(copied) and not force and (copied.is_symlink() or copied.read_bytes() != data):
                raise InputError(f"{copied} exists and differs from {tokenizer}; use --force to overwrite")
            write_bytes_atomic(copied, data)
            outputs.append(copied)
        record_derived(out, outputs, [*source.files, tokenizer])
    return GGUFResult(target, len(planned), size, wanted, tuple(outputs[1:]))
