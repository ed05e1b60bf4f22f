"""Embedding lookup (gather) and its backward (scatter-add).

Legend: n tokens (B*T flattened), V table rows, E embedding width.

The backward adds dout[t] into row ids[t] of the gradient table.  Repeated ids are the
common case (every [CLS], every "the"), so a ``prange`` over tokens would have two
threads add into the same row at once: a race that loses updates.  Here the threads
split the *columns* instead: each owns a slice of E and walks all tokens in order.
No two threads ever touch the same entry, and every entry sums its tokens in token
order, so the result is bitwise the same for any thread count.
"""
import numpy as np
from numba import njit, prange

_COLS = 16  # columns per thread task


@njit(parallel=True, cache=True)
def embedding_forward(ids, table):  # ids: [n] int, table: [V,E] -> out: [n,E]
    n = ids.shape[0]
    V, E = table.shape
    out = np.empty((n, E), dtype=table.dtype)
    for t in prange(n):
        out[t, :] = table[ids[t], :]
    return out


@njit(parallel=True, cache=True)
def embedding_backward(ids, dout, dtable, padding_idx):
    # ids: [n], dout: [n,E] -> dtable: [V,E] += scatter; row padding_idx (>= 0) gets none,
    # as torch.nn.Embedding(padding_idx=...). padding_idx = -1: no padding row.
    n, E = dout.shape
    n_slices = (E + _COLS - 1) // _COLS
    for s in prange(n_slices):  # a thread owns columns c0..c1 of every row
        c0 = s * _COLS
        c1 = min(E, c0 + _COLS)
        for t in range(n):
            r = ids[t]
            if r == padding_idx:
                continue
            for c in range(c0, c1):
                dtable[r, c] += dout[t, c]


@njit(cache=True)
def embedding_backward_naive(ids, dout, dtable, padding_idx):
    # the readable twin of embedding_backward: one token at a time, on one thread (a
    # prange here would race on repeated ids). Every entry sums its tokens in token order,
    # as embedding_backward's column slices do, so the two agree bit for bit.
    for t in range(ids.shape[0]):
        if ids[t] != padding_idx:
            dtable[ids[t]] += dout[t]


def check_ids(ids, num_rows, what="input_ids"):
    """A clear error for ids outside the table, instead of reading past its end."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= num_rows):
        bad = ids[(ids < 0) | (ids >= num_rows)]
        raise IndexError(f"{what} holds {bad.flat[0]}, outside the table of {num_rows} rows")
    return ids
