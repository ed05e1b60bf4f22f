"""What every kernel module shares: the fast-math flags, a dtype-faithful scalar cast,
thread control and the fixed row-chunking that keeps reductions deterministic.

Why these flags: Numba's ``fastmath=True`` also sets ``nnan``/``ninf``, which lets LLVM
fold ``np.isnan`` to False and breaks ``-inf`` masks. And it sets ``reassoc``, which lets
LLVM choose the order of a sum each time it optimises the code: a kernel compiled in this
process and the same kernel loaded from Numba's cache then sum in different orders (it was
measured: kernels/reduce.py tells the story). So we name the flags ourselves, without
either: contraction into FMA, no signed zeros, reciprocals. The sums that must be fast are
kernels/reduce.py's vsum and vdot, vectorised in an order written down.
"""
import functools
import math

import numba
import numpy as np
from numba import njit
from numba.core import cgutils
from numba.extending import intrinsic, overload

FASTMATH = {"contract", "nsz", "arcp", "afn"}
# Chapter 01's steps (the 4x4 dot-block GEMM) vectorise their dot products only with
# reassociation; they are not on the training path, so they may have it.
FASTMATH_REASSOC = FASTMATH | {"reassoc"}

# Reductions over rows (bias gradient, LayerNorm gamma/beta gradient) are split into
# chunks of a *fixed* number of rows, each chunk summed by one thread, then the chunk
# partials summed in order by one thread. The result depends on the data only, never on
# how many threads ran: bitwise reproducible for any thread count.
ROW_CHUNK = 64


def cast_like(a, value):
    """``value`` converted to the dtype of array ``a`` (inside a kernel).

    A Python float literal in a kernel is float64 and silently promotes float32 math;
    ``x.dtype.type(v)`` does not help inside Numba (it returns a float64 too).
    """
    return a.dtype.type(value)


@overload(cast_like, inline="always")  # a constant: inlined, it never blocks a vector loop
def _cast_like_overload(a, value):
    dt = a.dtype

    def impl(a, value):
        return dt(value)

    return impl


ALIGN = 64  # bytes: a cache line, and one AVX-512 vector


