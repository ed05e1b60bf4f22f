"""Sums and dot products of a row, vectorised, in an order fixed by this file.

Legend: n the length of the row, W the floats in one vector register (AVX-512: 16
float32, AVX2: 8, SSE: 4), U = 4 vector accumulators.

    vsum(x)    = x[0] + x[1] + ... + x[n-1]
    vdot(x, y) = x[0] y[0] + ... + x[n-1] y[n-1]
    vmax(x)    = the largest of x[0], ..., x[n-1] (NaNs skipped; -inf for n = 0)

Why not a plain loop. ``s += x[j]`` is a chain: each add waits for the one before, one
lane at a time. LLVM vectorises it only when it may *reassociate* (fast-math ``reassoc``),
and then it picks the order of the additions itself, anew each time it optimises the code.
Numba optimises a kernel that calls another (or a ``prange`` body) twice: once alone, once
linked into its caller. A process that compiled its kernels runs the first copy, a process
that loaded them from Numba's on-disk cache runs the second — and their sums differed in the
last bit (measured on a Xeon with AVX-512: 9 rows of 64 in a softmax over 3000 columns). A run
resumed in a new process then drifted from one that never stopped. So no kernel here is
compiled with ``reassoc`` (kernels/_base.FASTMATH), and the sums that need speed are written
out, one level down, in LLVM IR (as the GEMM micro-kernel is): U x W partial sums in vector
registers, walked front to back, then added in a fixed tree —

    acc[u][l] = sum over blocks b of x[(b U + u) W + l]      (u < U, l < W)
    then, float32: the vectors after the last block (up to U - 1 whole ones, then the
    last one part filled, by a masked load: lanes past n are never read and count as 0,
    for vmax as -inf) added into acc[0], in order;
    then the vectors whole: (acc[0] + acc[1]) + (acc[2] + acc[3]), lanes halved
    pairwise down to one;
    float64: then the last n mod (U W) elements one at a time.

The float32 tail was once the float64 one: on a row of 63, a chain of 63 dependent adds,
and an attention row of 48 or 63 keys summed ~5x slower than one of 64 (a 2-core Zen 4
EPYC). float64 runs only in gradient checks, whose finite differences are tuned to its
rounding as it was (tutorial 02's float64 check sits near its bound on one element), so
it keeps the old order and its bits.

Every compile of this IR computes the same bits, so a fresh process and a cached one agree.
The order depends on W, so on the CPU (as every vectorised sum does): the same machine
always gives the same bits, for any thread count.

A maximum has no rounding, so its order cannot change its value; vmax is here because
the plain loop (``if x[j] > m: m = x[j]``) is a chain LLVM does not vectorise without
fast-math flags we do not give it (its cost was a third of a softmax row's).

Under NUMBA_DISABLE_JIT=1 (stepping through kernels in a debugger) vsum and vdot run as
the plain loops below: the same sums, rounded in another order.
"""
import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

U = 4  # vector accumulators: enough independent adds to hide the add's latency


def _vector_bytes():
    # from the CPU itself (not MINIALBERT_GEMM_ISA, which only picks a GEMM tile): the
    # cached machine code is keyed on the CPU, so it must depend on nothing else
    f = {k for k, v in llvm_binding.get_host_cpu_features().items() if v}
    return 64 if "avx512f" in f else 32 if "avx2" in f else 16


VECTOR_BYTES = _vector_bytes()


