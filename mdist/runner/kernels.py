"""A compiled bf16 matrix-vector product for decoding big models (optional: needs numba).

numpy can only multiply float32, so bf16 weights must first be widened, a pass that runs at
~4.5 GB/s of bf16 per core. This kernel widens each weight in registers as it multiplies (one
pass over the stored bytes): one token on one core reads 15-18 GB/s (measured on an 8x7B-shaped
model), a few tokens split rows across cores. Set MDIST_KERNELS=numpy to disable it.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

_kernel: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None
_loaded = False


MAX_TOKENS = 8  # beyond this, widening once and using BLAS (numpy path) is faster


def bf16_gemv() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None:
    """`kernel(w_bits (rows, cols) uint16, x (T, cols) float32, out (T, rows) float32)` computing
    x @ W.T for a few tokens, or None when numba is missing or disabled."""
    global _kernel, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get("MDIST_KERNELS", "").lower() != "numpy":
            try:
                _kernel = _compile()
            except ImportError:
                _kernel = None
    return _kernel


def _compile() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def bf16_to_f32(typingctx, bits):
        def codegen(context, builder, signature, args):
            wide = builder.zext(args[0], ir.IntType(32))
            return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

        return types.float32(types.uint16), codegen

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def gemv_few(w, x, out):  # pragma: no cover - compiled
        rows, cols = w.shape
        for r in numba.prange(rows):
            for t in range(x.shape[0]):  # the row stays in cache across the few tokens
                acc = np.float32(0.0)
                for c in range(cols):
                    acc += bf16_to_f32(w[r, c]) * x[t, c]
                out[t, r] = acc

    # One token runs on one core. Decoding is memory-bound and one core reads ~15-18 GB/s of bf16
    # here, near the machine's bandwidth; a parallel call ends in a barrier, and on a busy machine
    # waiting for the other core's thread cost ~8 ms per call (an 8 MB matrix: 7.5 ms in parallel,
    # 0.5 ms on one core). Mixtral-shaped decode went from 3.3 to 6.8 tok/s (docs/benchmarks.md).
    @numba.njit(fastmath=True, cache=True, nogil=True)
    def gemv_serial(w, x, out):  # pragma: no cover - compiled; the decode step, kept simplest to vectorise
        rows, cols = w.shape
        for r in range(rows):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += bf16_to_f32(w[r, c]) * x[c]
            out[r] = acc

    def gemv(w, x, out):
        if x.shape[0] == 1:
            gemv_serial(w, x[0], out[0])
        else:
            gemv_few(w, x, out)

    return gemv