@njit(cache=True)
def aligned_empty(n, dtype):
    """A new 1-D array of ``n`` values (``dtype`` of 4 or 8 bytes) whose first value starts
    a cache line: ``ALIGN`` bytes. (From Python: ``aligned_empty_py``, no compile.)

    The GEMM's packed panels of B are read a whole vector at a time, every step of the
    reduction, and a panel's row is a whole number of cache lines (NR values: 16, 32 or
    48 floats). With the panels starting on a line, no vector load straddles two lines;
    NumPy's arrays start 16 bytes into one (malloc's alignment), Numba's 32, so the
    panels' loads split across lines on AVX-512 (64-byte vectors) always, on AVX2
    (32-byte vectors) every other one. Measured on a 2-core Xeon (family 6 model 167,
    AVX-512), packed weights, 2 threads: 4096 x 2304 x 768 (base's q|k|v on a batch) 297
    GFLOP/s with the panels on a line against 256-258 16 or 32 bytes past it; 768 x 3072 x
    1024 297 against 276-278. Where C or the panels of A start does not matter (each tile
    of C is loaded and stored once a KC block; A's values are read one at a time)."""
    raw = np.empty(n + ALIGN // 4, dtype=dtype)
    addr = np.int64(raw.ctypes.data % ALIGN)
    skip = (ALIGN - addr) % ALIGN // raw.itemsize
    return raw[skip:skip + n]


# the same from Python, where a compile is not worth it (and under NUMBA_DISABLE_JIT, where
# aligned_empty is the plain function already)
aligned_empty_py = getattr(aligned_empty, "py_func", aligned_empty)


def set_threads(n=None):
    """Set the number of threads Numba's parallel kernels use (None: all cores)."""
    if n is None:
        n = numba.config.NUMBA_NUM_THREADS
    if not 1 <= int(n) <= numba.config.NUMBA_NUM_THREADS:
        from ..options import OptionError
        raise OptionError(f"--threads {n}: between 1 and {numba.config.NUMBA_NUM_THREADS} "
                          "(the cores Numba found; NUMBA_NUM_THREADS)")
    numba.set_num_threads(int(n))
    return numba.get_num_threads()


def get_threads():
    """The number of threads parallel kernels use now (numba.get_num_threads, through
    the C function it calls: the GEMM asks on every call, and the public function costs
    ~1.4 us of Python, its C function ~0.2)."""
    return _num_threads()


def _first_num_threads():
    global _num_threads
    n = numba.get_num_threads()  # launches the thread pool, once
    try:
        from numba.np.ufunc import parallel
        if parallel._get_num_threads() == n:
            _num_threads = parallel._get_num_threads
    except (ImportError, AttributeError, TypeError):  # another Numba: the public call
        _num_threads = numba.get_num_threads
    return n


_num_threads = _first_num_threads


def keeps_threads(run):
    """A run sets its own thread count (``--threads``); as a library call it gives the
    caller's back when it returns or raises. (Left at all cores, a test process or a
    notebook that runs next to other work had every later parallel region wait for a
    core: a whole-model finite-difference check, thousands of small calls, ran 5-20x
    slower.)"""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        before = numba.get_num_threads()
        try:
            return run(*args, **kwargs)
        finally:
            numba.set_num_threads(before)
    return wrapper


def check_float(*arrays):
    """Kernels are compiled for float32 (training) and float64 (gradient checks) only."""
    dt = arrays[0].dtype
    for a in arrays:
        if a.dtype is not dt and a.dtype != dt:
            raise TypeError(f"dtype mismatch: {a.dtype} vs {dt}; convert explicitly")
    if dt not in _FLOATS:  # (a tuple of dtype objects: `in` finds them by identity first)
        raise TypeError(f"kernels take float32 or float64 arrays, got {dt}")
    return dt


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------
# exp, written out: the same bits in every process, and vectorisable

# exp(x) = 2^k * exp(r),  k = round(x / ln 2),  r = x - k ln 2 in [-ln2/2, ln2/2]
# (ln 2 split in a short high part C1, so that k * C1 is exact, and the rest C2: Cody &
# Waite), exp(r) = 1 + r + r^2 q(r) with Cephes' expf polynomial for q, 2^k built from its
# bits. All of it in float32 arithmetic (eight lanes an AVX2 vector, sixteen on AVX-512),
# made accurate by two pairs that carry what a rounding lost:
#   r  = (x - k C1) - k C2 rounds; rlo = ((x - k C1) - r) - k C2 is what it lost
#        (x - k C1 is exact: a multiple of x's ulp, and no larger than ln 2);
#   1 + r rounds to h; e = (1 - h) + r is what it lost (Fast2Sum: |1| >= |r|);
#   exp(r) = h + (e + (r^2 q(r) + rlo)): one rounding at the end that matters.
# Measured on every float32 whose exp is a normal number (all 2.2 billion of them, both
# signs, against float64 exp: benchmarks/exp_every_float32.py): at most 0.683 ulp from
# the exact value. (The form before this one did the same in float64 to get under 1 ulp,
# four lanes a vector: twice the time of this one on AVX2.) k = 128 (x just below 88.72)
# would overflow 2^k's bits, so there p is doubled and k is 127. Below -87.34 the result
# is 0 (float32's subnormals are flushed, as a masked softmax key wants), above 88.72 it
# is inf, NaN stays NaN. Every choice is a select, not a branch: the loop stays a vector
# loop. The correction terms rely on the flags above having no "reassoc" (which would
# fold (r1 - r) - t to 0).
#
# Why not math.exp: Numba calls libm for it, and a function compiled in this process
# and the same function loaded from Numba's on-disk cache then differ in the last bit of
# a sum of exps (measured: the softmax cross-entropy's gradient, in some rows). A run
# resumed in a fresh process must continue bit for bit, so float32 kernels use this one,
# which is plain arithmetic: the same machine code either way, and LLVM vectorises it.
_EXP_LOG2E = 1.4426950408889634
_EXP_C1, _EXP_C2 = 0.693359375, -2.12194440e-4  # C1 + C2 = ln 2; k * C1 is exact
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)
_EXP_LO, _EXP_HI = -87.336544750553, 88.72283935546875  # exp(LO) = smallest normal


def exp_float32(x):
    """exp, vectorisable and reproducible: math.exp for float64, the form above for
    float32."""
    return math.exp(x)


def exp_nonpositive32(x):
    """exp_float32 for an argument that is at most 0 (or NaN): the same value for every
    such x, from fewer instructions. A softmax's and a cross-entropy's exps are all of
    x - max(x): never positive, so exp_float32's overflow half (the clamp at 88.72, the
    doubling for k = 128, the inf above) never acts there; this one leaves it out (7 of
    its ~40 vector instructions)."""
    return math.exp(x)


def _exp32_impl(nonpositive):
    # the float32 exp above; nonpositive: without the selects only x > 0 needs
    f = np.float32
    log2e, c1, c2 = f(_EXP_LOG2E), f(_EXP_C1), f(_EXP_C2)
    p0, p1, p2, p3, p4, p5 = (f(c) for c in _EXP_P)
    lo, hi = f(_EXP_LO), f(_EXP_HI)
    zero, half, one, inf, k_max = f(0.0), f(0.5), f(1.0), f(np.inf), f(127.0)

    @njit(inline="always")
    def scaled(x, xc):  # exp(xc) for xc in [lo, hi], by k and r as above
        k = np.floor(xc * log2e + half)  # a float: np.floor keeps the type
        r1 = xc - k * c1  # exact
        t = k * c2
        r = r1 - t
        rlo = (r1 - r) - t  # r + rlo = r1 - t
        q = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
        h = one + r
        e = (one - h) + r  # h + e = 1 + r
        p = h + (e + (q * (r * r) + rlo))  # exp(r)
        return k, p

    if nonpositive:
        def impl(x):  # xc <= 0: k <= 0, no doubling, no clamp at k_max, no inf
            k, p = scaled(x, max(x, lo))
            y = p * np.int32((np.int32(k) + 127) << 23).view(np.float32)  # p * 2^k
            y = zero if x < lo else y
            return x if x != x else y
        return impl

    def impl(x):
        k, p = scaled(x, min(max(x, lo), hi))
        p = p + p if k > k_max else p  # k = 128: 2 * 2^127
        scale = np.int32((np.int32(min(k, k_max)) + 127) << 23).view(np.float32)  # 2^k
        y = p * scale
        y = zero if x < lo else y
        y = inf if x > hi else y
        return x if x != x else y
    return impl


