"""softmax, layernorm, activations, embedding, cross-entropy, dropout: each against
torch autograd (float32 and float64) and by float64 finite differences.

Tolerances: float64 vs torch float64 ~1e-10 (same math, different order); float32 vs
torch float32 1e-5 relative + 1e-5 absolute: a few roundings of ~6e-8 per op on values
of order 1, and gradients like gelu's that are differences of O(1) terms (where the
result is ~0, only the absolute term can judge them); finite
differences in float64: relative error < 1e-6 (see minialbert/gradcheck.py for why).
"""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialbert.gradcheck import gradcheck
from minialbert.kernels import (activation, cross_entropy, dropout_backward, dropout_forward,
                                dropout_key, embedding_backward, embedding_backward_naive,
                                embedding_forward,
                                layernorm_backward, layernorm_forward, mask_bias,
                                softmax_backward, softmax_forward)
from minialbert.kernels._base import FASTMATH, exp_float32, exp_nonpositive32, exp_shifted
from minialbert.kernels.act import exp_fast32, tanh_backward, tanh_forward
from minialbert.kernels.reduce import vdot, vmax, vsum
from reference import assert_close, n, require, t

FD_TOL = 1e-6


def tol(dt):
    return dict(rtol=1e-5, atol=1e-5) if dt == np.float32 else dict(rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_softmax_matches_torch_with_mask(dt, rng, threads):
    torch = require("torch")
    x = (3 * rng.standard_normal((6, 9))).astype(dt)
    mask = (rng.random((6, 9)) > 0.3).astype(np.int64)
    mask[2] = 0  # a fully masked row
    bias = mask_bias(mask, dt)
    dy = rng.standard_normal((6, 9)).astype(dt)
    tx = t(x, True)
    ty = torch.softmax(tx + t(bias), dim=-1)
    ty.backward(t(dy))
    y = softmax_forward(x, bias)
    assert y.dtype == dt
    assert_close(y, n(ty), **tol(dt), what="softmax")
    assert_close(y[2], np.full(9, 1 / 9, dt), rtol=1e-6, atol=0, what="fully masked: uniform")
    assert np.all(y[0][mask[0] == 0] == 0) and np.all(y[1][mask[1] == 0] == 0)
    assert_close(softmax_backward(dy, y), n(tx.grad), **tol(dt), what="softmax backward")


@given(rows=st.integers(1, 5), cols=st.integers(1, 40), scale=st.sampled_from([1.0, 30.0, 1e4]),
       seed=st.integers(0, 1000))
def test_softmax_rows_sum_to_one_and_never_nan(rows, cols, scale, seed):
    r = np.random.default_rng(seed)
    x = (scale * r.standard_normal((rows, cols))).astype(np.float32)
    mask = (r.random((rows, cols)) > 0.5).astype(np.int64)
    y = softmax_forward(x, mask_bias(mask, np.float32))
    assert np.isfinite(y).all()
    assert_close(y.sum(1), np.ones(rows, np.float32), rtol=1e-5, atol=1e-5)


def test_softmax_finite_differences(rng):
    x = rng.standard_normal((4, 7))
    bias = mask_bias(rng.random((4, 7)) > 0.2, np.float64)
    w = rng.standard_normal((4, 7))
    y = softmax_forward(x, bias)
    res = gradcheck(lambda: (softmax_forward(x, bias) * w).sum(), x, softmax_backward(w, y),
                    "softmax x")
    assert res.max_rel_error < FD_TOL, res


# --------------------------------------------------------------------------- layernorm

@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("R,C", [(1, 2), (5, 3), (70, 33), (130, 128)])
def test_layernorm_matches_torch(dt, R, C, rng, threads):
    torch = require("torch")
    x = (rng.standard_normal((R, C)) * 2 + 0.5).astype(dt)
    g = rng.standard_normal(C).astype(dt)
    b = rng.standard_normal(C).astype(dt)
    dy = rng.standard_normal((R, C)).astype(dt)
    tx, tg, tb = t(x, True), t(g, True), t(b, True)
    ty = torch.nn.functional.layer_norm(tx, (C,), tg, tb, eps=1e-12)
    ty.backward(t(dy))
    y, mean, rstd = layernorm_forward(x, g, b, 1e-12)
    dg = np.zeros_like(g)
    db = np.zeros_like(b)
    dx = layernorm_backward(dy, x, mean, rstd, g, dg, db)
    assert y.dtype == dx.dtype == dg.dtype == dt
    # (C = 1 is degenerate: var = 0, xhat is rounding noise times 1/sqrt(eps) = 1e6.)
    k = tol(dt)
    assert_close(y, n(ty), **k, what="y")
    assert_close(dx, n(tx.grad), **(k if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)),
                 what="dx")
    assert_close(dg, n(tg.grad), **(k if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)),
                 what="dgamma")
    # dgamma, dbeta sum R rows: float32 rounding grows with the running sum (~1e-4 here).
    assert_close(db, n(tb.grad), **(k if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)),
                 what="dbeta")


