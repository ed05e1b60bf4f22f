"""Attention through the GEMM micro-kernel against its two readable twins — the naive one
(plain Python over (b, h), each step another kernel: matmul, softmax, dropout_mask) and
the row-at-a-time one (plain loops) — and against torch autograd.

Tolerances: float64 1e-12 (the same sums in another order); float32 1e-5 relative +
1e-6 absolute (probabilities and products of O(1) values, sums of up to T*D terms).
"""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialbert.kernels import attention as at
from minialbert.kernels import dropout_key, mask_bias
from reference import assert_close, n, require, t


def _tol(dt):
    return dict(rtol=1e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _case(r, B, T, N, D, dt, masked_rows=True):
    q, k, v, do = (r.standard_normal((B, T, N * D)).astype(dt) for _ in range(4))
    m = np.ones((B, T))
    m[0, max(1, T // 2):] = 0  # padding in the first sequence
    if masked_rows and B > 1:
        m[-1] = 0  # a fully masked sequence: every row uniform, as Hugging Face
    return q, k, v, do, mask_bias(m, dt)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_packed_matches_rows_with_masks_and_dropout(dt, p, threads, rng):
    q, k, v, do, mb = _case(rng, 3, 37, 3, 11, dt)
    key = dropout_key(7, 1, 2)
    c1, p1 = at.attention_forward(q, k, v, mb, 3, p, key)
    c0, p0 = at.attention_forward_rows(q, k, v, mb, 3, p, key)
    assert c1.dtype == dt and p1.dtype == dt
    assert_close(p1, p0, **_tol(dt), what="probs")
    assert_close(c1, c0, **_tol(dt), what="ctx")
    for a, b, name in zip(at.attention_backward(do, q, k, v, p1, 3, p, key),
                          at.attention_backward_rows(do, q, k, v, p0, 3, p, key), "qkv"):
        assert_close(a, b, **_tol(dt), what="d" + name)


@given(B=st.integers(1, 3), T=st.sampled_from([1, 2, 7, 9, 17, 49, 50]),
       N=st.integers(1, 3), D=st.sampled_from([1, 3, 8, 13, 49]), seed=st.integers(0, 999))
def test_packed_any_shape(B, T, N, D, seed):
    """T = 1, sizes around the tiles (MR 8, NR 48 on AVX-512; 6, 16 on AVX2), in float64."""
    q, k, v, do, mb = _case(np.random.default_rng(seed), B, T, N, D, np.float64)
    c1, p1 = at.attention_forward(q, k, v, mb, N, 0.0, np.uint64(0))
    c0, p0 = at.attention_forward_rows(q, k, v, mb, N, 0.0, np.uint64(0))
    assert_close(c1, c0, rtol=1e-12, atol=1e-12, what="ctx")
    for a, b in zip(at.attention_backward(do, q, k, v, p1, N, 0.0, np.uint64(0)),
                    at.attention_backward_rows(do, q, k, v, p0, N, 0.0, np.uint64(0))):
        assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_packed_against_torch_autograd(dt, rng):
    torch = require("torch")
    B, T, N, D = 2, 19, 2, 7
    q, k, v, do, mb = _case(rng, B, T, N, D, dt, masked_rows=False)
    tq, tk, tv = t(q, True), t(k, True), t(v, True)
    split = lambda x: x.reshape(B, T, N, D).transpose(1, 2)  # noqa: E731 [B,N,T,D]
    s = split(tq) @ split(tk).transpose(-1, -2) / np.sqrt(D) + t(mb)[:, None, None, :]
    pr = torch.softmax(s, -1)
    ctx = (pr @ split(tv)).transpose(1, 2).reshape(B, T, N * D)
    ctx.backward(t(do))
    c, p = at.attention_forward(q, k, v, mb, N, 0.0, np.uint64(0))
    assert_close(c, n(ctx), **_tol(dt), what="ctx")
    assert_close(p, n(pr), **_tol(dt), what="probs")
    for a, b, name in zip(at.attention_backward(do, q, k, v, p, N, 0.0, np.uint64(0)),
                          (tq.grad, tk.grad, tv.grad), "qkv"):
        assert_close(a, n(b), **_tol(dt), what="d" + name)


def test_packed_bitwise_across_threads(rng):
    q, k, v, do, mb = _case(rng, 4, 64, 4, 16, np.float32)
    prev = numba.get_num_threads()
    try:
        res = []
        for th in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(th)
            c, p = at.attention_forward(q, k, v, mb, 4, 0.2, np.uint64(5))
            res.append((c, p) + at.attention_backward(do, q, k, v, p, 4, 0.2, np.uint64(5)))
    finally:
        numba.set_num_threads(prev)
    for a, b in zip(*res):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_matches_naive_with_masks_and_dropout(dt, p, threads, rng):
    """The fused kernels against the naive twin built from the softmax, matmul and dropout
    kernels: padding, a fully masked sequence (uniform rows, as Hugging Face), dropout
    with the same key (the same flat index hashed), 1 and all threads."""
    q, k, v, do, mb = _case(rng, 3, 29, 2, 9, dt)
    key = dropout_key(3, 4, 5)
    c1, p1 = at.attention_forward(q, k, v, mb, 2, p, key)
    c0, p0 = at.attention_forward_naive(q, k, v, mb, 2, p, key)
    assert c0.dtype == dt and p0.dtype == dt
    assert_close(p1, p0, **_tol(dt), what="probs")
    assert_close(c1, c0, **_tol(dt), what="ctx")
    assert np.allclose(p0[-1], 1 / 29)  # the fully masked sequence
    for a, b, name in zip(at.attention_backward(do, q, k, v, p1, 2, p, key),
                          at.attention_backward_naive(do, q, k, v, p0, 2, p, key), "qkv"):
        assert_close(a, b, **_tol(dt), what="d" + name)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_naive_against_torch_with_the_same_dropout(dt, rng):
    """The naive twin against torch autograd, torch's dropout replaced by our keep mask
    (the same key), so that the two compute the same function."""
    torch = require("torch")
    from minialbert.kernels import dropout_mask
    B, T, N, D, p = 2, 13, 2, 5, 0.25
    q, k, v, do, mb = _case(rng, B, T, N, D, dt, masked_rows=False)
    key = dropout_key(1, 2, 3)
    keep = dropout_mask(B * N * T * T, p, key).reshape(B, N, T, T).astype(dt) / dt(1 - p)
    tq, tk, tv = t(q, True), t(k, True), t(v, True)
    split = lambda x: x.reshape(B, T, N, D).transpose(1, 2)  # noqa: E731 [B,N,T,D]
    s = split(tq) @ split(tk).transpose(-1, -2) / np.sqrt(D) + t(mb)[:, None, None, :]
    pr = torch.softmax(s, -1)
    ctx = ((pr * t(keep)) @ split(tv)).transpose(1, 2).reshape(B, T, N * D)
    ctx.backward(t(do))
    c, pn = at.attention_forward_naive(q, k, v, mb, N, p, key)
    assert_close(c, n(ctx), **_tol(dt), what="ctx")
    assert_close(pn, n(pr), **_tol(dt), what="probs")
    for a, b, name in zip(at.attention_backward_naive(do, q, k, v, pn, N, p, key),
                          (tq.grad, tk.grad, tv.grad), "qkv"):
        assert_close(a, n(b), **_tol(dt), what="d" + name)


@given(lens=st.lists(st.integers(1, 20), min_size=1, max_size=4), N=st.integers(1, 3),
       D=st.sampled_from([1, 5, 16, 17]), frac=st.floats(0.0, 1.0), p=st.sampled_from([0.0, 0.3]),
       padded=st.booleans(), seed=st.integers(0, 999))
def test_queries_at_some_rows_give_those_rows_of_full_attention(lens, N, D, frac, p, padded,
                                                                seed):
    """attention_forward_rows_of / _backward (the last layer's queries at the rows a head
    reads, keys and values from every row): ctx equals those rows of the full attention's,
    bitwise, and so do the gradients when the full run's dctx is zero at the other rows —
    with dropout (each query keeps its position's mask), padded with a mask or packed, and
    sequences with no query at all (their dk and dv are zero). Without the probabilities
    kept (keep_probs False: inference, each head's in a scratch block) both give the same
    ctx bits and no probs."""
    r = np.random.default_rng(seed)
    H, B = N * D, len(lens)
    T = max(lens)
    if padded:  # every sequence T rows, the padding masked
        starts, lens_a = np.arange(B, dtype=np.int64) * T, np.full(B, T, np.int64)
        real = np.arange(T)[None] < np.asarray(lens)[:, None]
        bias = mask_bias(real, np.float64)
    else:
        lens_a = np.asarray(lens, np.int64)
        starts = np.concatenate([[0], np.cumsum(lens_a)[:-1]]).astype(np.int64)
        bias = np.zeros((B, T))
    n_rows = int(starts[-1] + lens_a[-1])
    qkv = r.standard_normal((n_rows, 3 * H))
    rows = np.flatnonzero(r.random(n_rows) < frac).astype(np.int64)
    key = dropout_key(3, 4, 5)
    ctx, probs = at.attention_forward_qkv(qkv, starts, lens_a, bias, T, N, p, key)
    q, kv = np.ascontiguousarray(qkv[rows, :H]), np.ascontiguousarray(qkv[:, H:])
    ctx_r, probs_r = at.attention_forward_rows_of(q, rows, kv, starts, lens_a, bias, T, N, p,
                                                  key)
    assert np.array_equal(ctx_r, ctx[rows])
    ctx_n, none = at.attention_forward_qkv(qkv, starts, lens_a, bias, T, N, p, key, False)
    assert none is None and np.array_equal(ctx_n, ctx)
    ctx_n, none = at.attention_forward_rows_of(q, rows, kv, starts, lens_a, bias, T, N, p, key,
                                               False)
    assert none is None and np.array_equal(ctx_n, ctx_r)
    dctx = np.zeros((n_rows, H))
    dctx_r = r.standard_normal((len(rows), H))
    dctx[rows] = dctx_r
    dqkv = at.attention_backward_qkv(dctx, qkv, probs, starts, lens_a, T, N, p, key)
    dq, dkv = at.attention_backward_rows_of(dctx_r, q, rows, kv, probs_r, starts, lens_a, T, N,
                                            p, key)
    assert_close(dq, dqkv[rows, :H], rtol=1e-12, atol=1e-13, what="dq")
    assert_close(dkv, dqkv[:, H:], rtol=1e-12, atol=1e-13, what="dk|dv")
