"""`mdist run FILE.gguf`: a llama-architecture GGUF's weights and config for the numpy runner.

The GGUF is read by mdist's bounded reader and memory-mapped: F32, F16 and BF16 tensors are the
arrays the runner already takes (bf16 as raw bits); Q8_0 tensors stay as their 34-byte blocks and
are decoded on the fly, by the compiled kernel (mdist.runner.q8_kernel) when decoding, or a
few rows at a time for prompts. The hyper-parameters come from the GGUF's metadata; the
tokenizer is the folder's tokenizer.model, which must be the vocabulary the GGUF carries (pieces,
scores, token types, bos/eos/unk), or the file is refused.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mdist.convert import gguf_layout as gl
from mdist.convert.gguf_reader import GGUFFile, read_gguf
from mdist.errors import InputError, VerificationError
from mdist.modelconfig import MistralConfig
from mdist.runner.kernels import MAX_TOKENS
from mdist.runner.q8_kernel import q8_0_gemv
from mdist.runner.weights import DEFAULT_F32_BUDGET, WeightStore, quiet_floats

_F32_MAX = float(np.finfo(np.float32).max)
_RUNNABLE = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _float(value: Any) -> Any:
    """A float32 from the file as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    if isinstance(value, float) and abs(value) <= _F32_MAX:  # an F64 beyond float32 is left for the config check
        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    return value


def _default_head(dim: Any, n_heads: Any) -> Any:
    return dim // n_heads if type(dim) is int and type(n_heads) is int and n_heads > 0 else dim


def config_of(gguf: GGUFFile) -> MistralConfig:
    """MistralConfig from the `llama.*` keys; checked by MistralConfig like any params.json."""
    meta = gguf.metadata
    architecture = gguf.scalar("general.architecture", str)
    if architecture != gl.ARCH:
        raise InputError(f"{gguf.path.name}: architecture {str(architecture)[:40]!r}; "
                         f"mdist runs llama-architecture GGUFs (Mistral)")

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{name}", default)
        if value is None:
            raise InputError(f"{gguf.path.name} lacks llama.{name}")
        return _float(value)

    n_heads, dim = key("attention.head_count"), key("embedding_length")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get("llama.vocab_size", len(tokens) if isinstance(tokens, list) else None)
    return MistralConfig(
        dim=dim, n_layers=key("block_count"), hidden_dim=key("feed_forward_length"), n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads),
        head_dim=key("attention.key_length", meta.get("llama.rope.dimension_count", _default_head(dim, n_heads))),
        norm_eps=key("attention.layer_norm_rms_epsilon"), vocab_size=vocab,
        sliding_window=meta.get("llama.attention.sliding_window"),
        rope_theta=key("rope.freq_base", 10000.0),
        n_experts=meta.get("llama.expert_count", 0), n_experts_per_tok=meta.get("llama.expert_used_count", 0),
    )


def check_tokenizer(gguf: GGUFFile, tokenizer: Path, vocab_size: int) -> None:
    """The folder's tokenizer.model must be the GGUF's vocabulary, token for token."""
    from mdist.convert.gguf_writer import _vocabulary

    tokens, scores, types, ids = _vocabulary(tokenizer, vocab_size)
    meta = gguf.metadata
    theirs = meta.get("tokenizer.ggml.tokens")
    if not isinstance(theirs, list) or len(theirs) != len(tokens):
        raise VerificationError(f"{gguf.path.name} carries {len(theirs) if isinstance(theirs, list) else 'no'} "
                                f"tokens; {tokenizer.name} has {len(tokens)}")
    their_scores = gguf.numbers("tokenizer.ggml.scores", len(tokens))
    their_types = gguf.numbers("tokenizer.ggml.token_type", len(tokens))
    if their_scores is None or their_types is None:
        raise VerificationError(f"{gguf.path.name}: token scores or types missing, not numbers or of another length")
    their_scores, their_types = their_scores.astype(np.float32), their_types.astype(np.int64)
    mine_scores, mine_types = np.asarray(scores, dtype=np.float32), np.asarray(types)
    for i, (a, b) in enumerate(zip(tokens, theirs)):
        if a != b or mine_scores[i] != their_scores[i] or mine_types[i] != their_types[i]:
            raise VerificationError(f"{tokenizer.name} and {gguf.path.name} disagree on token {i} "
                                    f"({a[:20]!r} vs {str(b)[:20]!r}); refusing to run with either")
    for name, value in (("bos", ids["bos"]), ("eos", ids["eos"]), ("unknown", ids["unk"])):
        stored = gguf.scalar(f"tokenizer.ggml.{name}_token_id", int)
        if stored is not None and stored != value:
            raise VerificationError(f"{tokenizer.name} and {gguf.path.name} disagree on the {name} token id")


