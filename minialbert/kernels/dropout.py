"""Dropout with a counter-based random mask.

Numba's ``np.random`` inside a kernel is per-thread state that Python can neither seed
nor save, so a resumed run could not redraw the same masks.  Instead every element's
keep/drop is a pure function of (key, index): a SplitMix64 hash of the key plus the
element's flat index, turned into a uniform number in [0, 1).  The key itself hashes
(seed, step, site), so a mask is reproducible from three integers and nothing else,
for any thread count.

    y = x * keep / (1 - p)        dx = dy * keep / (1 - p)
"""
import numpy as np
from numba import njit, prange

from ._base import cast_like

_M64 = (1 << 64) - 1


def _splitmix64(z):  # Python ints: one SplitMix64 output for state z
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def dropout_key(seed, step, site):
    """One 64-bit key per (seed, training step, place in the network)."""
    k = _splitmix64(int(seed) & _M64)
    k = _splitmix64(k ^ (int(step) & _M64))
    k = _splitmix64(k ^ (int(site) & _M64))
    return np.uint64(k)


@njit(cache=True)
def _hash_uniform(key, i):  # (uint64 key, index) -> float64 in [0, 1)
    z = key + np.uint64(i + 1) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)  # top 53 bits / 2^53


@njit(parallel=True, cache=True)
def dropout_mask(n, p, key):  # -> keep: [n] uint8, 1 with probability 1-p
    keep = np.empty(n, dtype=np.uint8)
    for i in prange(n):
        keep[i] = 1 if _hash_uniform(key, i) >= p else 0
    return keep


@njit(parallel=True, cache=True)
def _apply_mask(x, keep, scale):  # x: [n], keep: [n] -> x * keep * scale
    y = np.empty_like(x)
    zero = cast_like(x, 0.0)
    for i in prange(x.shape[0]):
        y[i] = x[i] * scale if keep[i] else zero
    return y


def dropout_forward(x, p, key, rows=None, n=None):
    """x: any shape -> (y, keep). p = 0 returns x itself and keep None (no work).
    rows, n: x [len(rows), C] holds only these rows of an [n, C] array (a layer that runs
    on the rows read after it): each row gets the mask it would have in the whole array."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0:
        return x, None
    if rows is None:
        keep = dropout_mask(x.size, float(p), np.uint64(key))
    else:
        C = x.shape[1]
        keep = dropout_mask(n * C, float(p), np.uint64(key)).reshape(n, C)[rows].reshape(-1)
    scale = x.dtype.type(1.0 / (1.0 - p))
    y = _apply_mask(x.reshape(-1), keep, scale).reshape(x.shape)
    return y, keep


def dropout_backward(dy, keep, p):  # dy: any shape -> dx, the same mask and scale
    if keep is None:
        return dy
    scale = dy.dtype.type(1.0 / (1.0 - p))
    return _apply_mask(np.ascontiguousarray(dy).reshape(-1), keep, scale).reshape(dy.shape)
