"""A compiled bf16 matrix-vector product for decoding big models (optional: needs numba).

numpy can only multiply float32, so bf16 weights must first be widened, a pass that runs at
~4.5 GB/s of bf16 per core. This kernel widens each weight in registers as it multiplies
(one pass over the stored bytes, rows split across cores): measured 11.4 GB/s on 2 cores, 2.5x.
Set MDIST_KERNELS=numpy to disable it.
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
    def gemv_one(w, x, out):  # pragma: no cover - compiled; the decode step, kept simplest to vectorise
        rows, cols = w.shape
        for r in numba.prange(rows):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += bf16_to_f32(w[r, c]) * x[c]
            out[r] = acc

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def gemv_few(w, x, out):  # pragma: no cover - compiled
        rows, cols = w.shape
        for r in numba.prange(rows):
            for t in range(x.shape[0]):  # the row stays in cache across the few tokens
                acc = np.float32(0.0)
                for c in range(cols):
                    acc += bf16_to_f32(w[r, c]) * x[t, c]
                out[t, r] = acc

    def gemv(w, x, out):
        if x.shape[0] == 1:
            gemv_one(w, x[0], out[0])
        else:
            gemv_few(w, x, out)

    return gemv


_q8_kernel: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None
_q8_loaded = False


def q8_0_gemv() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None:
    """`kernel(blocks (rows, row_bytes) uint8, x (T, cols) float32, out (T, rows) float32)` for GGUF
    Q8_0 rows (blocks of an f16 scale and 32 int8 values, 34 bytes), decoded in registers as it
    multiplies: one pass over 8.5 bits per weight. None when numba is missing or disabled."""
    global _q8_kernel, _q8_loaded
    if not _q8_loaded:
        _q8_loaded = True
        if os.environ.get("MDIST_KERNELS", "").lower() != "numpy":
            try:
                _q8_kernel = _compile_q8()
            except ImportError:
                _q8_kernel = None
    return _q8_kernel


def _compile_q8() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None]:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def bits_to_f32(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @numba.njit(inline="always")
    def half(lo, hi):  # pragma: no cover - compiled; IEEE f16 bits -> float32
        h = np.uint32(lo) | (np.uint32(hi) << np.uint32(8))
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
        mantissa = h & np.uint32(0x3FF)
        if exponent == 0:  # zero or subnormal: mantissa * 2**-24
            value = np.float32(mantissa) * np.float32(5.9604645e-08)
            return -value if sign else value
        if exponent == 31:
            return bits_to_f32(sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13)))
        return bits_to_f32(sign | ((exponent + np.uint32(112)) << np.uint32(23)) | (mantissa << np.uint32(13)))

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def gemv_one(w, q, x, out):  # pragma: no cover - compiled
        rows, blocks = w.shape[0], w.shape[1] // 34
        for r in numba.prange(rows):
            acc = np.float32(0.0)
            for b in range(blocks):
                base = b * 34
                s = np.float32(0.0)
                for i in range(32):
                    s += np.float32(q[r, base + 2 + i]) * x[b * 32 + i]
                acc += half(w[r, base], w[r, base + 1]) * s
            out[r] = acc

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def gemv_few(w, q, x, out):  # pragma: no cover - compiled
        rows, blocks = w.shape[0], w.shape[1] // 34
        for r in numba.prange(rows):
            for t in range(x.shape[0]):
                acc = np.float32(0.0)
                for b in range(blocks):
                    base = b * 34
                    s = np.float32(0.0)
                    for i in range(32):
                        s += np.float32(q[r, base + 2 + i]) * x[t, b * 32 + i]
                    acc += half(w[r, base], w[r, base + 1]) * s
                out[t, r] = acc

    def gemv(w, x, out):
        q = w.view(np.int8)
        if x.shape[0] == 1:
            gemv_one(w, q, x[0], out[0])
        else:
            gemv_few(w, q, x, out)

    return gemv
