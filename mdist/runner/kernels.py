"""A compiled bf16 matrix-vector product for decoding big models (optional: needs numba).

numpy can only multiply float32, so bf16 weights must first be widened, a pass that runs at
~4.5 GB/s of bf16 per core. This kernel widens each weight in registers as it multiplies (one
pass over the stored bytes): one token on one core reads 10-18 GB/s (measured on an 8x7B-shaped
model); rows are split across cores for a few tokens, and for one while cores are idle
(`decode_in_parallel`). Set MDIST_KERNELS=numpy to disable it.
"""

from __future__ import annotations

import os
import time
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


_LOAD_CHECK_SECONDS = 1.0
_load_checked = (-1e9, False)


def decode_in_parallel() -> bool:
    """Whether one token's product splits its rows across cores: only while the machine has a core
    to spare (1-minute load average, this process's decoding thread included, below cores - 0.5).
    A parallel call ends in a barrier. On idle cores that costs microseconds and each core adds
    memory bandwidth; on a machine whose cores are all busy, waiting for the last thread to be
    scheduled cost ~8 ms per call here (an 8 MB matrix: 7.5 ms in parallel, 0.5 ms on one core),
    and one core alone reads 10-18 GB/s. Either path computes each row with the same compiled
    code, so the results are identical (tested); asked at most once a second."""
    global _load_checked
    now = time.monotonic()
    if now - _load_checked[0] > _LOAD_CHECK_SECONDS:
        cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform
            load = float(cores)
        _load_checked = (now, cores >= 2 and load < cores - 0.5)
    return _load_checked[1]


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

    @numba.njit(fastmath=True, cache=True, nogil=True)
    def row_dot(w_row, x):  # pragma: no cover - compiled; one row, the same code on every path
        acc = np.float32(0.0)
        for c in range(w_row.shape[0]):
            acc += bf16_to_f32(w_row[c]) * x[c]
        return acc

    @numba.njit(parallel=True, cache=True)
    def gemv_parallel(w, x, out):  # pragma: no cover - compiled; rows split across cores
        for r in numba.prange(w.shape[0]):
            for t in range(x.shape[0]):  # the row stays in cache across the few tokens
                out[t, r] = row_dot(w[r], x[t])

    @numba.njit(cache=True, nogil=True)
    def gemv_serial(w, x, out):  # pragma: no cover - compiled
        for r in range(w.shape[0]):
            out[r] = row_dot(w[r], x)

    def gemv(w, x, out, parallel: bool | None = None):
        if x.shape[0] == 1 and not (decode_in_parallel() if parallel is None else parallel):
            gemv_serial(w, x[0], out[0])
        else:
            gemv_parallel(w, x, out)

    return gemv
