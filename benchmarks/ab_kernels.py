"""Old kernels against new, in one process: the same products from two versions of the
package, timed in alternate rounds, their results checked bit for bit.

    python benchmarks/ab_kernels.py HEAD~1            # this checkout against a commit
    python benchmarks/ab_kernels.py 18f99de --only attention
    python benchmarks/ab_kernels.py ebc15ac --only pass    # a frozen model's forward pass
    python benchmarks/ab_kernels.py bb108bd --only rows    # LayerNorm, softmax, the loss
    python benchmarks/ab_kernels.py HEAD --only pass --isa avx2   # both held to AVX2

The commit's minialbert/ is written out (git archive) into a directory of the system's
temporary files as the package minialbert_old — its imports are relative, so it runs as
it is, with a Numba cache of its own; the first run compiles it (two minutes or so), a
second run of the same commit reuses it. Both versions then run here with the same
threads, in rounds taken in turn (old first in even rounds, new first in odd ones), each
round the best of a short block of calls; the table gives the median over the rounds and
the ratio, old time / new time (> 1: the new code is faster).

Why this and not two runs of a benchmark: on a shared host the speed of the same code
drifts 10-20 % from one minute to the next (RESULTS.md: one tiny batch's forward pass
219 ms in one process, 271 in the next), so two processes minutes apart cannot see a
change of a few per cent; rounds that alternate within seconds share the drift. The book's
"old against new" figures (chapters 01, 05 and 06) come from this.

``--only pass`` times whole forward passes of a frozen AlbertModel (as Predictor runs it:
weights packed once, freed memory kept) of each version, on the same random weights:
tiny's sentence, long sentence, 8 and 32 of those, and base's sentence and long sentence;
last_hidden_state's bits are compared.
"""
import argparse
import importlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

import _isa

_isa.emulate_from_argv()  # --isa avx2: restarts under that ISA before anything loads

REPO = pathlib.Path(__file__).resolve().parent.parent


def old_package(rev):
    """Import the package as it was at commit ``rev`` (as minialbert_old)."""
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", rev + "^{commit}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ab_kernels: {rev!r} is not a commit of {REPO} ({r.stderr.strip()})")
    sha = r.stdout.strip()
    root = pathlib.Path(tempfile.gettempdir()) / f"minialbert-ab-{sha[:12]}"
    pkg = root / "minialbert_old"
    if not pkg.exists():
        tmp = root / "extract"
        tmp.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(REPO), "archive", sha, "minialbert"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
        os.replace(tmp / "minialbert", pkg)
    sys.path.insert(0, str(root))
    import minialbert_old
    return sha, minialbert_old


def best_of_block(f, seconds):
    best, t_end, n = float("inf"), time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end or n < 3:
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def compare(label, old, new, rounds, seconds, flops=None):
    """Time old() and new() in alternate rounds; their results must be the same bits."""
    a, b = old(), new()
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    same = all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
    ts = ([], [])
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            ts[i].append(best_of_block((old, new)[i], seconds))
    t_old, t_new = float(np.median(ts[0])), float(np.median(ts[1]))
    rate = (f"{flops / t_old / 1e9:>7.0f}{flops / t_new / 1e9:>7.0f}" if flops else
            f"{'':>7}{'':>7}")
    if same:
        bits = "same bits"
    else:  # by how much: the largest difference over the largest value, of each output
        rel = max(float(np.max(np.abs(x.astype(np.float64) - y)) / max(np.max(np.abs(x)), 1e-30))
                  for x, y in zip(a, b) if x.size)
        bits = f"BITS DIFFER (by up to {rel:.1e} of the largest value)"
    print(f"{label:<44}{t_old * 1e3:>10.3f}{t_new * 1e3:>10.3f}{rate}"
          f"{t_old / t_new:>8.2f}x  {bits}", flush=True)
    return same


