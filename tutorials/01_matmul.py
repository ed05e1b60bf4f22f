# %% [markdown]
# # 01 — Matrix multiplication in Numba, from a triple loop to a packed micro-kernel
#
# Every dense layer of ALBERT is a matrix product, and so is most of its training time.
# We write the product ourselves, step by step, and time each step against NumPy's BLAS.
# The book chapter `book/01_matmul.md` explains why each step helps.
#
# Hugging Face stores a dense weight as `W[out, in]`, so the forward pass is
# `y = x @ W.T`: an "NT" product, `C[i, j] = sum_k A[i, k] * B[j, k]`, in which both
# operands are read along contiguous rows.

# %%
import sys
import time
import pathlib

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.demo import best_time, best_times, blas_info, cpu_name  # noqa: E402
from minialbert.kernels import matmul_nn, matmul_nt, matmul_nt_4x4, matmul_tn  # noqa: E402
from minialbert.kernels import matmul as mm  # noqa: E402
from minialbert.kernels._base import FASTMATH_REASSOC  # noqa: E402
from minialbert.kernels.microkernel import ISA_CODES  # noqa: E402

n = 128 if QUICK else 512
rng = np.random.default_rng(0)
A = rng.standard_normal((n, n)).astype(np.float32)
B = rng.standard_normal((n, n)).astype(np.float32)
reference = A @ B.T
machine = (f"CPU {cpu_name()}; vector ISA {mm.ISA} (micro-kernel tile "
           f"{mm.blocking(np.float32, n, n)['MR']}x{mm.blocking(np.float32, n, n)['NR']}); "
           f"{numba.get_num_threads()} threads; BLAS {blas_info()}")
print(f"n = {n}; {machine}")
(OUT / "01_machine.md").write_text(f"*Measured on: {machine}; n = {n}.*\n")


# %% [markdown]
# ## Step 1: three loops
# One multiply-add at a time. Numba compiles it to machine code, so this is already
# as fast as the same loop in C — and it is slow.

# %%
@njit(cache=True)
def step1_triple_loop(A, B):
    M, K = A.shape
    N = B.shape[0]
    C = np.zeros((M, N), dtype=A.dtype)
    for i in range(M):
        for j in range(N):
            s = np.float32(0.0)
            for k in range(K):
                s += A[i, k] * B[j, k]
            C[i, j] = s
    return C


# %% [markdown]
# ## Step 2: let the compiler vectorise
# The inner loop is a sum. IEEE addition is not associative, so the compiler may not
# reorder it into 16 partial sums in one AVX-512 register — unless we allow it:
# the `reassoc` fast-math flag. (We leave out `nnan`/`ninf`, which `fastmath=True`
# would add: they make `isnan` always false.) The training kernels do without `reassoc`:
# with it, a kernel compiled in this process and the same kernel loaded from Numba's cache
# can sum in different orders (the book's "Sums in an order written down").

# %%
@njit(fastmath=FASTMATH_REASSOC, cache=True)
def step2_vectorised(A, B):
    M, K = A.shape
    N = B.shape[0]
    C = np.zeros((M, N), dtype=A.dtype)
    for i in range(M):
        for j in range(N):
            s = np.float32(0.0)
            for k in range(K):
                s += A[i, k] * B[j, k]
            C[i, j] = s
    return C


# %% [markdown]
# ## Step 3: a 4×4 register block
# Step 2 loads two numbers for every multiply-add: it waits on memory. Computing a 4×4
# block of C at once loads 8 numbers per step of k and does 16 multiply-adds with them:
# each load is used four times. This is `_block_4x4` in `minialbert/kernels/matmul.py`;
# here it runs on one thread.

# %%
from minialbert.kernels.matmul import _block_4x4  # noqa: E402


@njit(fastmath=FASTMATH_REASSOC, cache=True)
def step3_blocked_serial(A, B):
    M = A.shape[0]
    N = B.shape[0]
    C = np.zeros((M, N), dtype=A.dtype)
    for i in range(0, M - M % 4, 4):
        for j in range(0, N - N % 4, 4):
            _block_4x4(A, B, C, i, j, False)
    return C  # (n is a multiple of 4 here; the library handles the edges)


