"""Softmax over the last axis with an additive mask, and its backward.

Legend: R rows (e.g. B*N*T query positions), C columns (keys / classes).

Masking follows Hugging Face: a masked column gets the most negative finite number of
the dtype added (``np.finfo(dtype).min``), not -inf.  A partly masked row then gives
exactly 0 to its masked columns (exp underflows), and a *fully* masked row, where every
score becomes finfo.min, comes out uniform (1/C) instead of NaN, as in transformers.
"""
import numpy as np
from numba import njit, prange

from ._base import FASTMATH, cast_like, exp_shifted
from .reduce import vdot, vmax, vsum


def mask_bias(mask, dtype):  # mask: 1 keep / 0 masked -> additive bias 0 / finfo.min
    mask = np.asarray(mask)
    return ((1 - mask.astype(dtype)) * np.finfo(dtype).min).astype(dtype)


@njit(fastmath=FASTMATH, cache=True)
def softmax_row(x, bias, y):  # x: [C] (+ bias: [C]) -> y: [C], stable: subtract the max
    C = x.shape[0]
    for j in range(C):
        y[j] = x[j] + bias[j]
    m = vmax(y)  # reduce.py: vectorised; no rounding, so any order gives this value
    exp_shifted(y, m, y)
    inv = cast_like(y, 1.0) / vsum(y)  # reduce.py: a vector sum in a fixed order
    for j in range(C):
        y[j] *= inv


@njit(parallel=True, cache=True)
def softmax_forward(x, bias):  # x: [R,C], bias: [R,C] or [1,C] -> y: [R,C]
    R, C = x.shape
    y = np.empty_like(x)
    row_bias = bias.shape[0] == 1
    for r in prange(R):
        softmax_row(x[r], bias[0] if row_bias else bias[r], y[r])
    return y


@njit(fastmath=FASTMATH, cache=True)
def softmax_backward_row(dy, y, dx):  # dx = y * (dy - sum(dy * y))
    s = vdot(dy, y)
    for j in range(y.shape[0]):
        dx[j] = y[j] * (dy[j] - s)


@njit(parallel=True, cache=True)
def softmax_backward(dy, y):  # dy, y: [R,C] -> dx: [R,C]  (the mask is a constant: no grad)
    dx = np.empty_like(y)
    for r in prange(y.shape[0]):
        softmax_backward_row(dy[r], y[r], dx[r])
    return dx
