"""The optimizers' elementwise arithmetic (optim.py), one pass over a tensor each.

Written in NumPy, an AdamW step is ten passes over every tensor (m *= b1, the temporary
(1 - b1) g, m += ..., v likewise, sqrt(v), the divide, the add, m / denom, the product,
p -= ...), each reading and writing a tensor the size of the model from memory. Here one
loop reads p, g, m, v once and writes p, m, v once. Measured on a 2-core Xeon (family 6
model 167), a step over albert-base-v2's 11.8M parameters: AdamW 71.8 -> 8.1 ms; LAMB,
whose two norms a tensor stay NumPy's, 71.8 -> 19.4 ms (tutorial 09 times it on
the reader's machine).

The bits are NumPy's: every operation is the same float32 (or float64) operation, in the
same order, rounded after each step as NumPy rounds each array operation (no fast-math
flags: no multiply-add contraction, no reassociation). The constants come in as scalars of
the array's dtype, as NumPy casts a Python float next to a float32 array. optim.py says
which NumPy line each step stands for; tests/test_optim.py checks the bits against it.
Elementwise, so the result does not depend on the thread count. These kernels sit beside
optim.py, not in kernels/: the optimizers are on the import ladder's lowest rung (a run's
settings import them; tests/test_ladder.py), below the model's kernels.
"""
import numpy as np
from numba import njit, prange


@njit(inline="always")
def _moments_at(i, g, m, v, b1, c1, b2, c2):
    # element i of the moments' update, in place: m = b1 m + c1 g; v = b2 v + (c2 g) g
    # (c_i = 1 - b_i); -> the new (m, v). Inlined: its operations take its callers'
    # flags, which are none (so NumPy's rounding, step by step).
    gi = g[i]
    mi = m[i] * b1 + c1 * gi
    vi = v[i] * b2 + (c2 * gi) * gi
    m[i] = mi
    v[i] = vi
    return mi, vi


@njit(parallel=True, cache=True)
def adamw_update(p, g, m, v, b1, c1, b2, c2, decay, d, k, s, e):
    # torch.optim.AdamW's step: the moments (_moments_at), then
    #   decay: p = p d (d = 1 - lr wd), then
    #   p = p - k (m / (sqrt(v) / s + e))   (k = lr / bc1, s = sqrt(bc2))
    for i in prange(p.shape[0]):
        mi, vi = _moments_at(i, g, m, v, b1, c1, b2, c2)
        pi = p[i] * d if decay else p[i]
        p[i] = pi - k * (mi / (np.sqrt(vi) / s + e))


@njit(parallel=True, cache=True)
def adam_direction(p, g, m, v, b1, c1, b2, c2, e, decay, wd, u):
    # the moments (_moments_at), then u = m / (sqrt(v) + e) (+ wd p when decay): the
    # direction LAMB and AdamWeightDecay step along (no bias correction)
    for i in prange(p.shape[0]):
        mi, vi = _moments_at(i, g, m, v, b1, c1, b2, c2)
        ui = mi / (np.sqrt(vi) + e)
        u[i] = ui + wd * p[i] if decay else ui


@njit(parallel=True, cache=True)
def step_along(p, u, k):  # p = p - k u
    for i in prange(p.shape[0]):
        p[i] = p[i] - k * u[i]
