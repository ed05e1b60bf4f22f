"""Where the time of a training step goes: wall time per kind of kernel.

    with KernelProfile() as prof:
        out, cache = model.forward(...); model.backward(cache, grads); opt.step(...)
    print(prof.table(total_seconds))

While the ``with`` block runs, every kernel the layers call (the names ``layers``,
``model`` and ``heads`` imported from ``kernels``) is wrapped in a timer and its time is
added to its kind: GEMM, attention, LayerNorm, activation, ... Whatever the step spends
outside these calls (NumPy adds and copies, Python, allocation) is the "rest". Kernels
already run in parallel, so timing each call adds only a ``perf_counter`` pair per call.
The GEMM calls' arithmetic (2 M N K each, from the operands' shapes) is counted too:
``prof.gemm_gflops()`` is the rate the products ran at inside the step; attention's
products (QK^T and P V, and the backward's four) are counted apart, in
``prof.attention_flops``.
Chapter 10's "where the time goes" is printed from this.
"""
import time

from . import heads, layers, model, optim

GEMM = "GEMM (dense layers, MLM decoder)"  # the kind whose calls' arithmetic is counted
ATTENTION = "attention (QK^T, softmax, PV)"  # its products counted apart (attention_flops)

# kind -> the kernel names (as imported into layers/model/heads) that belong to it
KINDS = {
    GEMM: ("matmul_nt", "matmul_nn", "matmul_tn"),
    ATTENTION: ("attention_forward_qkv", "attention_backward_qkv",
                "attention_forward_rows_of", "attention_backward_rows_of"),
    "LayerNorm": ("layernorm_forward", "layernorm_backward"),
    "activation (gelu_new)": ("gelu_new_forward", "gelu_new_backward", "tanh_forward",
                              "tanh_backward"),
    "bias add / bias grad": ("bias_add", "bias_grad"),
    "dropout": ("dropout_forward", "dropout_backward"),
    "embeddings (lookup, scatter-add)": ("embedding_forward", "embedding_backward"),
    "cross-entropy": ("cross_entropy",),
    "optimizer": ("step",),
}
# a frozen pass's encoder in one compiled call (model.py: by sequence for a batch, layered
# for one sentence; kernels/encoder.py): its kernels are not timed one by one
ONE_CALL = "encoder in one call (a layer's kernels, all)"
KINDS[ONE_CALL] = ("encoder_by_sequence", "encoder_layered")


def gemm_flops(name, A, B):
    """2 M N K of one call of matmul_nt (A [M, K], B [N, K]: an array or a PackedWeight),
    matmul_nn (A [M, K], B [K, N]) or matmul_tn (A [K, M], B [K, N])."""
    K, M = A.shape if name == "matmul_tn" else A.shape[::-1]
    N = B.shape[0] if name == "matmul_nt" else B.shape[1]
    return 2 * M * N * K


def attention_flops(name, a):
    """2 M N K of the products inside one call of an attention kernel (its arguments a, as
    layers.py passes them): QK^T and P V forward, 2 L_q L D flops each a head, so 4 L_q L H
    a sequence of L keys and L_q queries; the backward's four (dP, dV, dQ, dK) 8 L_q L H.
    As the kernel makes them: each query against every key of its own sequence (L its
    real length with the padding removed, the padded length with it kept), and on a pass
    that reads a few rows (the *_rows_of kernels) only those rows' queries. (A frozen
    pass's encoder in one compiled call has its attention inside: not counted here.)"""
    import numpy as np

    from .kernels.attention import query_rows

    if name in ("attention_forward_qkv", "attention_backward_qkv"):
        qkv, lens = (a[0], a[2]) if name == "attention_forward_qkv" else (a[1], a[4])
        H, qlens = qkv.shape[1] // 3, lens
    else:  # *_rows_of: the queries of some rows against all of their sequence's keys
        fwd = name == "attention_forward_rows_of"
        q, rows, starts, lens = (a[0], a[1], a[3], a[4]) if fwd else (a[1], a[2], a[5], a[6])
        H, qlens = q.shape[1], query_rows(rows, starts, lens)[1]
    per_head_pair = int(np.dot(np.asarray(qlens, np.int64), np.asarray(lens, np.int64)))
    return (4 if name.startswith("attention_forward") else 8) * per_head_pair * H