# %% [markdown]
# ## Step 4: all cores
# `prange` over blocks of 4 rows of C: each thread owns whole rows, so no two threads
# write the same entry and each entry is summed in the same order whatever the number of
# threads. This is `matmul_nt_4x4`. Its 16 vector accumulators fit AVX-512's 32 registers
# and spill on AVX2's 16.
#
# ## Step 5: packed panels
# The library's GEMM copies a block of A into panels MR rows tall and a block of B into
# panels NR columns wide, each laid out so that step p of the sum reads MR + NR
# neighbouring numbers. Then a micro-kernel does rank-1 updates of an MR × NR tile of C.
# Here the micro-kernel is plain loops (`microkernel_loops`): LLVM keeps that tile in
# memory, not registers.
#
# ## Step 6: the tile in registers
# The same packing, with the micro-kernel written in LLVM IR (`microkernel.py`): MR × NR/W
# vector accumulators, one broadcast of A and NR/W loads of B per step, `llvm.fma`. The
# tile is picked from this CPU's vector width. Narrower tiles this CPU can also run are
# timed too, so you can see what an AVX2 machine would pick.

# %%
def packed(isa):
    def f(a, b):
        out = np.empty((a.shape[0], b.shape[0]), a.dtype)
        return mm.gemm(a, False, b, True, out, False, isa=isa)
    return f


steps = [
    ("1 triple loop", step1_triple_loop),
    ("2 + vectorised (reassoc)", step2_vectorised),
    ("3 + 4x4 register block", step3_blocked_serial),
    ("4 + parallel: matmul_nt_4x4", matmul_nt_4x4),
    ("5 packed, loop micro-kernel", packed("loops")),
]
for isa in sorted((i for i in ISA_CODES if 0 < ISA_CODES[i] <= ISA_CODES[mm.ISA]),
                  key=ISA_CODES.get):
    t_ = mm.blocking(np.float32, n, n, isa=isa)
    label = "6 packed, register tile" + (": matmul_nt" if isa == mm.ISA else "")
    steps.append((f"{label} ({isa} {t_['MR']}x{t_['NR']})", packed(isa)))
steps.append(("NumPy BLAS (A @ B.T)", lambda a, b: a @ b.T))
rows = []
flops = 2.0 * n ** 3
results = {}
for name, f in steps:
    C = f(A, B)
    err = float(np.abs(C - reference).max() / np.abs(reference).max())
    assert err < 1e-5, (name, err)
# timed in turn, a few rounds, with a rest before each block (demo.best_times): OpenBLAS's
# threads, and ours, spin for a while after a call, and a step timed right after another
# one ran while those still held the cores (on a 2-core Zen 3 EPYC: 5-10x slower)
times = best_times([lambda f=f: f(A, B) for _, f in steps], min_total=0.1 if QUICK else 0.3)
for (name, _), t in zip(steps, times):
    results[name] = flops / t / 1e9
    rows.append((name, f"{t * 1e3:.2f}", f"{flops / t / 1e9:.1f}"))
write_table("01_matmul_steps.md", ["step", "ms", "GFLOP/s"], rows)

# %% [markdown]
# ## The other two forms
# The backward pass needs `dx = dy @ W` (NN) and `dW = dy.T @ x` (TN). Packing reads an
# operand in whatever layout it has, so the three forms share one driver and no transpose.

# %%
dy = rng.standard_normal((n, n)).astype(np.float32)
form_rows = []
for name, ours, blas in [("NN dx = dy @ W", lambda: matmul_nn(dy, B), lambda: dy @ B),
                         ("TN dW = dy.T @ x", lambda: matmul_tn(dy, A), lambda: dy.T @ A)]:
    assert np.allclose(ours(), blas(), rtol=1e-4, atol=1e-3)
    to, tb = best_times([ours, blas])
    form_rows.append((name, f"{flops / to / 1e9:.1f}", f"{flops / tb / 1e9:.1f}", f"{tb / to:.2f}"))
write_table("01_matmul_forms.md", ["form", "ours GFLOP/s", "BLAS GFLOP/s", "ratio"], form_rows)

# %%
final = [k for k in results if "matmul_nt" in k and k.startswith("6")][0]
speedup = results[final] / results["1 triple loop"]
ratio = results[final] / results["NumPy BLAS (A @ B.T)"]
print(f"triple loop -> our kernel: {speedup:.0f}x faster; ours / BLAS = {ratio:.2f}")
# No speed is asserted: every step's product is checked above (correctness holds on any
# machine), but how fast each runs depends on the CPU and on what else it is running (in
# the test suite another test process shares the cores, and a parallel kernel can then be
# slower than the triple loop). The table is this machine's, measured now.

