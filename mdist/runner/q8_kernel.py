"""A compiled GGUF Q8_0 matrix-vector product for decoding (optional: needs numba).

Q8_0 stores 8.5 bits per weight (blocks of an f16 scale and 32 int8 values, 34 bytes), so a
decode step that reads every weight once reads 0.53x the bytes of bf16. The arithmetic is ggml's:
x is quantised once per call to int8 blocks of 32 with one float32 scale each (amax / 127, rounded
to nearest), then each row is sum_b (scale_w * scale_x) * sum_i (w_i * x_i), the inner sums exact
in integers. The activations' quantisation moves results by about 0.5 % of a row's largest term
(tested against `q8_0_reference` and against float). Set MDIST_KERNELS=numpy to disable it.

Two block kernels, written in LLVM IR because numba does not vectorise int8 products across
34-byte blocks: on AVX2 hosts ggml's own sequence (vpsignb, vpmaddubsw, vpmaddwd: 32 products in
three instructions), elsewhere a portable one (int8 x int16 products summed pairwise, which LLVM
turns into pmaddwd where it can). Both give the same integers. One token's rows are split across
cores only while cores are idle, as for bf16 (mdist.runner.kernels.decode_in_parallel); each row
is the same compiled code either way.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from mdist.runner.kernels import decode_in_parallel

Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
BLOCK_BYTES, BLOCK_VALUES = 34, 32

_kernel: Kernel | None = None
_loaded = False


def q8_0_gemv() -> Kernel | None:
    """`kernel(blocks (rows, row_bytes) uint8, x (T, cols) float32, out (T, rows) float32)` computing
    x @ W.T for a few tokens of Q8_0 rows, or None when numba is missing or disabled."""
    global _kernel, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get("MDIST_KERNELS", "").lower() != "numpy":
            try:
                _kernel = compile_q8_0(avx2=host_has_avx2())
            except ImportError:
                _kernel = None
    return _kernel


def host_has_avx2() -> bool:
    """Whether LLVM targets a CPU with AVX2 here (numba compiles for the host's own CPU)."""
    from llvmlite import binding

    return "+avx2" in binding.get_host_cpu_features().flatten().split(",")


def compile_q8_0(avx2: bool) -> Kernel:
    """The kernel with the AVX2 block sequence, or the portable one (both tested on AVX2 hosts)."""
    import numba

    row_dot = _row_dot_intrinsic(avx2)
    x_type = np.int8 if avx2 else np.int16  # the portable kernel widens x once here, not once per row

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
                    xq[t, b * 32 + i] = np.rint(x[t, b * 32 + i] * inverse)  # within [-127, 127]
                xs[t, b] = d

    # Separate functions per variant, so that numba's on-disk cache never serves one for the other.
    if avx2:
        @numba.njit(cache=True, nogil=True)
        def serial_avx2(w, xq, xs, out):  # pragma: no cover - compiled
            for r in range(w.shape[0]):
                out[r] = row_dot(w[r], xq, xs)

        @numba.njit(parallel=True, cache=True)
        def parallel_avx2(w, xq, xs, out):  # pragma: no cover - compiled; rows split across cores
            for r in numba.prange(w.shape[0]):
                for t in range(xq.shape[0]):  # the row stays in cache across the few tokens
                    out[t, r] = row_dot(w[r], xq[t], xs[t])

        serial, parallel_rows = serial_avx2, parallel_avx2
    else:
        @numba.njit(cache=True, nogil=True)
        def serial_portable(w, xq, xs, out):  # pragma: no cover - compiled
            for r in range(w.shape[0]):
                out[r] = row_dot(w[r], xq, xs)

        @numba.njit(parallel=True, cache=True)
        def parallel_portable(w, xq, xs, out):  # pragma: no cover - compiled
            for r in numba.prange(w.shape[0]):
                for t in range(xq.shape[0]):
                    out[t, r] = row_dot(w[r], xq[t], xs[t])

        serial, parallel_rows = serial_portable, parallel_portable

    def gemv(w: np.ndarray, x: np.ndarray, out: np.ndarray, parallel: bool | None = None) -> None:
        if not (w.flags.c_contiguous and w.dtype == np.uint8 and w.shape[1] % BLOCK_BYTES == 0
                and x.shape[1] == w.shape[1] // BLOCK_BYTES * BLOCK_VALUES
                and out.shape == (x.shape[0], w.shape[0]) and out.dtype == np.float32):
            raise ValueError("q8_0_gemv: blocks must be C-contiguous uint8 rows of 34-byte blocks matching x and out")
        xq = np.empty(x.shape, dtype=x_type)
        xs = np.empty((x.shape[0], x.shape[1] // BLOCK_VALUES), dtype=np.float32)
        quantise(np.ascontiguousarray(x, dtype=np.float32), xq, xs)
        if x.shape[0] == 1 and not (decode_in_parallel() if parallel is None else parallel):
            serial(w, xq[0], xs[0], out[0])  # every core busy: a parallel call's barrier costs more
        else:
            parallel_rows(w, xq, xs, out)

    return gemv


def _row_dot_intrinsic(avx2: bool):
    """`row_dot(row, xq, xs) -> float32`: one Q8_0 row (1-D, contiguous) against quantised x and its
    per-block scales. Per block: the integer dot of 32 products, widened to float lanes and
    multiplied by the two scales; four independent accumulators (the adds' latency, not the
    products, bound one chain); the lanes are summed once per row."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
    lanes = 8 if avx2 else 16
    v_lanes = ir.VectorType(f32, lanes)
    unroll = 4

    def block_dot_avx2(builder, wq, x_pointer):
        """ggml's AVX2 sequence: |w| (unsigned) times x with w's sign, pairs summed to 16-bit
        (|w| <= 128 and |x| <= 127: 2 * 128 * 127 never saturates), then pairs to 32-bit."""
        v32i8, v16i16, v8i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
        module = builder.module
        sign = cgutils.get_or_insert_function(module, ir.FunctionType(v32i8, [v32i8, v32i8]), "llvm.x86.avx2.psign.b")
        maddubs = cgutils.get_or_insert_function(module, ir.FunctionType(v16i16, [v32i8, v32i8]),
                                                 "llvm.x86.avx2.pmadd.ub.sw")
        maddwd = cgutils.get_or_insert_function(module, ir.FunctionType(v8i32, [v16i16, v16i16]),
                                                "llvm.x86.avx2.pmadd.wd")
        xq = builder.load(builder.bitcast(x_pointer, v32i8.as_pointer()), align=1)
        pairs = builder.call(maddubs, [builder.call(sign, [wq, wq]), builder.call(sign, [xq, wq])])
        return builder.call(maddwd, [pairs, ir.Constant(v16i16, [1] * 16)])

    def block_dot_portable(builder, wq, x_pointer):
        """32 int8 x int16 products, summed pairwise to 16 int32 lanes."""
        v32i16, v32i32 = ir.VectorType(i16, 32), ir.VectorType(i32, 32)
        xq = builder.load(builder.bitcast(x_pointer, v32i16.as_pointer()), align=2)
        products = builder.mul(builder.sext(wq, v32i32), builder.sext(xq, v32i32))
        even = ir.Constant(ir.VectorType(i32, 16), list(range(0, 32, 2)))
        odd = ir.Constant(ir.VectorType(i32, 16), list(range(1, 32, 2)))
        return builder.add(builder.shuffle_vector(products, products, even),
                           builder.shuffle_vector(products, products, odd))

    block_dot = block_dot_avx2 if avx2 else block_dot_portable

    @intrinsic
    def row_dot(typingctx, row, xq, xs):
        def codegen(context, builder, sig, args):
            w = context.make_array(sig.args[0])(context, builder, args[0])
            xdata = context.make_array(sig.args[1])(context, builder, args[1]).data
            sdata = context.make_array(sig.args[2])(context, builder, args[2]).data
            blocks = builder.udiv(cgutils.unpack_tuple(builder, w.shape)[0], ir.Constant(i64, BLOCK_BYTES))
            accumulators = [cgutils.alloca_once_value(builder, ir.Constant(v_lanes, [0.0] * lanes))
                            for _ in range(unroll)]

            def add_block(b, accumulator):
                base = builder.mul(b, ir.Constant(i64, BLOCK_BYTES))
                half = builder.load(builder.bitcast(builder.gep(w.data, [base]), i16.as_pointer()), align=1)
                scale = builder.fmul(builder.fpext(builder.bitcast(half, ir.HalfType()), f32),
                                     builder.load(builder.gep(sdata, [b])), flags=("fast",))
                wq = builder.load(builder.bitcast(builder.gep(w.data, [builder.add(base, ir.Constant(i64, 2))]),
                                                  ir.VectorType(i8, 32).as_pointer()), align=1)
                dots = block_dot(builder, wq, builder.gep(xdata, [builder.mul(b, ir.Constant(i64, BLOCK_VALUES))]))
                scales = builder.insert_element(ir.Constant(v_lanes, ir.Undefined), scale, ir.Constant(i32, 0))
                scales = builder.shuffle_vector(scales, scales, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
                term = builder.fmul(builder.sitofp(dots, v_lanes), scales, flags=("fast",))
                builder.store(builder.fadd(builder.load(accumulator), term, flags=("fast",)), accumulator)

            groups = builder.udiv(blocks, ir.Constant(i64, unroll))
            with cgutils.for_range(builder, groups) as loop:
                first = builder.mul(loop.index, ir.Constant(i64, unroll))
                for k, accumulator in enumerate(accumulators):
                    add_block(builder.add(first, ir.Constant(i64, k)), accumulator)
            done = builder.mul(groups, ir.Constant(i64, unroll))
            with cgutils.for_range(builder, builder.sub(blocks, done)) as loop:
                add_block(builder.add(done, loop.index), accumulators[0])
            total_lanes = builder.load(accumulators[0])
            for accumulator in accumulators[1:]:
                total_lanes = builder.fadd(total_lanes, builder.load(accumulator), flags=("fast",))
            total = builder.extract_element(total_lanes, ir.Constant(i32, 0))
            for i in range(1, lanes):
                total = builder.fadd(total, builder.extract_element(total_lanes, ir.Constant(i32, i)), flags=("fast",))
            return total

        return types.float32(row, xq, xs), codegen

    return row_dot


def q8_0_reference(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What q8_0_gemv computes, in numpy (float64 sums): for tests of the kernel's arithmetic."""
    rows, n = blocks.shape[0], blocks.shape[1] // BLOCK_BYTES
    b = blocks.reshape(rows, n, BLOCK_BYTES)
    w_scale = b[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float64)
    wq = b[:, :, 2:].view(np.int8).astype(np.int64)
    xb = np.asarray(x, dtype=np.float32).reshape(x.shape[0], n, BLOCK_VALUES)
    x_scale = np.abs(xb).max(axis=2) / np.float32(127.0)
    inverse = np.divide(np.float32(1.0), x_scale, out=np.zeros_like(x_scale), where=x_scale != 0)
    xq = np.rint(xb * inverse[:, :, None]).astype(np.int64)
    dots = np.einsum("rbi,tbi->trb", wq, xq)
    return (dots * w_scale[None] * x_scale[:, None, :].astype(np.float64)).sum(axis=2).astype(np.float32)