def test_layernorm_finite_differences(rng):
    x = rng.standard_normal((5, 6))
    g = rng.standard_normal(6)
    b = rng.standard_normal(6)
    w = rng.standard_normal((5, 6))
    y, mean, rstd = layernorm_forward(x, g, b, 1e-12)
    dg = np.zeros(6)
    db = np.zeros(6)
    dx = layernorm_backward(w, x, mean, rstd, g, dg, db)

    def f():
        return (layernorm_forward(x, g, b, 1e-12)[0] * w).sum()

    for arr, grad, name in [(x, dx, "x"), (g, dg, "gamma"), (b, db, "beta")]:
        res = gradcheck(f, arr, grad, name)
        assert res.max_rel_error < FD_TOL, res


def test_layernorm_grads_accumulate_and_ignore_thread_count(rng):
    x = rng.standard_normal((200, 24)).astype(np.float32)
    g = rng.standard_normal(24).astype(np.float32)
    dy = rng.standard_normal((200, 24)).astype(np.float32)
    y, m, r = layernorm_forward(x, g, g, 1e-12)
    outs = []
    prev = numba.get_num_threads()
    try:
        for nt in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(nt)
            dg = np.ones(24, np.float32)
            db = np.ones(24, np.float32)
            dx = layernorm_backward(dy, x, m, r, g, dg, db)
            outs.append((dx, dg, db))
    finally:
        numba.set_num_threads(prev)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
    assert_close(outs[0][2], 1 + dy.sum(0), rtol=1e-5, atol=1e-4, what="dbeta accumulates")


# --------------------------------------------------------------------------- activations

@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["gelu_new", "gelu", "relu"])
def test_activations_match_torch(dt, name, rng, threads):
    torch = require("torch")
    F = torch.nn.functional
    ref = {"gelu_new": lambda v: F.gelu(v, approximate="tanh"), "gelu": F.gelu,
           "relu": F.relu}[name]
    x = (rng.standard_normal(301) * 3).astype(dt)
    x[:3] = [0.0, 8.0, -8.0]
    dy = rng.standard_normal(301).astype(dt)
    tx = t(x, True)
    ty = ref(tx)
    ty.backward(t(dy))
    fwd, bwd = activation(name)
    y = fwd(x)
    assert y.dtype == dt
    assert_close(y, n(ty), **tol(dt), what=name)
    assert_close(bwd(dy, x), n(tx.grad), **tol(dt), what=name + " backward")


def test_gelu_new_is_hugging_faces_formula(rng):
    """transformers' NewGELUActivation, written out: 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))."""
    x = rng.standard_normal(50)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert_close(activation("gelu_new")[0](x), expected, rtol=1e-13, atol=1e-15)


def test_gelu_new_float32_over_a_dense_grid():
    """The float32 forward's rational tanh and the backward's exp, against float64 on two
    million points of [-12, 12]: forward within 2e-6 relative to max(|y|, 1) (the rational
    tanh is 3.4e-7 off at worst, times |x|/2), backward within 5e-7 absolute (float32
    rounding of O(1) terms: 2.0e-7 measured; an inaccurate 1 - tanh^2 would show as 5e-5 at
    large |x|, and 1 - s by subtraction, as this backward once computed it, as 2e-6)."""
    x = np.linspace(-12, 12, 2_000_001).astype(np.float32)
    xd = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (xd + 0.044715 * xd ** 3)
    th = np.tanh(u)
    y = 0.5 * xd * (1 + th)
    dy = 0.5 * (1 + th) + 0.5 * xd * (1 - th ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * xd ** 2)
    fwd, bwd = activation("gelu_new")
    ours = fwd(x)
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - y) / np.maximum(np.abs(y), 1)) < 2e-6
    assert np.max(np.abs(bwd(np.ones_like(x), x) - dy)) < 5e-7


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gelu_new_gradient_far_out(dt):
    """Far from 0 the gradient is 0 (x very negative) or 1 (very positive), never NaN:
    exp(-2u) overflows there (inf * 0 would be NaN) and a clamped exp leaves a tiny 1 - s
    that v^3 could blow up: sigmoid_pair gives the exact limits instead."""
    x = np.array([-1e12, -1e4, -25, 25, 1e4, 1e12], dt)  # x^3 finite in float32
    dx = activation("gelu_new")[1](np.ones_like(x), x)
    assert np.all(np.isfinite(dx))
    assert np.all(dx[:3] == 0) and np.all(dx[3:] == 1), dx