class GGUFWeightStore(WeightStore):
    """WeightStore plus Q8_0 tensors kept as blocks: widened once when the whole model fits the
    float32 budget, else decoded on the fly (the compiled kernel, or a few rows at a time)."""

    def __init__(self, tensors: dict[str, np.ndarray], q8: dict[str, np.ndarray],
                 f32_budget_bytes: int = DEFAULT_F32_BUDGET) -> None:
        total = sum(a.size * 4 for a in tensors.values()) + sum(q.shape[0] * q.shape[1] // 34 * 128 for q in q8.values())
        stored = int(sum(a.nbytes for a in tensors.values()) + sum(q.nbytes for q in q8.values()))
        if total <= f32_budget_bytes:
            tensors = {**tensors, **{name: gl.decode(q, "Q8_0") for name, q in q8.items()}}
            q8 = {}
        super().__init__(tensors, f32_budget_bytes if not q8 else -1)
        self.stored_bytes = stored  # the Q8_0 blocks as the file holds them, not their float32 widening
        self.q8 = q8
        self._q8_pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="mdist-q8") if q8 else None

    def matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        blocks = self.q8.get(name)
        if blocks is None:
            return super().matmul(x, name)
        out = np.empty((x.shape[0], blocks.shape[0]), dtype=np.float32)
        kernel = q8_0_gemv() if x.shape[0] <= MAX_TOKENS else None
        if kernel is not None:
            kernel(blocks, np.ascontiguousarray(x), out)
            return out
        assert self._q8_pool is not None
        workers = self._q8_pool._max_workers
        bounds = np.linspace(0, blocks.shape[0], workers + 1, dtype=np.int64)
        jobs = [self._q8_pool.submit(self._q8_rows, x, blocks, out, int(a), int(b))
                for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        for job in jobs:
            job.result()
        return out

    @quiet_floats()
    def _q8_rows(self, x: np.ndarray, blocks: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        step = max(1, self.CHUNK_BYTES // (blocks.shape[1] // 34 * 128))
        for a in range(start, stop, step):
            b = min(stop, a + step)
            np.matmul(x, gl.decode(blocks[a:b], "Q8_0").T, out=out[:, a:b])

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        blocks = self.q8.get(name)
        return super().rows(name, index) if blocks is None else gl.decode(blocks[index], "Q8_0")


def load_gguf(directory: Path, file_name: str, f32_budget_bytes: int = DEFAULT_F32_BUDGET
              ) -> tuple[MistralConfig, GGUFWeightStore, dict[str, tuple[int, ...]]]:
    """(config, weights, shapes under Mistral names) of a GGUF in `directory`."""
    gguf = read_gguf(Path(directory) / file_name)
    config = config_of(gguf)
    tokenizer = Path(directory) / "tokenizer.model"
    if not tokenizer.is_file() or tokenizer.is_symlink():
        raise InputError(f"{gguf.path.name}: mdist runs a GGUF with the tokenizer.model its vocabulary came from "
                         f"beside it (none in {directory})")
    check_tokenizer(gguf, tokenizer, config.vocab_size)
    tensors: dict[str, np.ndarray] = {}
    q8: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for tensor in gguf.tensors.values():
        if tensor.type_name != "Q8_0" and tensor.type_name not in _RUNNABLE:
            raise InputError(f"{gguf.path.name}: tensor {tensor.name} is {tensor.type_name}; mdist runs F32, F16, "
                             f"BF16 and Q8_0 GGUFs")
        for name, shape, raw in _views(gguf, tensor, config.n_experts):
            if tensor.type_name == "Q8_0" and len(shape) == 2:
                q8[name] = raw
            elif tensor.type_name in _RUNNABLE:
                tensors[name] = raw.view(_RUNNABLE[tensor.type_name]).reshape(shape)
            else:
                raise InputError(f"{gguf.path.name}: tensor {tensor.name} is Q8_0 with {len(shape)} dimensions; "
                                 f"mdist runs Q8_0 matrices")
            shapes[name] = shape
    return config, GGUFWeightStore(tensors, q8, f32_budget_bytes), shapes


def _views(gguf: GGUFFile, tensor: Any, experts: int) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    """(Mistral name, shape, raw rows) of a tensor; a stacked expert tensor (llama.cpp's
    blk.N.ffn_*_exps, experts first in C order) as one memory-mapped view per expert."""
    names = gl.mistral_names(tensor.name, experts)
    raw = gguf.raw(tensor)
    if len(names) == 1 and not tensor.name.endswith("_exps.weight"):
        return [(names[0], tensor.shape, raw)]
    if len(tensor.shape) != 3 or tensor.shape[0] != experts or len(names) != experts:
        raise InputError(f"{gguf.path.name}: {tensor.name} has shape {list(tensor.shape)}; expected "
                         f"{experts} experts stacked")
    return [(name, tensor.shape[1:], raw[j]) for j, name in enumerate(names)]
