"""The layers of ALBERT, each a forward and a backward on one screen.

Legend: B batch, T sequence, E embedding, H hidden, I intermediate, N heads, D head size,
n = B*T tokens (layers work on [n, C] matrices).

    forward(x, params, name, ...) -> (y, cache)
    backward(dy, cache, params, grads, name, ...) -> dx

``params`` and ``grads`` are flat dicts keyed by Hugging Face's names. Every backward
*adds* into ``grads`` (which the caller zeroed): a weight used by several layer
applications — ALBERT's cross-layer sharing — simply receives one contribution per use.
"""
from typing import NamedTuple

import numpy as np

from .kernels import (PackedWeight, activation, attention, bias_grad,
                      dropout_backward, dropout_forward, dropout_key, layernorm_backward,
                      layernorm_forward, matmul_nn, matmul_nt, matmul_tn)


class Dropout:
    """Dropout switches and keys for one forward pass: each call site draws the next key
    of (seed, step, site), so masks are reproducible from (seed, step) alone."""

    def __init__(self, train=False, seed=0, step=0):
        self.train, self.seed, self.step, self.site = train, seed, step, 0

    def p(self, p):
        return p if self.train else 0.0

    def key(self):
        self.site += 1
        return dropout_key(self.seed, self.step, self.site)


class Sequences:
    """How the rows of the [n, H] activations form the batch's sequences.

    padded: n = B*T, sequence b in rows b*T..(b+1)*T, padded keys masked by ``bias``
            ([B, T], 0 or finfo.min) — Hugging Face's layout;
    packed: the padding removed, n = number of real tokens, sequence b in rows
            starts[b]..starts[b]+lens[b] — no work on padding in any layer (attention
            costs sum_b L_b^2 instead of B T^2)."""

    def __init__(self, B, T, bias=None, starts=None, lens=None):
        self.B, self.T, self.bias, self.starts, self.lens = B, T, bias, starts, lens

    @property
    def packed(self):
        return self.starts is not None

    def attend(self, qkv, n_heads, p, key, keep_probs=True):
        # qkv: [n, 3H] -> ctx [n, H], probs ([B, heads, T, T] when padded, else flat; None
        # with keep_probs False)
        ctx, probs = attention.attention_forward_qkv(qkv, *self._rows(qkv.dtype), n_heads, p,
                                                     key, keep_probs)
        if probs is None or self.packed:
            return ctx, probs
        return ctx, probs.reshape(self.B, n_heads, self.T, self.T)

    def attend_backward(self, dctx, qkv, probs, n_heads, p, key):  # -> dqkv [n, 3H]
        starts, lens, bias, T = self._rows(qkv.dtype)
        return attention.attention_backward_qkv(dctx, qkv, probs.reshape(-1), starts, lens, T,
                                                n_heads, p, key)

    def attend_rows(self, q, rows, kv, n_heads, p, key, keep_probs=True):
        # the queries q [m, H] of rows ``rows`` only, against kv [n, 2H] = k | v of every
        # row -> ctx [m, H] (those rows of attend's), probs flat (or None)
        return attention.attention_forward_rows_of(q, rows, kv, *self._rows(q.dtype), n_heads,
                                                   p, key, keep_probs)

    def attend_rows_backward(self, dctx, q, rows, kv, probs, n_heads, p, key):
        starts, lens, bias, T = self._rows(q.dtype)  # -> dq [m, H], dkv [n, 2H]
        return attention.attention_backward_rows_of(dctx, q, rows, kv, probs, starts, lens, T,
                                                     n_heads, p, key)

    def _rows(self, dtype):  # -> starts, lens, mask bias, T: where each sequence's rows are
        if self.packed:
            zeros = np.zeros((len(self.lens), max(int(np.max(self.lens)), 1)), dtype=dtype)
            return self.starts, self.lens, zeros, self.T
        return (np.arange(self.B, dtype=np.int64) * self.T, np.full(self.B, self.T, np.int64),
                self.bias, self.T)


class Weights:
    """``params`` for one forward and backward pass of the encoder, read the way the layers
    read params (``weights[name]``), with every matrix a kernels.PackedWeight: packed into
    GEMM panels the first time a product needs it and reused by every later application of
    the shared layer (L per forward pass, L more in the backward). ``qkv(name)`` is the
    stacked query|key|value projection (qkv_params), also made once. Make a new one for
    every forward pass: the packs are copies, an optimizer step does not update them."""

    def __init__(self, params):
        self.params, self._packed, self._qkv = params, {}, {}

    def __getitem__(self, key):
        v = self.params[key]
        if v.ndim != 2:
            return v
        if key not in self._packed:
            self._packed[key] = PackedWeight(v)
        return self._packed[key]

    def __contains__(self, key):
        return key in self.params

    def qkv(self, name):
        if name not in self._qkv:
            W, b = qkv_params(self.params, name)
            self._qkv[name] = (PackedWeight(W), b)
        return self._qkv[name]

    def q_kv(self, name):  # the query's projection and the key|value one, each packed
        if (name, "q|kv") not in self._qkv:
            W, b = self.qkv(name)
            H = W.shape[1]
            self._qkv[name, "q|kv"] = (PackedWeight(W.W[:H]), b[:H], PackedWeight(W.W[H:]),
                                       b[H:])
        return self._qkv[name, "q|kv"]