@overload(exp_float32)
def _exp_float32_overload(x):
    if x != numba.types.float32:
        return lambda x: math.exp(x)
    return _exp32_impl(False)


@overload(exp_nonpositive32)
def _exp_nonpositive32_overload(x):
    if x != numba.types.float32:
        return lambda x: math.exp(x)
    return _exp32_impl(True)


def scratch32(like):
    """An uninitialised [32] array of ``like``'s dtype. Compiled (the overload below), it
    lies in the calling kernel's stack frame: no allocation, nothing to free, and LLVM may
    keep it in vector registers. As Python (NUMBA_DISABLE_JIT=1), a NumPy array."""
    return np.empty(32, dtype=like.dtype)


@intrinsic
def _scratch32(typingctx, like):
    arrty = numba.types.Array(like.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(like.dtype)
        data = cgutils.alloca_once(builder, lty, size=32)  # in the function's entry block
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(numba.types.intp, context.get_abi_sizeof(lty))
        context.populate_array(ary, data=data,
                               shape=[context.get_constant(numba.types.intp, 32)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return arrty(like), codegen


@overload(scratch32, inline="always")
def _scratch32_overload(like):
    return lambda like: _scratch32(like)


@njit(fastmath=FASTMATH, inline="always")
def exp_shifted(x, m, y):
    """y[j] = exp_float32(x[j] - m) for every j (y may be x: in place), m the largest
    x[j] (so every argument is at most 0: exp_nonpositive32, the same values). Blocks of 32
    values: LLVM makes each block four independent vectors, whose long chains of
    dependent operations (the exp above is ~40 of them) then overlap; one vector an
    iteration left the core waiting on each chain (on a Zen 3 EPYC, 16K values: 18-20 ->
    14-16 us). The same arithmetic on every value, so the same bits. (The loss's rows
    of 8,000-30,000 logits did not gain, 0.97-0.98x, and keep the plain loop.)

    The last n mod 32 values are a block too, not a loop of one value at a time: that
    loop ran without vectors, ~5 ns a value, and an attention row of 48 keys took 5x the
    time of one of 64 (a 2-core Zen 4 EPYC). For n > 32, the row's last 32 values are
    made into a scratch block first (before the loop overwrites any, when y is x), and
    the block is copied over y's last 32 after the loop: the values it shares with the
    loop's last block are the same exps of the same inputs, written again unchanged. A
    row under 32 goes to _exp_short. (The loop itself must stay here, inlined, where
    LLVM sees that y is x: in a function of its own, x and y are two arguments that may
    overlap, and the loop ran one value at a time.)"""
    n = x.shape[0]
    n32 = n // 32 * 32
    last = scratch32(x)
    if n32 < n and n32 > 0:
        _exp_block(x[n - 32:], m, last)
    for j0 in range(0, n32, 32):
        for j in range(j0, j0 + 32):
            y[j] = exp_nonpositive32(x[j] - m)
    if n32 < n:
        if n32 > 0:
            _copy_block(last, y[n - 32:])
        else:
            _exp_short(x, m, y)


@njit(fastmath=FASTMATH, cache=True)
def _exp_block(x, m, out):  # out[:32] = exp of x[:32] - m: one block (out is a scratch)
    for j in range(32):
        out[j] = exp_nonpositive32(x[j] - m)


@njit(fastmath=FASTMATH, cache=True)
def _copy_block(src, dst):  # dst[:32] = src[:32]
    for j in range(32):
        dst[j] = src[j]


@njit(fastmath=FASTMATH, cache=True)
def _exp_short(x, m, y):
    # exp_shifted on a row under 32 values: padded with m (exp 1) to one block in a
    # scratch; under 8 values, one at a time is cheaper than the copies
    n = x.shape[0]
    if n < 8:
        for j in range(n):
            y[j] = exp_nonpositive32(x[j] - m)
        return
    a = scratch32(x)
    for j in range(32):
        a[j] = m
    for j in range(n):
        a[j] = x[j]
    for j in range(32):
        a[j] = exp_nonpositive32(a[j] - m)
    for j in range(n):
        y[j] = a[j]
