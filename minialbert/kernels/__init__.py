"""Numba kernels: each forward beside its backward, compiled for float32 and float64."""
import hashlib
import os
import pathlib

from ..numba_cache import directory_lock


def _drop_stale_cache():
    """Numba keys a cached kernel on its own file only: a kernel in act.py that inlines
    ``_base.exp_float32`` would keep its old machine code after _base.py changed. So the
    cache is stamped with a hash of every source file of this package, and dropped
    whole when a file changed (then each kernel compiles once more)."""
    here = pathlib.Path(__file__).parent
    h = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()
    dirs = [here / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        root = pathlib.Path(os.environ["NUMBA_CACHE_DIR"])
        dirs += [d for d in root.rglob("kernels") if d.parent.name == "minialbert"]
    for d in dirs:
        stamp = d / "minialbert-kernels.sha256"
        try:
            if stamp.read_text() == h:
                continue
        except OSError:  # no stamp yet
            pass
        with directory_lock(str(d)):  # not while another process saves a kernel here
            try:
                if stamp.read_text() == h:  # another process dropped it meanwhile
                    continue
            except OSError:
                pass
            try:
                for f in d.glob("*.nb[ic]"):
                    f.unlink()
                d.mkdir(parents=True, exist_ok=True)
                stamp.write_text(h)
            except OSError:  # a read-only install: Numba then compiles in memory anyway
                pass


def _wide_vectors():
    """On a CPU with AVX-512, let LLVM vectorise our plain loops 16 floats wide. For Intel's
    AVX-512 cores its tuning prefers 256-bit vectors ("prefer-256-bit": code that uses wide
    vectors only now and then would lower the clock for little gain), so every loop LLVM
    vectorised itself — the softmax's exp, gelu, LayerNorm, the optimizer — ran 8 floats
    wide there, while the micro-kernel's 512-bit vectors, written out, did not change.
    Measured on a 2-core Xeon (family 6 model 167): one thread, a head's softmax (128 x
    128) 14.6 -> 11.0 us; 2 threads, seven pairs of processes in turn, a frozen pass on
    tiny's batch 1.03-1.07x (in every pair), on its sentences 0.97-1.07x, base's sentence
    1.00-1.03x; a tiny training step, three pairs, 0.98-1.03x (benchmarks/RESULTS.md,
    thirty-sixth session). No value changes: each is the same arithmetic at either width,
    and the sums are written out (reduce.py; tests/test_kernels.py compares the bits).
    Numba's setting is the whole process's, so it is made only before Numba has compiled
    anything, and never over a NUMBA_CPU_NAME or NUMBA_CPU_FEATURES of the user's own
    (NUMBA_CPU_FEATURES set to the host's features keeps LLVM's choice)."""
    import numba
    from numba.core import codegen, registry

    if (os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES")
            or numba.config.CPU_FEATURES is not None
            or "_toplevel_target_context" in vars(registry.cpu_target)):  # compiled already
        return
    features = codegen.get_host_cpu_features()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_wide_vectors()
_drop_stale_cache()
from ._base import FASTMATH, get_threads, keeps_threads, set_threads  # noqa: E402 (after the cache check)
from .act import activation, gelu_backward, gelu_forward, gelu_new_backward, gelu_new_forward
from .dropout import dropout_backward, dropout_forward, dropout_key, dropout_mask
from .embedding import embedding_backward, embedding_backward_naive, embedding_forward
from .loss import cross_entropy
from . import attention
from .matmul import (PackedWeight, bias_add, bias_grad, matmul_nn, matmul_nt, matmul_nt_4x4,
                     matmul_nt_naive, matmul_tn, transpose, use_blas)
from .norm import layernorm_backward, layernorm_forward
from .softmax import mask_bias, softmax_backward, softmax_forward

import numpy as np  # noqa: E402


def _warm_matmul(dt, a):
    from .matmul import _gemm_fused, _gemm_serial, gemm
    out = np.empty((5, 5), dt)
    for run in (_gemm_fused, _gemm_serial):  # both drivers (gemm's plan picks per shape)
        gemm(a, False, a, True, out, False, run=run)  # the NT, NN and TN forms
        gemm(a, False, a.T.copy(), False, out, False, run=run)
        gemm(a, True, a, False, np.empty((6, 6), dt), False, run=run)
    matmul_nt(a, a)
    bias_add(a.copy(), a[0])
    bias_grad(a, np.zeros(6, dt))


def _warm_matmul_steps(dt, a):
    matmul_nt_naive(a, a)
    matmul_nt_4x4(a, a)


def _warm_rows(dt, a):
    sm = softmax_forward(a, mask_bias(np.ones((1, 6)), dt))
    softmax_backward(a, sm)
    cross_entropy(a, np.array([0, 1, -100, 2, 3], dtype=np.int64))
    y, keep = dropout_forward(a, 0.5, dropout_key(0, 0, 0))
    dropout_backward(a, keep, 0.5)


def _warm_layernorm(dt, a):
    y, m, r = layernorm_forward(a, a[0], a[0], 1e-12)
    layernorm_backward(a, a, m, r, a[0], np.zeros(6, dt), np.zeros(6, dt))


def _warm_elementwise(dt, a):
    for f, b in (activation("gelu_new"), activation("gelu"), activation("relu")):
        b(a.ravel(), a.ravel())
        f(a.ravel())
    ids = np.array([0, 1, 1], dtype=np.int64)
    embedding_backward(ids, embedding_forward(ids, a), np.zeros_like(a), 0)
    embedding_backward_naive(ids, a[:3], np.zeros_like(a), 0)


def _warm_attention(dt, a, rows=False):
    q = np.ones((1, 3, 4), dtype=dt)
    mb = mask_bias(np.ones((1, 3)), dt)
    fwd, bwd = ((attention.attention_forward_rows, attention.attention_backward_rows) if rows
                else (attention.attention_forward, attention.attention_backward))
    for p in (0.0, 0.5):
        ctx, probs = fwd(q, q, q, mb, 2, p, np.uint64(1))
        bwd(q, q, q, q, probs, 2, p, np.uint64(1))


def _warm_encoder(dt, a):
    from .encoder import warm
    warm(dt)


# the kernel groups, the slowest to compile first (float32's about 130 s in all, cold, on
# one core of a Zen 3 EPYC; float64's as much)
_WARMUP = (_warm_attention, _warm_encoder, _warm_matmul,
           lambda dt, a: _warm_attention(dt, a, rows=True), _warm_rows, _warm_elementwise,
           _warm_layernorm, _warm_matmul_steps)


def warmup(processes=1, part=None):
    """Compile (or load from Numba's cache) every kernel for float32 and float64, so
    that the first real call is not the one that pays for compilation.

    ``processes > 1`` compiles cold kernels that many at a time: each child process
    compiles its share into Numba's cache (``part`` = (i, n): the i-th of n shares), then
    this process loads them all from it (about 1 s when the cache is warm). Several
    processes may write one cache because minialbert.numba_cache makes Numba's save take
    a file lock: without it, two processes saving the same function at once could give
    two signatures one data file (a clean clone's CI once failed so, every later compile
    with "Invalid use of CPUDispatcher(_prefetch_block)")."""
    jobs = [(f, dt) for f in _WARMUP for dt in (np.float32, np.float64)]
    if part is not None:  # dealt out in a snake (0 1 1 0 0 1 ...): the shares take as long
        i, n = part
        jobs = [j for k, j in enumerate(jobs)
                if (k % n if (k // n) % 2 == 0 else n - 1 - k % n) == i]
    elif processes > 1:
        import subprocess
        import sys
        code = "import sys; from minialbert.kernels import warmup; " \
               "warmup(part=(int(sys.argv[1]), int(sys.argv[2])))"
        children = [subprocess.Popen([sys.executable, "-c", code, str(i), str(processes)])
                    for i in range(processes)]
        for c in children:  # a child that failed leaves its kernels to this process
            c.wait()
    for f, dt in jobs:
        f(dt, np.ones((5, 6), dtype=dt))