@pytest.mark.parametrize("name", ["gelu_new", "gelu", "tanh"])
def test_activation_finite_differences(name, rng):
    x = rng.standard_normal(40) * 2
    w = rng.standard_normal(40)
    if name == "tanh":
        fwd = tanh_forward
        ana = tanh_backward(w, tanh_forward(x))
    else:
        fwd, bwd = activation(name)
        ana = bwd(w, x)
    res = gradcheck(lambda: (fwd(x) * w).sum(), x, ana, name)
    assert res.max_rel_error < FD_TOL, res


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="hidden_act='swishy'"):
        activation("swishy")


# --------------------------------------------------------------------------- embedding

@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_matches_torch_with_repeated_ids(dt, padding_idx, rng, threads):
    torch = require("torch")
    V, E = 11, 37
    table = rng.standard_normal((V, E)).astype(dt)
    ids = rng.integers(0, 4, size=200)  # few distinct ids: heavy repetition
    ids[:5] = 0
    dout = rng.standard_normal((200, E)).astype(dt)
    emb = torch.nn.Embedding(V, E, padding_idx=padding_idx, dtype=torch.float64
                             if dt == np.float64 else torch.float32)
    with torch.no_grad():
        emb.weight.copy_(t(table))
    ty = emb(torch.from_numpy(ids))
    ty.backward(t(dout))
    out = embedding_forward(ids, table)
    dtable = np.zeros_like(table)
    embedding_backward(ids, dout, dtable, -1 if padding_idx is None else padding_idx)
    assert out.dtype == dt
    assert_close(out, n(ty), rtol=0, atol=0, what="gather")
    assert_close(dtable, n(emb.weight.grad), rtol=1e-5 if dt == np.float32 else 1e-12,
                 atol=1e-5 if dt == np.float32 else 1e-12, what="scatter-add")


@given(n_tok=st.integers(1, 80), V=st.integers(1, 9), E=st.integers(1, 40), seed=st.integers(0, 99))
def test_embedding_backward_equals_serial_sum(n_tok, V, E, seed):
    r = np.random.default_rng(seed)
    ids = r.integers(0, V, size=n_tok)
    dout = r.standard_normal((n_tok, E))
    dtable = np.zeros((V, E))
    embedding_backward(ids, dout, dtable, -1)
    expected = np.zeros((V, E))
    np.add.at(expected, ids, dout)
    assert_close(dtable, expected, rtol=1e-12, atol=1e-12)
    # the readable twin, one token at a time, sums every entry in the same token order:
    # bitwise equal, padding row included (float32 too, where the order would show)
    for dt, pad in ((np.float64, -1), (np.float32, int(ids[0]))):
        fused, naive = np.ones((V, E), dt), np.ones((V, E), dt)
        embedding_backward(ids, dout.astype(dt), fused, pad)
        embedding_backward_naive(ids, dout.astype(dt), naive, pad)
        assert np.array_equal(fused, naive)


# --------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_cross_entropy_matches_torch(dt, rng, threads):
    torch = require("torch")
    logits = (rng.standard_normal((13, 29)) * 4).astype(dt)
    logits[3] *= 1e3  # very large logits stay finite
    labels = rng.integers(0, 29, size=13)
    labels[[1, 5, 6]] = -100
    tz = t(logits, True)
    tl = torch.nn.functional.cross_entropy(tz, torch.from_numpy(labels), ignore_index=-100)
    tl.backward()
    loss, dz, count = cross_entropy(logits, labels)
    assert count == 10 and dz.dtype == dt and np.asarray(loss).dtype == dt
    assert_close(loss, n(tl), rtol=1e-5 if dt == np.float32 else 1e-12, atol=0, what="loss")
    assert_close(dz, n(tz.grad), **tol(dt), what="dlogits")
    assert np.all(dz[[1, 5, 6]] == 0)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    loss, dz, count = cross_entropy(np.ones((3, 4), np.float32), np.full(3, -100))
    assert loss == 0 and count == 0 and not dz.any()


