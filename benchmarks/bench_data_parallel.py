"""Data parallelism on this machine: 1 process × 2 threads against 2 MPI ranks × 1 thread.

    python benchmarks/bench_data_parallel.py             # the small preset, batch 64 × 64
    python benchmarks/bench_data_parallel.py --quick     # fewer steps
    python benchmarks/bench_data_parallel.py --preset tiny --batch-size 32 --seq-len 128

Both runs pretrain the same model on the same data with the same global batch (split into
2 micro-batches: one process does both, each rank does one) and the same tokenizer
(trained once, beforehand). Prints tokens/s of each layout and their ratio, the time the
allreduce takes per step and the bytes it sums (the float32 gradients of every
parameter), and the CPU, its vector ISA, the BLAS and the thread counts. Needs the mpi
extra: pip install -e '.[mpi]'. Over loopback on one machine the two layouts share the
same two cores, so this measures the cost of the MPI path, not a speed-up: chapter 15
models what several machines would give.
"""
import argparse
import pathlib
import sys
import tempfile

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args()
    steps = a.steps or (12 if a.quick else 40)

    from minialbert.corpus import load_corpus
    from minialbert.demo import blas_info, cpu_name, data_parallel_runs, mpiexec_path
    from minialbert.kernels.matmul import ISA
    from minialbert.tokenizer import train_tokenizer

    if mpiexec_path() is None:
        sys.exit("no mpiexec: pip install -e '.[mpi]'")
    print(f"CPU: {cpu_name()}; vector ISA {ISA}; BLAS: {blas_info()}")
    print(f"layouts: 1 process × 2 Numba threads, and mpiexec -n 2 (MPICH) × 1 thread each; "
          f"{a.preset} preset, global batch {a.batch_size} × {a.seq_len} in 2 micro-batches, "
          f"{steps} steps (medians over the steps after the first 3)")
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        train_c, _ = load_corpus(None, "auto").split(0.1)
        train_tokenizer(train_c.sentences(), 4000, out_dir=d / "tok")
        rows = data_parallel_runs(d, ["--preset", a.preset, "--batch-size", str(a.batch_size),
                                      "--seq-len", str(a.seq_len), "--micro-batches", "2",
                                      "--tokenizer", str(d / "tok")], steps)
    one, two = rows
    print(f"\n{'layout':<24}{'tokens/s':>10}{'step ms':>9}{'allreduce ms':>14}")
    for r in rows:
        print(f"{r['layout']:<24}{r['tokens_per_s']:>10.0f}{r['step_s'] * 1e3:>9.1f}"
              f"{r['comm_s'] * 1e3:>14.2f}")
    rel = np.max(np.abs(np.subtract(one["losses"], two["losses"])) / np.abs(one["losses"]))
    print(f"\n2 ranks / 1 process: {two['tokens_per_s'] / one['tokens_per_s']:.2f}× the tokens/s; "
          f"allreduce {two['comm_s'] * 1e3:.2f} ms per step = "
          f"{two['comm_s'] / two['step_s']:.1%} of the step, summing {one['grad_bytes']:,} bytes "
          f"({one['grad_bytes'] / max(two['comm_s'], 1e-9) / 1e9:.2f} GB/s); the losses agree "
          f"to {rel:.1e} relative")


if __name__ == "__main__":
    main()
