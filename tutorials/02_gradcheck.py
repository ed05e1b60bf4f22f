# %% [markdown]
# # 02 — Gradient checking: finite differences, relative error, float64
#
# Every backward pass in minialbert is written by hand, so every one can be wrong. We
# check each against the definition of a derivative: nudge one input by ±h, watch the
# loss. `book/02_gradcheck.md` has the derivations and the error analysis.

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.demo import gradcheck_table  # noqa: E402
from minialbert.gradcheck import gradcheck, relative_error  # noqa: E402
from minialbert.kernels import layernorm_backward, layernorm_forward  # noqa: E402

rng = np.random.default_rng(0)

# %% [markdown]
# ## A loss to differentiate
# LayerNorm over 6 features for 4 rows, and a scalar loss `L = sum(y * w)` with random
# `w`: then `dL/dy = w`, and the backward turns it into `dL/dx`.

# %%
x64 = rng.standard_normal((4, 6))
g64 = rng.standard_normal(6)
b64 = rng.standard_normal(6)
w64 = rng.standard_normal((4, 6))


def analytic(dt):
    x, g, b, w = (a.astype(dt) for a in (x64, g64, b64, w64))
    y, mean, rstd = layernorm_forward(x, g, b, 1e-12)
    return layernorm_backward(w, x, mean, rstd, g, np.zeros(6, dt), np.zeros(6, dt))


def loss(x, dt):
    y, _, _ = layernorm_forward(x.astype(dt), g64.astype(dt), b64.astype(dt), 1e-12)
    return (y.astype(np.float64) * w64).sum()


# %% [markdown]
# ## The central difference and its two errors
# `(L(x + h) - L(x - h)) / 2h` is off by ~h²·L'''/6 (truncation: smaller h is better)
# plus ~ε·|L|/h (rounding of L: smaller h is worse). In float64 (ε ≈ 1e-16) the best h
# is near 1e-5 and the error there is ~1e-10. In float32 (ε ≈ 6e-8) it is near 1e-2 and
# the error is ~1e-4 or worse: in float32, a finite difference cannot tell a right gradient
# from a slightly wrong one. That is why every check runs in float64.

# %%
hs = [10.0 ** -e for e in range(1, 10)]
curves = {}
for dt in (np.float32, np.float64):
    ana = analytic(np.float64)
    errs = []
    for h in hs:
        num = np.empty_like(x64)
        for i in np.ndindex(x64.shape):
            xp = x64.copy()
            xp[i] += h
            xm = x64.copy()
            xm[i] -= h
            num[i] = (loss(xp, dt) - loss(xm, dt)) / (2 * h)
        errs.append(float(relative_error(ana, num).max()))
    curves[np.dtype(dt).name] = errs
write_table("02_error_vs_h.md", ["h", "max rel. error, float32", "max rel. error, float64"],
            [(f"1e-{e}", f"{a:.1e}", f"{b:.1e}")
             for e, a, b in zip(range(1, 10), curves["float32"], curves["float64"])])
best64, best32 = min(curves["float64"]), min(curves["float32"])
print(f"best float64 error {best64:.1e}, best float32 error {best32:.1e}")
assert best64 < 1e-8 and best32 > 1e-5

# %% [markdown]
# ## What a bug looks like
# A classic mistake: treat the row mean and variance as constants, so `dx = w·γ·rstd`.
# The check does not whisper; it shouts.

# %%
y, mean, rstd = layernorm_forward(x64, g64, b64, 1e-12)
wrong = w64 * g64 * rstd[:, None]
right = analytic(np.float64)
f = lambda: (layernorm_forward(x64, g64, b64, 1e-12)[0] * w64).sum()  # noqa: E731
r_right = gradcheck(f, x64, right, "layernorm dx (correct)")
r_wrong = gradcheck(f, x64, wrong, "layernorm dx (mean/var held constant)")
print(r_right)
print(r_wrong)
write_table("02_right_vs_wrong.md", ["backward", "max relative error"],
            [(r_right.name, f"{r_right.max_rel_error:.1e}"),
             (r_wrong.name, f"{r_wrong.max_rel_error:.1e}")])
assert r_right.max_rel_error < 1e-6 and r_wrong.max_rel_error > 1e-2

# %% [markdown]
# ## Every kernel
# The same check for each kernel's backward (this is the table `minialbert demo` prints).

# %%
res = gradcheck_table(out=lambda s: None)
write_table("02_kernels.md", ["kernel backward", "entries", "max relative error"],
            [(r.name, r.checked, f"{r.max_rel_error:.1e}") for r in res])
assert max(r.max_rel_error for r in res) < 1e-5

# %%
p = plt()
if p is not None:
    fig, ax = p.subplots(figsize=(5.5, 3.2))
    for name, errs in curves.items():
        ax.loglog(hs, errs, "o-", label=name)
    ax.set_xlabel("step h")
    ax.set_ylabel("max relative error")
    ax.set_title("Central differences of a LayerNorm gradient")
    ax.legend()
    savefig(fig, "02_error_vs_h.png")