def test_cross_entropy_bad_label_is_clear():
    with pytest.raises(IndexError, match="label 7"):
        cross_entropy(np.ones((2, 4)), np.array([1, 7]))


def test_cross_entropy_finite_differences(rng):
    z = rng.standard_normal((6, 5))
    labels = np.array([0, 4, -100, 2, 2, 1])
    _, dz, _ = cross_entropy(z, labels, scale=0.7)
    res = gradcheck(lambda: 0.7 * cross_entropy(z, labels, grad=False)[0], z, dz, "logits")
    assert res.max_rel_error < FD_TOL, res


# --------------------------------------------------------------------------- exp

@numba.njit(fastmath=FASTMATH)
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_float32(x[i])


def test_exp_float32_over_its_whole_range():
    """The float32 exp the softmax and the loss use, against float64 exp
    on three million points of [-104, 90]: within 0.69 ulp of the exact value where the
    result is a normal float32 (every float32: benchmarks/exp_every_float32.py, 0.683 at most; a correctly
    rounded exp would be within 0.5); 0 below (subnormals flushed), inf above, NaN stays
    NaN, exp(finfo.min) (a masked key) is exactly 0."""
    edge = np.float32([np.nan, -np.inf, np.inf, np.finfo(np.float32).min, 0, -0.0,
                       88.72283, 88.7229, -87.33654, -87.3366])
    x = np.concatenate([np.linspace(-104, 90, 3_000_001).astype(np.float32), edge])
    y = np.empty_like(x)
    _exp_all(x, y)
    exact = np.exp(x.astype(np.float64))
    normal = (exact >= np.finfo(np.float32).tiny) & (exact <= np.finfo(np.float32).max)
    ulp = np.spacing(exact[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y[normal] - exact[normal]) / ulp) <= 0.69
    assert np.all(y[exact < np.finfo(np.float32).tiny] == 0)
    assert np.all(np.isinf(y[(exact > np.finfo(np.float32).max) & ~np.isnan(x)]))
    assert np.isnan(y[-10]) and y[-9] == 0 and y[-7] == 0 and y[-6] == 1 and y[-5] == 1


@numba.njit(fastmath=FASTMATH)
def _exp_both(x, out, out_nonpositive):
    for i in range(x.shape[0]):
        out[i] = exp_float32(x[i])
        out_nonpositive[i] = exp_nonpositive32(x[i])


def test_exp_nonpositive32_is_exp_float32_at_or_below_zero():
    """The softmax's and the loss's exp (of x - max(x): never positive) leaves out
    exp_float32's overflow selects; for every argument at most 0 it must give exp_float32's
    bits. Here every 61st float32 from -0.0 down to -1.04e2 (18 million, every exponent
    and the flush to 0 at -87.34), the 2,000 around the flush, and -0.0, -inf, NaN,
    finfo.min (a masked key): bitwise equal. (All 1.1 billion of them were compared once,
    when it was written: equal.)"""
    bits = np.arange(0x80000000, 0xC2D00000, 61, dtype=np.uint64).astype(np.uint32)
    flush = np.float32(-87.336544750553).view(np.uint32)
    near = np.arange(flush - 1000, flush + 1000, dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), near.view(np.float32),
                        np.float32([-0.0, -np.inf, np.nan, np.finfo(np.float32).min])])
    y, y_nonpos = np.empty_like(x), np.empty_like(x)
    _exp_both(x, y, y_nonpos)
    assert np.array_equal(y.view(np.uint32), y_nonpos.view(np.uint32))
    assert y_nonpos[-4] == 1 and y_nonpos[-3] == 0 and np.isnan(y_nonpos[-2]) \
        and y_nonpos[-1] == 0
    near_flush = y_nonpos[len(bits):len(bits) + 2000]
    assert np.any(near_flush == 0) and np.any(near_flush > 0)


@numba.njit(fastmath=FASTMATH)
def _exp_shifted_both(x, m, out):  # out of place, and in place on a copy
    exp_shifted(x, m, out)
    inplace = x.copy()
    exp_shifted(inplace, m, inplace)
    return inplace


@numba.njit(fastmath=FASTMATH)
def _exp_one_at_a_time(x, m, out):
    for j in range(x.shape[0]):
        out[j] = exp_float32(x[j] - m)


