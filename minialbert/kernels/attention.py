"""Multi-head self-attention, forward and backward, mask aware.

Legend: B batch, T sequence, H hidden, N heads, D = H/N head size.
q, k, v come from the Q/K/V dense layers as [B, T, H]; head h is columns h*D..(h+1)*D.

forward, for each (b, h) — one thread task, parallel over B*N:
    S = Q K^T * scale + mask_bias      [T, T]   (mask_bias[b, j] = 0 or finfo.min)
    P = softmax(S)                     [T, T]   (kept for backward, and returned as the
                                                 attention map, as Hugging Face does)
    Pd = dropout(P)                    keep mask = hash(key, flat index): recomputed in
                                       backward, never stored
    O = Pd V                           [T, D]   -> ctx[b, :, h*D:(h+1)*D]
backward, for each (b, h):
    dPd = dO V^T;  dV = Pd^T dO;  dP = dPd * keep/(1-p)
    dS = P * (dP - rowsum(dP * P));  dQ = dS K * scale;  dK = dS^T Q * scale
Every write lands in the (b, h) slice its task owns: no races, and results that do not
depend on the number of threads.

Three versions, the same arithmetic:
  * ``attention_forward_naive`` / ``attention_backward_naive``: plain Python over (b, h),
    each step one call of another kernel — matmul_nt / matmul_nn / matmul_tn for the
    products, softmax_forward / softmax_backward, dropout_mask — the formulas above line
    by line (the one to step through first; slow);
  * ``attention_forward_rows`` / ``attention_backward_rows``: one query row at a time, every
    product a plain loop (the readable reference: read these first);
  * ``attention_forward`` / ``attention_backward`` (what the model calls): each of the
    products above (QK^T, PV; dO V^T, Pd^T dO, dS K, dS^T Q) is one ``_gemm_block`` call on
    the head's [T, D] slices: packed panels and the register micro-kernel of matmul.py, one
    thread per (b, h). Softmax and dropout run on the [T, T] block in between.
"""
import math

import numpy as np
from numba import njit, prange

from ._base import FASTMATH, cast_like, exp_shifted, scratch32
from .dropout import _hash_uniform
from .reduce import vdot, vmax, vsum
from .dropout import dropout_mask
from .matmul import (I0, I1, NO, YES, _gemm_block, blocking, matmul_nn, matmul_nt, matmul_tn,
                     packing_buffers)
from .softmax import softmax_backward, softmax_forward


def _keep(B, n_heads, T, p_drop, key, dtype):
    # the dropout of the probabilities as a [B, N, T, T] array of 0 and 1/(1-p): the
    # fused kernels hash the same flat index ((b*N + h)*T + i)*T + j with the same key
    if p_drop <= 0.0:
        return None
    keep = dropout_mask(B * n_heads * T * T, p_drop, key).reshape(B, n_heads, T, T)
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p_drop))


def attention_forward_naive(q, k, v, mask_bias, n_heads, p_drop, key):
    # q, k, v: [B,T,H]; mask_bias: [B,T] -> ctx: [B,T,H], probs: [B,N,T,T]
    B, T, H = q.shape
    D = H // n_heads
    scale = q.dtype.type(1.0 / math.sqrt(D))
    keep = _keep(B, n_heads, T, p_drop, key, q.dtype)
    ctx = np.zeros_like(q)
    probs = np.empty((B, n_heads, T, T), dtype=q.dtype)
    for b in range(B):
        for h in range(n_heads):
            cols = slice(h * D, (h + 1) * D)
            Q, K, V = (np.ascontiguousarray(x[b, :, cols]) for x in (q, k, v))  # [T, D]
            S = matmul_nt(Q, K) * scale  # [T, T] = Q K^T / sqrt(D)
            P = softmax_forward(S, mask_bias[b][None])  # + mask bias on every row
            probs[b, h] = P
            Pd = P if keep is None else P * keep[b, h]  # dropout
            ctx[b, :, cols] = matmul_nn(Pd, V)  # O = Pd V
    return ctx, probs


