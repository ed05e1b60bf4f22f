"""The layers of ALBERT, each a forward and a backward on one screen.

Legend: B batch, T sequence, E embedding, H hidden, I intermediate, N heads, D head size,
n = B*T tokens (layers work on [n, C] matrices).

    forward(x, params, name, ...) -> (y, cache)
    backward(dy, cache, params, grads, name, ...) -> dx

``params`` and ``grads`` are flat dicts keyed by Hugging Face's names. Every backward
*adds* into ``grads`` (which the caller zeroed): a weight used by several layer
applications — ALBERT's cross-layer sharing — simply receives one contribution per use.
"""
import numpy as np

from .kernels import (activation, attention, bias_add, bias_grad, dropout_backward,
                      dropout_forward, dropout_key, layernorm_backward, layernorm_forward,
                      matmul_nn, matmul_nt, matmul_tn)


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

    def attend(self, q, k, v, n_heads, p, key):  # q, k, v: [n, H] -> ctx [n, H], probs
        if self.packed:
            return attention.attention_forward_varlen(q, k, v, self.starts, self.lens, self.T,
                                                      n_heads, p, key)
        B, T, H = self.B, self.T, q.shape[1]
        ctx, probs = attention.attention_forward(q.reshape(B, T, H), k.reshape(B, T, H),
                                                 v.reshape(B, T, H), self.bias, n_heads, p, key)
        return ctx.reshape(B * T, H), probs

    def attend_backward(self, dctx, q, k, v, probs, n_heads, p, key):  # -> dq, dk, dv [n, H]
        if self.packed:
            return attention.attention_backward_varlen(dctx, q, k, v, probs, self.starts,
                                                       self.lens, self.T, n_heads, p, key)
        B, T, H = self.B, self.T, q.shape[1]
        d = attention.attention_backward(dctx.reshape(B, T, H), q.reshape(B, T, H),
                                         k.reshape(B, T, H), v.reshape(B, T, H), probs,
                                         n_heads, p, key)
        return [x.reshape(B * T, H) for x in d]


# ------------------------------------------------------------------------------- dense

def dense_forward(x, params, name):  # x: [n, in], W: [out, in], b: [out] -> y: [n, out]
    y = matmul_nt(x, params[name + ".weight"])  # y = x @ W.T
    bias_add(y, params[name + ".bias"])  # y += b
    return y, x


def dense_backward(dy, x, params, grads, name):  # dy: [n, out] -> dx: [n, in]
    matmul_tn(dy, x, out=grads[name + ".weight"], accumulate=True)  # dW += dy.T @ x
    bias_grad(dy, grads[name + ".bias"])  # db += sum_n dy
    return matmul_nn(dy, params[name + ".weight"])  # dx = dy @ W


# ------------------------------------------------------------------------------- layernorm

def layernorm_fwd(x, params, name, eps):  # x: [n, C] -> y: [n, C]
    y, mean, rstd = layernorm_forward(x, params[name + ".weight"], params[name + ".bias"], eps)
    return y, (x, mean, rstd)


def layernorm_bwd(dy, cache, params, grads, name):  # dy: [n, C] -> dx: [n, C]
    x, mean, rstd = cache
    return layernorm_backward(dy, x, mean, rstd, params[name + ".weight"],
                              grads[name + ".weight"], grads[name + ".bias"])


# ------------------------------------------------------------------------------- attention

def attention_block_forward(x, params, name, seqs, cfg, drop):
    # x: [n, H] -> LayerNorm(x + dropout(dense(MultiHead(x)))): [n, H]   (HF AlbertAttention)
    # seqs: Sequences (which rows form which sequence)
    q, _ = dense_forward(x, params, name + "query")
    k, _ = dense_forward(x, params, name + "key")
    v, _ = dense_forward(x, params, name + "value")
    p_attn = drop.p(cfg.attention_probs_dropout_prob)
    key_attn = drop.key() if p_attn > 0 else np.uint64(0)
    ctx, probs = seqs.attend(q, k, v, cfg.num_attention_heads, p_attn, key_attn)
    o, _ = dense_forward(ctx, params, name + "dense")
    p_out = drop.p(cfg.hidden_dropout_prob)
    o, keep = dropout_forward(o, p_out, drop.key() if p_out > 0 else 0)
    o += x  # residual
    y, ln = layernorm_fwd(o, params, name + "LayerNorm", cfg.layer_norm_eps)
    return y, (x, q, k, v, ctx, probs, p_attn, key_attn, keep, p_out, ln, seqs)


def attention_block_backward(dy, cache, params, grads, name, cfg):  # dy: [n, H] -> dx: [n, H]
    x, q, k, v, ctx, probs, p_attn, key_attn, keep, p_out, ln, seqs = cache
    d = layernorm_bwd(dy, ln, params, grads, name + "LayerNorm")
    dx = d.copy()  # the residual branch
    do = dropout_backward(d, keep, p_out)
    dctx = dense_backward(do, ctx, params, grads, name + "dense")
    dq, dk, dv = seqs.attend_backward(dctx, q, k, v, probs, cfg.num_attention_heads, p_attn,
                                      key_attn)
    dx += dense_backward(dq, x, params, grads, name + "query")
    dx += dense_backward(dk, x, params, grads, name + "key")
    dx += dense_backward(dv, x, params, grads, name + "value")
    return dx


# ------------------------------------------------------------------------------- FFN

def ffn_block_forward(a, params, name, cfg):
    # a: [n, H] -> LayerNorm(a + ffn_output(act(ffn(a)))): [n, H]
    # (HF defines a dropout in AlbertLayer but never applies it; neither do we.)
    act_f, _ = activation(cfg.hidden_act)
    h, _ = dense_forward(a, params, name + "ffn")  # [n, I]
    g = act_f(h.reshape(-1)).reshape(h.shape)
    f, _ = dense_forward(g, params, name + "ffn_output")  # [n, H]
    f += a  # residual
    y, ln = layernorm_fwd(f, params, name + "full_layer_layer_norm", cfg.layer_norm_eps)
    return y, (a, h, g, ln)


def ffn_block_backward(dy, cache, params, grads, name, cfg):  # dy: [n, H] -> da: [n, H]
    a, h, g, ln = cache
    _, act_b = activation(cfg.hidden_act)
    d = layernorm_bwd(dy, ln, params, grads, name + "full_layer_layer_norm")
    dg = dense_backward(d, g, params, grads, name + "ffn_output")
    dh = act_b(dg.reshape(-1), h.reshape(-1)).reshape(h.shape)
    da = dense_backward(dh, a, params, grads, name + "ffn")
    da += d  # the residual branch
    return da