p = plt()
if p is not None:
    fig, ax = p.subplots(figsize=(7, 3))
    names = list(results)
    ax.barh(names[::-1], [results[k] for k in names][::-1], color="#4477aa")
    ax.set_xlabel(f"GFLOP/s (float32, n = {n}, {numba.get_num_threads()} threads)")
    ax.set_title(f"From a triple loop to a packed micro-kernel ({cpu_name()}, {mm.ISA})")
    savefig(fig, "01_matmul_steps.png")


# %% [markdown]
# ## The roofline
# How far is each product from what this machine can do? Two ceilings: the arithmetic
# peak (our micro-kernel on panels that sit in L1, on every thread: `measured_peak_gflops`)
# and memory bandwidth times the product's *arithmetic intensity* — its FLOPs per byte it
# must at least move (each of A, B and C once, float32): 2MKN / (4 (MK + KN + MN)). A point
# under the sloped part is starved of data; under the flat part, of arithmetic. The
# bandwidth is measured here with a parallel copy of an array far larger than the caches.

# %%
from numba import prange  # noqa: E402

from minialbert.kernels.microkernel import measured_peak_gflops  # noqa: E402


@njit(parallel=True, cache=True)
def _copy(a, b):  # b[:] = a, every thread a slice: reads + writes 2 * a.nbytes
    for i in prange(a.shape[0]):
        b[i] = a[i]


big = np.ones((64 if QUICK else 256) * 2 ** 18, np.float32)  # 64 / 256 MB
dst = np.empty_like(big)
bandwidth = 2 * big.nbytes / best_time(lambda: _copy(big, dst), min_total=0.2) / 1e9  # GB/s
time.sleep(0.5)  # let other threads (BLAS's, ours) stop spinning first, as bench_matmul
peak = measured_peak_gflops(np.float32, mm.ISA, numba.get_num_threads())
shapes = [(128, 128, 128), (512, 512, 512), (4096 if not QUICK else 1024, 128, 256),
          (1024, 768, 768), (4096 if not QUICK else 1024, 256, 1024)]
if not QUICK:
    shapes += [(1024, 1024, 1024), (1024, 3072, 768), (2048, 2048, 2048)]
roof_rows, points = [], []
for M, K, N in shapes:
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    intensity = 2 * M * K * N / (4 * (M * K + K * N + M * N))
    roof = min(peak, bandwidth * intensity)
    t_ours, t_blas = best_times([lambda: matmul_nt(a, w), lambda: a @ w.T], min_total=0.1)
    ours, blas = 2 * M * K * N / t_ours / 1e9, 2 * M * K * N / t_blas / 1e9
    points.append((intensity, ours, blas))
    roof_rows.append((f"{M}x{K}x{N}", f"{intensity:.0f}", f"{roof:.0f}", f"{ours:.0f}",
                      f"{ours / roof:.2f}", f"{blas:.0f}", f"{blas / roof:.2f}"))
write_table("01_roofline.md", ["NT product M x K x N", "FLOP/byte", "roof GFLOP/s",
                               "ours", "of roof", "BLAS", "of roof"], roof_rows)
(OUT / "01_roofline_machine.md").write_text(
    f"Measured on: {cpu_name()}, vector ISA {mm.ISA}, {numba.get_num_threads()} threads; "
    f"peak {peak:.0f} GFLOP/s (our micro-kernel, L1-resident panels), copy bandwidth "
    f"{bandwidth:.1f} GB/s; BLAS {blas_info()}.\n")
assert bandwidth > 0 and peak > 0 and all(o > 0 for _, o, _ in points)

p = plt()
if p is not None:
    fig, ax = p.subplots(figsize=(6, 3.6))
    xs = np.logspace(0, np.log10(max(i for i, _, _ in points) * 2), 100)
    ax.plot(xs, np.minimum(peak, bandwidth * xs), "k-", label="roof: min(peak, bandwidth x I)")
    ax.scatter([i for i, _, _ in points], [o for _, o, _ in points], label="ours", zorder=3)
    ax.scatter([i for i, _, _ in points], [b for _, _, b in points], marker="x",
               label="NumPy BLAS", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved, float32)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"Roofline, {cpu_name()} ({mm.ISA}, {numba.get_num_threads()} threads)")
    ax.legend(fontsize=8)
    savefig(fig, "01_roofline.png")