# ------------------------------------------------------------------------------- dense

def dense_forward(x, params, name, residual=None):
    # x: [n, in], W: [out, in], b: [out] -> y = x @ W.T + b (+ residual [n, out]): [n, out];
    # the bias (and the residual) added by the GEMM's epilogue, as each block of y is done
    W, b = params[name + ".weight"], params[name + ".bias"]
    return matmul_nt(x, W, bias=b, residual=residual), x


def dense_norm_forward(x, params, name, residual, ln_name, eps):
    # LayerNorm(x @ W.T + b + residual) -> [n, out], for a pass no backward follows: the
    # GEMM's epilogue adds the bias and the residual and normalises each block of rows
    # while it is in cache (matmul_nt's layernorm), with no pass of its own and no array
    # for the sum; the same bits as dense_forward, then layernorm_fwd.
    W, b = params[name + ".weight"], params[name + ".bias"]
    return matmul_nt(x, W, bias=b, residual=residual,
                     layernorm=(params[ln_name + ".weight"], params[ln_name + ".bias"], eps))


def dense_act_forward(x, params, name, act, keep=True):
    # -> (h, g): h = x @ W.T + b [n, out] and g = act(h), the activation in a pass of its
    # own. The GEMM's epilogue can apply gelu_new too (matmul_nt(..., gelu_out=g), the
    # same bits), but on no machine it was measured on was that faster than the pass of
    # its own by more than the noise (tutorial 06's table; book chapter 06), so training
    # does not use it. keep False (a pass no backward follows): (None, g), gelu_new
    # applied by the epilogue in place, over the product while it is in cache: one
    # [n, out] array and no pass of its own (with attention's scratch block, a frozen pass
    # on tiny's batch 1.02-1.03x faster, same bits, on a 2-core EPYC, Zen 3:
    # benchmarks/ab_kernels.py ebc15ac --only pass).
    if not keep and act == "gelu_new":
        W = params[name + ".weight"]
        g = np.empty((x.shape[0], W.shape[0]), dtype=x.dtype)
        return None, matmul_nt(x, W, out=g, bias=params[name + ".bias"], gelu_out=g)
    h, _ = dense_forward(x, params, name)
    act_f, _ = activation(act)
    return h, act_f(h.reshape(-1)).reshape(h.shape)


def dense_backward(dy, x, params, grads, name):  # dy: [n, out] -> dx: [n, in]
    matmul_tn(dy, x, out=grads[name + ".weight"], accumulate=True)  # dW += dy.T @ x
    bias_grad(dy, grads[name + ".bias"])  # db += sum_n dy
    return matmul_nn(dy, params[name + ".weight"])  # dx = dy @ W


def dense_act_backward(dy, x, h, params, grads, name, act):
    # as dense_backward, then back through the activation that made x = act(h): -> dh
    # [n, in], in a pass of its own, as the forward does. (For gelu_new the GEMM's epilogue
    # can do it, matmul_nn(dy, W, gelu_grad_of=h), the same bits: on a 2-core Xeon that was
    # as fast as this, on a 2-core EPYC, Zen 3, 6-40 % slower: book chapter 06.)
    _, act_b = activation(act)
    dx = dense_backward(dy, x, params, grads, name)
    return act_b(dx.reshape(-1), h.reshape(-1)).reshape(h.shape)


# ------------------------------------------------------------------------------- layernorm

class LayerNormCache(NamedTuple):
    x: np.ndarray  # [n, C] the input
    mean: np.ndarray  # [n] per row
    rstd: np.ndarray  # [n] 1 / sqrt(var + eps) per row


def layernorm_fwd(x, params, name, eps):  # x: [n, C] -> y: [n, C]
    y, mean, rstd = layernorm_forward(x, params[name + ".weight"], params[name + ".bias"], eps)
    return y, LayerNormCache(x, mean, rstd)


def layernorm_bwd(dy, cache, params, grads, name):  # dy: [n, C] -> dx: [n, C]
    x, mean, rstd = cache
    return layernorm_backward(dy, x, mean, rstd, params[name + ".weight"],
                              grads[name + ".weight"], grads[name + ".bias"])