def _codegen(vbytes, with_y, op="sum"):
    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        fty = context.get_value_type(aty.dtype)
        esize = 4 if fty == ir.FloatType() else 8  # bytes per element
        W = vbytes // esize
        vty = ir.VectorType(fty, W)
        i64 = ir.IntType(64)
        xs = context.make_array(aty)(context, builder, args[0])
        n = builder.extract_value(xs.shape, 0)
        px = xs.data
        py = context.make_array(signature.args[1])(context, builder, args[1]).data if with_y \
            else None
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]),
            f"llvm.fma.v{W}f{8 * esize}")

        start = ir.Constant(fty, float("-inf") if op == "max" else 0.0)
        zero = ir.Constant(vty, [start] * W)

        def vload(p, j):  # <W x float> at p + j, unaligned
            return builder.load(builder.bitcast(builder.gep(p, [j]), vty.as_pointer()),
                                align=esize)

        mload = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty.as_pointer(), ir.IntType(32),
                                                  ir.VectorType(ir.IntType(1), W), vty]),
            f"llvm.masked.load.v{W}f{8 * esize}.p0")

        def masked_load(p, j, mask):  # <W x float> at p + j, lanes off in mask: `start`
            ptr = builder.bitcast(builder.gep(p, [j]), vty.as_pointer())
            return builder.call(mload, [ptr, ir.Constant(ir.IntType(32), esize), mask, zero])

        def combine(a, b):  # a + b, or the larger of each lane (NaN in b: keeps a)
            if op == "max":
                return builder.select(builder.fcmp_ordered(">", b, a), b, a)
            return builder.fadd(a, b)

        def vterm(acc, j):  # acc + x[j:j+W] (* y[j:j+W]), or their lane-wise max
            if with_y:
                return builder.call(fma, [vload(px, j), vload(py, j), acc])
            return combine(acc, vload(px, j))

        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(U)]
        blocks = builder.udiv(n, ir.Constant(i64, U * W))
        with cgutils.for_range(builder, blocks) as loop:  # U vectors a step
            j0 = builder.mul(loop.index, ir.Constant(i64, U * W))
            for u in range(U):
                j = builder.add(j0, ir.Constant(i64, u * W))
                builder.store(vterm(builder.load(acc[u]), j), acc[u])
        done = builder.mul(blocks, ir.Constant(i64, U * W))
        tail_in_vectors = esize == 4  # float64 (gradient checks) keeps its old order below
        if tail_in_vectors:
            with builder.if_then(builder.icmp_unsigned("<", done, n)):  # a tail: n is not a
                # multiple of U W. The whole vectors left (at most U - 1), one at a
                # time, then the last one, part filled, by a masked load (lanes at or
                # past n are not read: `start` instead), all into acc[0]
                whole = builder.udiv(builder.sub(n, done), ir.Constant(i64, W))
                with cgutils.for_range(builder, whole) as loop:
                    j = builder.add(done, builder.mul(loop.index, ir.Constant(i64, W)))
                    builder.store(vterm(builder.load(acc[0]), j), acc[0])
                j_last = builder.add(done, builder.mul(whole, ir.Constant(i64, W)))
                part = builder.sub(n, j_last)  # 0 .. W-1
                with builder.if_then(builder.icmp_unsigned(">", part, ir.Constant(i64, 0))):
                    lanes = ir.Constant(ir.VectorType(i64, W), list(range(W)))
                    limit = builder.insert_element(
                        ir.Constant(ir.VectorType(i64, W), [0] * W), part,
                        ir.Constant(ir.IntType(32), 0))
                    limit = builder.shuffle_vector(limit, limit, ir.Constant(
                        ir.VectorType(ir.IntType(32), W), [0] * W))  # part in every lane
                    mask = builder.icmp_unsigned("<", lanes, limit)
                    a = builder.load(acc[0])
                    tx = masked_load(px, j_last, mask)
                    t = (builder.call(fma, [tx, masked_load(py, j_last, mask), a]) if with_y
                         else combine(a, tx))
                    builder.store(t, acc[0])
        v = combine(combine(builder.load(acc[0]), builder.load(acc[1])),
                    combine(builder.load(acc[2]), builder.load(acc[3])))
        w = W
        while w > 1:  # lanes [0, w/2) + lanes [w/2, w), until one is left
            h = w // 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), h),
                                                          list(range(h))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), h),
                                                          list(range(h, w))))
            v = combine(lo, hi)
            w = h
        s = cgutils.alloca_once_value(builder, builder.extract_element(v, ir.Constant(
            ir.IntType(32), 0)))
        if not tail_in_vectors:  # float64: the tail one element at a time, in order
            with cgutils.for_range(builder, builder.sub(n, done)) as loop:
                j = builder.add(done, loop.index)
                xj = builder.load(builder.gep(px, [j]))
                t = builder.fmul(xj, builder.load(builder.gep(py, [j]))) if with_y else xj
                builder.store(combine(builder.load(s), t), s)
        return builder.load(s)

    return codegen


def _check(*arrays):
    for a in arrays:
        if not (isinstance(a, types.Array) and a.ndim == 1
                and a.dtype in (types.float32, types.float64)):
            raise TypingError(f"vsum/vdot/vmax take 1-D float arrays, got {a}")
    if len(arrays) == 2 and arrays[0].dtype != arrays[1].dtype:
        raise TypingError(f"vdot: dtypes differ ({arrays[0].dtype}, {arrays[1].dtype})")


@intrinsic
def _vsum(typingctx, x):  # x: [n], contiguous
    return x.dtype(x), _codegen(VECTOR_BYTES, False)


@intrinsic
def _vdot(typingctx, x, y):  # x, y: [n] (y at least as long), contiguous
    return x.dtype(x, y), _codegen(VECTOR_BYTES, True)


@intrinsic
def _vmax(typingctx, x):  # x: [n], contiguous
    return x.dtype(x), _codegen(VECTOR_BYTES, False, "max")


def _max_loop(x):
    m = x.dtype.type(-float("inf"))
    for j in range(x.shape[0]):
        if x[j] > m:
            m = x[j]
    return m


def _sum_loop(x):  # one element at a time, in order
    s = x.dtype.type(0)
    for j in range(x.shape[0]):
        s += x[j]
    return s


def _dot_loop(x, y):
    s = x.dtype.type(0)
    for j in range(x.shape[0]):
        s += x[j] * y[j]
    return s


def vsum(x):  # x: [n] -> sum. As Python (NUMBA_DISABLE_JIT=1): the loop, the readable twin
    return _sum_loop(x)


def vdot(x, y):  # x, y: [n] -> sum of x*y
    return _dot_loop(x, y)


def vmax(x):  # x: [n] -> the largest element (NaNs skipped)
    return _max_loop(x)


# compiled: the IR above for contiguous rows; a strided view (no kernel here passes one)
# takes the loop
@overload(vsum, inline="always")
def _vsum_overload(x):
    _check(x)
    return (lambda x: _vsum(x)) if x.layout == "C" else _sum_loop


@overload(vdot, inline="always")
def _vdot_overload(x, y):
    _check(x, y)
    return (lambda x, y: _vdot(x, y)) if x.layout == "C" and y.layout == "C" else _dot_loop


@overload(vmax, inline="always")
def _vmax_overload(x):
    _check(x)
    return (lambda x: _vmax(x)) if x.layout == "C" else _max_loop