def attention_backward_naive(dctx, q, k, v, probs, n_heads, p_drop, key):
    # dctx: [B,T,H]; q, k, v: [B,T,H]; probs: [B,N,T,T] -> dq, dk, dv: [B,T,H]
    B, T, H = q.shape
    D = H // n_heads
    scale = q.dtype.type(1.0 / math.sqrt(D))
    keep = _keep(B, n_heads, T, p_drop, key, q.dtype)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in range(B):
        for h in range(n_heads):
            cols = slice(h * D, (h + 1) * D)
            Q, K, V, dO = (np.ascontiguousarray(x[b, :, cols]) for x in (q, k, v, dctx))
            P = probs[b, h]
            Pd = P if keep is None else P * keep[b, h]
            dv[b, :, cols] = matmul_tn(Pd, dO)  # dV = Pd^T dO
            dP = matmul_nt(dO, V)  # dPd = dO V^T
            if keep is not None:
                dP *= keep[b, h]  # back through dropout
            dS = softmax_backward(dP, P) * scale  # P * (dP - rowsum(dP * P)), then 1/sqrt(D)
            dq[b, :, cols] = matmul_nn(dS, K)  # dQ = dS K
            dk[b, :, cols] = matmul_tn(dS, Q)  # dK = dS^T Q
    return dq, dk, dv


@njit(fastmath=FASTMATH, inline="always")
def _softmax_row(row, bias, scale):
    # row: [T] scores -> exp(row*scale + bias - max) in place; returns 1/sum (the caller
    # normalises). bias: [T], 0 or finfo.min per key (a fully masked row becomes uniform).
    m = _scaled_max(row, bias, scale)
    exp_shifted(row, m, row)
    return cast_like(row, 1.0) / vsum(row)  # reduce.py: a vector sum in a fixed order


