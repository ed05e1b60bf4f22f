"""Fused multi-head self-attention, forward and backward, mask aware.

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
"""
import math

import numpy as np
from numba import njit, prange

from ._base import FASTMATH, cast_like
from .dropout import _hash_uniform


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def attention_forward(q, k, v, mask_bias, n_heads, p_drop, key):
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
            m = -np.inf
            for j in range(T):
                s = row[j] * scale + mask_bias[b, j]
                row[j] = s
                if s > m:
                    m = s
            tot = cast_like(q, 0.0)
            for j in range(T):
                e = math.exp(row[j] - m)
                row[j] = e
                tot += e
            inv = cast_like(q, 1.0) / tot
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
def attention_backward(dctx, q, k, v, probs, n_heads, p_drop, key):
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