@given(n=st.integers(0, 200), seed=st.integers(0, 99), nan=st.booleans())
def test_exp_shifted_every_length_same_bits(n, seed, nan):
    """The softmax's exp over a row: blocks of 32, the last n mod 32 values a block of
    their own (through a scratch block, in place or not: _base.exp_shifted). Every
    length, in place and out of place: bitwise exp_float32 of each x - m, one value at a
    time; a NaN stays in its place. (It fails if the tail block is written at the wrong
    offset, or if in place the loop's values are taken for the tail's inputs.)"""
    r = np.random.default_rng(seed)
    x = (r.standard_normal(n) * 30).astype(np.float32)
    if nan and n:
        x[r.integers(n)] = np.nan
    m = np.float32(np.max(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else np.float32(0)
    want, got = np.empty_like(x), np.empty_like(x)
    _exp_one_at_a_time(x, m, want)
    got_inplace = _exp_shifted_both(x, m, got)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(got_inplace.view(np.uint32), want.view(np.uint32))


@numba.njit(fastmath=FASTMATH)
def _exp_fast_all(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_fast32(x[i])


def test_exp_fast32_within_two_ulp_and_clamped():
    """gelu_new's backward's exp, float32 arithmetic only: within 2 ulp of float64 exp on
    three million points of its range [-87, 88]; outside, the value at the clamp (finite
    and normal: the sigmoid 1/(1+e) needs no inf)."""
    x = np.linspace(-87, 88, 3_000_001).astype(np.float32)
    y = np.empty_like(x)
    _exp_fast_all(x, y)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - exact) / ulp) <= 2.0
    out = np.float32([-1e30, -1000, -np.inf, 1000, np.inf])
    _exp_fast_all(out.copy(), out)
    assert np.array_equal(out, [y[0]] * 3 + [y[-1]] * 2), out  # exp(-87), exp(88)
    assert np.all(np.isfinite(out)) and np.all(out >= np.finfo(np.float32).tiny)


_ROW_KERNELS = """
import sys, numpy as np
from minialbert import kernels as K
rng = np.random.default_rng(0)
logits = (rng.standard_normal((64, 3000)) * 4).astype(np.float32)
loss, dlogits, _ = K.cross_entropy(logits, rng.integers(0, 3000, 64))
probs = K.softmax_forward(logits, K.mask_bias(np.ones((1, 3000)), np.float32))
x = (rng.standard_normal(100_000) * 4).astype(np.float32)
dx = K.gelu_new_backward(x, x)
h = rng.standard_normal((200, 77)).astype(np.float32)
g, b = rng.standard_normal(77).astype(np.float32), rng.standard_normal(77).astype(np.float32)
ln, mean, rstd = K.layernorm_forward(h, g, b, 1e-12)
dg, db = np.zeros_like(g), np.zeros_like(b)
dln = K.layernorm_backward(h, h, mean, rstd, g, dg, db)
rows = dict(loss=loss, dlogits=dlogits, probs=probs, dx=dx, ln=ln, dln=dln, dg=dg, db=db)
"""  # the kernels with a row sum or an exp, as both child scripts below run them

_SAME_BITS = _ROW_KERNELS + """
from minialbert.kernels import attention as A
qkv = rng.standard_normal((2 * 50, 3 * 64)).astype(np.float32)
starts, lens = np.array([0, 50]), np.array([50, 50])
bias = np.zeros((2, 50), np.float32)
ctx, p = A.attention_forward_qkv(qkv, starts, lens, bias, 50, 4, 0.0, 0)
dqkv = A.attention_backward_qkv(ctx, qkv, p, starts, lens, 50, 4, 0.0, 0)
np.savez(sys.argv[1], **rows, ctx=ctx, p=p, dqkv=dqkv)
from minialbert.kernels import matmul as M  # the GEMM chain's compiles in this process
print(*(len(getattr(M, n).signatures) for n in ("_gemm_block", "_macrokernel_packing", "_pack")))
"""


def test_compiled_here_and_loaded_from_the_cache_agree(tmp_path):
    """A run resumed in a new process loads its kernels from Numba's cache, the first run
    compiled them: both must compute the same bits. Two child processes, one cache folder:
    the first compiles and writes it, the second loads it. It failed twice before: with
    libm's exp, and with sums vectorised under fast-math reassociation (a compiled and a
    cached kernel summed a softmax row in different orders: kernels/reduce.py). Every
    kernel with a row sum is here: cross-entropy, softmax, LayerNorm, attention.

    The compiling child also counts the GEMM chain's compiles. Numba compiles a kernel once
    per signature and types a plain 0 or True in a call as that very value, so a call site
    with constants of its own compiles the chain again (seconds each, on a clean install):
    attention's six products, one signature of their own, once made six copies
    (matmul.I0, YES, NO). One each here, for float32."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    for name in ("compiled", "cached"):
        r = subprocess.run([sys.executable, "-c", _SAME_BITS, str(tmp_path / name)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        if name == "compiled":  # _gemm_block, _macrokernel_packing, _pack
            assert r.stdout.split() == ["1", "1", "1"], r.stdout
    assert any((tmp_path / "cache").rglob("*.nbc")), "the first child wrote no cache"
    a, b = np.load(tmp_path / "compiled.npz"), np.load(tmp_path / "cached.npz")
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []


_WIDTH_BITS = _ROW_KERNELS + """
from numba.core import registry
np.savez(sys.argv[1], **rows, y=K.gelu_new_forward(x))
print(registry.cpu_target.target_context.codegen()._tm_features)
"""


def test_wide_vectors_on_avx512_the_same_bits_and_never_over_the_users_setting(tmp_path):
    """kernels._wide_vectors: on a CPU with AVX-512, LLVM vectorises our plain loops 16
    floats wide ("-prefer-256-bit" added to Numba's CPU features before anything compiles),
    unless the user set NUMBA_CPU_FEATURES or NUMBA_CPU_NAME; elsewhere nothing changes.
    Every value is the same at either width (the same arithmetic on each, the sums written
    out): two child processes, one with the user's setting (the host's own features: LLVM's
    choice), compare the row kernels' bits — the softmax's and the loss's exps, gelu_new,
    LayerNorm's sums."""
    import os
    import subprocess
    import sys
    from numba.core import codegen, registry
    host = codegen.get_host_cpu_features()
    avx512 = "+avx512f" in host.split(",")
    users = bool(os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"))
    here = registry.cpu_target.target_context.codegen()._tm_features
    assert here.endswith(",-prefer-256-bit") == (avx512 and not users), here[-40:]
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    features = {}
    for name, extra in (("ours", {}), ("users", {"NUMBA_CPU_FEATURES": host})):
        r = subprocess.run([sys.executable, "-c", _WIDTH_BITS, str(tmp_path / name)],
                           env=dict(env, **extra), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        features[name] = r.stdout.split()[-1]
    assert features["users"] == host
    assert features["ours"] == (host + ",-prefer-256-bit" if avx512 else host)
    a, b = np.load(tmp_path / "ours.npz"), np.load(tmp_path / "users.npz")
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []


# --------------------------------------------------------------------------- dropout

def test_dropout_rate_scale_and_backward(rng):
    x = rng.standard_normal((300, 100)).astype(np.float32)
    key = dropout_key(seed=7, step=3, site=11)
    y, keep = dropout_forward(x, 0.1, key)
    rate = 1 - keep.mean()
    assert abs(rate - 0.1) < 5 * np.sqrt(0.1 * 0.9 / x.size)  # 5 sigma
    kept = keep.reshape(x.shape).astype(bool)
    assert_close(y[kept], x[kept] / np.float32(0.9), rtol=1e-6, atol=0)
    assert np.all(y[~kept] == 0) and y.dtype == np.float32
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = dropout_backward(dy, keep, 0.1)
    assert_close(dx, np.where(kept, dy / np.float32(0.9), 0), rtol=1e-6, atol=0)


def test_dropout_is_a_function_of_seed_step_site_only():
    x = np.ones((64, 64), np.float32)
    prev = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = dropout_forward(x, 0.3, dropout_key(1, 2, 3))[1]
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        b = dropout_forward(x, 0.3, dropout_key(1, 2, 3))[1]
    finally:
        numba.set_num_threads(prev)
    assert np.array_equal(a, b)
    for other in (dropout_key(2, 2, 3), dropout_key(1, 3, 3), dropout_key(1, 2, 4)):
        assert not np.array_equal(a, dropout_forward(x, 0.3, other)[1])


def test_dropout_p0_is_identity_and_bad_p_is_clear():
    x = np.ones(5, np.float32)
    y, keep = dropout_forward(x, 0.0, 1)
    assert y is x and keep is None and dropout_backward(x, None, 0.0) is x
    with pytest.raises(ValueError, match="dropout probability"):
        dropout_forward(x, 1.0, 1)


# --------------------------------------------------------------------------- gradcheck itself

def test_gradcheck_catches_a_wrong_gradient(rng):
    """The check must be able to fail: a layernorm backward missing its mean term."""
    x = rng.standard_normal((3, 5))
    g = np.ones(5)
    b = np.zeros(5)
    w = rng.standard_normal((3, 5))
    y, mean, rstd = layernorm_forward(x, g, b, 1e-12)
    wrong = w * rstd[:, None]  # treats mean and variance as constants
    res = gradcheck(lambda: (layernorm_forward(x, g, b, 1e-12)[0] * w).sum(), x, wrong, "x")
    assert res.max_rel_error > 1e-2, res


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda: 0.0, np.ones(3, np.float32), np.ones(3, np.float32))


# --------------------------------------------------------------------------- vsum / vdot

@numba.njit(cache=True)
def _row_sums(X, Y):  # through reduce.py, inside a kernel, as the kernels call them
    out = np.empty((X.shape[0], 5), dtype=X.dtype)
    for r in range(X.shape[0]):
        out[r, 0] = vsum(X[r])
        out[r, 1] = vdot(X[r], Y[r])
        out[r, 2] = vsum(X[r, ::2])  # a strided view takes the plain loop
        out[r, 3] = vmax(X[r])
        out[r, 4] = vmax(X[r, ::2])
    return out


@given(n_cols=st.integers(0, 200), dt=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 99))
def test_vsum_vdot_vmax_against_float64_numpy(n_cols, dt, seed):
    """The vector sums in a fixed order (kernels/reduce.py): any length (0, 1, below one
    vector, below U vectors, with a tail), float32 and float64, contiguous and strided,
    against NumPy in float64. Tolerance: float32 sums of n terms ~ n * 2^-24 relative
    to the sum of |terms|; float64 ~ 1e-13."""
    r = np.random.default_rng(seed)
    X = r.standard_normal((3, n_cols)).astype(dt)
    Y = r.standard_normal((3, n_cols)).astype(dt)
    got = _row_sums(X, Y)
    assert got.dtype == dt
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    want = np.stack([X64.sum(1), (X64 * Y64).sum(1), X64[:, ::2].sum(1)], 1)
    scale = np.stack([np.abs(X64).sum(1), np.abs(X64 * Y64).sum(1),
                      np.abs(X64[:, ::2]).sum(1)], 1) + 1e-30
    eps = 2e-7 if dt == np.float32 else 1e-15
    assert np.all(np.abs(got[:, :3] - want) <= 4 * eps * scale + 1e-30), (got, want)
    # the maximum is exact: equal to NumPy's (-inf for an empty row), NaNs skipped
    empty = np.full(3, -np.inf)
    assert np.array_equal(got[:, 3], X.max(1) if n_cols else empty)
    assert np.array_equal(got[:, 4], X[:, ::2].max(1) if n_cols else empty)
    if n_cols > 1:
        X[:, 1] = np.nan
        got = _row_sums(X, Y)
        assert np.array_equal(got[:, 3], np.nanmax(X, 1))


def _vsum_in_order(x, W, U=4):
    # reduce.py's documented order, in NumPy (each add rounded in x's dtype, as a vector
    # add rounds each lane): vector v into acc[v % U] for the blocks of U whole vectors,
    # the vectors after them (the last one filled up with zeros) into acc[0], then
    # (acc0 + acc1) + (acc2 + acc3), then the lanes halved pairwise down to one
    # (float64: the blocks only, then the elements after them one at a time)
    nv = -(-len(x) // W)
    vecs = np.zeros(nv * W, x.dtype)
    vecs[:len(x)] = x
    acc = np.zeros((U, W), x.dtype)
    in_blocks = len(x) // (U * W) * U
    for v, vec in enumerate(vecs.reshape(nv, W)):
        if v >= in_blocks and x.dtype == np.float64:
            break
        u = v % U if v < in_blocks else 0
        acc[u] = acc[u] + vec
    t = (acc[0] + acc[1]) + (acc[2] + acc[3])
    while len(t) > 1:
        t = t[:len(t) // 2] + t[len(t) // 2:]
    s = t[0]
    if x.dtype == np.float64:
        for value in x[in_blocks * W:]:
            s = s + value
    return s


@given(n_cols=st.integers(0, 300), dt=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 99))
def test_vsum_adds_in_the_documented_order(n_cols, dt, seed):
    """vsum's bits are those of the order kernels/reduce.py writes down, for every length
    (whole blocks of U vectors, up to U - 1 whole vectors after them, a last vector part
    filled; float64: the elements after the blocks one at a time): the compiled IR
    against a NumPy replay of that order, bit for bit."""
    from minialbert.kernels.reduce import VECTOR_BYTES
    x = np.random.default_rng(seed).standard_normal((1, n_cols)).astype(dt) * 1e3
    got = _row_sums(x, x)[0, 0]
    want = _vsum_in_order(x[0], VECTOR_BYTES // np.dtype(dt).itemsize)
    assert np.array([got], dt).tobytes() == np.array([want], dt).tobytes(), (got, want)


def test_warmup_compiles_every_exported_kernel():
    """kernels.warmup() is what makes the first real call fast: every Numba kernel that
    minialbert.kernels exports (and the attention module's) has a compiled signature
    after it, for float32 and float64."""
    import numba.core.registry
    from minialbert import kernels
    from minialbert.kernels import attention as A
    kernels.warmup()
    exported = {f"kernels.{k}": v for k, v in vars(kernels).items()}
    exported.update({f"attention.{k}": v for k, v in vars(A).items() if not k.startswith("_")
                     and getattr(v, "__module__", None) == A.__name__})  # its own, not imports
    dispatchers = {k: v for k, v in exported.items()
                   if isinstance(v, numba.core.registry.CPUDispatcher)}
    assert len(dispatchers) > 10, sorted(dispatchers)

    def dtypes(d):  # the float dtypes among the signatures it has compiled or loaded
        return {t for t in ("float32", "float64") if any(t in str(sg) for sg in d.signatures)}
    cold = sorted(k for k, d in dispatchers.items() if dtypes(d) != {"float32", "float64"}
                  and k != "kernels.dropout_mask")  # no float array: one build serves both
    assert dispatchers["kernels.dropout_mask"].signatures
    assert cold == [], cold


# ------------------------------------------------------------------ no float64 inside

def _float32_kernels():
    from minialbert import optim_kernels as ok
    from minialbert.kernels import act, loss, norm, softmax
    x = np.ones((8, 40), np.float32)
    g, r8, flat, h = np.ones(40, np.float32), np.ones(8, np.float32), x.reshape(-1), \
        np.float32(0.5)
    return {
        "layernorm_forward": (norm.layernorm_forward, lambda: (x, g, g, 1e-12)),
        "layernorm_backward": (norm.layernorm_backward,
                               lambda: (x, x, r8.copy(), r8.copy(), g, g.copy(), g.copy())),
        "softmax_forward": (softmax.softmax_forward, lambda: (x, x[:1])),
        "softmax_backward": (softmax.softmax_backward, lambda: (x, x)),
        "gelu_new_forward": (act.gelu_new_forward, lambda: (flat,)),
        "gelu_new_backward": (act.gelu_new_backward, lambda: (flat, flat)),
        "_xent_rows": (loss._xent_rows,
                       lambda: (x, np.zeros(8, np.int64), -100, True, x.copy(), r8.copy(), h)),
        "adamw_update": (ok.adamw_update, lambda: (flat.copy(), flat, flat.copy(), flat.copy(),
                                                   h, h, h, h, True, h, h, h, h)),
        "adam_direction": (ok.adam_direction, lambda: (flat.copy(), flat, flat.copy(),
                                                       flat.copy(), h, h, h, h, h, True, h,
                                                       flat.copy())),
    }


@pytest.mark.parametrize("name", list(_float32_kernels()))
def test_float32_kernels_never_widen_to_float64_in_a_loop(name):
    """A float32 kernel whose vector loop converts to float64 and back runs at half speed
    with no other sign (layernorm did: 1/C was a float32 over an int64, so float64, and
    each row's subtraction and scaling went through float64; the forward took twice the
    time). Compiled afresh here (machine code loaded from Numba's cache cannot be shown),
    its x86 assembly must hold no packed conversion float <-> double; a scalar one (an
    argument, a per-row log) is fine."""
    import platform
    import re
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("reads x86 assembly")
    kernel, args = _float32_kernels()[name]
    opts = {k: v for k, v in kernel.targetoptions.items() if k in ("parallel", "fastmath")}
    fresh = numba.njit(**opts)(kernel.py_func)
    fresh(*args())
    asm = fresh.inspect_asm(fresh.signatures[0])
    widened = re.findall(r"\bv?cvt(?:ps2pd|pd2ps)\b", asm)
    assert not widened, f"{name}: {len(widened)} packed float32 <-> float64 conversions"
