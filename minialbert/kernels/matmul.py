import functools
import threading

import numpy as np
from numba import njit, prange

from ._base import (FASTMATH, FASTMATH_REASSOC, ROW_CHUNK, aligned_empty, aligned_empty_py,
                    cast_like, check_float, get_threads)
from .act import gelu_new_at, gelu_new_backward, gelu_new_forward, gelu_new_grad_at
from .norm import layernorm_forward, layernorm_rows
from .microkernel import (NATIVE, NATIVE_NARROW, NATIVE_SHORT, SHORT, TAIL_MR, edge_tail,
                          host_isa, kernel_tile, microkernel,
                          microkernel_edge, microkernel_packing, microkernel_packing_edge,
                          microkernel_tail, pack_8_steps, pick_kernel, prefetch_l2, PREFETCH_B,
                          tail_mr, tail_rows, tail_start,
                          transpose_8x8)

_USE_BLAS = False

# Constants for one kernel calling another. Numba compiles a kernel once per signature
# of its arguments' types, and it types a plain 0, 1, True or False in a call as that very
# value (Literal[int](0), Literal[bool](True)): each call site with other constants got
# a copy of the whole GEMM chain of its own, seconds of compile each on a clean install.
# NumPy scalars are typed as plain int64 and bool: the calls below share one compile.
I0, I1, YES, NO = np.int64(0), np.int64(1), np.bool_(True), np.bool_(False)


class use_blas:
    """Switch every matmul to NumPy's BLAS, for comparison only::

        with use_blas(True):
            ...  # np.dot does the products
    """

    def __init__(self, flag=True):
        self.flag = bool(flag)

    def __enter__(self):
        global _USE_BLAS
        self.prev, _USE_BLAS = _USE_BLAS, self.flag
        return self

    def __exit__(self, *exc):
        global _USE_BLAS
        _USE_BLAS = self.prev


# ----------------------------------------------------------------------------------
# the algorithmic reference: three loops, one multiply-add at a time


@njit(cache=True)
def matmul_nt_naive(A, B):  # A: [M,K], B: [N,K] -> C: [M,N] = A @ B.T
    M, K = A.shape
    N = B.shape[0]
    C = np.zeros((M, N), dtype=A.dtype)
    for i in range(M):
        for j in range(N):
            s = cast_like(C, 0.0)
            for k in range(K):
                s += A[i, k] * B[j, k]
            C[i, j] = s
    return C


# ----------------------------------------------------------------------------------
# step 2: a 4x4 block of dot products (the previous fast kernel, kept as a step)


@njit(fastmath=FASTMATH_REASSOC, cache=True)
def _block_4x4(A, B, C, i, j, accumulate):  # C[i:i+4, j:j+4] (+)= A[i:i+4] @ B[j:j+4].T
    K = A.shape[1]
    a0 = A[i]
    a1 = A[i + 1]
    a2 = A[i + 2]
    a3 = A[i + 3]
    b0 = B[j]
    b1 = B[j + 1]
    b2 = B[j + 2]
    b3 = B[j + 3]
    z = cast_like(C, 0.0)
    c00 = c01 = c02 = c03 = z
    c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = z
    c30 = c31 = c32 = c33 = z
    for k in range(K):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        x3 = a3[k]
        y0 = b0[k]
        y1 = b1[k]
        y2 = b2[k]
        y3 = b3[k]
        c00 += x0 * y0
        c01 += x0 * y1
        c02 += x0 * y2
        c03 += x0 * y3
        c10 += x1 * y0
        c11 += x1 * y1
        c12 += x1 * y2
        c13 += x1 * y3
        c20 += x2 * y0
        c21 += x2 * y1
        c22 += x2 * y2
        c23 += x2 * y3
        c30 += x3 * y0
        c31 += x3 * y1
        c32 += x3 * y2
        c33 += x3 * y3
    if not accumulate:
        C[i, j] = z
        C[i, j + 1] = z
        C[i, j + 2] = z
        C[i, j + 3] = z
        C[i + 1, j] = z
        C[i + 1, j + 1] = z
        C[i + 1, j + 2] = z
        C[i + 1, j + 3] = z
        C[i + 2, j] = z
        C[i + 2, j + 1] = z
        C[i + 2, j + 2] = z
        C[i + 2, j + 3] = z
        C[i + 3, j] = z
        C[i + 3, j + 1] = z
        C[i + 3, j + 2] = z
        C[i + 3, j + 3] = z
    C[i, j] += c00
    C[i, j + 1] += c01
    C[i, j + 2] += c02
    C[i, j + 3] += c03
    C[i + 1, j] += c10
    C[i + 1, j + 1] += c11
    C[i + 1, j + 2] += c12
    C[i + 1, j + 3] += c13
    C[i + 2, j] += c20
    C[i + 2, j + 1] += c21
    C[i + 2, j + 2] += c22
    C[i + 2, j + 3] += c23
    C[i + 3, j] += c30
    C[i + 3, j + 1] += c31
    C[i + 3, j + 2] += c32
    C[i + 3, j + 3] += c33


@njit(fastmath=FASTMATH_REASSOC, cache=True)
def _dot_into(A, B, C, i, j, accumulate):  # C[i, j] (+)= A[i] . B[j]  (edges of C)
    a = A[i]
    b = B[j]
    s = cast_like(C, 0.0)
    for k in range(A.shape[1]):
        s += a[k] * b[k]
    if accumulate:
        C[i, j] += s
    else:
        C[i, j] = s


@njit(parallel=True, fastmath=FASTMATH_REASSOC, cache=True)
def _gemm_nt_4x4(A, B, C, accumulate):  # A: [M,K], B: [N,K], C: [M,N] (+)= A @ B.T
    M = A.shape[0]
    N = B.shape[0]
    n_blocks = (M + 3) // 4
    for bi in prange(n_blocks):  # each thread owns rows i0..i0+3 of C
        i0 = bi * 4
        if i0 + 4 <= M:
            j = 0
            while j + 4 <= N:
                _block_4x4(A, B, C, i0, j, accumulate)
                j += 4
            for jr in range(j, N):  # N not a multiple of 4
                for i in range(i0, i0 + 4):
                    _dot_into(A, B, C, i, jr, accumulate)
        else:  # M not a multiple of 4: the last 1..3 rows
            for i in range(i0, M):
                for jr in range(N):
                    _dot_into(A, B, C, i, jr, accumulate)


def matmul_nt_4x4(A, B):  # [M,K] x [N,K] -> [M,N]: step 2 of chapter 01
    check_float(A, B)
    C = np.empty((A.shape[0], B.shape[0]), dtype=A.dtype)
    _gemm_nt_4x4(np.ascontiguousarray(A), np.ascontiguousarray(B), C, False)
    return C


# ----------------------------------------------------------------------------------
# step 3: packed panels and a register micro-kernel


# Packing copies a block of A or B into panels. Every loop below indexes a slice with loop
# variables only: an index Numba cannot prove non-negative (like j0 + r*NR + j) gets a
# wrap-around check that stops the loop from vectorising (a copy then runs ~10x slower).


@njit(inline="always")
def _copy_strips(src, out, kc, n_full, R):
    # src [kc, >= n_full*R] -> out: n_full panels [kc, R] one after another. The block is read
    # row by row, each row front to back (the hardware prefetcher follows that; panel by
    # panel it would jump a row's length every R values), and written into the n_full
    # panels side by side. Callers pass R as a constant where they can: the inner copy is
    # then whole vectors, not a loop of unknown length.
    for p in range(kc):
        row = src[p]
        for r in range(n_full):
            d = out[(r * kc + p) * R:(r * kc + p + 1) * R]
            s = row[r * R:(r + 1) * R]
            for j in range(R):
                d[j] = s[j]


@njit(cache=True)
def _pack(X, k_major, p0, kc, j0, n, R, out):
    # The [kc, n] block opX[p0:p0+kc, j0:j0+n] -> out: ceil(n/R) panels, each [kc, R]
    # (flat), columns past n zero. opX = X if k_major (X is [K, *]) else X.T (X is [*, K]).
    # The same copy packs both operands: B's panels (R = NR) from opB = B or B.T, and A's
    # panels (R = MR) from opA.T = A.T or A — the micro-kernel reads both as [p, r].
    # A's block on AVX2's tile (R = 6) ends in panels of 4 rows from tail_start on, on
    # AVX-512's 12 x 32 (R = 12) in panels of 8.
    t0 = tail_start(n, R)
    _pack_panels(X, k_major, p0, kc, j0, t0, R, out)
    if t0 < n:
        _pack_panels(X, k_major, p0, kc, j0 + t0, n - t0, tail_mr(R), out[t0 * kc:])