# %% [markdown]
# ## The tail tiles
# AVX2's 6 × 16 tile cuts 128 rows (a sentence of 128 tokens, a head's 128 queries) into
# 21 panels of 6 and a 22nd of 2, which costs a whole panel. So the last rows of such a
# block go in panels of 4, run by a 4 × 16 tile (`mm.tail_start`: the first row of that
# tail). AVX-512's 12 × 32 does the same with panels of 8, run by its 8 × 32 tile (128 rows
# as 10 × 12 + 8). Below, each tile this CPU can run on 120, 128 and 132 rows (K 256,
# N 1024): 128 rows should cost about 128/120 of 120 rows' time, not 132's.

# %%
assert [mm.tail_start(m, 6) for m in (8, 32, 126, 128, 131)] == [0, 24, 126, 120, 131]
assert [mm.tail_start(m, 12) for m in (8, 32, 120, 128, 131)] == [0, 24, 120, 120, 131]
W = rng.standard_normal((1024, 256)).astype(np.float32)
xs = {m: rng.standard_normal((m, 256)).astype(np.float32) for m in (120, 128, 132)}
for tile_isa, MR in (("avx2", 6), ("avx512", 12)):
    if ISA_CODES[mm.ISA] < ISA_CODES[tile_isa]:
        continue  # this CPU cannot run the tile
    code = 2 if tile_isa == "avx2" else 4  # microkernel.KERNELS: 6 x 16, 12 x 32

    def tile_product(a, code=code):
        out = np.empty((a.shape[0], W.shape[0]), np.float32)
        return mm.gemm(a, False, W, True, out, False, kernel=code)

    for m, x in xs.items():
        assert np.allclose(tile_product(x), x @ W.T, rtol=1e-4, atol=1e-4), m
    tail_times = best_times([lambda x=x: tile_product(x) for x in xs.values()],
                            min_total=0.05 if QUICK else 0.3)
    for (m, _), t in zip(xs.items(), tail_times):
        print(f"{tile_isa} tile {mm.kernel_tile(np.float32, code)}, {m} x 256 x 1024: "
              f"{t * 1e6:7.1f} us ({t * 1e6 / m:.2f} us a row; tail from row "
              f"{mm.tail_start(m, MR)})")

# %% [markdown]
# ## Where the panels start
# Each step of the micro-kernel loads NR/W whole vectors of B's panel (W floats a vector),
# and a row of the panel is a whole number of cache lines (NR floats: 16, 32 or 48). If the
# panel starts on a line, no load straddles two lines. NumPy's arrays start 16 bytes into a
# line (malloc's alignment), Numba's 32: an AVX-512 load there always touches two lines,
# an AVX2 load every other time. So every buffer of panels is allocated by
# `aligned_empty` (`kernels/_base.py`), on a line. Below, one product on a `PackedWeight`
# whose panels are copied to start 0, 16 and 32 bytes past a line: the same bits, not the
# same time.

# %%
from minialbert.kernels import PackedWeight  # noqa: E402
from minialbert.kernels._base import ALIGN, aligned_empty_py  # noqa: E402


def panels_at(Bp, offset):  # a copy of the panels Bp, starting `offset` bytes past a line
    skip = offset // Bp.itemsize
    moved = aligned_empty_py(Bp.size + ALIGN // Bp.itemsize, Bp.dtype)[skip:skip + Bp.size]
    moved[...] = Bp
    return moved


M, K, N = (256, 768, 768) if QUICK else (1024, 768, 3072)  # base's FFN on 1024 tokens
x = rng.standard_normal((M, K)).astype(np.float32)
Wp = PackedWeight(rng.standard_normal((N, K)).astype(np.float32))
ref = matmul_nt(x, Wp)
(key, Bp), = Wp.panel_sets.items()  # the one set of panels this product packed
assert Bp.ctypes.data % ALIGN == 0  # the library's own: on a line
moved = {off: panels_at(Bp, off) for off in (0, 16, 32)}


def with_panels(off):
    Wp.panel_sets[key] = moved[off]  # the product now reads its panels from there
    return matmul_nt(x, Wp)


for off in moved:
    assert moved[off].ctypes.data % ALIGN == off and np.array_equal(with_panels(off), ref)
align_times = best_times([lambda o=o: with_panels(o) for o in moved],
                         min_total=0.1 if QUICK else 0.5)
fl = 2 * M * K * N
write_table("01_alignment.md", [f"B's panels start ({M} x {K} x {N}, NT, {mm.ISA})", "ms",
                                "GFLOP/s"],
            [(f"{off} bytes past a cache line", f"{t * 1e3:.3f}", f"{fl / t / 1e9:.0f}")
             for off, t in zip(moved, align_times)])