# ------------------------------------------------------------------------------- attention

QKV = ("query", "key", "value")


def qkv_params(params, name):
    # The query, key and value projections as one: W [3H, H] (the three weights stacked),
    # b [3H], so that one GEMM makes q | k | v side by side and one takes their gradients
    # back (instead of three of each, and two adds). A copy of the three weights: the
    # encoder makes it once per forward and every application of the shared layer uses it.
    return (np.concatenate([params[name + p + ".weight"] for p in QKV]),
            np.concatenate([params[name + p + ".bias"] for p in QKV]))


def q_kv_params(params, name):
    # the query's projection, and the key and value projections stacked: (W_q [H, H], b_q,
    # W_k|v [2H, H], b_k|v) — for a block that makes queries at some rows only
    W, b = qkv_params(params, name)
    H = W.shape[1]
    return W[:H], b[:H], W[H:], b[H:]


class AttentionCache(NamedTuple):
    x: np.ndarray  # [n, H] the block's input (the residual)
    qkv: object  # [n, 3H] q | k | v; with rows: (q [len(rows), H], k | v [n, 2H])
    W: object  # [3H, H] the stacked projection (a PackedWeight inside the encoder); with
    # rows: (W_q [H, H], W_k|v [2H, H])
    ctx: np.ndarray  # [n, H] the heads' outputs side by side
    probs: np.ndarray  # the attention probabilities ([B, N, T, T] padded, flat when packed)
    p_attn: float  # dropout rate on the probabilities
    key_attn: np.uint64  # ... and its key
    keep: np.ndarray  # the output dropout's mask
    p_out: float  # ... and its rate
    ln: LayerNormCache
    seqs: Sequences
    rows: np.ndarray  # the rows the block's output was made for (None: every row)


def attention_block_forward(x, params, name, seqs, cfg, drop, rows=None, keep=True):
    # x: [n, H] -> LayerNorm(x + dropout(dense(MultiHead(x)))): [n, H]   (HF AlbertAttention)
    # seqs: Sequences (which rows form which sequence); params: a dict, or Weights (the
    # encoder's: its stacked q|k|v is made once per forward pass).
    # rows: None, or the (sorted) rows of the output that will be read: the last layer of a
    # model whose head reads a few rows (the masked positions and [CLS]). The keys and
    # values still come from every row; the queries, and everything after attention, only
    # from these rows: the block returns y: [len(rows), H].
    # keep False: no backward follows and no attention map is asked for (the cache's probs
    # is None: attention keeps each head's probabilities in a scratch block only; without
    # dropout, the output's LayerNorm runs in its GEMM's epilogue: the cache's ln is None).
    p_attn = drop.p(cfg.attention_probs_dropout_prob)
    key_attn = drop.key() if p_attn > 0 else np.uint64(0)
    if rows is None:
        W, b = params.qkv(name) if isinstance(params, Weights) else qkv_params(params, name)
        qkv = matmul_nt(x, W, bias=b)  # [n, 3H] = q | k | v
        ctx, probs = seqs.attend(qkv, cfg.num_attention_heads, p_attn, key_attn, keep)
        res = x
    else:
        Wq, bq, Wkv, bkv = (params.q_kv(name) if isinstance(params, Weights) else
                            q_kv_params(params, name))
        res = x[rows]
        qkv = (matmul_nt(res, Wq, bias=bq), matmul_nt(x, Wkv, bias=bkv))  # q | k, v
        W = (Wq, Wkv)
        ctx, probs = seqs.attend_rows(qkv[0], rows, qkv[1], cfg.num_attention_heads, p_attn,
                                      key_attn, keep)
    p_out = drop.p(cfg.hidden_dropout_prob)
    if not keep and p_out == 0:  # no backward: LayerNorm in the GEMM's epilogue too
        y = dense_norm_forward(ctx, params, name + "dense", res, name + "LayerNorm",
                               cfg.layer_norm_eps)
        return y, AttentionCache(x, qkv, W, ctx, probs, p_attn, key_attn, None, p_out, None,
                                 seqs, rows)
    if p_out > 0:
        o, _ = dense_forward(ctx, params, name + "dense")
        o, keep = dropout_forward(o, p_out, drop.key(), rows, x.shape[0])
        o += res  # residual
    else:  # no dropout between: the residual is added in the GEMM's epilogue
        o, _ = dense_forward(ctx, params, name + "dense", residual=res)
        keep = None
    y, ln = layernorm_fwd(o, params, name + "LayerNorm", cfg.layer_norm_eps)
    return y, AttentionCache(x, qkv, W, ctx, probs, p_attn, key_attn, keep, p_out, ln, seqs,
                             rows)