@njit(cache=True)
def _pack_panels(X, k_major, p0, kc, j0, n, R, out):
    # _pack's copy, every panel R wide
    if k_major:  # rows of X[p0:p0+kc, ...] are rows of the panels
        n_full = n // R
        src = X[p0:p0 + kc, j0:j0 + n]
        if R == 6:  # the tiles' widths and heights (microkernel.KERNELS), as constants
            _copy_strips(src, out, kc, n_full, 6)
        elif R == 8:
            _copy_strips(src, out, kc, n_full, 8)
        elif R == 4:
            _copy_strips(src, out, kc, n_full, 4)
        elif R == 12:
            _copy_strips(src, out, kc, n_full, 12)
        elif R == 16:
            _copy_strips(src, out, kc, n_full, 16)
        elif R == 32:
            _copy_strips(src, out, kc, n_full, 32)
        elif R == 24:
            _copy_strips(src, out, kc, n_full, 24)
        elif R == 48:
            _copy_strips(src, out, kc, n_full, 48)
        else:
            _copy_strips(src, out, kc, n_full, R)
        cols = n - n_full * R
        if cols > 0:  # the ragged last panel
            dst = out[n_full * kc * R:(n_full + 1) * kc * R].reshape(kc, R)
            dst[:] = 0
            for p in range(kc):
                for j in range(cols):
                    dst[p, j] = src[p, n_full * R + j]
        return
    unit = X.strides[1] == X.itemsize  # rows of unit stride: 8 x 8 blocks in registers
    for r in range((n + R - 1) // R):
        cols = min(R, n - r * R)
        dst = out[r * kc * R:(r + 1) * kc * R].reshape(kc, R)
        if cols < R:
            dst[:] = 0
        # the block is X[cols, p0:p0+kc]: a transposing copy, 8 x 8 values at a time
        # (transpose_8x8: eight vector loads, 24 shuffles, eight vector stores; a value
        # at a time, the copy took ~1.1 ns a value on a Zen 3 EPYC, 5x NumPy's plain copy)
        src = X[j0 + r * R:j0 + r * R + cols, p0:p0 + kc]
        c8 = cols // 8 * 8 if unit else 0
        k8 = kc // 8 * 8 if unit else 0
        for q in range(0, k8, 8):
            for j in range(0, c8, 8):
                transpose_8x8(src, j, q, dst, q, j)
        for j in range(c8):  # the ragged edges, a value at a time
            for p in range(k8, kc):
                dst[p, j] = src[j, p]
        for j in range(c8, cols):
            for p in range(kc):
                dst[p, j] = src[j, p]


@njit(cache=True)
def _macrokernel(Ap, a_off, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR, b_end):
    # Cf[c0 + i*ldc + j] (+)= sum_{p < kc} Ap-panels[p, i] Bp-panels[p, j], i < m, j < n.
    # Ap[a_off:] holds ceil(m/MR) panels [kc, MR] one after the other, Bp[b_off:] holds
    # ceil(n/NR) panels [kc, NR]. One NR-wide panel of B (reused from L1/L2) against every
    # MR-tall panel of A; a whole tile goes straight into C, a ragged one too, by masked
    # stores (microkernel_edge). While a column of tiles runs, the panel after its own
    # comes into L2 (_prefetch_share), when that panel starts before Bp[b_end] (0: none).
    # The CPU's own kernel gets a copy of the loops (_tiles, inlined) in which its code is
    # a constant, which LLVM folds to that one kernel; any other code (a narrower tile the
    # tests compare, AVX-512's second tile) runs the loops that test the code at every
    # tile. Those compiled worse around the kernel, not only by the tests: a Zen 3 EPYC,
    # one thread, 4092 x 256 x 256 and x 1024: 6.68 / 26.4 ms against 6.16 / 24.1 with the
    # code a constant (the best of 11 rounds, alternating). (A copy for every code took
    # the GEMM chain's compile from 59 to 84 s; the copy for this CPU's alone, to about
    # 65.) On AVX-512 its two other tiles get copies too (NATIVE_NARROW, NATIVE_SHORT):
    # 8 x 32 runs every product of 128 rows (a sentence; each sequence of a batch taken by
    # sequence). Measured on a 2-core Xeon (family 6 model 167), old against new in
    # alternate rounds (benchmarks/ab_kernels.py 0af8fe3 --only pass, 15 and 21 rounds):
    # tiny's frozen pass 1.00-1.05x on 8 and 32 sequences, base's sentence 1.01-1.03x; the
    # kernels' cold compile 2 min 32 s -> 2 min 40 s.
    if isa == NATIVE:
        _tiles(Ap, a_off, Bp, b_off, kc, m, n, Cf, c0, ldc, add, NATIVE, MR, NR, b_end)
    elif NATIVE_NARROW > 0 and isa == NATIVE_NARROW:
        _tiles(Ap, a_off, Bp, b_off, kc, m, n, Cf, c0, ldc, add, NATIVE_NARROW, MR, NR, b_end)
    elif NATIVE_SHORT > 0 and isa == NATIVE_SHORT:
        _tiles(Ap, a_off, Bp, b_off, kc, m, n, Cf, c0, ldc, add, NATIVE_SHORT, MR, NR, b_end)
    else:
        _tiles(Ap, a_off, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR, b_end)


@njit(inline="always")
def _tiles(Ap, a_off, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR, b_end):
    # _macrokernel's loops, for one kernel code (and, on AVX2's, its tail: tail_start)
    t0 = tail_start(m, MR)
    share = _panel_share(kc * NR, t0, MR, Bp.itemsize)
    for jr in range(0, n, NR):
        nr = min(NR, n - jr)
        b = b_off + (jr // NR) * kc * NR
        for ir in range(0, t0, MR):
            mr = min(MR, t0 - ir)
            a = a_off + (ir // MR) * kc * MR
            c = c0 + ir * ldc + jr
            _prefetch_share(Bp, b, kc * NR, b_end, ir // MR, share)
            if mr == MR and nr == NR:
                microkernel(isa, kc, Ap, a, Bp, b, Cf, c, ldc, add, MR, NR)
            else:  # a ragged tile: masked stores
                microkernel_edge(isa, kc, Ap, a, Bp, b, Cf, c, ldc, add, MR, NR, mr, nr)
        _tail_tiles(Ap, a_off, Bp, b, kc, t0, m, nr, Cf, c0 + jr, ldc, add, MR, NR)


@njit(inline="always")
def _panel_share(size, rows, MR, itemsize):
    # cache lines of a panel of B (``size`` values) each tile of a column of ``rows`` rows
    # asks for, in tiles of MR rows, so that the column's tiles together ask for all of it
    lines = (size * itemsize + 63) // 64
    return -(-lines // max(1, -(-rows // MR)))


@njit(inline="always")
def share_range(k, share, size, itemsize):
    # the values of a panel (``size`` of them) whose cache lines tile k asks for: a line
    # is 64 bytes
    step = 64 // itemsize
    return k * share * step, min((k + 1) * share * step, size), step


@njit(inline="always")
def _prefetch_share(Bp, b, size, b_end, k, share):
    # Tile k's share of the panel of B after the one at Bp[b:b + size] (the next column of
    # tiles reads it), asked into L2 (prefetch_l2) when it starts before Bp[b_end]. For a
    # B that comes from L3 or memory (base's weights, 2.4-9.4 MB a product, go through L3
    # at each of the 12 layer applications); left to the hardware prefetchers, each
    # column's panel came in as its first tile read it. Measured on a 2-core Xeon (family 6 model 167), one product of 128 rows on a
    # weight not in cache (a different one each call): 1.03-1.07x; base's frozen pass on
    # a sentence 1.11x with the host busy, 0.96-1.01x with it quiet (microkernel.PREFETCH_B).
    # No value changes.
    nxt = b + size
    if nxt < b_end:
        lo, hi, step = share_range(k, share, size, Bp.itemsize)
        for q in range(lo, hi, step):
            prefetch_l2(Bp, nxt + q)


@njit(inline="always")
def _tail_tiles(Ap, a_off, Bp, b, kc, t0, m, nr, Cf, c0, ldc, add, MR, NR):
    # rows t0..m of one column of tiles (nr wide) in the tail tile (tail_start): AVX2's
    # 4 x 16 after its 6 x 16, AVX-512's 8 x 32 (code 5) after its 12 x 32 (NR the same)
    T = tail_mr(MR)
    for ir in range(t0, m, T):
        mr = min(T, m - ir)
        a, c = a_off + ir * kc, c0 + ir * ldc
        if MR == 12:
            if mr == T and nr == NR:
                microkernel(SHORT, kc, Ap, a, Bp, b, Cf, c, ldc, add, T, NR)
            else:
                microkernel_edge(SHORT, kc, Ap, a, Bp, b, Cf, c, ldc, add, T, NR, mr, nr)
        elif mr == T and nr == NR:
            microkernel_tail(kc, Ap, a, Bp, b, Cf, c, ldc, add)
        else:
            edge_tail(kc, Ap, a, Bp, b, Cf, c, ldc, add, mr, nr)


@njit(cache=True)
def _pack_panel(Af, a0, rs, cs, kc, rows, MR, Ap, o):
    # One A panel by plain copy: element (i, p) at Af[a0 + i*rs + p*cs] -> Ap[o + p*MR + i]
    # for i < rows, zeros below (the ragged last panel of a block).
    for p in range(kc):
        for i in range(MR):
            Ap[o + p * MR + i] = Af[a0 + i * rs + p * cs] if i < rows else 0


@njit(cache=True)
def _pack_rows(Af, a0, rs, kc, m, MR, Ap):
    # The [m, kc] block of A whose rows lie along the reduction (element (i, p) at
    # Af[a0 + i*rs + p]: the NT and NN forms' A) -> Ap: ceil(m/MR) panels [kc, MR], zeros
    # below the ragged last one (on AVX2's tile, panels of 4 from tail_start on).
    t0 = tail_start(m, MR)
    _pack_row_panels(Af, a0, rs, kc, t0, MR, Ap, t0 < m)
    if t0 < m:
        _pack_row_panels(Af, a0 + t0 * rs, rs, kc, m - t0, tail_mr(MR), Ap[t0 * kc:], False)


@njit(cache=True)
def _pack_row_panels(Af, a0, rs, kc, m, MR, Ap, more):
    # _pack_rows's copy, every panel MR tall. Eight steps of a panel at a time in vector
    # registers (pack_8_steps), the panels in order: each 8-step block's spill past its MR
    # values lands where a later block, or the ragged panel packed last, writes next. Only
    # the block that ends the full panels, with no ragged panel after it and nothing more
    # packed after this call (more), would spill past the buffer's share; it is copied a
    # value at a time.
    full = m // MR
    k8 = kc // 8 * 8
    for r in range(full):
        o = r * kc * MR
        src = a0 + r * MR * rs
        q_end = k8 if (more or r < full - 1 or full * MR < m or k8 < kc) else max(k8 - 8, 0)
        for q in range(0, q_end, 8):
            pack_8_steps(Af, src + q, rs, MR, Ap, o + q * MR, MR)
        for p in range(q_end, kc):  # the last steps, in order, after the blocks' spills
            for i in range(MR):
                Ap[o + p * MR + i] = Af[src + i * rs + p]
    if full * MR < m:
        _pack_panel(Af, a0 + full * MR * rs, rs, I1, kc, m - full * MR, MR, Ap,
                    full * kc * MR)


@njit(cache=True)
def _macrokernel_packing(Af, a0, rs, cs, Ap, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR,
                         b_end):
    # As _macrokernel, with the [m, kc] block of A not packed yet: element (i, p) at
    # Af[a0 + i*rs + p*cs] (A's own memory, any layout). The first column of tiles (jr = 0)
    # reads A where it lies and writes each panel into Ap as it goes (microkernel_packing);
    # every later column reads the packed panels. Packing costs no pass of its own, and
    # the packed block is written into a buffer that stays in cache.
    # On AVX2 (the 6 x 16 tile) the rows of an NT/NN form's A are packed first instead, 8
    # steps at a time in registers (_pack_rows): there the packing micro-kernel's six
    # stores a step doubled the time of its call (a Zen 3 EPYC: ~1,000 against ~500 ns at
    # kc 256), a twelfth to a quarter of a product with 16 to 4 columns of tiles. (The TN
    # form's A, whose step is MR values side by side, copied first by vector moves ran
    # 0.88-1.00x of packing it here, on the same machine: it stays packed on the way.)
    # As in _macrokernel, a copy of the loops (_tiles_packing) for the CPU's own kernel.
    if isa == 2 and cs == 1:
        _pack_rows(Af, a0, rs, kc, m, MR, Ap)
        _macrokernel(Ap, 0, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR, b_end)
    elif isa == NATIVE:
        _tiles_packing(Af, a0, rs, cs, Ap, Bp, b_off, kc, m, n, Cf, c0, ldc, add, NATIVE, MR, NR,
                       b_end)
    elif NATIVE_NARROW > 0 and isa == NATIVE_NARROW:
        _tiles_packing(Af, a0, rs, cs, Ap, Bp, b_off, kc, m, n, Cf, c0, ldc, add, NATIVE_NARROW,
                       MR, NR, b_end)
    elif NATIVE_SHORT > 0 and isa == NATIVE_SHORT:
        _tiles_packing(Af, a0, rs, cs, Ap, Bp, b_off, kc, m, n, Cf, c0, ldc, add, NATIVE_SHORT,
                       MR, NR, b_end)
    else:
        _tiles_packing(Af, a0, rs, cs, Ap, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR,
                       b_end)


@njit(inline="always")
def _tiles_packing(Af, a0, rs, cs, Ap, Bp, b_off, kc, m, n, Cf, c0, ldc, add, isa, MR, NR,
                   b_end):
    # _macrokernel_packing's loops, for one kernel code. A block's tail (tail_start) on
    # AVX-512's 12 x 32 is packed on the way too, by its 8 x 32 tile's packing twin; AVX2's
    # 4 x 16 tail tile has none, and its panels are copied first (as is a ragged panel).
    t0 = tail_start(m, MR)
    T = tail_mr(MR)
    full = t0 // MR * MR
    if full < t0:  # the ragged last panel, copied first
        _pack_panel(Af, a0 + full * rs, rs, cs, kc, t0 - full, MR, Ap, (full // MR) * kc * MR)
    tail_packs = MR == 12
    for ir in range(t0, m, T):
        if not tail_packs or m - ir < T:
            _pack_panel(Af, a0 + ir * rs, rs, cs, kc, min(T, m - ir), T, Ap, ir * kc)
    for jr in range(0, n, NR):
        nr = min(NR, n - jr)
        b = b_off + (jr // NR) * kc * NR
        _column_packing(Af, a0, rs, cs, Ap, Bp, b, kc, 0, t0, MR, isa, jr == 0, nr, Cf,
                        c0 + jr, ldc, add, NR, b_end)
        if tail_packs:
            _column_packing(Af, a0, rs, cs, Ap, Bp, b, kc, t0, m, T, SHORT, jr == 0, nr, Cf,
                            c0 + jr, ldc, add, NR, I0)
        else:
            _tail_tiles(Ap, 0, Bp, b, kc, t0, m, nr, Cf, c0 + jr, ldc, add, MR, NR)


@njit(inline="always")
def _column_packing(Af, a0, rs, cs, Ap, Bp, b, kc, r0, r1, R, code, first, nr, Cf, c0, ldc,
                    add, NR, b_end):
    # One column of tiles (nr wide) of _tiles_packing: rows r0..r1 in panels of R rows,
    # run by kernel ``code``; in the first column each panel of R rows is packed on the
    # way (a ragged one was copied before). Panel ir lies at ir * kc in the packed block.
    # The next panel of B, when it starts before Bp[b_end], is asked into L2 on the way.
    share = _panel_share(kc * NR, r1 - r0, R, Bp.itemsize)
    for ir in range(r0, r1, R):
        mr = min(R, r1 - ir)
        a, c = ir * kc, c0 + ir * ldc
        whole = mr == R and nr == NR
        _prefetch_share(Bp, b, kc * NR, b_end, (ir - r0) // R, share)
        if first and mr == R:
            if whole:
                microkernel_packing(code, kc, Af, a0 + ir * rs, rs, cs, Ap, a, Bp, b, Cf, c,
                                    ldc, add, R, NR)
            else:  # a ragged tile: masked stores
                microkernel_packing_edge(code, kc, Af, a0 + ir * rs, rs, cs, Ap, a, Bp, b, Cf,
                                         c, ldc, add, R, NR, mr, nr)
        elif whole:
            microkernel(code, kc, Ap, a, Bp, b, Cf, c, ldc, add, R, NR)
        else:  # a ragged tile: masked stores
            microkernel_edge(code, kc, Ap, a, Bp, b, Cf, c, ldc, add, R, NR, mr, nr)


@njit(cache=True)
def _zero_if_empty(K, accumulate, Cf, c0, ldc, m, n):
    if K == 0 and not accumulate:  # an empty sum
        for i in range(m):
            for j in range(n):
                Cf[c0 + i * ldc + j] = 0


@njit(cache=True)
def _prefetch_block(Xf, x0, ld, rows, cols):
    # Ask for the block of rows x cols values at Xf[x0 + r*ld + c] to come into L2, one
    # request a cache line (and one for each row's last value); no value changes.
    step = max(1, 64 // Xf.itemsize)
    for r in range(rows):
        o = x0 + r * ld
        for c in range(0, cols, step):
            prefetch_l2(Xf, o + c)
        if cols > 0:
            prefetch_l2(Xf, o + cols - 1)


@njit(cache=True)
def _prefetch_rows(X, r0, rows, c0, cols):  # as _prefetch_block, on X[r0:r0+rows, c0:c0+cols]
    for r in range(r0, r0 + rows):
        _prefetch_block(X[r], c0, I0, I1, cols)


@njit(cache=True)
def _gemm_block(Af, a0, rs, cs, m, B, b_trans, j0, n, K, Cf, c0, ldc, accumulate, isa, MR, NR,
                KC, Ap, Bp, prefetch=False):
    # One thread's GEMM: Cf[c0 + i*ldc + j] (+)= sum_p opA[i, p] opB(B)[p, j0+j] for i < m,
    # j < n, where opA[i, p] lies at Af[a0 + i*rs + p*cs] (any layout, read in place).
    # Walks the reduction in KC steps, packing the B columns of each step into Bp, and runs
    # the macro-kernel whose first column packs A into Ap on the way (scratch the caller
    # owns). Attention calls it once a head (small products, one thread each).
    _zero_if_empty(K, accumulate, Cf, c0, ldc, m, n)
    for p0 in range(0, K, KC):  # the reduction, KC at a time, always in this order
        kc = min(KC, K - p0)
        _pack(B, not b_trans, p0, kc, j0, n, NR, Bp)  # [kc, n] block of B
        if prefetch and p0 + KC < K:  # the next KC block of A and of B,
            # asked for now: it arrives in L2 while this block's products run
            nk = min(KC, K - p0 - KC)
            if cs == 1:  # opA's rows lie along A's rows
                _prefetch_block(Af, a0 + p0 + KC, rs, m, nk)
            else:
                _prefetch_block(Af, a0 + (p0 + KC) * cs, cs, nk, m)
            if b_trans:  # B is [N, K]
                _prefetch_rows(B, j0, n, p0 + KC, nk)
            else:  # B is [K, N]
                _prefetch_rows(B, p0 + KC, nk, j0, n)
        _macrokernel_packing(Af, a0 + p0 * cs, rs, cs, Ap, Bp, I0, kc, m, n, Cf, c0, ldc,
                             accumulate or p0 > 0, isa, MR, NR, I0)


@njit(cache=True)
def packing_buffers(m, n, K, MR, NR, KC, dtype):
    # scratch for _gemm_block on an [m, K] x [K, n] product: packed A, packed B (B's panels
    # starting a cache line: aligned_empty)
    kc = max(1, min(KC, K))
    return (np.empty(((m + MR - 1) // MR) * MR * kc, dtype=dtype),
            aligned_empty(((n + NR - 1) // NR) * NR * kc, dtype))


@njit(inline="always")
def _b_group(N, NR):
    # panels of B one task of _pack_b packs: up to 8, so that a task reads 8 NR-wide
    # strips of each row of B's block side by side (in the TN form, B is an activation
    # [K, N] whose rows lie N apart: one panel's strip of a row is 3 cache lines, and the
    # next row's strip is a page or more away, where no hardware prefetcher follows;
    # eight side by side are 24 lines in a row). With fewer than 16 panels, one a task,
    # so that the threads still share the work.
    Np = (N + NR - 1) // NR
    return max(1, min(8, Np // 8))


@njit(inline="always")
def _pack_tasks(N, K, NR, KC):  # how many tasks _pack_b_task's t runs over
    Np = (N + NR - 1) // NR
    G = _b_group(N, NR)
    return ((K + KC - 1) // KC) * ((Np + G - 1) // G)


@njit(cache=True)
def _pack_b_task(t, B, b_trans, N, K, NR, KC, Bp):
    # Task t of _pack_b: one (KC block, group of _b_group panels) of B. Reduction block p0
    # starts at p0 * (N rounded up to NR), its panel of columns j0.. at that + j0 * kc.
    Np = (N + NR - 1) // NR
    G = _b_group(N, NR)
    Ng = (Np + G - 1) // G
    p0 = (t // Ng) * KC
    kc = min(KC, K - p0)
    j0 = (t % Ng) * G * NR
    n = min(G * NR, N - j0)
    o = p0 * Np * NR + j0 * kc
    _pack(B, not b_trans, p0, kc, j0, n, NR, Bp[o:o + kc * ((n + NR - 1) // NR * NR)])


@njit(parallel=True, cache=True)
def _pack_b(B, b_trans, N, K, NR, KC, Bp):
    # B, whole, into panels, in parallel: one task a (KC block, group of panels:
    # _pack_b_task). Each element is copied once, however many blocks of C will read
    # it. Measured on a 2-core Xeon (family 6 model 167), the TN form's B of base's
    # weight gradients (1024 x 3072, 12.6 MB): one panel a task 0.99 ms alone and 2.5
    # inside its product, eight panels a task 0.70 and 1.5; a plain parallel copy of as
    # many bytes 0.58 ms.
    for t in prange(_pack_tasks(N, K, NR, KC)):  # t as an int64: one compile of
        # _pack_b_task with _gemm_serial's
        _pack_b_task(np.int64(t), B, b_trans, N, K, NR, KC, Bp)


@njit(cache=True)
def fused_a_size(MC, K, MR, KC):
    # elements of one task's packed block of A (MC rows, rounded up to MR, by one KC block)
    return ((MC + MR - 1) // MR) * MR * max(1, min(KC, K))


# The epilogue: what a dense layer does to its product next, done on each chunk of a
# task's block of C as soon as its sum is complete (the chunk is still in cache), instead
# of in another pass over all of C. The arithmetic is exactly that of the separate kernels (bias_add below,
# act.py's gelu_new_forward/_backward: the same inlined functions), so the bits are too.
EPI_NONE, EPI_GELU, EPI_GELU_GRAD, EPI_GELU_IN_PLACE = 0, 1, 2, 3
EPI_PANELS = 4  # panels of B (NR columns each) per chunk of C handed to the epilogue


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _epilogue(Cf, c0, ldc, m, n, bias, j0, act, Xf, Rf):
    # C's block [m, n] at Cf[c0 + i*ldc + j]: first C += bias[j0 + j] (when bias is not
    # empty), then C += Rf[same index] (a residual, when Rf is not empty), then
    # act EPI_GELU: Xf[same index] = gelu_new(C) (C keeps the pre-activation, the
    # backward needs it); EPI_GELU_IN_PLACE: C = gelu_new(C) (a pass no backward follows:
    # one array, not two, and its values changed while in cache; through Xf aliasing C the
    # loop would not vectorise); EPI_GELU_GRAD: C *= gelu_new'(Xf[same index]) (C holds dg, Xf
    # the pre-activation h: C becomes dh).
    # error_model="numpy": a division does not check for zero and raise (Python's rule,
    # Numba's default outside parallel loops), so gelu's divide vectorises (2.6x faster).
    b = bias[j0:j0 + n]
    for i in range(m):
        r = c0 + i * ldc
        c = Cf[r:r + n]
        if b.shape[0] > 0:
            for j in range(n):
                c[j] += b[j]
        if Rf.shape[0] > 0:
            res = Rf[r:r + n]
            for j in range(n):
                c[j] += res[j]
        if act == EPI_GELU:
            x = Xf[r:r + n]
            for j in range(n):
                x[j] = gelu_new_at(c, c[j])
        elif act == EPI_GELU_IN_PLACE:
            for j in range(n):
                c[j] = gelu_new_at(c, c[j])
        elif act == EPI_GELU_GRAD:
            x = Xf[r:r + n]
            for j in range(n):
                c[j] = gelu_new_grad_at(c, c[j], x[j])


@njit(cache=True)
def _gemm_task(t, A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC, NC, Ap, Bp,
               copy_a, bias, act, Xf, Rf, gamma, beta, eps, b_in_task):
    # Task t of _gemm_fused (below): its block of C (_gemm_task_sums), then, with gamma
    # not empty, LayerNorm of the block's rows in place, while the block is in cache. The
    # block is then whole rows (the caller sees to it: NC >= N).
    _gemm_task_sums(t, A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC, NC, Ap, Bp,
                    copy_a, bias, act, Xf, Rf, b_in_task)
    if gamma.shape[0] > 0:
        M, N = C.shape
        i0 = (t // ((N + NC - 1) // NC)) * MC
        layernorm_rows(C.reshape(M * N), i0 * N, N, min(MC, M - i0), N, gamma, beta, eps)


@njit(cache=True)
def _gemm_task_sums(t, A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC, NC, Ap,
                    Bp, copy_a, bias, act, Xf, Rf, b_in_task):
    # The block of C task t owns, from the first KC block of the reduction to the last,
    # then its epilogue.
    M, N = C.shape
    K = A.shape[0] if a_trans else A.shape[1]
    Cf = C.reshape(M * N)
    Af = A.reshape(A.size)
    rs, cs = (1, M) if a_trans else (K, 1)  # where opA(A)[i, p] lies: Af[i*rs + p*cs]
    Np = (N + NR - 1) // NR * NR
    n_nb = (N + NC - 1) // NC
    per_task = fused_a_size(MC, K, MR, KC)
    i0 = (t // n_nb) * MC
    m = min(MC, M - i0)
    j0 = (t % n_nb) * NC
    n = min(NC, N - j0)
    Al = Ap[t * per_task:(t + 1) * per_task]  # this task's packed block of A
    epi = bias.shape[0] > 0 or act != EPI_NONE or Rf.shape[0] > 0
    # the next panel of B asked for ahead (_prefetch_share): for a B that streams, and a
    # block of at least 8 tiles' rows (fewer asked for too many lines each: base's frozen
    # pass on a sentence of 32 tokens, 4 tiles a column, 0.89x on the Xeon below)
    stream = PREFETCH_B and K * N * Bp.itemsize > _B_STREAM and m >= 8 * MR
    if b_in_task:
        per_task_b = fused_a_size(NC, K, NR, KC)
        _gemm_block(Af, i0 * rs, rs, cs, m, B, b_trans, j0, n, K, Cf, i0 * N + j0, N,
                    accumulate, isa, MR, NR, KC, Al, Bp[t * per_task_b:(t + 1) * per_task_b], True)
        if epi:
            _epilogue(Cf, i0 * N + j0, N, m, n, bias, j0, act, Xf, Rf)
        return
    _zero_if_empty(K, accumulate, Cf, i0 * N + j0, N, m, n)
    if epi and K == 0:
        _epilogue(Cf, i0 * N + j0, N, m, n, bias, j0, act, Xf, Rf)
    for p0 in range(0, K, KC):
        kc = min(KC, K - p0)
        add = accumulate or p0 > 0
        # With an epilogue, the last KC block runs EPI_PANELS panels of columns at a
        # time, and each chunk of C goes to the epilogue as soon as it is done, while
        # it is in L2 (a whole block of C, MC x NC, would not be).
        last = epi and p0 + KC >= K
        step = EPI_PANELS * NR if last else max(n, 1)
        # the end of this task's panels of this KC block: up to there, each column of
        # tiles asks for the next one's panel (_prefetch_share), when B streams
        b_end = p0 * Np + (j0 + n + NR - 1) // NR * NR * kc if stream else 0
        for q0 in range(0, n, step):
            qn = min(step, n - q0)
            c = i0 * N + j0 + q0
            b = p0 * Np + (j0 + q0) * kc  # the chunk's first panel of B
            if copy_a:  # opA's values lie M apart in A (A's rows are p). Read in place,
                # a panel's values would collide in L1's sets when M*4 bytes is a
                # multiple of 4 KiB; then the block is copied first (a plain pass, into
                # this task's buffer, which stays in cache). Otherwise (measured on a
                # 2-core Sapphire Rapids: 1.0-1.4x faster) they are read in place, as
                # for the NN/NT forms.
                if q0 == 0:
                    _pack(A, YES, p0, kc, i0, m, MR, Al)
                _macrokernel(Al, 0, Bp, b, kc, m, qn, Cf, c, N, add, isa, MR, NR, b_end)
            elif q0 == 0:  # the first chunk packs the block of A on the way
                _macrokernel_packing(Af, i0 * rs + p0 * cs, rs, cs, Al, Bp, b, kc, m, qn,
                                     Cf, c, N, add, isa, MR, NR, b_end)
            else:
                _macrokernel(Al, 0, Bp, b, kc, m, qn, Cf, c, N, add, isa, MR, NR, b_end)
            if last:
                _epilogue(Cf, c, N, m, qn, bias, j0 + q0, act, Xf, Rf)


@njit(parallel=True, cache=True)
def _gemm_fused(A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC, NC, Ap, Bp,
                pack_b, copy_a, bias, act, Xf, Rf, gamma, beta, eps, b_in_task=False):
    # C: [M,N] (+)= opA(A) [M,K] @ opB(B) [K,N], A C-contiguous:
    #   1. pack B whole into panels in Bp (with pack_b False, Bp holds them already: a
    #      PackedWeight; with b_in_task, each task packs its own columns of B one KC block
    #      at a time, into its share of Bp, and runs as _gemm_block does);
    #   2. cut C into blocks of MC rows x NC columns, one task a block (it owns its block
    #      of C: no races) walking the reduction in KC blocks, always in the same order;
    #      each block of A is packed by the first column of micro-kernel calls that reads
    #      it (_macrokernel_packing), into a buffer of the task's own (with copy_a, by a
    #      copy before the block's first use: see _gemm_task);
    #   3. the block's epilogue (bias, activation: _epilogue), when asked for, and
    #      LayerNorm of its rows (gamma, beta not empty; then NC >= N: whole rows).
    M, N = C.shape
    K = A.shape[0] if a_trans else A.shape[1]
    if pack_b and not b_in_task:
        _pack_b(B, b_trans, N, K, NR, KC, Bp)
    n_tasks = ((M + MC - 1) // MC) * ((N + NC - 1) // NC)
    for t in prange(n_tasks):  # t as an int64 (prange's is a uint64): one compile of
        # _gemm_task with _gemm_serial's
        _gemm_task(np.int64(t), A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC,
                   NC, Ap, Bp, copy_a, bias, act, Xf, Rf, gamma, beta, eps, b_in_task)


@njit(cache=True)
def _gemm_serial(A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC, NC, Ap, Bp,
                 pack_b, copy_a, bias, act, Xf, Rf, gamma, beta, eps, b_in_task=False):
    # _gemm_fused on the calling thread alone, the same tasks in order (so the same bits):
    # for one thread, and for products too small to pay for waking a second one.
    M, N = C.shape
    K = A.shape[0] if a_trans else A.shape[1]
    if pack_b and not b_in_task:
        for t in range(_pack_tasks(N, K, NR, KC)):
            _pack_b_task(t, B, b_trans, N, K, NR, KC, Bp)
    n_tasks = ((M + MC - 1) // MC) * ((N + NC - 1) // NC)
    for t in range(n_tasks):
        _gemm_task(t, A, a_trans, B, b_trans, C, accumulate, isa, MR, NR, KC, MC, NC, Ap,
                   Bp, copy_a, bias, act, Xf, Rf, gamma, beta, eps, b_in_task)


ISA = host_isa()  # 'avx512', 'avx2' or 'sse': the micro-kernel this CPU runs


def blocking(dtype, M, N, isa=None, threads=None, KC=None, kernel=None, b_packed=False,
             b_trans=False, K=None):
    """Tile and block sizes for a [M, *] x [*, N] product (a new dict: the caller's to
    change). Worked out once per shape and kept (_blocking, below): a training step asks
    for the same few shapes hundreds of times, and the arithmetic cost ~4 us a call.

    The tile comes from the ISA and the shape (microkernel.pick_kernel), or is the given
    ``kernel``. KC (reduction block) fixes the order of the sum, so it depends on the ISA
    and the dtype only (_KC), not on the tile or the thread count. One
    task computes an MC x NC block of C; its packed block of A (MC*KC) stays in L2 and
    one NR-wide panel of B (KC*NR) in L1. NC is all of N where the threads can be kept
    busy by cuts across M alone (so each row of A is packed once). MC and NC only divide
    the work, so the result is bitwise the same for any thread count.

    B not packed yet (``b_packed`` False: an activation, as in every weight gradient's TN
    product) is packed by each task, one KC block of its own columns at a time, into a
    buffer that stays in its cache (``b_in_task``, the GotoBLAS order) — when one block
    of rows reads those columns, or a few do (each packs its own copy) and the block is at
    most 2 MiB; else once, whole, before the products. And a few rows against a B at
    least twice as wide are cut across N, so that each task packs only its share of B.
    Measured on a 2-core Xeon (family 6 model 167, AVX-512), TN: 4096 x 256 x 1024
    (K x M x N) 204 -> 315 GFLOP/s, 4096 x 1024 x 256 211 -> 253; OpenBLAS 313 and 297.
    When B's rows run along the reduction (``b_trans``, the NT form: y = x @ W.T, W not
    packed yet), each pack is a transposing copy, dearer than the TN form's row copies;
    then the tasks pack their own only when there is one task per thread (the same machine, NT,
    4 blocks of rows: 1024 x 768 x 3072 178 -> 204 GFLOP/s packed once, 1024 x 768 x 768
    225 -> 261; 2 blocks: 512 x 768 x 3072 226 and 220, a draw). But when several tasks
    share all of B's columns and the whole packed B is small (``K`` x N at most 2 MiB, K
    the reduction's length, when given), it is packed once, whole, by all threads together:
    each task packing all of it was a pass over B per task for a product that is short
    anyway (a 2-core EPYC, Zen 5, AVX-512: 256^3 242-276 -> 277-294 GFLOP/s over the three
    forms, 512^3 305-335 -> 339-356; with the AVX2 tile about half of that gain). When the
    rows fit one block (M at most _MC) and were cut only to give each thread a share, the
    columns are cut instead, unless A has more rows than B columns: each task packs its
    own share of B and all of A on the way, in the one parallel region (a 2-core EPYC,
    Zen 3, AVX2, 128^2 and 256^2: ~10 % less time, median of eight interleaved rounds)."""
    return dict(_blocking(np.dtype(dtype), M, N, isa or ISA, threads or get_threads(), KC,
                          kernel, bool(b_packed), bool(b_trans), K))


@functools.lru_cache(maxsize=4096)
def _blocking(dtype, M, N, isa, threads, KC, kernel, b_packed, b_trans, K=None):
    if kernel is None:
        code, MR, NR = pick_kernel(dtype, isa, M, N)
    else:
        code, (MR, NR) = kernel, kernel_tile(dtype, kernel)
    KC = KC or _KC.get(isa, 128) * 4 // np.dtype(dtype).itemsize
    # Blocks span all of N (a cut across N would pack the same rows of A again) and at
    # most _MC rows; more cuts across M, then N, until every thread has equal work.
    n_mb, n_nb = -(-M // _MC), 1
    max_mb, max_nb = -(-M // MR), -(-N // NR)
    down, up = n_mb // threads * threads, -(-n_mb // threads) * threads
    if down and down < up and (M / down) * (M / up) < _MC * _MC:  # fewer, taller blocks,
        n_mb = down  # when their height is nearer _MC (as a ratio) than that of more
        # blocks (measured on a 2-core Xeon, family 6 model 167: TN 768 x 1024 x 3072 in
        # 2 blocks of 384 rows, not 4 of 192: 206 -> 233 GFLOP/s)
    if n_mb == 1 and 16 * M < N:  # a few rows against a wide B (one sentence, the masked
        # MLM decoder): cut across N, so that each thread reads only its share of B; the
        # few rows of A are packed once per thread (measured on a 2-core Sapphire Rapids:
        # 163 x 128 x 30000 and 32 x 768 x 3072, 1.1x and 1.15x)
        n_nb = min(threads, max_nb)
    elif n_mb == 1 and not b_packed and 2 * M <= N:
        n_nb = min(threads, max_nb)
    while (n_mb * n_nb) % threads and (n_mb < max_mb or n_nb < max_nb):
        if n_mb < max_mb:
            n_mb += 1
        else:
            n_nb += 1
    # rows per block, rounded up to whole tiles; on a tile with a tail (tail_start), to a
    # multiple of MR - tail_mr(MR) (AVX2's 2, AVX-512's 12 x 32: 4), which its panels
    # cover exactly: 128 rows on 12 x 32 as two blocks of 64, 4 x 12 + 2 x 8 each
    T = getattr(tail_mr, "py_func", tail_mr)(MR)  # (NUMBA_DISABLE_JIT: as is)
    g = MR - T if T < MR else MR
    MC = g * -(-(-(-M // n_mb)) // g)
    NC = NR * -(-(-(-N // n_nb)) // NR)
    # each task packs its own B when no other task shares its columns, or when a few do
    # and its packed KC block stays in cache (the decoder's 128 x 30000, 15 MB, does not:
    # packed once, whole, 1024 x 128 x 30000 runs at 202 GFLOP/s, packed per task at 173)
    b_block = min(KC, 1 << 30) * NC * np.dtype(dtype).itemsize
    b_in_task = not b_packed and (n_mb == 1 or (
        n_mb <= (1 if b_trans else 2) * threads and b_block <= _B_BLOCK))
    if b_in_task and n_mb > 1 and n_nb == 1 and K is not None and \
            K * N * np.dtype(dtype).itemsize <= _B_BLOCK:  # shared by every task, and small:
        if M <= min(_MC, N) and max_nb >= threads:  # the rows were cut only to give
            # each thread work: cut the columns instead, each task packs its own share of
            # B, and there is one parallel region, not two (see blocking)
            MC, NC = MR * -(-M // MR), NR * -(-(-(-N // threads)) // NR)
        else:
            b_in_task = False  # packed once, whole, by all threads (see blocking)
    return dict(code=code, MR=MR, NR=NR, KC=KC, MC=MC, NC=NC, b_in_task=b_in_task)


# KC, the reduction block, in float32 values (float64: half as many, the same bytes). Each
# micro-kernel call loads and stores its tile of C once per KC block, and each block of A
# is packed once per KC block, so a longer block does that less often; a block of packed A
# (MC x KC) should stay in L2. AVX2's 6 x 16 tile at KC = 256 (measured on a 2-core EPYC,
# Zen 3: 128 -> 256 lifted bench_matmul's shapes by ~3 % in geometric mean, and the E->H
# weight gradient, TN 4096 x 256 x 128, from 74 to 101 GFLOP/s). AVX-512 at KC = 384: its
# panel of B (8 x 32 tile: 48 KiB, 8 x 48: 72 KiB) no longer fits L1 and streams from L2,
# which keeps up (two vectors of B a step of 16 FMAs), and a packed block of A of 288
# rows is 432 KiB of a 1 MiB L2. Measured on a 2-core EPYC, Zen 4, against 128 in
# alternate rounds of one process (benchmarks/ab_kernels.py eaecda6 --only gemm, --only
# pass): every product of its list 1.00-1.22x (the TN weight gradients 1.03-1.22x, base's
# q|k|v on one sentence 211 -> 223 GFLOP/s), base's frozen pass on one sentence of 128
# tokens 1.09x. (Products alone: KC = 256 gained about half of that, 512 the same as 384.)
# KC fixes the order of each sum, so it depends on the ISA and dtype only.
_KC, _MC = {"avx512": 384, "avx2": 256, "sse": 256, "loops": 128}, 288
_NONE = {4: np.empty(0, np.float32), 8: np.empty(0, np.float64)}  # by itemsize
_B_BLOCK = 2 << 20  # bytes of a task's packed KC block of B that its caches keep (L2/L3)
_B_STREAM = 2 << 20  # a B of more bytes than this streams from L3 or memory (_prefetch_share:
# base's weights, 2.4-9.4 MB a product, do; tiny's, at most 1 MiB, stay in cache, and
# asking for them again cost its frozen pass on a sentence of 128 tokens 3 %)


def gemm(A, a_trans, B, b_trans, out, accumulate, isa=None, kernel=None, bias=None,
         act=EPI_NONE, X=None, residual=None, layernorm=None, run=None):
    """out [M,N] (+)= opA(A) @ opB(B): the one driver behind matmul_nt/_nn/_tn.
    B may be a PackedWeight (its panels are then reused, not packed again).
    ``isa`` picks the ISA's best tile for the shape; ``kernel`` (a code of
    microkernel.KERNELS) forces one, for tests and benchmarks. ``bias``, ``act`` and ``X``
    (an [M, N] array: gelu_new's output, or the pre-activation its gradient needs) and
    ``residual`` (an [M, N] array added after the bias) ask for the epilogue (_epilogue).
    ``layernorm`` (gamma [N], beta [N], eps) then normalises out's rows in place: by each
    task on its block (layernorm_rows) when the blocking gives every task whole rows, else
    by layernorm_forward after the product — the same bits either way.
    Everything it works out from the shape is kept per shape (_plan): a training step makes
    the same few hundred products every step, and on a small one the Python around the
    kernel is a good part of the time. ``run`` forces a driver (_gemm_fused or
    _gemm_serial: the warm-up compiles both, a test compares their bits)."""
    M, N = out.shape
    if M == 0 or N == 0:
        return out
    dt = out.dtype
    packed = isinstance(B, PackedWeight)
    K = A.shape[0] if a_trans else A.shape[1]
    (chosen, code, MR, NR, KC, MC, NC, a_size, b_size, pack_b, in_task, copy_a, blk) = _plan(
        dt, M, N, K, isa or ISA, get_threads(), kernel, packed, a_trans, b_trans)
    run = run or chosen
    ws = _workspace.buffers
    Ap = ws.get(("A", dt))
    if Ap is None or Ap.size < a_size:
        Ap = _workspace.get("A", dt, a_size)
    if packed:
        Bp, B = B.panels(b_trans, blk), B.W
    else:
        Bp = ws.get(("B", dt))
        if Bp is None or Bp.size < b_size:
            Bp = _workspace.get("B", dt, b_size)
    none = _NONE[dt.itemsize]  # an empty array: no bias, no X, no residual, no LayerNorm
    gamma, beta, eps = layernorm if layernorm is not None and NC >= N else (none, none, 0.0)
    run(A, a_trans, B, b_trans, out, accumulate, code, MR, NR, KC, MC, NC, Ap, Bp, pack_b,
        copy_a, none if bias is None else bias, act, none if X is None else X.reshape(M * N),
        none if residual is None else residual.reshape(M * N), gamma, beta, float(eps),
        in_task)
    if layernorm is not None and NC < N:  # the tasks' blocks are not whole rows
        out[...] = layernorm_forward(out, *layernorm)[0]
    return out


_SERIAL_FLOPS = 1 << 19  # a product under this many flops runs on the calling thread


@functools.lru_cache(maxsize=4096)
def _plan(dtype, M, N, K, isa, threads, kernel, packed, a_trans, b_trans):
    # gemm's arguments for one shape: the kernel to run (parallel, or serial when one
    # thread would do: one thread asked for, one task, or a product so small that waking
    # a second thread costs more than it saves), the blocking, and the workspace sizes.
    b = _blocking(dtype, M, N, isa, threads, None, kernel, packed, bool(b_trans), K)
    MR, NR, KC, MC, NC = b["MR"], b["NR"], b["KC"], b["MC"], b["NC"]
    tasks = -(-M // MC) * -(-N // NC)
    kc = max(1, min(KC, K))  # fused_a_size's arithmetic
    a_size = tasks * -(-MC // MR) * MR * kc
    in_task = b["b_in_task"] and not packed
    if packed:
        b_size = 0
    elif in_task:  # one KC block of each task's columns at a time
        b_size = tasks * -(-NC // NR) * NR * kc
    else:  # all of B, packed before the products
        b_size = -(-N // NR) * NR * K
    serial = threads == 1 or tasks == 1 or 2 * M * N * K < _SERIAL_FLOPS
    copy_a = bool(a_trans) and (M * dtype.itemsize) % 4096 == 0
    return (_gemm_serial if serial else _gemm_fused, b["code"], MR, NR, KC, MC, NC, a_size,
            b_size, not packed, in_task, copy_a, b)


class PackedWeight:
    """A matrix packed into B panels once and reused by every product it is the B operand
    of — ALBERT applies its one shared layer L times per forward pass, so each weight is
    packed once instead of L times (and once more, in the other layout, for the backward).

        Wp = PackedWeight(W)     # W: [out, in], as stored
        matmul_nt(x, Wp)         # x @ W.T, the forward      (W's "B.T" panels)
        matmul_nn(dy, Wp)        # dy @ W, the backward's dx  (W's "B" panels)

    The panels are exactly what gemm would pack on the fly, so results are bitwise the
    same. They are made when first needed, one set per (layout, tile, KC). W must not
    change while a PackedWeight of it is in use: make one per forward pass (the encoder
    does), never across an optimizer step.

    ``panel_sets`` holds the sets made so far: (b_trans, kernel code, NR, KC) -> the flat
    panels. A reader may look at them, or put a copy of a set elsewhere in memory (the
    same values: tutorial 01 moves them off a cache line to time that); products then
    read the panels from there."""

    def __init__(self, W):
        if W.ndim != 2:
            raise ValueError(f"PackedWeight: a matrix, got shape {W.shape}")
        self.W = np.ascontiguousarray(W)
        self.shape, self.dtype, self.ndim = self.W.shape, self.W.dtype, 2
        self.panel_sets = {}

    def panels(self, b_trans, blk):  # -> flat panels as _pack_b lays them out
        key = (bool(b_trans), blk["code"], blk["NR"], blk["KC"])
        Bp = self.panel_sets.get(key)
        if Bp is None:
            N, K = self.shape if b_trans else self.shape[::-1]
            NR, KC = blk["NR"], blk["KC"]
            Bp = aligned_empty_py(-(-N // NR) * NR * K, self.dtype)  # on a cache line
            _pack_b(self.W, b_trans, N, K, NR, KC, Bp)
            self.panel_sets[key] = Bp
        return Bp

    def nbytes(self):
        return sum(p.nbytes for p in self.panel_sets.values())


class Workspace(threading.local):
    """Packing buffers kept between calls (one set per Python thread): a training step
    makes hundreds of products, and a fresh buffer each time would cost its page faults
    every time. A buffer grows to the largest product seen and stays. Each starts a cache
    line (aligned_empty: B's panels are read a vector at a time)."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, dtype, size):  # (gemm looks in self.buffers first, by (name, dtype))
        key = (name, np.dtype(dtype))
        buf = self.buffers.get(key)
        if buf is None or buf.size < size:
            buf = self.buffers[key] = aligned_empty_py(max(size, 1), np.dtype(dtype))
        return buf

    def nbytes(self):
        return sum(b.nbytes for b in self.buffers.values())


_workspace = Workspace()


def _prepare_out(out, shape, dtype, accumulate):
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out array to add into")
        return np.empty(shape, dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def _blas(a, b, out, accumulate):
    if accumulate:
        out += a @ b
    else:
        np.dot(a, b, out=out)
    return out


def _b_operand(B):  # an array (made contiguous) or a PackedWeight, as it is
    return B if isinstance(B, PackedWeight) or B.flags.c_contiguous else \
        np.ascontiguousarray(B)


def _contiguous(A):  # (np.ascontiguousarray costs ~0.3 us even on a contiguous array)
    return A if A.flags.c_contiguous else np.ascontiguousarray(A)


def _array(B):
    return B.W if isinstance(B, PackedWeight) else B


def _epilogue_args(out, accumulate, bias, X, what):
    # check the epilogue's operands against out [M, N]
    M, N = out.shape
    if bias is not None and (bias.shape != (N,) or bias.dtype != out.dtype):
        raise ValueError(f"{what}: bias {bias.dtype}{bias.shape} does not fit {out.dtype}"
                         f"{out.shape}")
    if X is not None:
        if X.shape != (M, N) or X.dtype != out.dtype or not X.flags.c_contiguous:
            raise ValueError(f"{what}: needs a C-contiguous {out.dtype} array of shape "
                             f"{(M, N)}, got {X.dtype} {X.shape}")
        if accumulate:
            raise ValueError(f"{what}: the epilogue needs the whole product "
                             "(accumulate=False)")
    if bias is not None and accumulate:
        raise ValueError(f"{what}: bias with accumulate=True")


def matmul_nt(A, B, out=None, accumulate=False, bias=None, gelu_out=None, residual=None,
              layernorm=None):
    """``A @ B.T`` ([M,K] x [N,K] -> [M,N]); with ``accumulate`` the product is added into
    ``out`` (the ``+=`` with which a shared weight collects one gradient contribution per
    use). B may be a PackedWeight, here and in matmul_nn.

    A dense layer's forward in one pass (the epilogue): ``bias`` [N] is added to the
    product, then ``residual`` ([M, N]: y = x W^T + b + residual), and with ``gelu_out``
    ([M, N]) gelu_new of the result is written there too — the same bits as bias_add, a
    NumPy ``+=`` and gelu_new_forward after the product. ``gelu_out`` may be ``out``
    itself: then ``out`` holds gelu_new(x W^T + b) only (inference, where no backward
    needs the pre-activation). With ``layernorm`` = (gamma [N], beta [N], eps), ``out``
    then holds LayerNorm(x W^T + b + residual) only, each block of rows normalised as soon
    as its sums are done (a pass no backward follows: neither the sum nor mean and rstd
    are kept) — the same bits as layernorm_forward after the product."""
    check_float(A, B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"matmul_nt: shapes {A.shape} and {B.shape} do not fit A @ B.T")
    out = _prepare_out(out, (A.shape[0], B.shape[0]), A.dtype, accumulate)
    if bias is not None or gelu_out is not None or residual is not None:
        _epilogue_args(out, accumulate, bias, gelu_out, "matmul_nt")
        _epilogue_args(out, accumulate, None, residual, "matmul_nt")
    if layernorm is not None:
        _layernorm_args(out, accumulate, gelu_out, layernorm)
    if _USE_BLAS:
        _blas(A, _array(B).T, out, accumulate)
        if bias is not None:
            _bias_add(out, bias)
        if residual is not None:
            out += residual
        if gelu_out is not None:
            gelu_out[...] = gelu_new_forward(out.reshape(-1)).reshape(out.shape)
        if layernorm is not None:
            out[...] = layernorm_forward(out, *layernorm)[0]
        return out
    act = EPI_NONE if gelu_out is None else EPI_GELU_IN_PLACE if gelu_out is out else EPI_GELU
    return gemm(_contiguous(A), False, _b_operand(B), True, out, accumulate,
                bias=bias, act=act, X=None if act == EPI_GELU_IN_PLACE else gelu_out,
                residual=residual, layernorm=layernorm)


def _layernorm_args(out, accumulate, gelu_out, layernorm):
    # check matmul_nt's layernorm = (gamma, beta, eps) against out [M, N]
    gamma, beta, _ = layernorm
    N = out.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        if not isinstance(v, np.ndarray) or v.shape != (N,) or v.dtype != out.dtype:
            raise ValueError(f"matmul_nt: layernorm's {name} must be a {out.dtype} array of "
                             f"shape {(N,)}, got {getattr(v, 'dtype', type(v))} "
                             f"{getattr(v, 'shape', '')}")
    if accumulate or gelu_out is not None:
        raise ValueError("matmul_nt: layernorm normalises the whole product; not with "
                         "accumulate=True or gelu_out")


def matmul_nn(A, B, out=None, accumulate=False, gelu_grad_of=None):
    """``A @ B`` ([M,K] x [K,N] -> [M,N]). With ``gelu_grad_of`` (h, [M, N]) the result is
    multiplied by gelu_new'(h) in the epilogue: the FFN's backward dh = (dy @ W) * gelu'(h)
    in one pass, the same bits as gelu_new_backward after the product."""
    check_float(A, B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"matmul_nn: shapes {A.shape} and {B.shape} do not fit A @ B")
    out = _prepare_out(out, (A.shape[0], B.shape[1]), A.dtype, accumulate)
    if gelu_grad_of is not None:
        _epilogue_args(out, accumulate, None, gelu_grad_of, "matmul_nn")
    if _USE_BLAS:
        _blas(A, _array(B), out, accumulate)
        if gelu_grad_of is not None:
            out[...] = gelu_new_backward(out.reshape(-1),
                                         gelu_grad_of.reshape(-1)).reshape(out.shape)
        return out
    return gemm(_contiguous(A), False, _b_operand(B), False, out, accumulate,
                act=EPI_NONE if gelu_grad_of is None else EPI_GELU_GRAD, X=gelu_grad_of)


def matmul_tn(A, B, out=None, accumulate=False):  # [K,M] x [K,N] -> [M,N] = A.T @ B
    check_float(A, B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"matmul_tn: shapes {A.shape} and {B.shape} do not fit A.T @ B")
    out = _prepare_out(out, (A.shape[1], B.shape[1]), A.dtype, accumulate)
    if _USE_BLAS:
        return _blas(A.T, B, out, accumulate)
    return gemm(_contiguous(A), True, _contiguous(B), False, out, accumulate)


def transpose(A):  # A: [R,S] -> [S,R], a new C-contiguous array
    return np.ascontiguousarray(A.T)


# ----------------------------------------------------------------------------------
# bias: y += b (forward) and db += sum over rows of dy (backward)


def bias_add(Y, b):  # Y: [M,N] += b: [N], in place
    if Y.ndim != 2 or b.shape != (Y.shape[1],) or Y.dtype != b.dtype:
        raise ValueError(f"bias_add: bias {b.dtype}{b.shape} does not fit {Y.dtype}{Y.shape}")
    _bias_add(Y, b)
    return Y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _bias_add(Y, b):
    for i in prange(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] += b[j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def column_sum(X, out):  # X: [M,N] -> out: [N] += sum over rows; deterministic
    M, N = X.shape
    n_chunks = (M + ROW_CHUNK - 1) // ROW_CHUNK
    partial = np.zeros((n_chunks, N), dtype=X.dtype)
    for c in prange(n_chunks):  # each chunk of ROW_CHUNK rows is one thread's
        for i in range(c * ROW_CHUNK, min(M, (c + 1) * ROW_CHUNK)):
            for j in range(N):
                partial[c, j] += X[i, j]
    for c in range(n_chunks):  # then the chunks, in order, by one thread
        for j in range(N):
            out[j] += partial[c, j]


def bias_grad(dY, db):  # dY: [M,N] -> db: [N] += column sums (accumulates)
    # (Numba does not check bounds: a wrong shape here would write past the array.)
    if dY.ndim != 2 or db.shape != (dY.shape[1],) or dY.dtype != db.dtype:
        raise ValueError(f"bias_grad: {db.dtype}{db.shape} does not fit {dY.dtype}{dY.shape}")
    column_sum(np.ascontiguousarray(dY), db)
    return db
