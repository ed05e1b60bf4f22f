"""--isa avx2: run a benchmark as a CPU without AVX-512 would, on one that has it.

The machines this project is measured on change from session to session: some have
AVX-512 (32 vector registers of 16 floats), some only AVX2 (16 registers of 8 floats, as
AMD's Zen 3 and Intel's Haswell to Alder Lake). A kernel tuned on one can run at half speed
on the other, so the benchmarks can also be run with every side held to AVX2:

    python benchmarks/bench_matmul.py --isa avx2
    python benchmarks/bench_train_step.py --quick --isa avx2

What that sets, for this process and every worker it starts (before anything is imported):
    ours      MINIALBERT_GEMM_ISA=avx2 (the 6 x 16 micro-kernel), and Numba compiles every
              kernel for Haswell (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES: no AVX-512
              instructions, 16 vector registers; its own cache entries, a cold compile once)
    torch     ATEN_CPU_CAPABILITY=avx2 (ATen's vectorised kernels), MKL_ENABLE_INSTRUCTIONS
              =AVX2, ONEDNN_MAX_CPU_ISA=AVX2
    NumPy     OPENBLAS_CORETYPE=Haswell, unless the environment already names a core type
              (then it is left as it is, and printed)
It is an emulation: the caches, the clock and the core's other resources stay this
machine's. It shows what the AVX2 code paths do, side by side, not what an AVX2 CPU does.
"""
import os
import sys

HASWELL = "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fsgsbase,+lzcnt,+movbe," \
          "+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave"
ENV = {
    "avx2": {
        "MINIALBERT_GEMM_ISA": "avx2",
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": HASWELL,
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
}
_MARK = "MINIALBERT_BENCH_ISA"


def emulate_from_argv():
    """Call first thing in a benchmark: with ``--isa NAME`` on the command line, set NAME's
    environment and start the script again under it (the setting must be in place before
    Numba, torch or NumPy load). Returns the emulated ISA's name, or None."""
    isa = None
    for i, arg in enumerate(sys.argv):
        if arg == "--isa" and i + 1 < len(sys.argv):
            isa = sys.argv[i + 1]
        elif arg.startswith("--isa="):
            isa = arg.split("=", 1)[1]
    if isa is None or isa == "native":
        return None
    if isa not in ENV:
        sys.exit(f"--isa {isa}: choose native or one of {sorted(ENV)}")
    if os.environ.get(_MARK) == isa:  # already started again under it
        return isa
    env = dict(os.environ, **ENV[isa], **{_MARK: isa})
    env.setdefault("OPENBLAS_CORETYPE", "Haswell")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def add_option(ap):
    ap.add_argument("--isa", default="native", choices=["native"] + sorted(ENV),
                    help="emulate a CPU without AVX-512 (every side held to AVX2; see "
                         "benchmarks/_isa.py)")


def describe():
    """One line for a benchmark's header: what is emulated, if anything."""
    isa = os.environ.get(_MARK)
    if not isa:
        return "native ISA (no emulation)"
    keys = ", ".join(f"{k}={os.environ.get(k)}" for k in list(ENV[isa]) + ["OPENBLAS_CORETYPE"])
    return f"EMULATING {isa.upper()} on this CPU: {keys}"


def header(threads, torch_side=True):
    """The lines every benchmark starts with: the CPU, the vector ISA our GEMM runs (and its
    tile), NumPy's BLAS and its kernel, the threads per side, what torch runs on, and what
    is emulated (describe)."""
    import numpy as np

    from minialbert.demo import blas_info, cpu_name
    from minialbert.kernels import matmul as mm

    b = mm.blocking(np.float32, 1024, 1024)
    lines = [f"CPU: {cpu_name()}",
             f"ours: vector ISA {mm.ISA}, micro-kernel tile {b['MR']}x{b['NR']} (float32, "
             f"a 1024 x 1024 product), KC {b['KC']}; {threads} threads",
             f"NumPy BLAS: {blas_info()}"]
    if torch_side:
        try:
            import torch
            blas = next((w.split("=", 1)[1].rstrip(",") for w in torch.__config__.show().split()
                         if w.startswith("BLAS_INFO=")), "?")
            lines.append(f"torch {torch.__version__}: CPU capability "
                         f"{torch.backends.cpu.get_cpu_capability()}, BLAS {blas}, "
                         f"{threads} threads")
        except ImportError:
            lines.append("torch: not installed")
    lines.append(describe())
    return "\n".join(lines)


def measured_peak(threads, times=3):
    """Our micro-kernel's float32 GFLOP/s on L1-resident panels, on `threads` threads
    (microkernel.measured_peak_gflops): the most arithmetic this CPU delivers to our code,
    under the ISA the benchmark runs (emulated or not). The best of `times` measurements:
    on a shared host one can fall in a slow moment."""
    import numpy as np

    from minialbert.kernels.matmul import ISA
    from minialbert.kernels.microkernel import measured_peak_gflops

    return max(measured_peak_gflops(np.float32, ISA, threads) for _ in range(times))


def ceiling(hf_seconds, flops, peak_gflops):
    """The most any implementation doing `flops` of matrix products can reach against HF's
    time on this machine: HF's time over those products' time at the peak, with nothing
    else (softmax, LayerNorm, the optimizer, Python) costing any time. A target above it is
    out of reach here for any GEMM; only less arithmetic would reach it."""
    return hf_seconds / (flops / (peak_gflops * 1e9))
