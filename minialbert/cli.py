"""The `minialbert` command."""
import argparse
import sys
import time


def cmd_demo(args):
    """Gradient checks of every kernel, then our matmul against NumPy's BLAS."""
    import numba

    from . import kernels
    from .demo import blas_info, cpu_name, gradcheck_table, matmul_table

    if args.threads:
        kernels.set_threads(args.threads)
    t0 = time.time()
    print("minialbert demo: compiling the kernels (first run only: Numba caches them)...")
    kernels.warmup()
    print(f"  ready in {time.time() - t0:.1f} s\n")
    print("1. Every backward against float64 central differences "
          "(correct: ~1e-7 or smaller; a bug: 1e-2 or larger)")
    res = gradcheck_table()
    worst = max(r.max_rel_error for r in res)
    print(f"   worst relative error {worst:.1e}: {'all correct' if worst < 1e-5 else 'FAILED'}\n")
    print(f"2. Our matmul vs NumPy's BLAS (float32, GFLOP/s; ratio > 1: ours is faster)")
    print(f"   CPU: {cpu_name()}; threads: {numba.get_num_threads()}; BLAS: {blas_info()}")
    sizes = [256, 512] if args.quick else [256, 512, 1024]
    matmul_table([(f"square {n}", (n, n, n)) for n in sizes] +
                 [("ALBERT tiny FFN", (4096, 256, 1024))])
    print(f"\ndone in {time.time() - t0:.0f} s")
    return 0 if worst < 1e-5 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(prog="minialbert", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="gradient checks and the matmul benchmark, as a table")
    p.add_argument("--quick", action="store_true", help="fewer sizes")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    p.set_defaults(func=cmd_demo)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
