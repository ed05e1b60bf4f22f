"""LayerNorm over the last axis, forward and backward.

Legend: R rows (tokens), C features (E or H).  Biased variance, eps inside the root,
as torch.nn.LayerNorm (ALBERT uses eps = 1e-12).

    mean = sum(x)/C;  var = sum((x-mean)^2)/C;  rstd = 1/sqrt(var+eps)
    xhat = (x-mean)*rstd;  y = gamma*xhat + beta
backward (book chapter 02 derives it):
    dxhat = dy*gamma
    dx    = rstd * (dxhat - mean(dxhat) - xhat*mean(dxhat*xhat))
    dgamma += sum_rows(dy*xhat);  dbeta += sum_rows(dy)
"""
import math

import numpy as np
from numba import njit, prange

from ._base import FASTMATH, ROW_CHUNK, cast_like
from .reduce import vdot, vsum


@njit(cache=True)
def _inv_sqrt(x, v):
    # 1 / sqrt(v), correctly rounded: compiled without fast-math and called, not inlined at
    # Numba's level, so that the flags of the caller do not reach it. Under them LLVM may
    # use an approximate reciprocal square root and a Newton step, and it compiled the same
    # line one way in layernorm_forward's prange body and another way in a serial loop:
    # rstd differed by an ulp between layernorm_forward and layernorm_rows. In x's type.
    return cast_like(x, 1.0) / math.sqrt(v)


@njit(fastmath=FASTMATH, inline="always")
def _normalize_row(x, y, gamma, beta, inv_c, e):
    # one row: y = gamma (x - mean) rstd + beta -> (mean, rstd); y is not x (for that:
    # _normalize_row_in_place, the same operations in the same order, so the same bits).
    # The sums through reduce.py: vectorised, in a fixed order.
    m = vsum(x) * inv_c
    for j in range(x.shape[0]):
        y[j] = x[j] - m
    rs = _inv_sqrt(x, vdot(y, y) * inv_c + e)
    for j in range(x.shape[0]):
        y[j] = y[j] * rs * gamma[j] + beta[j]
    return m, rs


@njit(fastmath=FASTMATH, inline="always")
def _normalize_row_in_place(x, gamma, beta, inv_c, e):
    # _normalize_row with y = x. A function of its own: given x twice, the loops above
    # would see two arrays that may overlap and, finding that they do, run a value at a time.
    m = vsum(x) * inv_c
    for j in range(x.shape[0]):
        x[j] = x[j] - m
    rs = _inv_sqrt(x, vdot(x, x) * inv_c + e)
    for j in range(x.shape[0]):
        x[j] = x[j] * rs * gamma[j] + beta[j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_forward(x, gamma, beta, eps):  # x: [R,C] -> y: [R,C], mean: [R], rstd: [R]
    R, C = x.shape
    y = np.empty_like(x)
    mean = np.empty(R, dtype=x.dtype)
    rstd = np.empty(R, dtype=x.dtype)
    e = cast_like(x, eps)
    # 1/C in x's type: cast_like(x, 1.0) / C is a float32 over an int64, which Numba (as
    # NumPy) makes float64, and that sent each row's subtraction and scaling through
    # float64 conversions: the forward took twice the time (4096 x 256, 2 threads, a
    # Zen 4 EPYC: 0.317 -> 0.168 ms, benchmarks/ab_kernels.py bb108bd --only rows)
    inv_c = cast_like(x, 1.0 / C)
    for r in prange(R):
        mean[r], rstd[r] = _normalize_row(x[r], y[r], gamma, beta, inv_c, e)
    return y, mean, rstd


@njit(fastmath=FASTMATH, cache=True)
def layernorm_rows(Yf, y0, ld, rows, C, gamma, beta, eps):
    # LayerNorm in place, on one thread, of the rows Yf[y0 + i*ld : y0 + i*ld + C], i < rows:
    # the same bits as layernorm_forward's y. The GEMM's epilogue runs it on each block of
    # rows of a product once its sums are done, while the block is in cache (matmul_nt's
    # ``layernorm``: a pass no backward follows, which needs neither mean nor rstd).
    e = cast_like(Yf, eps)
    inv_c = cast_like(Yf, 1.0 / C)
    for i in range(rows):
        _normalize_row_in_place(Yf[y0 + i * ld:y0 + i * ld + C], gamma, beta, inv_c, e)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_backward(dy, x, mean, rstd, gamma, dgamma, dbeta):
    # dy, x: [R,C]; mean, rstd: [R]; gamma: [C] -> dx: [R,C]; dgamma, dbeta: [C] +=
    R, C = x.shape
    dx = np.empty_like(x)
    inv_c = cast_like(x, 1.0 / C)  # in x's type (see layernorm_forward)
    n_chunks = (R + ROW_CHUNK - 1) // ROW_CHUNK
    pg = np.zeros((n_chunks, C), dtype=x.dtype)  # per-chunk partial dgamma
    pb = np.zeros((n_chunks, C), dtype=x.dtype)  # per-chunk partial dbeta
    for c in prange(n_chunks):
        xh = np.empty(C, dtype=x.dtype)  # this row's xhat and dxhat
        g = np.empty(C, dtype=x.dtype)
        for r in range(c * ROW_CHUNK, min(R, (c + 1) * ROW_CHUNK)):
            m = mean[r]
            rs = rstd[r]
            for j in range(C):
                xh[j] = (x[r, j] - m) * rs
                g[j] = dy[r, j] * gamma[j]
                pg[c, j] += dy[r, j] * xh[j]
                pb[c, j] += dy[r, j]
            s1 = vsum(g) * inv_c  # mean(dxhat)
            s2 = vdot(g, xh) * inv_c  # mean(dxhat * xhat)
            for j in range(C):
                dx[r, j] = rs * (g[j] - s1 - xh[j] * s2)
    for c in range(n_chunks):  # chunk partials in a fixed order: thread-count independent
        for j in range(C):
            dgamma[j] += pg[c, j]
            dbeta[j] += pb[c, j]
    return dx