def attention_block_backward(dy, cache, params, grads, name, cfg):  # dy: [n, H] -> dx: [n, H]
    # (dy: [len(rows), H] when the forward ran on some rows; dx is always [n, H])
    x, qkv, W, ctx, probs, p_attn, key_attn, keep, p_out, ln, seqs, rows = cache
    d = layernorm_bwd(dy, ln, params, grads, name + "LayerNorm")
    do = dropout_backward(d, keep, p_out)
    dctx = dense_backward(do, ctx, params, grads, name + "dense")
    if rows is not None:
        return _attention_rows_backward(d, dctx, cache, grads, name, cfg)
    dx = d.copy()  # the residual branch
    dqkv = seqs.attend_backward(dctx, qkv, probs, cfg.num_attention_heads, p_attn, key_attn)
    H = x.shape[1]
    dW = matmul_tn(dqkv, x)  # [3H, H]: the three weight gradients stacked
    db = np.zeros(3 * H, dtype=x.dtype)
    bias_grad(dqkv, db)
    for i, p in enumerate(QKV):  # += : a shared layer sums over its applications
        grads[name + p + ".weight"] += dW[i * H:(i + 1) * H]
        grads[name + p + ".bias"] += db[i * H:(i + 1) * H]
    matmul_nn(dqkv, W, out=dx, accumulate=True)  # dx += dq Wq + dk Wk + dv Wv
    return dx


def _attention_rows_backward(d, dctx, cache, grads, name, cfg):
    # the block's backward from the attention's output on, when the forward made some rows
    # only: d [m, H] (the residual's gradient at those rows), dctx [m, H] -> dx [n, H]
    x, (q, kv), (Wq, Wkv), _, probs, p_attn, key_attn, _, _, _, seqs, rows = cache
    dq, dkv = seqs.attend_rows_backward(dctx, q, rows, kv, probs, cfg.num_attention_heads,
                                        p_attn, key_attn)
    H = x.shape[1]
    xr = x[rows]
    dWq, dWkv = matmul_tn(dq, xr), matmul_tn(dkv, x)  # [H, H], [2H, H]
    dbq, dbkv = np.zeros(H, dtype=x.dtype), np.zeros(2 * H, dtype=x.dtype)
    bias_grad(dq, dbq)
    bias_grad(dkv, dbkv)
    for i, p in enumerate(QKV):  # += : a shared layer sums over its applications
        dW, db = (dWq, dbq) if i == 0 else (dWkv[(i - 1) * H:i * H], dbkv[(i - 1) * H:i * H])
        grads[name + p + ".weight"] += dW
        grads[name + p + ".bias"] += db
    dx = matmul_nn(dkv, Wkv)  # dk Wk + dv Wv, every row
    matmul_nn(dq, Wq, out=d, accumulate=True)  # the read rows: their residual and dq Wq
    dx[rows] += d
    return dx


# ------------------------------------------------------------------------------- FFN

class FFNCache(NamedTuple):
    a: np.ndarray  # [n, H] the block's input (the residual)
    h: np.ndarray  # [n, I] before the activation
    g: np.ndarray  # [n, I] after it
    ln: LayerNormCache


def ffn_block_forward(a, params, name, cfg, keep=True):
    # a: [n, H] -> LayerNorm(a + ffn_output(act(ffn(a)))): [n, H]
    # (HF defines a dropout in AlbertLayer but never applies it; neither do we.)
    # keep False: no backward follows (the cache's h may be None: dense_act_forward; its ln
    # is None: the LayerNorm runs in the output GEMM's epilogue, dense_norm_forward)
    h, g = dense_act_forward(a, params, name + "ffn", cfg.hidden_act, keep)  # [n, I] each
    if not keep:  # no backward: the LayerNorm in the GEMM's epilogue too
        y = dense_norm_forward(g, params, name + "ffn_output", a, name + "full_layer_layer_norm",
                               cfg.layer_norm_eps)
        return y, FFNCache(a, h, g, None)
    f, _ = dense_forward(g, params, name + "ffn_output", residual=a)  # [n, H], + a residual
    y, ln = layernorm_fwd(f, params, name + "full_layer_layer_norm", cfg.layer_norm_eps)
    return y, FFNCache(a, h, g, ln)


def ffn_block_backward(dy, cache, params, grads, name, cfg):  # dy: [n, H] -> da: [n, H]
    a, h, g, ln = cache
    d = layernorm_bwd(dy, ln, params, grads, name + "full_layer_layer_norm")
    dh = dense_act_backward(d, g, h, params, grads, name + "ffn_output", cfg.hidden_act)
    da = dense_backward(dh, a, params, grads, name + "ffn")
    da += d  # the residual branch
    return da
