"""Model weights for the runner: memory-mapped safetensors, kept as stored, widened per use.

Weights stay bf16 (or whatever they are stored as) in a read-only memory map. A model whose
float32 copy fits in `f32_budget_bytes` is widened once at load; a larger one (Mistral 7B) is
multiplied straight from the map (see WeightStore.matmul).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mdist.errors import InputError
from mdist.convert.safetensors_reader import open_safetensors
from mdist.layout import hf_to_mistral_name
from mdist.model_folder import Layout
from mdist.runner.kernels import MAX_TOKENS, bf16_gemv

DEFAULT_F32_BUDGET = 4 << 30


def load_tensors(directory: Path, layout: Layout) -> dict[str, np.ndarray]:
    """Every tensor of the layout's weight files (and no other file), under its Mistral name."""
    tensors: dict[str, np.ndarray] = {}
    for file_name in layout.weights:
        file = directory / file_name
        for name, array in open_safetensors(file).items():
            if layout.kind == "hf":
                try:
                    name = hf_to_mistral_name(name)
                except KeyError:
                    raise InputError(f"{file.name}: tensor {name} is not part of the Mistral architecture") from None
            if name in tensors:
                raise InputError(f"{file.name}: tensor {name} appears in more than one weight file")
            tensors[name] = _runnable(file, name, array)
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


# Weights from a file may hold values whose products overflow (or NaN, infinity): numpy would print
# a RuntimeWarning with its source line on stderr for each, from every thread. The generator refuses
# logits that are not finite (one line), so the forward pass computes quietly, in the pool's
# threads too (numpy's error state is per thread, not inherited).
def quiet_floats() -> np.errstate:
    """A fresh context (numpy 2 refuses to enter one errstate twice), also usable as a decorator."""
    return np.errstate(all="ignore")


class WeightStore:
    """Weights as float32 for compute: widened once when that fits the budget, else on the fly.

    On the fly (Mistral 7B), decoding uses the compiled bf16 kernel when numba is there; otherwise,
    and for prompts, `matmul` widens a few rows at a time into a small per-thread buffer that stays
    in cache and multiplies at once, so no large float32 copy ever exists; the cores split the rows.
    """

    CHUNK_BYTES = 4 << 20
    SMALL_BYTES = 1 << 20  # widened whole and multiplied in one thread

    def __init__(self, tensors: dict[str, np.ndarray], f32_budget_bytes: int = DEFAULT_F32_BUDGET) -> None:
        self.stored = tensors
        self.stored_bytes = int(sum(a.nbytes for a in tensors.values()))  # as in the file, memory-mapped
        total_f32 = sum(a.size * 4 for a in tensors.values())
        self.cached = total_f32 <= f32_budget_bytes
        self._f32: dict[str, np.ndarray] = {}
        if self.cached:
            self._f32 = {name: np.ascontiguousarray(to_float32(a)) for name, a in tensors.items()}
        self._workers = max(1, os.cpu_count() or 1)
        self._pool = None if self.cached else ThreadPoolExecutor(self._workers, thread_name_prefix="mdist-matmul")
        self._local = threading.local()

    def compute_context(self):
        """While widening on the fly, our threads split the rows: keep BLAS to one thread each
        (nested BLAS threads oversubscribe the cores: measured 5.0 s vs 3.2 s per 7B token)."""
        if self.cached:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")

    def vector(self, name: str) -> np.ndarray:
        """A 1-D weight (a norm) as float32."""
        return self._f32[name] if self.cached else to_float32(self.stored[name])

    def matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T for a stored weight W of shape (out, in); x is (T, in) float32."""
        if self.cached:
            return x @ self._f32[name].T
        weight = self.stored[name]
        if weight.dtype == np.float32:
            return x @ weight.T
        if weight.nbytes <= self.SMALL_BYTES:  # a router (8 x 4096): waking threads costs more than the work
            return x @ to_float32(weight).T
        out = np.empty((x.shape[0], weight.shape[0]), dtype=np.float32)
        kernel = bf16_gemv() if weight.dtype == np.uint16 and x.shape[0] <= MAX_TOKENS else None
        if kernel is not None:  # decoding: one pass over the bf16 bytes, widened in registers
            kernel(weight, np.ascontiguousarray(x), out)
            return out
        rows = weight.shape[0]
        bounds = np.linspace(0, rows, self._workers + 1, dtype=np.int64)
        jobs = [self._pool.submit(self._matmul_rows, x, weight, out, int(a), int(b))
                for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        for job in jobs:
            job.result()
        return out

    @quiet_floats()
    def _matmul_rows(self, x: np.ndarray, weight: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        step = max(1, self.CHUNK_BYTES // (weight.shape[1] * 4))
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.size < step * weight.shape[1]:
            buffer = self._local.buffer = np.empty(step * weight.shape[1], dtype=np.float32)
        for a in range(start, stop, step):
            b = min(stop, a + step)
            block = buffer[: (b - a) * weight.shape[1]].reshape(b - a, weight.shape[1])
            to_float32(weight[a:b], block)
            np.matmul(x, block.T, out=out[:, a:b])

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Selected rows as float32 (the embedding lookup), without widening the whole table."""
        source = self._f32[name] if self.cached else self.stored[name]
        return to_float32(source[index]) if source.dtype != np.float32 else source[index].copy()