@njit(fastmath=FASTMATH, inline="always")
def _scaled_max(row, bias, scale):
    # row = row*scale + bias in place; returns its largest value (reduce.py's vmax: in the
    # row's type, where a float64 maximum would send the exp to libm)
    for j in range(row.shape[0]):
        row[j] = row[j] * scale + bias[j]
    return vmax(row)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def attention_forward_rows(q, k, v, mask_bias, n_heads, p_drop, key):
    # q, k, v: [B,T,H]; mask_bias: [B,T] -> ctx: [B,T,H], probs: [B,N,T,T]
    B, T, H = q.shape
    D = H // n_heads
    scale = cast_like(q, 1.0 / math.sqrt(D))
    keep_scale = cast_like(q, 1.0 / (1.0 - p_drop))
    ctx = np.zeros((B, T, H), dtype=q.dtype)
    probs = np.empty((B, n_heads, T, T), dtype=q.dtype)
    for bh in prange(B * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        c0 = h * D
        kt = np.empty((D, T), dtype=q.dtype)  # K of this head, transposed: rows over j
        for j in range(T):
            for d in range(D):
                kt[d, j] = k[b, j, c0 + d]
        for i in range(T):
            row = probs[b, h, i]
            for j in range(T):
                row[j] = 0.0
            for d in range(D):  # S[i, :] = sum_d Q[i, d] K[:, d], vectorised over j
                qid = q[b, i, c0 + d]
                ktd = kt[d]
                for j in range(T):
                    row[j] += qid * ktd[j]
            inv = _softmax_row(row, mask_bias[b], scale)  # row = exp(S - max); inv = 1/sum
            out = ctx[b, i, c0:c0 + D]
            base = ((b * n_heads + h) * T + i) * T
            for j in range(T):
                pij = row[j] * inv
                row[j] = pij
                if p_drop > 0.0:
                    if _hash_uniform(key, base + j) < p_drop:
                        continue
                    pij = pij * keep_scale
                vj = v[b, j, c0:c0 + D]
                for d in range(D):  # O[i] += Pd[i, j] V[j], vectorised over d
                    out[d] += pij * vj[d]
    return ctx, probs


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def attention_backward_rows(dctx, q, k, v, probs, n_heads, p_drop, key):
    # dctx: [B,T,H]; q, k, v: [B,T,H]; probs: [B,N,T,T] -> dq, dk, dv: [B,T,H]
    B, T, H = q.shape
    D = H // n_heads
    scale = cast_like(q, 1.0 / math.sqrt(D))
    keep_scale = cast_like(q, 1.0 / (1.0 - p_drop))
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    for bh in prange(B * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        c0 = h * D
        vt = np.empty((D, T), dtype=q.dtype)  # V of this head, transposed
        for j in range(T):
            for d in range(D):
                vt[d, j] = v[b, j, c0 + d]
        dp = np.empty(T, dtype=q.dtype)  # one row of dP
        kept = np.empty(T, dtype=q.dtype)  # one row of keep/(1-p), recomputed from the key
        for i in range(T):
            P = probs[b, h, i]
            do = dctx[b, i, c0:c0 + D]
            base = ((b * n_heads + h) * T + i) * T
            for j in range(T):
                dp[j] = 0.0
                kept[j] = 1.0
                if p_drop > 0.0:
                    kept[j] = keep_scale if _hash_uniform(key, base + j) >= p_drop else 0.0
            for d in range(D):  # dPd[i, :] = sum_d dO[i, d] V[:, d], vectorised over j
                dod = do[d]
                vtd = vt[d]
                for j in range(T):
                    dp[j] += dod * vtd[j]
            dot = cast_like(q, 0.0)
            for j in range(T):
                pd = P[j] * kept[j]
                if pd != 0.0:
                    dvj = dv[b, j, c0:c0 + D]
                    for d in range(D):  # dV[j] += Pd[i, j] dO[i]
                        dvj[d] += pd * do[d]
                dp[j] *= kept[j]  # back through dropout
                dot += dp[j] * P[j]
            qi = q[b, i, c0:c0 + D]
            dqi = dq[b, i, c0:c0 + D]
            for j in range(T):
                ds = P[j] * (dp[j] - dot) * scale  # softmax backward, then the 1/sqrt(D)
                if ds == 0.0:
                    continue  # masked keys: P = 0
                kj = k[b, j, c0:c0 + D]
                dkj = dk[b, j, c0:c0 + D]
                for d in range(D):
                    dqi[d] += ds * kj[d]
                    dkj[d] += ds * qi[d]
    return dq, dk, dv


# ----------------------------------------------------------------------------------
# through the GEMM micro-kernel


@njit(fastmath=FASTMATH, inline="always")
def _scores_softmax(q_f, q0, q_ld, Lq, Kh, P_f, bias, scale, isa, MR, NR, KC, Ap, Bp):
    # One head's P = softmax(Q K^T * scale + bias) into P_f ([Lq, L], flat): Q's row i at
    # q_f[q0 + i*q_ld], Kh: [L, D]; Ap, Bp: packing scratch (packing_buffers).
    L, D = Kh.shape
    _gemm_block(q_f, q0, q_ld, I1, Lq, Kh, YES, I0, L, D, P_f, I0, L, NO, isa, MR, NR, KC,
                Ap, Bp)  # S = Q K^T, then the softmax in place
    _softmax_rows(P_f[:Lq * L].reshape(Lq, L), bias, scale)


SOFTMAX_GROUP = 8  # rows whose softmaxes _softmax_rows runs side by side


@njit(fastmath=FASTMATH, inline="always")
def _softmax_rows(P, bias, scale):
    # Each row of P [Lq, L] -> softmax(row*scale + bias), in place: _softmax_row's steps,
    # then the division by the sum, on each value the same operations (the same bits).
    # Rows in groups of SOFTMAX_GROUP, each step for every row of the group before the
    # next step: one row's steps form a chain (its max waits for its scores, its exps for
    # the max, its division for the sum of all its exps) and a row of 128 values is too
    # short for the core to overlap one chain with the next, while the group's rows are
    # independent of each other. Measured on a 2-core Xeon (family 6 model 167, AVX-512),
    # one thread, one head's [128, 128] block: 22-27 us a row at a time, 13.6-14.6 in
    # groups of 8 (4 to 32 alike; book chapter 05). 8 rows of 128 keys: 4 KiB, in L1.
    Lq, L = P.shape
    ms = scratch32(P)  # the group's maxima (on the stack)
    for g0 in range(0, Lq, SOFTMAX_GROUP):
        g1 = min(g0 + SOFTMAX_GROUP, Lq)
        for i in range(g0, g1):
            ms[i - g0] = _scaled_max(P[i], bias, scale)
        for i in range(g0, g1):
            row = P[i]
            exp_shifted(row, ms[i - g0], row)
        for i in range(g0, g1):
            row = P[i]
            inv = cast_like(row, 1.0) / vsum(row)
            for j in range(L):
                row[j] *= inv


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_forward(q, qstarts, qlens, qpos, kv, k0, v0, starts, lens, mask_bias, T, H,
                       n_heads, p_drop, key, isa, MR, NR, KC, keep_probs=True):
    # q: [m, >= H], the queries in columns 0..H (q of q|k|v, or an array of their own);
    # sequence b's queries in rows qstarts[b]..qstarts[b]+qlens[b], at positions qpos[row]
    # of their sequence (qpos empty: the sequence's own rows, in order, from 0).
    # kv: [n, *], K in columns k0..k0+H and V in v0..v0+H; sequence b's keys in rows
    # starts[b]..starts[b]+lens[b]; mask_bias: [B, >= L]. The usual call: q = kv = q|k|v,
    # the same rows (qstarts = starts, qlens = lens), k0 = H, v0 = 2H. A few queries of
    # each sequence against all its keys: the last layer of a model whose head reads few
    # rows (layers.attention_block_forward).
    # -> ctx: [m, H], probs: flat, (b, h)'s [Lq, L] block at _prob_offsets[b] + h*Lq*L.
    # T is the padded length the dropout hash indexes with (the same keep mask whether
    # the batch runs padded or with its padding removed, all queries or a few).
    # keep_probs False (inference, no attention maps asked for): probs is empty, and each
    # head's P lives in a scratch block of its own that stays in cache, not in a [B, N, T,
    # T] array that goes out to memory (8 MB a layer on tiny's batch of 32 x 128).
    m = q.shape[0]
    q_ld = q.shape[1]
    B = lens.shape[0]
    D = H // n_heads
    scale = cast_like(q, 1.0 / math.sqrt(D))
    keep_scale = cast_like(q, 1.0 / (1.0 - p_drop))
    ctx = np.empty((m, H), dtype=q.dtype)
    q_f = q.reshape(m * q_ld)  # the products read A in place: query row i at i*q_ld
    poff = _prob_offsets(qlens, lens, n_heads)
    probs = np.empty(poff[B] if keep_probs else 0, dtype=q.dtype)
    ctx_f = ctx.reshape(m * H)
    for bh in prange(B * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        c0 = h * D
        s0, L = starts[b], lens[b]
        qs0, Lq = qstarts[b], qlens[b]
        Kh = kv[s0:s0 + L, k0 + c0:k0 + c0 + D]  # [L, D] slices of this head
        Vh = kv[s0:s0 + L, v0 + c0:v0 + c0 + D]
        if keep_probs:
            P_f = probs[poff[b] + h * Lq * L:poff[b] + (h + 1) * Lq * L]
        else:
            P_f = np.empty(Lq * L, dtype=q.dtype)
        P = P_f.reshape(Lq, L)
        Ap, Bp = packing_buffers(Lq, max(L, D), max(L, D), MR, NR, KC, q.dtype)
        _scores_softmax(q_f, qs0 * q_ld + c0, q_ld, Lq, Kh, P_f, mask_bias[b, :L], scale,
                        isa, MR, NR, KC, Ap, Bp)
        Pd = P  # dropout on a copy: probs keeps P (the attention map, as before)
        if p_drop > 0.0:
            Pd = np.empty((Lq, L), dtype=q.dtype)
            for i in range(Lq):
                base = ((b * n_heads + h) * T + (qpos[qs0 + i] if qpos.size else i)) * T
                for j in range(L):
                    keep = _hash_uniform(key, base + j) >= p_drop
                    Pd[i, j] = P[i, j] * keep_scale if keep else cast_like(q, 0.0)
        # O = Pd V  -> ctx[qs0:qs0+Lq, c0:c0+D] (row stride H)
        _gemm_block(Pd.reshape(Lq * L), I0, L, I1, Lq, Vh, NO, I0, D, L, ctx_f, qs0 * H + c0,
                    H, NO, isa, MR, NR, KC, Ap, Bp)
    return ctx, probs


@njit(cache=True)
def _prob_offsets(qlens, lens, n_heads):
    # where (b, h)'s [Lq, L] probabilities start in the flat probs: [B + 1]
    poff = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    for b in range(lens.shape[0]):
        poff[b + 1] = poff[b] + n_heads * qlens[b] * lens[b]
    return poff


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_backward(dctx, q, qstarts, qlens, qpos, kv, k0, v0, starts, lens, probs, dq,
                        dkv, T, H, n_heads, p_drop, key, isa, MR, NR, KC):
    # dctx: [m, H]; q, kv, probs and the rows as _attention_forward had them
    # -> writes dq: [m, >= H] (columns 0..H) and dK, dV into dkv: [n, *] (columns k0..,
    # v0..). The usual call: dq = dkv = dq|dk|dv, one array (one GEMM takes them back to x).
    m = q.shape[0]
    q_ld = q.shape[1]
    kv_ld = dkv.shape[1]
    dq_ld = dq.shape[1]
    B = lens.shape[0]
    D = H // n_heads
    scale = cast_like(q, 1.0 / math.sqrt(D))
    keep_scale = cast_like(q, 1.0 / (1.0 - p_drop))
    dq_f = dq.reshape(dq.size)
    dkv_f = dkv.reshape(dkv.size)
    dctx_f = dctx.reshape(m * H)  # the products read A in place: dO's row i at i*H
    poff = _prob_offsets(qlens, lens, n_heads)
    for bh in prange(B * n_heads):
        b = bh // n_heads
        h = bh % n_heads
        c0 = h * D
        s0, L = starts[b], lens[b]
        qs0, Lq = qstarts[b], qlens[b]
        Qh = q[qs0:qs0 + Lq, c0:c0 + D]
        Kh = kv[s0:s0 + L, k0 + c0:k0 + c0 + D]
        Vh = kv[s0:s0 + L, v0 + c0:v0 + c0 + D]
        dO = dctx[qs0:qs0 + Lq, c0:c0 + D]
        P = probs[poff[b] + h * Lq * L:poff[b] + (h + 1) * Lq * L].reshape(Lq, L)
        Ap, Bp = packing_buffers(max(Lq, L), max(L, D), max(Lq, L, D), MR, NR, KC,
                                       q.dtype)
        dS = np.empty((Lq, L), dtype=q.dtype)  # first dPd, then dS, in place
        dS_f = dS.reshape(Lq * L)
        # dPd = dO V^T
        _gemm_block(dctx_f, qs0 * H + c0, H, I1, Lq, Vh, YES, I0, L, D, dS_f, I0, L, NO, isa,
                    MR, NR, KC, Ap, Bp)
        Pd = P
        if p_drop > 0.0:
            Pd = np.empty((Lq, L), dtype=q.dtype)
            for i in range(Lq):
                base = ((b * n_heads + h) * T + (qpos[qs0 + i] if qpos.size else i)) * T
                for j in range(L):
                    keep = _hash_uniform(key, base + j) >= p_drop
                    kept = keep_scale if keep else cast_like(q, 0.0)
                    Pd[i, j] = P[i, j] * kept
                    dS[i, j] *= kept  # back through dropout: dP = dPd * keep/(1-p)
        # dV = Pd^T dO
        _gemm_block(Pd.reshape(Lq * L), I0, I1, L, L, dO, NO, I0, D, Lq, dkv_f,
                    s0 * kv_ld + v0 + c0, kv_ld, NO, isa, MR, NR, KC, Ap, Bp)
        for i in range(Lq):  # softmax backward, then the 1/sqrt(D): dS = P (dP - <dP, P>) s
            dot = vdot(dS[i], P[i])
            for j in range(L):
                dS[i, j] = P[i, j] * (dS[i, j] - dot) * scale
        # dQ = dS K;  dK = dS^T Q
        _gemm_block(dS_f, I0, L, I1, Lq, Kh, NO, I0, D, L, dq_f, qs0 * dq_ld + c0, dq_ld,
                    NO, isa, MR, NR, KC, Ap, Bp)
        _gemm_block(dS_f, I0, I1, L, L, Qh, NO, I0, D, Lq, dkv_f, s0 * kv_ld + k0 + c0, kv_ld,
                    NO, isa, MR, NR, KC, Ap, Bp)


def _tiles(dtype, T, D):
    # one tile for the five products of a head: the one that fits [T, D] best
    b = blocking(dtype, T, D)
    return b["code"], b["MR"], b["NR"], b["KC"]


def _padded(B, T):
    return np.arange(B, dtype=np.int64) * T, np.full(B, T, dtype=np.int64)


_NO_POS = np.zeros(0, np.int64)  # qpos for "every row of each sequence, in order"


def attention_forward_qkv(qkv, starts, lens, mask_bias, T, n_heads, p_drop, key,
                          keep_probs=True):
    """The layers' entry: qkv [n, 3H] (q | k | v from one GEMM), sequence b in rows
    starts[b]..starts[b]+lens[b]; mask_bias [B, >= max L] (zeros when nothing is masked);
    T the padded length (for the dropout hash). -> ctx [n, H], probs flat (the (b, h)
    block [L, L] at _prob_offsets(lens, lens)[b] + h L L; None with keep_probs False:
    inference without attention maps)."""
    L = max(int(np.max(lens)), 1)
    H = qkv.shape[1] // 3
    ctx, probs = _attention_forward(qkv, starts, lens, _NO_POS, qkv, H, 2 * H, starts, lens,
                                    mask_bias, T, H, n_heads, p_drop, key,
                                    *_tiles(qkv.dtype, L, H // n_heads), bool(keep_probs))
    return ctx, probs if keep_probs else None


def attention_backward_qkv(dctx, qkv, probs, starts, lens, T, n_heads, p_drop, key):
    """-> dqkv [n, 3H] = dq | dk | dv."""
    L = max(int(np.max(lens)), 1)
    H = qkv.shape[1] // 3
    dqkv = np.empty_like(qkv)
    _attention_backward(dctx, qkv, starts, lens, _NO_POS, qkv, H, 2 * H, starts, lens, probs,
                        dqkv, dqkv, T, H, n_heads, p_drop, key,
                        *_tiles(qkv.dtype, L, H // n_heads))
    return dqkv


def query_rows(rows, starts, lens):
    """Queries at some rows (sorted) of sequences packed as starts/lens -> (qstarts, qlens,
    qpos): sequence b's queries are rows qstarts[b]..qstarts[b]+qlens[b] of the queries'
    own array, at positions qpos of their sequence."""
    rows = np.asarray(rows, dtype=np.int64)
    b = np.searchsorted(starts, rows, side="right") - 1
    if len(rows) and (b.min() < 0 or np.any(rows - starts[b] >= lens[b])):
        raise ValueError("query rows outside every sequence")
    qlens = np.bincount(b, minlength=len(lens)).astype(np.int64)
    qstarts = np.concatenate([[0], np.cumsum(qlens)[:-1]]).astype(np.int64)
    return qstarts, qlens, (rows - starts[b]).astype(np.int64)


def attention_forward_rows_of(q, rows, kv, starts, lens, mask_bias, T, n_heads, p_drop, key,
                              keep_probs=True):
    """Attention for the queries at some rows only: q [len(rows), H] (the queries of rows
    ``rows``, sorted, of the [n, *] activations), kv [n, 2H] = k | v of every row, sequence
    b in rows starts[b]..starts[b]+lens[b]. -> ctx [len(rows), H]: those rows of what
    attention_forward_qkv gives (the same bits), probs flat (blocks [Lq_b, L_b]; None with
    keep_probs False)."""
    H = q.shape[1]
    qstarts, qlens, qpos = query_rows(rows, starts, lens)
    L = max(int(np.max(lens)), 1)
    ctx, probs = _attention_forward(q, qstarts, qlens, qpos, kv, 0, H, starts, lens, mask_bias,
                                    T, H, n_heads, p_drop, key,
                                    *_tiles(q.dtype, L, H // n_heads), bool(keep_probs))
    return ctx, probs if keep_probs else None


def attention_backward_rows_of(dctx, q, rows, kv, probs, starts, lens, T, n_heads, p_drop,
                               key):
    """-> dq [len(rows), H], dkv [n, 2H] = dk | dv."""
    H = q.shape[1]
    qstarts, qlens, qpos = query_rows(rows, starts, lens)
    L = max(int(np.max(lens)), 1)
    dq, dkv = np.empty_like(q), np.empty_like(kv)
    _attention_backward(dctx, q, qstarts, qlens, qpos, kv, 0, H, starts, lens, probs, dq, dkv,
                        T, H, n_heads, p_drop, key, *_tiles(q.dtype, L, H // n_heads))
    return dq, dkv


def _split(dqkv, H):
    return dqkv[..., :H], dqkv[..., H:2 * H], dqkv[..., 2 * H:]


def attention_forward(q, k, v, mask_bias, n_heads, p_drop, key):
    # q, k, v: [B,T,H]; mask_bias: [B,T] -> ctx: [B,T,H], probs: [B,N,T,T]
    B, T, H = q.shape
    starts, lens = _padded(B, T)
    qkv = np.concatenate([q, k, v], axis=2).reshape(B * T, 3 * H)
    ctx, probs = attention_forward_qkv(qkv, starts, lens, mask_bias, T, n_heads, p_drop, key)
    return ctx.reshape(B, T, H), probs.reshape(B, n_heads, T, T)


def attention_backward(dctx, q, k, v, probs, n_heads, p_drop, key):
    # dctx, q, k, v: [B,T,H]; probs: [B,N,T,T] -> dq, dk, dv: [B,T,H]
    B, T, H = q.shape
    starts, lens = _padded(B, T)
    qkv = np.concatenate([q, k, v], axis=2).reshape(B * T, 3 * H)
    dqkv = attention_backward_qkv(dctx.reshape(B * T, H), qkv, probs.reshape(-1), starts, lens,
                                  T, n_heads, p_drop, key)
    return _split(dqkv.reshape(B, T, 3 * H), H)


def attention_forward_varlen(q, k, v, starts, lens, T, n_heads, p_drop, key):
    """Attention over sequences packed without padding: q, k, v: [n, H], sequence b in
    rows starts[b]..starts[b]+lens[b]; T is the padded length (for the dropout hash).
    -> ctx [n, H], probs flat (the (b, h) block [L, L] at _prob_offsets(lens, lens)[b] + h L
    L).
    No mask: every key is a real token. The work is sum_b L_b^2, not B T^2."""
    zeros = np.zeros((len(lens), max(int(np.max(lens)), 1)), dtype=q.dtype)
    return attention_forward_qkv(np.concatenate([q, k, v], axis=1), starts, lens, zeros, T,
                                 n_heads, p_drop, key)


def attention_backward_varlen(dctx, q, k, v, probs, starts, lens, T, n_heads, p_drop, key):
    dqkv = attention_backward_qkv(dctx, np.concatenate([q, k, v], axis=1), probs, starts, lens,
                                  T, n_heads, p_drop, key)
    return _split(dqkv, q.shape[1])
