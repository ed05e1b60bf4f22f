"""Numba kernels: each forward beside its backward, compiled for float32 and float64."""
import hashlib
import os
import pathlib


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
        try:
            for f in d.glob("*.nb[ic]"):
                f.unlink()
            d.mkdir(parents=True, exist_ok=True)
            stamp.write_text(h)
        except OSError:  # a read-only install: Numba then compiles in memory anyway
            pass


_drop_stale_cache()
from ._base import FASTMATH, get_threads, set_threads  # noqa: E402 (after the cache check)
from .act import activation, gelu_backward, gelu_forward, gelu_new_backward, gelu_new_forward
from .dropout import dropout_backward, dropout_forward, dropout_key, dropout_mask
from .embedding import embedding_backward, embedding_backward_naive, embedding_forward
from .loss import cross_entropy
from . import attention
from .matmul import (PackedWeight, bias_add, bias_grad, matmul_nn, matmul_nt, matmul_nt_4x4,
                     matmul_nt_naive, matmul_tn, transpose, use_blas)
from .norm import layernorm_backward, layernorm_forward
from .softmax import mask_bias, softmax_backward, softmax_forward


def warmup():
    """Compile (or load from Numba's cache) every kernel for float32 and float64, so
    that the first real call is not the one that pays for compilation."""
    import numpy as np

    for dt in (np.float32, np.float64):
        a = np.ones((5, 6), dtype=dt)
        matmul_nt(a, a)
        matmul_nn(a, a.T.copy())
        matmul_tn(a, a)
        matmul_nt_naive(a, a)
        matmul_nt_4x4(a, a)
        bias_add(a.copy(), a[0])
        bias_grad(a, np.zeros(6, dt))
        sm = softmax_forward(a, mask_bias(np.ones((1, 6)), dt))
        softmax_backward(a, sm)
        y, m, r = layernorm_forward(a, a[0], a[0], 1e-12)
        layernorm_backward(a, a, m, r, a[0], np.zeros(6, dt), np.zeros(6, dt))
        for f, b in (activation("gelu_new"), activation("gelu"), activation("relu")):
            b(a.ravel(), a.ravel())
            f(a.ravel())
        ids = np.array([0, 1, 1], dtype=np.int64)
        embedding_backward(ids, embedding_forward(ids, a), np.zeros_like(a), 0)
        embedding_backward_naive(ids, a[:3], np.zeros_like(a), 0)
        cross_entropy(a, np.array([0, 1, -100, 2, 3], dtype=np.int64))
        y, keep = dropout_forward(a, 0.5, dropout_key(0, 0, 0))
        dropout_backward(a, keep, 0.5)
        q = np.ones((1, 3, 4), dtype=dt)
        mb = mask_bias(np.ones((1, 3)), dt)
        for p in (0.0, 0.5):
            ctx, probs = attention.attention_forward(q, q, q, mb, 2, p, np.uint64(1))
            attention.attention_backward(q, q, q, q, probs, 2, p, np.uint64(1))
            ctx, probs = attention.attention_forward_rows(q, q, q, mb, 2, p, np.uint64(1))
            attention.attention_backward_rows(q, q, q, q, probs, 2, p, np.uint64(1))
