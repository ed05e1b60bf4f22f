"""Measurements and checks shared by `minialbert demo`, the benchmarks and the tutorials.

Nothing here is needed to train; it exists so that the numbers a user sees in the README,
the book and a benchmark come from one piece of code.
"""
import os
import platform
import time

import numpy as np


def cpu_name():
    """The CPU's model name, with its family and model numbers and the core LLVM compiles
    for (a virtual machine often reports only "Intel(R) Xeon(R) Processor")."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    extra = []
    if "cpu family" in info and "model" in info:
        extra.append(f"family {info['cpu family']} model {info['model']}")
    try:
        import llvmlite.binding as llvm
        extra.append(f"LLVM: {llvm.get_host_cpu_name()}")
    except Exception:  # noqa: BLE001 (only a label)
        pass
    return f"{name} ({'; '.join(extra)})" if extra else name


def blas_info():
    """Which BLAS NumPy runs and with which kernel (threadpoolctl, if installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl to see it)"
    rows = [f"{d.get('internal_api')} {d.get('version')} kernel={d.get('architecture')} "
            f"threads={d.get('num_threads')}"
            for d in threadpool_info() if d.get("user_api") == "blas"
            and "numpy" in str(d.get("filepath", ""))]
    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    return "; ".join(rows) + (f"  (env {env})" if env else "")


def best_time(f, min_total=0.25, max_reps=50):
    """Best wall time of f() over repeats (after one warm-up call)."""
    f()
    best = float("inf")
    total = 0.0
    reps = 0
    while (total < min_total or reps < 3) and reps < max_reps:
        t0 = time.perf_counter()
        f()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        total += dt
        reps += 1
    return best


def best_times(fs, rounds=2, min_total=0.15, rest=0.1):
    """Best wall time of each of fs, timed in blocks taken in turn for a few rounds
    (f0's block, f1's block, f0's, f1's, ...), so that a slow moment of a noisy host is
    not charged to one side only. Between blocks the process rests `rest` seconds: a
    BLAS's (and our) worker threads spin for a while after their last call, and without
    the rest they would steal the cores from the next block's threads."""
    best = [float("inf")] * len(fs)
    for _ in range(rounds):
        for i, f in enumerate(fs):
            time.sleep(rest)
            best[i] = min(best[i], best_time(f, min_total=min_total))
    return best


def matmul_forms(M, K, N, rng, dtype=np.float32):
    """The three products of a dense layer x[M,K] -> y[M,N] with W[N,K], as
    (name, ours(), blas()) triples; each does 2*M*K*N flops."""
    from .kernels import matmul_nn, matmul_nt, matmul_tn

    x = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    return [
        ("NT  y=x@W.T", lambda: matmul_nt(x, W), lambda: x @ W.T),
        ("NN  dx=dy@W", lambda: matmul_nn(dy, W), lambda: dy @ W),
        ("TN  dW=dy.T@x", lambda: matmul_tn(dy, x), lambda: dy.T @ x),
    ]


def matmul_table(shapes, out=print):
    """Print GFLOP/s of ours and NumPy's BLAS side by side; return the rows."""
    rng = np.random.default_rng(0)
    rows = []
    out(f"{'shape (M,K,N)':<22}{'form':<15}{'ours GF/s':>10}{'BLAS GF/s':>11}{'ratio':>8}")
    for label, (M, K, N) in shapes:
        for form, ours, blas in matmul_forms(M, K, N, rng):
            flops = 2.0 * M * K * N
            t_o, t_b = best_times([ours, blas])
            r = dict(shape=label, M=M, K=K, N=N, form=form.split()[0],
                     ours=flops / t_o / 1e9, blas=flops / t_b / 1e9, ratio=t_b / t_o)
            rows.append(r)
            out(f"{label:<22}{form:<15}{r['ours']:>10.1f}{r['blas']:>11.1f}{r['ratio']:>8.2f}")
    return rows


