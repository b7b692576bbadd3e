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


_q8_kernel: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None
_q8_loaded = False


def q8_0_gemv() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None:
    """`kernel(blocks (rows, row_bytes) uint8, x (T, cols) float32, out (T, rows) float32)` for GGUF
    Q8_0 rows (blocks of an f16 scale and 32 int8 values, 34 bytes), as ggml computes them: x is
    quantised once per call to blocks of 32 int8 with one float32 scale each (amax / 127, rounded
    to nearest), then each row is sum_b (scale_w * scale_x) * sum_i (w_i * x_i) with the inner
    sums in integers (pmaddwd-style 16-bit products, 16 float lanes across blocks, reduced once
    per row). One pass over 8.5 bits per weight; the activations' quantisation moves results by
    about 0.5 % of a row's largest term (tested). None when numba is missing or disabled."""
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
    from numba.core import cgutils
    from numba.extending import intrinsic

    i16, i32, i64, f32 = ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()

    @intrinsic
    def row_dot(typingctx, row, xq, xs):
        """One Q8_0 row (1-D, contiguous) against x quantised to int16 values and per-block scales.
        Written in LLVM IR because numba does not vectorise int8 products across 34-byte blocks:
        per block, 32 int8 x int16 products summed pairwise to 16 int32 lanes (pmaddwd), widened to
        float and accumulated with the two scales; the 16 lanes are summed once at the end."""
        def codegen(context, builder, sig, args):
            w = context.make_array(sig.args[0])(context, builder, args[0])
            xdata = context.make_array(sig.args[1])(context, builder, args[1]).data
            sdata = context.make_array(sig.args[2])(context, builder, args[2]).data
            blocks = builder.udiv(cgutils.unpack_tuple(builder, w.shape)[0], ir.Constant(i64, 34))
            v32i8, v32i16, v32i32 = (ir.VectorType(t, 32) for t in (ir.IntType(8), i16, i32))
            v16f = ir.VectorType(f32, 16)
            even = ir.Constant(ir.VectorType(i32, 16), list(range(0, 32, 2)))
            odd = ir.Constant(ir.VectorType(i32, 16), list(range(1, 32, 2)))
            splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
            acc = cgutils.alloca_once_value(builder, ir.Constant(v16f, [0.0] * 16))
            with cgutils.for_range(builder, blocks) as loop:
                b = loop.index
                base = builder.mul(b, ir.Constant(i64, 34))
                half = builder.load(builder.bitcast(builder.gep(w.data, [base]), i16.as_pointer()), align=1)
                scale = builder.fmul(builder.fpext(builder.bitcast(half, ir.HalfType()), f32),
                                     builder.load(builder.gep(sdata, [b])), flags=("fast",))
                wq = builder.load(builder.bitcast(builder.gep(w.data, [builder.add(base, ir.Constant(i64, 2))]),
                                                  v32i8.as_pointer()), align=1)
                xq16 = builder.load(builder.bitcast(builder.gep(xdata, [builder.mul(b, ir.Constant(i64, 32))]),
                                                    v32i16.as_pointer()), align=2)
                products = builder.mul(builder.sext(wq, v32i32), builder.sext(xq16, v32i32))
                pairs = builder.add(builder.shuffle_vector(products, products, even),
                                    builder.shuffle_vector(products, products, odd))
                scales = builder.insert_element(ir.Constant(v16f, ir.Undefined), scale, ir.Constant(i32, 0))
                scales = builder.shuffle_vector(scales, scales, splat)
                term = builder.fmul(builder.sitofp(pairs, v16f), scales, flags=("fast",))
                builder.store(builder.fadd(builder.load(acc), term, flags=("fast",)), acc)
            lanes = builder.load(acc)
            total = builder.extract_element(lanes, ir.Constant(i32, 0))
            for i in range(1, 16):
                total = builder.fadd(total, builder.extract_element(lanes, ir.Constant(i32, i)), flags=("fast",))
            return total

        return types.float32(row, xq, xs), codegen

    @numba.njit(cache=True)  # no fastmath: the same roundings as q8_0_reference
    def quantise(x, xq, xs):  # pragma: no cover - compiled; ggml's quantize_row_q8_0, scale kept in float32
        for t in range(x.shape[0]):
            for b in range(x.shape[1] // 32):
                amax = np.float32(0.0)
                for i in range(32):
                    amax = max(amax, abs(x[t, b * 32 + i]))
                d = amax / np.float32(127.0)
                inverse = np.float32(1.0) / d if d != 0 else np.float32(0.0)
                for i in range(32):
                    xq[t, b * 32 + i] = np.int16(np.rint(x[t, b * 32 + i] * inverse))
                xs[t, b] = d

    @numba.njit(parallel=True, cache=True)
    def rows_dot(w, xq, xs, out):  # pragma: no cover - compiled; rows split across cores
        for r in numba.prange(w.shape[0]):
            for t in range(xq.shape[0]):  # the row stays in cache across the few tokens
                out[t, r] = row_dot(w[r], xq[t], xs[t])

    def gemv(w, x, out):
        if not (w.flags.c_contiguous and w.dtype == np.uint8 and w.shape[1] % 34 == 0
                and x.shape[1] == w.shape[1] // 34 * 32):
            raise ValueError("q8_0_gemv: blocks must be C-contiguous uint8 rows of 34-byte blocks matching x")
        xq = np.empty(x.shape, dtype=np.int16)  # int16: widened once here, not once per row
        xs = np.empty((x.shape[0], x.shape[1] // 32), dtype=np.float32)
        quantise(np.ascontiguousarray(x, dtype=np.float32), xq, xs)
        rows_dot(w, xq, xs, out)

    return gemv


def q8_0_reference(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What q8_0_gemv computes, in numpy (float64 sums): for tests of the kernel's arithmetic."""
    rows, n = blocks.shape[0], blocks.shape[1] // 34
    b = blocks.reshape(rows, n, 34)
    w_scale = b[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float64)
    wq = b[:, :, 2:].view(np.int8).astype(np.int64)
    xb = np.asarray(x, dtype=np.float32).reshape(x.shape[0], n, 32)
    x_scale = np.abs(xb).max(axis=2) / np.float32(127.0)
    inverse = np.divide(np.float32(1.0), x_scale, out=np.zeros_like(x_scale), where=x_scale != 0)
    xq = np.rint(xb * inverse[:, :, None]).astype(np.int64)
    dots = np.einsum("rbi,tbi->trb", wq, xq)
    return (dots * w_scale[None] * x_scale[:, None, :].astype(np.float64)).sum(axis=2).astype(np.float32)
