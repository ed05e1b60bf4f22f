"""exp_float32 (the softmax's and the loss's exp) on every float32 whose exponential is a
normal float32, against float64 exp: the largest error in ulp, and its speed against
np.exp on the same values. About a minute on 2 cores.

    python benchmarks/exp_every_float32.py

tests/test_kernels.py checks three million of these points in every run; this checks all
2.2 billion, once, where a reader wants to see the bound of chapter 05 for themself.
"""
import math
import os
import time

import numpy as np
from numba import njit, prange

import _isa
from minialbert.demo import best_time
from minialbert.kernels._base import _EXP_HI, _EXP_LO, FASTMATH, exp_float32

TINY, BIG = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


@njit(parallel=True, fastmath=FASTMATH)
def worst_ulp(b0, b1):
    # the float32s whose bit patterns (as int32) run b0..b1-1; -> (worst error in ulp, x)
    chunks = 256
    worst = np.zeros(chunks)
    where = np.zeros(chunks, np.float32)
    for c in prange(chunks):
        for i in range(b0 + (b1 - b0) * c // chunks, b0 + (b1 - b0) * (c + 1) // chunks):
            x = np.int32(i).view(np.float32)
            exact = math.exp(np.float64(x))
            if exact < TINY or exact > BIG:
                continue
            err = abs(np.float64(exp_float32(x)) - exact) / np.float64(
                np.spacing(np.float32(exact)))
            if err > worst[c]:
                worst[c], where[c] = err, x
    k = np.argmax(worst)
    return worst[k], where[k]


@njit(fastmath=FASTMATH)
def exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_float32(x[i])


def bits(v):
    return int(np.float32(v).view(np.int32))


def main():
    print(_isa.header(os.cpu_count(), torch_side=False))
    # int32 bit patterns: +0 up to the largest x with a finite exp; -0 (-2^31) down to
    # just past the smallest x with a normal one (the rest of either side is skipped)
    sides = (("x >= 0", 0, bits(_EXP_HI) + 1), ("x <= 0", -2 ** 31, bits(_EXP_LO - 1e-5)))
    t0 = time.perf_counter()
    worst = [worst_ulp(b0, b1) for _, b0, b1 in sides]
    print(f"{sum(b1 - b0 for _, b0, b1 in sides):,} float32s checked in "
          f"{time.perf_counter() - t0:.0f} s")
    for (side, _, _), (err, x) in zip(sides, worst):
        print(f"  {side}: worst {err:.3f} ulp (at x = {x!r})")
    x = (3 * np.random.default_rng(0).standard_normal(16384) - 5).astype(np.float32)
    out = np.empty_like(x)
    for name, f in (("exp_float32", lambda: exp_all(x, out)),
                    ("np.exp", lambda: np.exp(x, out=out))):
        t = best_time(f, min_total=0.05, max_reps=2000)
        print(f"  {name:<12} {t * 1e6:6.1f} us for 16,384 values (one thread, the best time)")


if __name__ == "__main__":
    main()