def gradcheck_table(out=print):
    """Float64 finite-difference checks of every kernel's backward; returns the results."""
    from .gradcheck import gradcheck
    from .kernels import (activation, cross_entropy, embedding_backward, embedding_forward,
                          layernorm_backward, layernorm_forward, mask_bias, matmul_nn,
                          matmul_nt, matmul_tn, softmax_backward, softmax_forward)

    rng = np.random.default_rng(0)
    res = []
    x = rng.standard_normal((5, 7))
    W = rng.standard_normal((3, 7))
    w = rng.standard_normal((5, 3))
    res.append(gradcheck(lambda: (matmul_nt(x, W) * w).sum(), x, matmul_nn(w, W), "matmul dx"))
    res.append(gradcheck(lambda: (matmul_nt(x, W) * w).sum(), W, matmul_tn(w, x), "matmul dW"))
    s = rng.standard_normal((4, 6))
    bias = mask_bias(rng.random((4, 6)) > 0.3, np.float64)
    ws = rng.standard_normal((4, 6))
    res.append(gradcheck(lambda: (softmax_forward(s, bias) * ws).sum(), s,
                         softmax_backward(ws, softmax_forward(s, bias)), "softmax"))
    g = rng.standard_normal(6)
    b = rng.standard_normal(6)
    y, m, r = layernorm_forward(s, g, b, 1e-12)
    dg = np.zeros(6)
    db = np.zeros(6)
    dx = layernorm_backward(ws, s, m, r, g, dg, db)
    f_ln = lambda: (layernorm_forward(s, g, b, 1e-12)[0] * ws).sum()  # noqa: E731
    res += [gradcheck(f_ln, s, dx, "layernorm x"), gradcheck(f_ln, g, dg, "layernorm gamma"),
            gradcheck(f_ln, b, db, "layernorm beta")]
    for name in ("gelu_new", "gelu"):
        fwd, bwd = activation(name)
        v = rng.standard_normal(20) * 2
        wv = rng.standard_normal(20)
        res.append(gradcheck(lambda: (fwd(v) * wv).sum(), v, bwd(wv, v), name))
    table = rng.standard_normal((5, 4))
    ids = np.array([1, 1, 3, 0, 1])
    we = rng.standard_normal((5, 4))
    dtab = np.zeros_like(table)
    embedding_backward(ids, we, dtab, -1)
    res.append(gradcheck(lambda: (embedding_forward(ids, table) * we).sum(), table, dtab,
                         "embedding (repeated ids)"))
    z = rng.standard_normal((6, 5))
    lab = np.array([0, 4, -100, 2, 2, 1])
    res.append(gradcheck(lambda: cross_entropy(z, lab, grad=False)[0], z,
                         cross_entropy(z, lab)[1], "cross-entropy"))
    for r_ in res:
        out(str(r_))
    return res


# ------------------------------------------------------------------------------ data parallel

def mpiexec_path():
    """The mpiexec of the mpich wheel (beside this Python), or the one on PATH, or None."""
    import shutil
    import sysconfig

    here = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def data_parallel_runs(folder, args, steps, skip=3):
    """Pretrain the same run twice, side by side: one process with 2 threads, and
    ``mpiexec -n 2`` ranks with 1 thread each (the same global batch: the micro-batches are
    shared out). ``args``: the `minialbert pretrain` options both get. -> one dict per
    layout: tokens/s and step time (medians over the steps after the first ``skip``), the
    allreduce's seconds per step, the gradient buffer's bytes, the losses."""
    import json
    import pathlib
    import subprocess
    import sys

    rows = []
    mpiexec = mpiexec_path()
    for name, launch, threads in (("1 process × 2 threads", [], 2),
                                  ("2 ranks × 1 thread", [mpiexec, "-n", "2"], 1)):
        out = pathlib.Path(folder) / f"ranks{2 if launch else 1}"
        cmd = launch + [sys.executable, "-m", "minialbert.cli", "pretrain", "--out", str(out),
                        "--overwrite", "--steps", str(steps), "--threads", str(threads),
                        "--no-progress", "--save-every", "0", "--eval-every", "0"] + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
        recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
        recs = [x for x in recs if "mlm_loss" in x and not x.get("eval")]
        timed = recs[skip:] or recs
        tps = float(np.median([x["tokens_per_s"] for x in timed]))
        from .checkpoint import load_checkpoint

        params = load_checkpoint(out)[1]
        rows.append(dict(layout=name, tokens_per_s=tps,
                         comm_s=float(np.median([x.get("comm_s", 0.0) for x in timed])),
                         step_s=float(np.median(np.diff([x["elapsed"] for x in recs])[skip:])),
                         grad_bytes=int(sum(v.nbytes for v in params.values())),
                         losses=[x["loss"] for x in recs]))
    return rows
