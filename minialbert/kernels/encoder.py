"""The encoder's layers in one compiled call (inference): a batch one sequence at a time on
each thread (encoder_by_sequence), or layer by layer on all threads (encoder_layered).

A pass no backward follows (a frozen model's), without dropout, attention maps or hidden
states, usually runs layer by layer: each kernel (q|k|v, attention, the output projection,
the FFN, its output) over every row of the batch, both threads sharing each product. On a
batch of tiny's sizes (32 sequences x 128 tokens, H 256) every layer's activations (q|k|v
12 MB, the FFN's 16 MB) go out to L3 and memory and come back for the next kernel.

Here each thread takes whole sequences instead, and runs every layer application of one
sequence before the next sequence: its activations (q|k|v 384 KB, the FFN's 512 KB for 128
tokens) stay in the core's own L2 from one kernel to the next, and the shared layer's
packed weights (3 MB for tiny) are read from L3 by both threads. Per sequence and layer:

    qkv = h Wqkv^T + b                              (_gemm_serial on the packed weights)
    ctx = attention(qkv), head by head              (attention._scores_softmax, then PV)
    a   = LayerNorm(ctx Wo^T + bo + h)              (the GEMM's epilogue)
    g   = gelu_new(a W1^T + b1)                     (in place, in the epilogue)
    h   = LayerNorm(g W2^T + b2 + a)                (the epilogue)

The same kernels on the same values, each sum in the same order: the bits of the layered
pass (tests/test_encoder.py checks them bitwise). The sequences are dealt to the threads so
that each has about the same work (model.py: by_sequence_groups); a batch that cannot be
dealt out evenly (3 sequences on 2 threads), and one sentence, run layer by layer.

encoder_layered is that layered pass: model.encoder_forward's loop over the layer
applications, frozen (no dropout, no attention maps, no hidden states), compiled as one
function. It makes the same calls the loop makes through matmul_nt and attention_forward_qkv
— each product through _gemm_fused (or _gemm_serial) with the blocking gemm works out for
its shape (matmul._plan), attention through _attention_forward — so every kernel still
runs on all threads and gives the same bits; what it leaves out is the Python between
them: the argument checks, the plan lookups, the arrays' allocation (on tiny, 2 threads, a
Zen 4 EPYC: about a twentieth of a sentence of 128 tokens, an eighth of one of 32; book
chapter 06 has the table from tutorials/06_layer.py)."""
import math

import numpy as np
from numba import njit, prange

from ._base import FASTMATH, aligned_empty, cast_like
from .attention import _attention_forward, _scores_softmax
from .matmul import (EPI_GELU_IN_PLACE, EPI_NONE, I0, I1, NO, YES, _gemm_block, _gemm_fused,
                     _gemm_serial)
from .norm import layernorm_forward

QKV, OUT, FFN, FFN_OUT = 0, 1, 2, 3  # the rows of ``tiles``: the four products of a layer


@njit(fastmath=FASTMATH, cache=True)
def _attend(qkv, ctx, bias, n_heads, isa, MR, NR, KC, P_f, Ap, Bp):
    # one sequence's attention, every head on this thread: qkv [L, 3H] -> ctx [L, H]
    L, H = ctx.shape
    D = H // n_heads
    scale = cast_like(qkv, 1.0 / math.sqrt(D))
    q_f = qkv.reshape(qkv.size)
    ctx_f = ctx.reshape(ctx.size)
    for h in range(n_heads):
        c0 = h * D
        _scores_softmax(q_f, c0, 3 * H, L, qkv[:, H + c0:H + c0 + D], P_f, bias, scale, isa,
                        MR, NR, KC, Ap, Bp)
        _gemm_block(P_f, I0, L, I1, L, qkv[:, 2 * H + c0:2 * H + c0 + D], NO, I0, D, L, ctx_f,
                    c0, H, NO, isa, MR, NR, KC, Ap, Bp)  # O = P V -> ctx[:, c0:c0+D]