GEMMS = [  # (label, M, N, K): tiny's batch (B32 x T128), base's (B8 x T128), one sentence
    ("tiny E->H", 4096, 256, 128), ("tiny q|k|v", 4096, 768, 256),
    ("tiny attention output", 4096, 256, 256), ("tiny FFN in", 4096, 1024, 256),
    ("tiny FFN out", 4096, 256, 1024), ("base q|k|v", 1024, 2304, 768),
    ("base FFN out", 1024, 768, 3072), ("base q|k|v, one sentence", 128, 2304, 768),
    ("square 256", 256, 256, 256), ("square 1024", 1024, 1024, 1024),
    ("base decoder, every position", 1024, 30000, 128),
]
ATTENTION = [  # (label, B, T, H, heads, shortest and longest sequence)
    ("tiny", 32, 128, 256, 4, 128, 128), ("tiny, one sentence", 1, 128, 256, 4, 128, 128),
    ("base", 8, 128, 768, 12, 128, 128),
    # the pretraining default's batch: its sequences' lengths drawn from T/2..T (its data
    # averages ~53 of 64), run without padding; and short sentences, as fine-tuning has
    # them (every head's tiles ragged: book chapter 01)
    ("small, padding removed", 64, 64, 128, 2, 32, 64),
    ("small, sentences of 8-40 tokens", 64, 64, 128, 2, 8, 40)]
ROWS = [("tiny", 4096, 256), ("base", 1024, 768)]  # LayerNorm's rows: B T x H
SOFTMAX_ROWS = [("tiny attention", 16384, 128),  # a layer's B N T rows of T keys (B32 x T128)
                ("rows of 50 keys", 16384, 50), ("rows of 63 keys", 16384, 63)]
PASSES = [("tiny", 1, 32), ("tiny", 1, 128), ("tiny", 8, 128), ("tiny", 32, 128), ("base", 1, 32),
          ("base", 1, 128)]


