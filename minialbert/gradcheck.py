"""Finite-difference gradient checking, in float64.

For a scalar function f and an input array x, the central difference

    g_num[i] = (f(x + h e_i) - f(x - h e_i)) / (2h)

has truncation error O(h^2 f''') and rounding error O(eps_machine |f| / h).  In float64
(eps ~ 1e-16) with h = 1e-5 both are ~1e-10 for well-scaled f (chapter 02 measures it), so a correct backward
agrees to a relative error of ~1e-7 or better, and a wrong one (a missing term, a
transposed index) shows up as 1e-2 to 1.  In float32 (eps ~ 1e-7) the rounding term
alone is ~1e-1 at the same h: finite differences in float32 cannot tell right from
wrong, which is why every check here runs in float64.  Chapter 02 shows this.

Relative error per element:

    rel[i] = |g_ana[i] - g_num[i]| / max(|g_ana[i]|, |g_num[i]|, floor)

with ``floor = 1e-3 * max(|g_num|)``: an entry that is ~0 next to the largest entry of
its tensor is judged on the tensor's scale rather than divided by ~0.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class GradcheckResult:
    name: str
    max_rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    checked: int

    def __str__(self):
        return (f"{self.name:<40} max rel err {self.max_rel_error:9.2e} at {self.worst_index} "
                f"(analytic {self.analytic:+.6e}, numeric {self.numeric:+.6e}; "
                f"{self.checked} entries)")


def numerical_gradient(f, x, h=1e-5, indices=None):
    """Central differences of scalar f() with respect to array x (perturbed in place and
    restored).  ``indices``: flat indices to check (default all).  Returns (indices, g)."""
    if x.dtype != np.float64:
        raise TypeError("finite differences need float64 (see the module docstring)")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    idx = np.arange(flat.size) if indices is None else np.asarray(indices)
    g = np.empty(idx.size)
    for n, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        g[n] = (fp - fm) / (2 * h)
    return idx, g


def relative_error(analytic, numeric):
    analytic = np.asarray(analytic, dtype=np.float64).reshape(-1)
    numeric = np.asarray(numeric, dtype=np.float64).reshape(-1)
    floor = max(1e-3 * float(np.max(np.abs(numeric), initial=0.0)), 1e-300)
    denom = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    return np.abs(analytic - numeric) / denom


def gradcheck(f, x, analytic, name="x", h=1e-5, max_entries=None, rng=None):
    """Compare ``analytic`` (the backward's gradient of f wrt x) with central differences.

    ``max_entries``: check a random sample of that many entries (large tensors).
    Returns a GradcheckResult with the worst entry."""
    analytic = np.asarray(analytic)
    if analytic.shape != x.shape:
        raise ValueError(f"{name}: gradient shape {analytic.shape} != input shape {x.shape}")
    indices = None
    if max_entries is not None and x.size > max_entries:
        rng = np.random.default_rng(0) if rng is None else rng
        indices = np.sort(rng.choice(x.size, size=max_entries, replace=False))
    idx, num = numerical_gradient(f, x, h=h, indices=indices)
    ana = analytic.reshape(-1)[idx]
    rel = relative_error(ana, num)
    w = int(np.argmax(rel)) if rel.size else 0
    return GradcheckResult(
        name=name,
        max_rel_error=float(rel[w]) if rel.size else 0.0,
        worst_index=tuple(int(v) for v in np.unravel_index(idx[w], x.shape)) if rel.size else (),
        analytic=float(ana[w]) if rel.size else 0.0,
        numeric=float(num[w]) if rel.size else 0.0,
        checked=int(idx.size),
    )