@njit(cache=True)
def _dense(x, C, u, panels, bias, tiles, which, KC, act, residual, gamma, beta, eps, Ap):
    # C [L, N] = x [L, K] @ W^T + bias[u] (+ residual, gelu_new, LayerNorm by gamma[u]): one
    # task (all L rows and N columns) on this thread, weight u of ``panels`` already packed
    isa, MR, NR = tiles[which, 0], tiles[which, 1], tiles[which, 2]
    L, N = C.shape
    none = np.empty(0, dtype=C.dtype)
    g = gamma[u] if gamma.shape[0] > 0 else none
    b = beta[u] if beta.shape[0] > 0 else none
    _gemm_serial(x, False, x, True, C, False, isa, MR, NR, KC, (L + MR - 1) // MR * MR, N, Ap,
                 panels[u], False, False, bias[u], act, none,
                 residual.reshape(residual.size) if residual.shape[0] > 0 else none, g, b,
                 eps, False)


@njit(parallel=True, cache=True)
def encoder_by_sequence(x, groups, order, starts, lens, mask_bias, apps, n_heads, eps,
                        Wqkv, bqkv, Wo, bo, g1, be1, W1, b1, W2, b2, g2, be2, tiles, KC,
                        att_tile):
    # x: [n, H], sequence b in rows starts[b]..starts[b]+lens[b], its keys' mask bias
    # mask_bias[b, :lens[b]] (0 or finfo.min); thread task t runs the sequences
    # order[groups[t]:groups[t+1]], each through every layer application l, with weights
    # u = apps[l]: Wqkv[u] (the q|k|v projection's packed panels), Wo[u], W1[u], W2[u], and
    # their biases and LayerNorms' gamma, beta [U, *]. tiles [4, 3]: each product's (kernel
    # code, MR, NR) (QKV, OUT, FFN, FFN_OUT); att_tile: attention's. -> [n, H]
    n, H = x.shape
    I = b1.shape[1]
    out = np.empty_like(x)
    empty = np.empty((0, H), dtype=x.dtype)  # no residual, no LayerNorm
    for t in prange(groups.shape[0] - 1):
        Lmax = 1
        for k in range(groups[t], groups[t + 1]):
            Lmax = max(Lmax, lens[order[k]])
        # scratch for the longest sequence of the group, reused by each (views of its rows)
        h_buf = np.empty(Lmax * H, dtype=x.dtype)
        qkv_buf = np.empty(Lmax * 3 * H, dtype=x.dtype)
        ctx_buf = np.empty(Lmax * H, dtype=x.dtype)
        a_buf = np.empty(Lmax * H, dtype=x.dtype)
        g_buf = np.empty(Lmax * I, dtype=x.dtype)
        rows = 0  # the packed block of A of the largest product (matmul.fused_a_size)
        for p in range(4):
            rows = max(rows, (Lmax + tiles[p, 1] - 1) // tiles[p, 1] * tiles[p, 1])
        Ap = np.empty(rows * min(KC, max(H, I)), dtype=x.dtype)
        a_isa, a_MR, a_NR = att_tile[0], att_tile[1], att_tile[2]
        D = H // n_heads
        P_f = np.empty(Lmax * Lmax, dtype=x.dtype)
        aAp = np.empty(((Lmax + a_MR - 1) // a_MR * a_MR) * min(KC, max(Lmax, D)),
                       dtype=x.dtype)
        aBp = aligned_empty(((max(Lmax, D) + a_NR - 1) // a_NR * a_NR) * min(KC, max(Lmax, D)),
                            x.dtype)  # B's panels on a cache line
        for k in range(groups[t], groups[t + 1]):
            b = order[k]
            s0, L = starts[b], lens[b]
            h = h_buf[:L * H].reshape(L, H)
            qkv = qkv_buf[:L * 3 * H].reshape(L, 3 * H)
            ctx = ctx_buf[:L * H].reshape(L, H)
            a = a_buf[:L * H].reshape(L, H)
            g = g_buf[:L * I].reshape(L, I)
            h[:] = x[s0:s0 + L]
            for l in range(apps.shape[0]):
                u = apps[l]
                _dense(h, qkv, u, Wqkv, bqkv, tiles, QKV, KC, EPI_NONE, empty, empty, empty,
                       eps, Ap)
                _attend(qkv, ctx, mask_bias[b, :L], n_heads, a_isa, a_MR, a_NR, KC, P_f, aAp,
                        aBp)
                _dense(ctx, a, u, Wo, bo, tiles, OUT, KC, EPI_NONE, h, g1, be1, eps, Ap)
                _dense(a, g, u, W1, b1, tiles, FFN, KC, EPI_GELU_IN_PLACE, empty, empty, empty,
                       eps, Ap)
                _dense(g, h, u, W2, b2, tiles, FFN_OUT, KC, EPI_NONE, a, g2, be2, eps, Ap)
            out[s0:s0 + L] = h
    return out


# the columns of encoder_layered's ``plans``: a product's blocking, as matmul._plan gives it
PARALLEL, CODE, MR_, NR_, KC_, MC_, NC_, COPY_A = range(8)
# the epilogue's activation as an int64, as gemm passes it from Python (a Python int
# constant would be a literal to Numba: a compile of the whole GEMM chain of its own)
_ACT_NONE, _ACT_GELU = np.int64(EPI_NONE), np.int64(EPI_GELU_IN_PLACE)


@njit(cache=True)
def _product(x, C, panels, bias, plan, act, residual, gamma, beta, eps, Ap):
    # C [n, N] = x [n, K] @ W^T + bias (+ residual [n, N]; gelu_new in place with act
    # EPI_GELU_IN_PLACE; then LayerNorm by gamma, beta when they are not empty), W's packed
    # panels given: what matmul_nt(x, W, bias=, residual=, gelu_out=C, layernorm=) runs.
    n, N = C.shape
    none = np.empty(0, dtype=C.dtype)
    R = residual.reshape(residual.size) if residual.shape[0] > 0 else none
    ln = gamma.shape[0] > 0 and plan[NC_] >= N  # whole rows a task: in its epilogue
    g, b = (gamma, beta) if ln else (none, none)
    code, MR, NR, KC, MC, NC = plan[CODE], plan[MR_], plan[NR_], plan[KC_], plan[MC_], plan[NC_]
    copy_a = plan[COPY_A] != 0
    if plan[PARALLEL]:
        _gemm_fused(x, NO, x, YES, C, NO, code, MR, NR, KC, MC, NC, Ap, panels, NO, copy_a,
                    bias, act, none, R, g, b, eps, NO)
    else:
        _gemm_serial(x, NO, x, YES, C, NO, code, MR, NR, KC, MC, NC, Ap, panels, NO, copy_a,
                     bias, act, none, R, g, b, eps, NO)
    if gamma.shape[0] > 0 and not ln:  # (gemm's rule: after the product)
        C[:] = layernorm_forward(C, gamma, beta, eps)[0]


@njit(cache=True)
def encoder_layered(x, T, plans, starts, lens, mask_bias, apps, n_heads, eps,
                    Wqkv, bqkv, Wo, bo, g1, be1, W1, b1, W2, b2, g2, be2, att_tile, Ap):
    # x: [n, H], sequence b in rows starts[b]..starts[b]+lens[b], its keys' mask bias
    # mask_bias[b] (T: the padded length); layer application l with weights u = apps[l]
    # (as encoder_by_sequence). plans [4, 8]: each product's blocking (QKV, OUT, FFN,
    # FFN_OUT; columns PARALLEL...COPY_A), its panels in Wqkv[u]... laid out for it;
    # att_tile: attention's (code, MR, NR, KC); Ap: packing scratch for the largest
    # product. -> [n, H], every layer's kernels on all threads.
    n, H = x.shape
    I = b1.shape[1]
    empty = np.empty((0, H), dtype=x.dtype)  # no residual
    none = np.empty(0, dtype=x.dtype)  # no LayerNorm
    no_pos = np.zeros(0, dtype=np.int64)
    h = x
    for l in range(apps.shape[0]):
        u = apps[l]
        qkv = np.empty((n, 3 * H), dtype=x.dtype)  # q | k | v
        _product(h, qkv, Wqkv[u], bqkv[u], plans[QKV], _ACT_NONE, empty, none, none, eps,
                 Ap)
        ctx, _ = _attention_forward(qkv, starts, lens, no_pos, qkv, H, 2 * H, starts, lens,
                                    mask_bias, T, H, n_heads, 0.0, np.uint64(0), att_tile[0],
                                    att_tile[1], att_tile[2], att_tile[3], False)
        a = np.empty((n, H), dtype=x.dtype)  # LayerNorm(ctx Wo^T + bo + h)
        _product(ctx, a, Wo[u], bo[u], plans[OUT], _ACT_NONE, h, g1[u], be1[u], eps, Ap)
        g = np.empty((n, I), dtype=x.dtype)  # gelu_new(a W1^T + b1)
        _product(a, g, W1[u], b1[u], plans[FFN], _ACT_GELU, empty, none, none,
                 eps, Ap)
        h = np.empty((n, H), dtype=x.dtype)  # LayerNorm(g W2^T + b2 + a)
        _product(g, h, W2[u], b2[u], plans[FFN_OUT], _ACT_NONE, a, g2[u], be2[u], eps, Ap)
    return h


def warm(dtype):
    """Compile (or load) encoder_by_sequence and encoder_layered for ``dtype`` with the
    argument types the model passes (kernels.warmup): two sequences of 3 tokens, H 4, 2
    heads, one layer."""
    from .attention import _tiles
    from .matmul import ISA, _gemm_fused, _plan, blocking
    from . import get_threads
    H, I, L, f = 4, 6, 3, np.dtype(dtype)
    rng = np.random.default_rng(0)
    shapes = ((3 * H, H), (H, H), (I, H), (H, I))  # QKV, OUT, FFN, FFN_OUT
    blk = [blocking(f, L, N, b_packed=True, b_trans=True, K=K) for N, K in shapes]
    tiles = np.array([[b["code"], b["MR"], b["NR"]] for b in blk], dtype=np.int64)
    att = blocking(f, L, H // 2)

    def w(N, K, b):  # a weight's packed panels, [1, *], as the model stacks them
        return np.zeros((1, -(-N // b["NR"]) * b["NR"] * K), dtype=f)

    def v(N):
        return rng.standard_normal((1, N)).astype(f)

    def weights(blk):  # Wqkv, bqkv, Wo, bo, g1, be1, W1, b1, W2, b2, g2, be2
        return (w(3 * H, H, blk[0]), v(3 * H), w(H, H, blk[1]), v(H), v(H), v(H),
                w(I, H, blk[2]), v(I), w(H, I, blk[3]), v(H), v(H), v(H))
    i64 = np.int64
    x = rng.standard_normal((2 * L, H)).astype(f)
    starts, lens, bias = np.array([0, L], i64), np.array([L, L], i64), np.zeros((2, L), f)
    encoder_by_sequence(x, np.array([0, 1, 2], i64), np.array([0, 1], i64), starts, lens,
                        bias, np.zeros(1, i64), 2, 1e-12, *weights(blk), tiles, blk[0]["KC"],
                        np.array([att["code"], att["MR"], att["NR"]], i64))
    plans = [_plan(f, 2 * L, N, K, ISA, get_threads(), None, True, False, True)
             for N, K in shapes]  # as model._layered
    rows = np.array([(p[0] is _gemm_fused,) + p[1:7] + (p[11],) for p in plans], i64)
    return encoder_layered(x, L, rows, starts, lens, bias, np.zeros(1, i64), 2, 1e-12,
                           *weights([p[12] for p in plans]),
                           np.array(_tiles(f, L, H // 2), i64),
                           np.empty(max(p[7] for p in plans), f))
