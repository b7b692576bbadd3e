"""`mdist convert`: a raw checkpoint (`consolidated.00.pth`, or its raw pieces) -> safetensors in
Mistral's or Hugging Face's layout, and Mistral-layout safetensors -> HF layout; without torch,
without running pickle code, in constant memory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from mdist.atomic import copy_file_atomic, require_free_space, require_output_folder, write_bytes_atomic
from mdist.convert.checkpoint import Checkpoint
from mdist.convert.safetensors_writer import TensorSource, plan_shards, write_safetensors
from mdist.convert.sources import SIDE_FILES as _SIDE_FILES, TensorInput, open_input
from mdist.derived import record_derived, signing_key
from mdist.locks import derivation_lock, reclaim_leftovers
from mdist.errors import InputError
from mdist.layout import heads_for, interleaved_to_half_rows, mistral_to_hf_name
from mdist.model_folder import MISTRAL
from mdist.modelconfig import MistralConfig, check_tensor_shapes, read_json
from mdist.tokenizer_files import SENTENCEPIECE, TOKENIZER_NAMES, tokenizer_file

__all__ = ["convert", "ConversionResult", "Checkpoint"]

DEFAULT_SHARD_BYTES = 5 * 10**9
MISTRAL_FILE = "consolidated.safetensors"
HF_INDEX = "model.safetensors.index.json"
MAX_SIDE_FILE_BYTES = 64 << 20  # a SentencePiece model is ~0.5 MB (Mistral 7B); params.json a few hundred bytes


@dataclass
class ConversionResult:
    out: Path
    layout: str
    files: list[Path] = field(default_factory=list)
    tensors: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)  # what `mdist run` needs beside the weights and finds nowhere
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr


def convert(
    src: Path,
    out: Path | None = None,
    *,
    layout: str = "mistral",
    force: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    on_start: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    gguf_type: str = "bf16",
) -> ConversionResult:
    """Convert a checkpoint. `on_start(total_bytes)` and `on_bytes(n)` report progress."""
    if out is not None:  # said before the input is read
        require_output_folder(Path(out))
        _refuse_output_inside_source(Path(src), Path(out))
    signing_key()  # the record of what is written needs it: a damaged key is said before any writing
    # From the overwrite check to the record: another mdist writing the same files would leave
    # records that describe the other's files (mdist.locks).
    with derivation_lock(Path(out) if out is not None else _model_folder_of(src)):
        return _convert_locked(src, out, layout=layout, force=force, shard_bytes=shard_bytes, on_start=on_start,
                               on_bytes=on_bytes, gguf_type=gguf_type)


def _convert_locked(src: Path, out: Path | None, *, layout: str, force: bool, shard_bytes: int,
                    on_start: Callable[[int], None] | None, on_bytes: Callable[[int], None] | None,
                    gguf_type: str) -> ConversionResult:
    if layout == "gguf":  # one .gguf file (mdist.convert.gguf_writer)
        from mdist.convert.gguf_writer import convert_gguf

        done = convert_gguf(src, out, ggml_type=gguf_type, force=force, on_start=on_start, on_bytes=on_bytes)
        return ConversionResult(out=done.path.parent, layout=f"gguf {done.ggml_type}", files=[done.path, *done.side_files],
                                tensors=done.tensors, bytes=done.bytes)
    if layout not in ("mistral", "hf"):
        raise InputError(f"unknown layout {layout!r}: use 'mistral', 'hf' or 'gguf'")
    with open_input(src, replacing=layout if force and _in_place(src, out) else None) as source:
        side_dir = source.side_dir
        out = Path(out) if out is not None else side_dir
        if source.kind == MISTRAL and layout == "mistral":
            raise InputError(f"{src} is already in the mistral layout ({source.label}); use --layout hf")
        config = None
        if layout == "hf":
            if not (side_dir / "params.json").is_file():
                raise InputError(f"--layout hf needs params.json next to {source.label}")
            config = MistralConfig.from_params(read_json(side_dir / "params.json"))
            check_tensor_shapes({name: tuple(t.shape) for name, t in source.tensors.items()}, config)
        if layout == "mistral":
            sources = [_plain_source(t) for t in source.tensors.values()]
            shards = [(out / MISTRAL_FILE, sources)]
        else:
            assert config is not None
            sources = [_hf_source(t, config) for t in source.tensors.values()]
            planned = plan_shards(sources, shard_bytes)
            n = len(planned)
            shards = [(out / f"model-{i + 1:05d}-of-{n:05d}.safetensors", s) for i, s in enumerate(planned)]
        total = sum(s.nbytes for s in sources)
        targets = [path for path, _ in shards] + _extra_targets(layout, out, side_dir)
        if not force:
            existing = [str(p) for p in targets if os.path.lexists(p) and not _is_same_file(p, side_dir)]
            if existing:
                raise InputError(f"{existing[0]} exists; use --force to overwrite")
        out.mkdir(parents=True, exist_ok=True)
        reclaim_leftovers(targets)
        require_free_space(out, total + (64 << 20), what="the converted model")
        if on_start:
            on_start(total)
        result = ConversionResult(out=out, layout=layout, tensors=len(sources), bytes=total)
        for path, tensors in shards:
            write_safetensors(path, tensors, metadata={"format": "pt"}, overwrite=True, on_bytes=on_bytes)
            result.files.append(path)
        weight_files = list(source.paths)
    if layout == "hf":
        assert config is not None
        result.files += _write_hf_side_files(out, side_dir, config, shards, total)
    else:
        result.files += _copy_side_files(side_dir, out)
    inputs = weight_files + [side_dir / name for name in _SIDE_FILES if (side_dir / name).is_file()]
    record_derived(out, [p for p in result.files if not _is_same_file(p, side_dir)], inputs)
    result.missing = missing_to_run(out, layout)
    result.warnings = [_missing_warning(out, side_dir, result.missing)] if result.missing else []
    return result


def missing_to_run(out: Path, layout: str) -> list[str]:
    """What the converted folder lacks for `mdist run` (and transformers): a tokenizer file, and for
    the mistral layout params.json (an HF conversion writes config.json). The weights alone convert
    fine, so this is a warning, not a refusal; said now rather than at the first run."""
    names = [name for name in TOKENIZER_NAMES if (out / name).is_file()]
    missing = [] if names else ["tokenizer"]
    if layout == "mistral" and not (out / "params.json").is_file():
        missing.append("params.json")
    return missing


def _missing_warning(out: Path, side_dir: Path, missing: list[str]) -> str:
    what = " and no ".join("tokenizer (tokenizer.model, tokenizer.model.v3 or tekken.json)" if name == "tokenizer"
                           else name for name in missing)
    source = "" if out.resolve() == side_dir.resolve() else f" (nor has {side_dir})"
    them = "they are" if len(missing) > 1 else "it is"
    return f"{out} has no {what}{source}: `mdist run` cannot use it until {them} copied there from the release"


def _model_folder_of(src: Path) -> Path:
    """The folder a conversion reads: SRC itself, or the folder of the file SRC names."""
    return Path(src) if Path(src).is_dir() else Path(src).parent


def _refuse_output_inside_source(src: Path, out: Path) -> None:
    """--out in a subfolder of the source's folder would put files there that belong to no release
    (mdist then refuses the release itself for holding them): the folder itself, or one beside it."""
    folder, target = _model_folder_of(src), out.resolve()
    if target != folder.resolve() and target.is_relative_to(folder.resolve()):
        raise InputError(f"--out {out} is inside the model folder {folder}: mdist would then refuse that folder for "
                         f"holding files that are not part of it; write into the folder itself (no --out) or into "
                         f"one beside it")


def _in_place(src: Path, out: Path | None) -> bool:
    """Whether the output goes into the source's own folder (where --force may replace a foreign
    file of the output's layout: it is overwritten, never read)."""
    return out is None or Path(out).resolve() == _model_folder_of(src).resolve()


