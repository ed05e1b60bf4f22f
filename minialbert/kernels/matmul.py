"""Matrix multiplication: the three GEMM forms a dense layer needs.

Legend: M rows of the left operand (tokens), K the reduction length, N output columns.
Hugging Face stores a Linear weight as W[out, in], so

    forward          y  = x @ W.T      [M,K] x [N,K]  -> [M,N]   "NT"  matmul_nt
    input gradient   dx = dy @ W       [M,N] x [N,K]  -> [M,K]   "NN"  matmul_nn
    weight gradient  dW = dy.T @ x     [M,N] x [M,K]  -> [N,K]   "TN"  matmul_tn

One fast kernel does the work: ``_gemm_nt``, where both operands are read along
contiguous rows, so every output entry is a dot product of two contiguous vectors.
The NN and TN forms are brought to it by an O(n^2) transpose (chapter 01 measures
what that costs: little next to the O(n^3) product).

How ``_gemm_nt`` is fast (chapter 01 builds it step by step):
  * a 4x4 register block: 4 rows of A against 4 rows of B, 16 running sums, so each
    loaded value is used 4 times;
  * the reassociation flag lets LLVM turn each running sum into a SIMD vector of
    partial sums (AVX-512: 16 floats), i.e. the k loop is vectorised;
  * ``prange`` over blocks of 4 output rows: every thread owns whole rows of C, so
    no two threads write the same entry (no race) and each entry is always summed in
    the same order: results are bitwise identical for any thread count.
"""
import numpy as np
from numba import njit, prange

from ._base import FASTMATH, ROW_CHUNK, cast_like, check_float

_USE_BLAS = False


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
# the fast kernel


@njit(fastmath=FASTMATH, cache=True)
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


@njit(fastmath=FASTMATH, cache=True)
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


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gemm_nt(A, B, C, accumulate):  # A: [M,K], B: [N,K], C: [M,N] (+)= A @ B.T
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


@njit(parallel=True, cache=True)
def _transpose_rows(A, out):  # A: [R,S] -> out: [S,R]; threads own 16-row strips of A
    R, S = A.shape
    for t in prange((R + 15) // 16):
        r0 = t * 16
        r1 = min(R, r0 + 16)
        for s0 in range(0, S, 16):
            s1 = min(S, s0 + 16)
            for r in range(r0, r1):
                for s in range(s0, s1):
                    out[s, r] = A[r, s]


@njit(parallel=True, cache=True)
def _transpose_cols(A, out):  # the same, threads own 32-column strips (tall, thin A)
    R, S = A.shape
    for t in prange((S + 31) // 32):
        s0 = t * 32
        s1 = min(S, s0 + 32)
        for r0 in range(0, R, 32):
            r1 = min(R, r0 + 32)
            for s in range(s0, s1):
                for r in range(r0, r1):
                    out[s, r] = A[r, s]


def transpose(A):  # A: [R,S] -> [S,R], a new C-contiguous array (memory bound: tiles
    out = np.empty((A.shape[1], A.shape[0]), dtype=A.dtype)  # sized from measurement)
    A = np.ascontiguousarray(A)
    if A.shape[0] >= 2 * A.shape[1]:
        _transpose_cols(A, out)
    else:
        _transpose_rows(A, out)
    return out


def _prepare_out(out, shape, dtype, accumulate):
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out array to add into")
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def matmul_nt(A, B, out=None, accumulate=False):  # [M,K] x [N,K] -> [M,N] = A @ B.T
    """``A @ B.T``; with ``accumulate`` the product is added into ``out`` (the ``+=``
    with which a shared weight collects one gradient contribution per use)."""
    check_float(A, B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"matmul_nt: shapes {A.shape} and {B.shape} do not fit A @ B.T")
    out = _prepare_out(out, (A.shape[0], B.shape[0]), A.dtype, accumulate)
    if _USE_BLAS:
        if accumulate:
            out += A @ B.T
        else:
            np.dot(A, B.T, out=out)
        return out
    _gemm_nt(np.ascontiguousarray(A), np.ascontiguousarray(B), out, accumulate)
    return out


def matmul_nn(A, B, out=None, accumulate=False):  # [M,K] x [K,N] -> [M,N] = A @ B
    check_float(A, B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"matmul_nn: shapes {A.shape} and {B.shape} do not fit A @ B")
    if _USE_BLAS:
        out = _prepare_out(out, (A.shape[0], B.shape[1]), A.dtype, accumulate)
        if accumulate:
            out += A @ B
        else:
            np.dot(A, B, out=out)
        return out
    return matmul_nt(A, transpose(B), out, accumulate)


def matmul_tn(A, B, out=None, accumulate=False):  # [K,M] x [K,N] -> [M,N] = A.T @ B
    check_float(A, B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"matmul_tn: shapes {A.shape} and {B.shape} do not fit A.T @ B")
    if _USE_BLAS:
        out = _prepare_out(out, (A.shape[1], B.shape[1]), A.dtype, accumulate)
        if accumulate:
            out += A.T @ B
        else:
            np.dot(A.T, B, out=out)
        return out
    # The reduction runs over A's rows (tokens in a weight gradient: thousands). Long
    # dot products stream rows that no longer fit in L1, so the sum is done in chunks of
    # _TN_CHUNK rows, each chunk's product added into out (a fixed order: deterministic).
    K = A.shape[0]
    if K <= _TN_CHUNK:
        return matmul_nt(transpose(A), transpose(B), out, accumulate)
    out = _prepare_out(out, (A.shape[1], B.shape[1]), A.dtype, accumulate)
    for k0 in range(0, K, _TN_CHUNK):
        matmul_nt(transpose(A[k0:k0 + _TN_CHUNK]), transpose(B[k0:k0 + _TN_CHUNK]), out,
                  accumulate=accumulate or k0 > 0)
    return out


_TN_CHUNK = 512

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
