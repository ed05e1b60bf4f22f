"""Our matmul against NumPy's BLAS, side by side in one run.

    python benchmarks/bench_matmul.py            # full table
    python benchmarks/bench_matmul.py --quick    # a few sizes

Prints GFLOP/s for the three forms a dense layer needs (NT forward, NN input gradient,
TN weight gradient) at square sizes and at the shapes of a tiny and a base ALBERT layer,
the ratio (BLAS time / our time: > 1 means we are faster), the CPU, the BLAS library and
kernel NumPy uses, and the thread counts. Then import + first call in a fresh process
with a warm Numba cache.
"""
import argparse
import subprocess
import sys
import time

import _isa
import _report

_isa.emulate_from_argv()  # --isa avx2: restarts under that ISA before anything loads

import numba  # noqa: E402

import numpy as np

from minialbert.demo import best_times, matmul_forms, matmul_table
from minialbert.kernels import matmul as mm
from minialbert.kernels.microkernel import measured_peak_gflops

SQUARE = [128, 256, 512, 1024, 2048]
LAYERS = [
    # (label, (M tokens, K in, N out)); tiny: B32 x T128 tokens, H 256, I 1024
    ("tiny  HxH  4096x256x256", (4096, 256, 256)),
    ("tiny  HxI  4096x256x1024", (4096, 256, 1024)),
    ("tiny  IxH  4096x1024x256", (4096, 1024, 256)),
    # base: B8 x T128 tokens, H 768, I 3072
    ("base  HxH  1024x768x768", (1024, 768, 768)),
    ("base  HxI  1024x768x3072", (1024, 768, 3072)),
    ("base  IxH  1024x3072x768", (1024, 3072, 768)),
    # the factorized embedding's projection E -> H (K = E = 128): 2500 tokens as in the issue
    ("E->H  tiny 4096x128x256", (4096, 128, 256)),
    ("E->H  base 2500x128x768", (2500, 128, 768)),
]


def first_call_seconds():
    code = ("import time; t=time.perf_counter(); import numpy as np; "
            "from minialbert.kernels import matmul_nt; a=np.ones((64,64),np.float32); "
            "matmul_nt(a,a); print(time.perf_counter()-t)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # warm
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(r.stdout.strip())


def cpu_mhz():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":")[1].strip() for line in f if line.startswith("cpu MHz"))
    except (OSError, StopIteration):
        return "unknown"


def torch_forms(M, K, N, threads):
    """The same three products in torch (what Hugging Face's dense layers run on)."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, W, dy = (torch.randn(*s, generator=g) for s in ((M, K), (N, K), (M, N)))
    return [lambda: x @ W.T, lambda: dy @ W, lambda: dy.T @ x]


def table_with_torch(shapes, threads):
    """As demo.matmul_table, with a third column: torch's GFLOP/s (its BLAS: MKL in the CPU
    wheels), timed in the same alternating blocks. The ratio stays ours against NumPy's BLAS."""
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'shape (M,K,N)':<22}{'form':<15}{'ours GF/s':>10}{'BLAS GF/s':>11}{'ratio':>8}"
          f"{'torch GF/s':>12}{'vs torch':>10}")
    for label, (M, K, N) in shapes:
        tf = torch_forms(M, K, N, threads)
        for (form, ours, blas), tor in zip(matmul_forms(M, K, N, rng), tf):
            flops = 2.0 * M * K * N
            t_o, t_b, t_t = best_times([ours, blas, tor], rounds=3)
            r = dict(shape=label, M=M, K=K, N=N, form=form.split()[0], ours=flops / t_o / 1e9,
                     blas=flops / t_b / 1e9, ratio=t_b / t_o, torch=flops / t_t / 1e9,
                     vs_torch=t_t / t_o)
            rows.append(r)
            print(f"{label:<22}{form:<15}{r['ours']:>10.1f}{r['blas']:>11.1f}{r['ratio']:>8.2f}"
                  f"{r['torch']:>12.1f}{r['vs_torch']:>9.2f}x")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="leave out the torch column")
    _isa.add_option(ap)
    _report.add_option(ap)
    a = ap.parse_args()
    _report.check(ap, a.json)
    if not a.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            a.no_torch = True
    th = numba.get_num_threads()
    print(_isa.header(th, torch_side=not a.no_torch))
    print(f"Numba threads: {th}  (threading layer: {numba.config.THREADING_LAYER})")
    time.sleep(0.5)  # let other threads (BLAS's, torch's OpenMP) stop spinning first
    peak = measured_peak_gflops(np.float32, mm.ISA, th)
    mhz = cpu_mhz()
    print(f"peak: {peak:.0f} GFLOP/s measured (our micro-kernel on L1-resident panels, {th} "
          f"threads); /proc/cpuinfo says {mhz} MHz (nominal; the clock under load differs)")
    sizes = [128, 512] if a.quick else SQUARE
    shapes = [(f"square {n}", (n, n, n)) for n in sizes] + (LAYERS[:1] if a.quick else LAYERS)
    t0 = time.time()
    rows = matmul_table(shapes) if a.no_torch else table_with_torch(shapes, th)
    time.sleep(0.5)
    again = measured_peak_gflops(np.float32, mm.ISA, th)  # measured again after the table:
    if again > peak * 1.05:  # a slow moment of the host at the start once gave half of it
        print(f"peak measured again after the table: {again:.0f} GFLOP/s (used below)")
        peak = again
    print("as a fraction of the measured peak: ours " + ", ".join(
        f"{r['shape'].split()[0]}{r['form']} {r['ours'] / peak:.2f}" for r in rows[-6:]) + " ...")
    fr = [r["ours"] / peak for r in rows]
    fb = [r["blas"] / peak for r in rows]
    print(f"all shapes: ours {min(fr):.2f}-{max(fr):.2f} of peak, BLAS {min(fb):.2f}-{max(fb):.2f}")
    big = [r for r in rows if min(r["M"], r["K"], r["N"]) >= 512 or r["shape"].startswith("E->H")]
    if big:
        worst = min(big, key=lambda r: r["ratio"])
        geo = 1.0
        for r in big:
            geo *= r["ratio"]
        geo **= 1 / len(big)
        print(f"sizes >= 512 and E->H: geometric-mean ratio {geo:.2f}x BLAS, worst {worst['ratio']:.2f}x "
              f"({worst['shape']} {worst['form']})")
    geo_all = float(np.exp(np.mean([np.log(r["ratio"]) for r in rows])))
    worst_all = min(rows, key=lambda r: r["ratio"])
    print(f"every shape above: geometric-mean ratio {geo_all:.2f}x BLAS, worst "
          f"{worst_all['ratio']:.2f}x ({worst_all['shape']} {worst_all['form']})")
    if not a.no_torch:
        geo_t = float(np.exp(np.mean([np.log(r["vs_torch"]) for r in rows])))
        worst_t = min(rows, key=lambda r: r["vs_torch"])
        print(f"every shape above: geometric-mean ratio {geo_t:.2f}x torch, worst "
              f"{worst_t['vs_torch']:.2f}x ({worst_t['shape']} {worst_t['form']})")
    first = first_call_seconds()
    print(f"import + first matmul in a fresh process (warm cache): {first:.2f} s")
    _report.write(a.json, dict(
        quick=a.quick, geo_ratio=geo if big else None, worst_ratio=worst["ratio"] if big else None,
        worst_shape=f"{worst['shape']} {worst['form']}" if big else None, shapes=len(big),
        first_call_s=first))
    print(f"benchmark took {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