def _plain_source(tensor: TensorInput) -> TensorSource:
    return TensorSource(tensor.name, tensor.dtype, tensor.shape, tensor.nbytes, tensor.chunks, tensor.file_range)


def _hf_source(tensor: TensorInput, config: MistralConfig) -> TensorSource:
    name = tensor.name
    try:
        hf_name = mistral_to_hf_name(name)
    except KeyError:
        raise InputError(f"tensor {name!r} is not part of the Mistral or Mixtral architecture") from None
    heads = heads_for(name, config)
    if heads is None:
        return replace(_plain_source(tensor), name=hf_name)
    if len(tensor.shape) != 2 or tensor.shape[0] != heads * config.head_dim:
        raise InputError(f"{name} has shape {tensor.shape}, expected {heads} heads x {config.head_dim} rows")
    order = interleaved_to_half_rows(heads, config.head_dim)

    def permuted_chunks():
        rows = tensor.rows()
        step = max(1, (16 << 20) // max(1, rows[0].nbytes))
        for start in range(0, len(order), step):
            yield rows[order[start : start + step]].tobytes()

    return TensorSource(hf_name, tensor.dtype, tensor.shape, tensor.nbytes, permuted_chunks)


def _extra_targets(layout: str, out: Path, side_dir: Path) -> list[Path]:
    """Every other file the layout writes: all of them are in the overwrite check."""
    if layout == "hf":
        copied, written = _hf_tokenizer_plan(side_dir)
        return [out / name for name in [HF_INDEX, "config.json", "generation_config.json", *copied, *written]]
    return [out / f for f in _SIDE_FILES if (side_dir / f).is_file()]


_V1_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "add_bos_token": True, "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
}
_V1_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# transformers (5.x, with mistral-common installed) reads a tokenizer.model.vN or tekken.json through
# mistral-common itself with this class: the same ids as `mdist run`, chat template included.
_MISTRAL_COMMON_CONFIG = {"tokenizer_class": "MistralCommonBackend"}