def one_call_flops(x, apps, bqkv, b1):
    """2 M N K of the four products of every layer application in one call of
    kernels.encoder.encoder_by_sequence or encoder_layered (x [n, H], apps [L], bqkv [U,
    3H], b1 [U, I]: their arguments 0, 6, 10 and 16)."""
    n, H = x.shape
    I = b1.shape[1]
    return len(apps) * 2 * n * H * (bqkv.shape[1] + H + 2 * I)


class KernelProfile:
    def __init__(self):
        self.seconds = {k: 0.0 for k in KINDS}
        self.calls = {k: 0 for k in KINDS}
        self.gemm_flops = 0  # the arithmetic of every GEMM call timed (gemm_gflops)
        self.one_call_flops = 0  # the products' arithmetic inside those ONE_CALL timed
        self.attention_flops = 0  # QK^T, P V (and the backward's four) in the attention calls
        self._saved = []

    def _wrap(self, fn, kind, name=None):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[kind] += time.perf_counter() - t0
                self.calls[kind] += 1
                if kind == GEMM:
                    self.gemm_flops += gemm_flops(name, a[0], a[1])
                elif kind == ONE_CALL:
                    self.one_call_flops += one_call_flops(a[0], a[6], a[10], a[16])
                elif kind == ATTENTION:
                    self.attention_flops += attention_flops(name, a)
        return timed

    def gemm_gflops(self):
        """The GEMM calls' arithmetic over their time: GFLOP/s (0 when none ran)."""
        s = self.seconds[GEMM]
        return self.gemm_flops / s / 1e9 if s > 0 else 0.0

    def _patch(self, owner, name, kind):
        fn = getattr(owner, name, None)
        if fn is None or getattr(fn, "_profiled", False):
            return
        w = self._wrap(fn, kind, name)
        w._profiled = True
        self._saved.append((owner, name, fn))
        setattr(owner, name, w)

    def __enter__(self):
        from . import kernels
        from .kernels import act, attention

        by_name = {n: k for k, names in KINDS.items() for n in names}
        for mod in (layers, model, heads):
            for name, kind in by_name.items():
                if name != "step":
                    self._patch(mod, name, kind)
        for name in KINDS[ATTENTION]:
            self._patch(attention, name, by_name[name])
        # activations are looked up by name at call time: wrap the table's entries
        self._acts = dict(act.ACTIVATIONS)
        for key, (f, b) in self._acts.items():
            act.ACTIVATIONS[key] = (self._wrap(f, by_name["gelu_new_forward"]),
                                    self._wrap(b, by_name["gelu_new_backward"]))
        for cls in (optim.Lamb, optim.AdamW, optim.AdamWeightDecay):
            self._patch(cls, "step", "optimizer")
        del kernels
        return self

    def __exit__(self, *exc):
        from .kernels import act

        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        act.ACTIVATIONS.clear()
        act.ACTIVATIONS.update(self._acts)
        self._saved = []

    def rows(self, total):
        """[(kind, seconds, share of total)], largest first, then the rest."""
        out = sorted(((k, s, s / total) for k, s in self.seconds.items() if self.calls[k]),
                     key=lambda r: -r[1])
        rest = total - sum(s for _, s, _ in out)
        return out + [("rest (NumPy adds, copies, Python)", rest, rest / total)]

    def table(self, total, steps=1):
        lines = ["| where | ms per step | share |", "|---|---:|---:|"]
        for k, s, f in self.rows(total):
            lines.append(f"| {k} | {s * 1e3 / steps:.1f} | {f:.0%} |")
        lines.append(f"| **step** | **{total * 1e3 / steps:.1f}** | 100% |")
        return "\n".join(lines)
