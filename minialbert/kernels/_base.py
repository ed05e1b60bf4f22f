"""What every kernel module shares: the fast-math flags, a dtype-faithful scalar cast,
thread control and the fixed row-chunking that keeps reductions deterministic.

Why these flags: Numba's ``fastmath=True`` also sets ``nnan``/``ninf``, which lets LLVM
fold ``np.isnan`` to False and breaks ``-inf`` masks.  We want only what vectorises a
reduction (reassociation, contraction into FMA), so we name the flags ourselves.
"""
import numba
import numpy as np
from numba.extending import overload

FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}

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


@overload(cast_like)
def _cast_like_overload(a, value):
    dt = a.dtype

    def impl(a, value):
        return dt(value)

    return impl


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
    return numba.get_num_threads()


def check_float(*arrays):
    """Kernels are compiled for float32 (training) and float64 (gradient checks) only."""
    dt = arrays[0].dtype
    for a in arrays:
        if a.dtype != dt:
            raise TypeError(f"dtype mismatch: {a.dtype} vs {dt}; convert explicitly")
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"kernels take float32 or float64 arrays, got {a.dtype}")
    return dt