def _hf_tokenizer_plan(side_dir: Path) -> tuple[list[str], dict[str, dict]]:
    """(tokenizer files copied as they are, JSON files written) for transformers. The folder's
    tokenizer is chosen by mdist.tokenizer_files' rule (several versioned or tekken ones: refused).
    A v1 tokenizer.model gets LlamaTokenizer's config. A v3 (any vN) SentencePiece file or
    tekken.json must not: LlamaTokenizer's v1 rules know none of their control tokens ([INST] would
    be text, the chat template v1's), so transformers is pointed at MistralCommonBackend, which
    reads that very file through mistral-common (a bare tokenizer.model beside it is copied too, as
    the hub's v0.3 repositories hold it; the versioned file is the one read)."""
    present = [name for name in TOKENIZER_NAMES if (side_dir / name).is_file()]
    try:
        chosen = tokenizer_file(present)
    except InputError as exc:
        raise InputError(f"{side_dir}: {exc}") from None
    if chosen is None:
        return [], {}
    if chosen == SENTENCEPIECE:
        return [SENTENCEPIECE], {"tokenizer_config.json": _V1_TOKENIZER_CONFIG,
                                 "special_tokens_map.json": _V1_SPECIAL_TOKENS}
    return present, {"tokenizer_config.json": _MISTRAL_COMMON_CONFIG}


def _is_same_file(target: Path, side_dir: Path) -> bool:
    """A side file converted in place is its own source: not copied, not overwritten."""
    return target.name in _SIDE_FILES and target.parent.resolve() == side_dir.resolve()


_TORCH_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def _weights_dtype(tensors: list[TensorSource]) -> str:
    """The dtype most weight bytes have, as config.json's torch_dtype: transformers loads in it
    (a float32 checkpoint announced as bfloat16 would be rounded on load)."""
    by_dtype: dict[str, int] = {}
    for tensor in tensors:
        by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.nbytes
    main = max(by_dtype, key=by_dtype.__getitem__) if by_dtype else "BF16"
    return _TORCH_DTYPES.get(main, "bfloat16")


def _copy_side_files(side_dir: Path, out: Path) -> list[Path]:
    copied = []
    for name in _SIDE_FILES:
        source, target = side_dir / name, out / name
        if source.is_file() and not _is_same_file(target, side_dir):
            copy_file_atomic(source, target, max_bytes=MAX_SIDE_FILE_BYTES)
            copied.append(target)
    return copied


def _write_hf_side_files(
    out: Path, side_dir: Path, config: MistralConfig, shards: list[tuple[Path, list[TensorSource]]], total: int
) -> list[Path]:
    written = []

    def dump(name: str, payload: object) -> None:
        write_bytes_atomic(out / name, (json.dumps(payload, indent=2) + "\n").encode())
        written.append(out / name)

    hf_config = config.to_hf_config()
    hf_config["torch_dtype"] = _weights_dtype([t for _, tensors in shards for t in tensors])
    dump("config.json", hf_config)
    dump("generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})
    copied, tokenizer_json = _hf_tokenizer_plan(side_dir)
    for name in copied:
        if not _is_same_file(out / name, side_dir):
            copy_file_atomic(side_dir / name, out / name, max_bytes=MAX_SIDE_FILE_BYTES)
            written.append(out / name)
    for name, payload in tokenizer_json.items():
        dump(name, payload)
    weight_map = {t.name: path.name for path, tensors in shards for t in tensors}
    dump(HF_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return written