def frozen_passes(old, new, rounds, seconds):
    """A frozen model's forward pass, each version on the same weights (see the top)."""
    from minialbert.config import preset, shape_of
    from minialbert.heads import init_params
    from minialbert.memory import keep_freed_memory
    keep_freed_memory()  # as Predictor does (the process's allocator: both versions alike)
    for pkg in (old, new):
        importlib.import_module(pkg.__name__ + ".model")
    same, models = True, {}
    for name, B, T in PASSES:
        if name not in models:
            kw = shape_of(preset("tiny") if name == "tiny" else
                          preset("albert-base-v2", vocab_size=30000))
            params = init_params(new.config.AlbertConfig(**kw), seed=0, head="base")
            models[name] = [pkg.model.AlbertModel(pkg.config.AlbertConfig(**kw),
                                                  params=params).freeze()
                            for pkg in (old, new)]
        mo, mn = models[name]
        ids = np.random.default_rng(0).integers(5, mn.config.vocab_size, (B, T))
        same &= compare(f"{name} forward pass B{B} x T{T} (frozen)",
                        lambda: mo.forward(ids)[0]["last_hidden_state"],
                        lambda: mn.forward(ids)[0]["last_hidden_state"], rounds,
                        max(seconds, 0.3))
    return same


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the commit to compare this checkout against")
    ap.add_argument("--only", choices=["gemm", "attention", "rows", "pass"], default=None)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--seconds", type=float, default=0.08, help="length of one block")
    _isa.add_option(ap)
    a = ap.parse_args()
    sha, old = old_package(a.rev)
    import minialbert as new
    import minialbert_old.kernels  # noqa: F401
    import minialbert.kernels  # noqa: F401
    from minialbert.kernels import get_threads
    threads = get_threads()
    old.kernels.set_threads(threads)
    new.kernels.set_threads(threads)
    print(_isa.header(threads, torch_side=False))
    print(f"old: {a.rev} ({sha[:12]}), new: this checkout ({REPO}); {threads} threads; "
          f"median of {a.rounds} rounds, each the best of {a.seconds} s of calls")
    print(f"{'':<44}{'old ms':>10}{'new ms':>10}{'GF/s':>7}{'GF/s':>7}{'old/new':>9}")
    rng = np.random.default_rng(0)
    same = True
    if a.only in (None, "gemm"):
        for label, M, N, K in GEMMS:
            x = rng.standard_normal((M, K), dtype=np.float32)
            W = rng.standard_normal((N, K), dtype=np.float32)
            bias = rng.standard_normal(N, dtype=np.float32)
            dy = rng.standard_normal((M, N), dtype=np.float32)
            fl = 2.0 * M * N * K
            Po, Pn = old.kernels.matmul.PackedWeight(W), new.kernels.matmul.PackedWeight(W)
            same &= compare(f"{label} NT+bias (packed W)",
                            lambda: old.kernels.matmul_nt(x, Po, bias=bias),
                            lambda: new.kernels.matmul_nt(x, Pn, bias=bias), a.rounds,
                            a.seconds, fl)
            same &= compare(f"{label} NN", lambda: old.kernels.matmul_nn(dy, W),
                            lambda: new.kernels.matmul_nn(dy, W), a.rounds, a.seconds, fl)
            same &= compare(f"{label} TN", lambda: old.kernels.matmul_tn(dy, x),
                            lambda: new.kernels.matmul_tn(dy, x), a.rounds, a.seconds, fl)
    if a.only in (None, "attention"):
        for label, B, T, H, heads, shortest, longest in ATTENTION:
            lens = rng.integers(shortest, longest + 1, B).astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
            qkv = rng.standard_normal((int(lens.sum()), 3 * H), dtype=np.float32)
            bias = np.zeros((B, T), np.float32)
            dctx = rng.standard_normal((int(lens.sum()), H), dtype=np.float32)
            fo = old.kernels.attention.attention_forward_qkv
            fn = new.kernels.attention.attention_forward_qkv
            same &= compare(f"attention {label} forward",
                            lambda: fo(qkv, starts, lens, bias, T, heads, 0.0, 0),
                            lambda: fn(qkv, starts, lens, bias, T, heads, 0.0, 0),
                            a.rounds, a.seconds)
            probs = fn(qkv, starts, lens, bias, T, heads, 0.0, 0)[1]
            bo = old.kernels.attention.attention_backward_qkv
            bn = new.kernels.attention.attention_backward_qkv
            same &= compare(f"attention {label} backward",
                            lambda: bo(dctx, qkv, probs, starts, lens, T, heads, 0.0, 0),
                            lambda: bn(dctx, qkv, probs, starts, lens, T, heads, 0.0, 0),
                            a.rounds, a.seconds)
    if a.only in (None, "rows"):
        for label, R, C in ROWS:
            x = rng.standard_normal((R, C), dtype=np.float32)
            dy = rng.standard_normal((R, C), dtype=np.float32)
            g, b = rng.standard_normal(C, dtype=np.float32), rng.standard_normal(C, dtype=np.float32)
            lo, ln = old.kernels.layernorm_forward, new.kernels.layernorm_forward
            same &= compare(f"layernorm {label} {R} x {C} forward",
                            lambda: lo(x, g, b, 1e-12), lambda: ln(x, g, b, 1e-12),
                            a.rounds, a.seconds)
            _, mean, rstd = ln(x, g, b, 1e-12)
            lo, ln = old.kernels.layernorm_backward, new.kernels.layernorm_backward
            same &= compare(f"layernorm {label} {R} x {C} backward",
                            lambda: lo(dy, x, mean, rstd, g, np.zeros(C, np.float32),
                                       np.zeros(C, np.float32)),
                            lambda: ln(dy, x, mean, rstd, g, np.zeros(C, np.float32),
                                       np.zeros(C, np.float32)), a.rounds, a.seconds)
        for label, R, C in SOFTMAX_ROWS:  # the rows' exp (_base.exp_shifted)
            x = 3 * rng.standard_normal((R, C), dtype=np.float32)
            zero = np.zeros((1, C), np.float32)
            so, sn = old.kernels.softmax.softmax_forward, new.kernels.softmax.softmax_forward
            same &= compare(f"softmax {label} {R} x {C}", lambda: so(x, zero),
                            lambda: sn(x, zero), a.rounds, a.seconds)
        for label, R, V in (("tiny", 614, 8000), ("small", 521, 4000)):  # the masked rows
            z = 3 * rng.standard_normal((R, V), dtype=np.float32)
            labels = rng.integers(0, V, R)
            xo, xn = old.kernels.loss.cross_entropy, new.kernels.loss.cross_entropy
            same &= compare(f"cross-entropy {label} {R} x {V} (loss, gradient)",
                            lambda: xo(z, labels)[:2], lambda: xn(z, labels)[:2],
                            a.rounds, a.seconds)
    if a.only in (None, "pass"):
        same &= frozen_passes(old, new, a.rounds, a.seconds)
    if not same:
        print("some results differ in their bits between the two versions (see above)")


if __name__ == "__main__":
    main()
