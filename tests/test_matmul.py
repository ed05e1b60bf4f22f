"""matmul: our tiled parallel GEMM against the naive loop, NumPy and torch.

Tolerances: float64 ~1e-12 relative (only summation order differs); float32 1e-5
relative + a small absolute term for sums of up to a few hundred products (each
rounding ~6e-8, sums of K terms grow like sqrt(K)·|terms|).
"""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialbert.kernels import matmul_nn, matmul_nt, matmul_nt_naive, matmul_tn, use_blas
from minialbert.kernels.matmul import bias_add, bias_grad, transpose
from reference import assert_close, n, require, t

SIZES = [1, 2, 3, 4, 5, 7, 13, 31, 64, 67]  # 1, primes, tile multiples and not


def _tol(dt):
    return dict(rtol=1e-5, atol=1e-4) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (4, 4, 4), (5, 3, 7), (13, 31, 2), (67, 64, 5),
                                   (3, 129, 66), (64, 1, 64)])
def test_three_forms_match_numpy_and_naive(dt, M, K, N, threads, rng):
    A = rng.standard_normal((M, K)).astype(dt)
    B = rng.standard_normal((N, K)).astype(dt)
    D = rng.standard_normal((M, N)).astype(dt)
    C = matmul_nt(A, B)
    assert C.dtype == dt
    assert_close(C, A @ B.T, **_tol(dt), what="NT vs numpy")
    assert_close(C, matmul_nt_naive(A, B), **_tol(dt), what="NT vs naive")
    assert_close(matmul_nn(D, B), D @ B, **_tol(dt), what="NN")
    assert_close(matmul_tn(D, A), D.T @ A, **_tol(dt), what="TN")
    assert matmul_nn(D, B).dtype == dt and matmul_tn(D, A).dtype == dt


@given(M=st.sampled_from(SIZES), K=st.sampled_from(SIZES), N=st.sampled_from(SIZES),
       seed=st.integers(0, 2**16))
def test_nt_any_shape(M, K, N, seed):
    r = np.random.default_rng(seed)
    A = r.standard_normal((M, K))
    B = r.standard_normal((N, K))
    assert_close(matmul_nt(A, B), A @ B.T, rtol=1e-12, atol=1e-12)


def test_accumulate_adds_into_out(rng):
    A = rng.standard_normal((9, 6)).astype(np.float32)
    B = rng.standard_normal((5, 6)).astype(np.float32)
    out = np.ones((9, 5), np.float32)
    matmul_nt(A, B, out=out, accumulate=True)
    assert_close(out, 1 + A @ B.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out array"):
        matmul_nt(A, B, accumulate=True)


def test_bad_shapes_and_dtypes_are_clear_errors():
    with pytest.raises(ValueError, match="do not fit"):
        matmul_nt(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(TypeError, match="dtype mismatch"):
        matmul_nt(np.ones((2, 3), np.float32), np.ones((2, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        matmul_nt(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64))


def test_result_is_bitwise_independent_of_thread_count(rng):
    A = rng.standard_normal((130, 300)).astype(np.float32)
    B = rng.standard_normal((70, 300)).astype(np.float32)
    prev = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = matmul_nt(A, B), matmul_tn(A[:70], B), bias_grad(A, np.zeros(300, np.float32))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = matmul_nt(A, B), matmul_tn(A[:70], B), bias_grad(A, np.zeros(300, np.float32))
    finally:
        numba.set_num_threads(prev)
    for a, b in zip(one, many):
        assert np.array_equal(a, b)


def test_blas_switch_gives_the_same_products(rng):
    A = rng.standard_normal((33, 20))
    B = rng.standard_normal((20, 17))
    ours = matmul_nn(A, B)
    with use_blas(True):
        blas = matmul_nn(A, B)
    assert_close(ours, blas, rtol=1e-12, atol=1e-12)


def test_transpose_and_bias(rng):
    X = rng.standard_normal((37, 45)).astype(np.float32)
    assert np.array_equal(transpose(X), X.T)
    b = rng.standard_normal(45).astype(np.float32)
    Y = X.copy()
    bias_add(Y, b)
    assert_close(Y, X + b, rtol=0, atol=0)
    db = np.full(45, 2.0, np.float32)
    bias_grad(X, db)
    assert_close(db, 2 + X.sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_dense_forms_against_torch_autograd(dt, rng):
    """y = x @ W.T + b in torch; its autograd dx, dW, db are our NN, TN and column sum."""
    torch = require("torch")
    x = rng.standard_normal((23, 17)).astype(dt)
    W = rng.standard_normal((11, 17)).astype(dt)
    b = rng.standard_normal(11).astype(dt)
    dy = rng.standard_normal((23, 11)).astype(dt)
    tx, tW, tb = t(x, True), t(W, True), t(b, True)
    ty = torch.nn.functional.linear(tx, tW, tb)
    ty.backward(t(dy))
    y = matmul_nt(x, W)
    bias_add(y, b)
    db = np.zeros_like(b)
    bias_grad(dy, db)
    tol = _tol(dt)
    assert_close(y, n(ty), **tol, what="y")
    assert_close(matmul_nn(dy, W), n(tx.grad), **tol, what="dx")
    assert_close(matmul_tn(dy, x), n(tW.grad), **tol, what="dW")
    assert_close(db, n(tb.grad), **tol, what="db")


def test_tn_long_reduction_is_chunked_correctly(rng):
    """A weight gradient sums over thousands of tokens: done in chunks of _TN_CHUNK rows."""
    from minialbert.kernels import matmul as mm
    dy = rng.standard_normal((2 * mm._TN_CHUNK + 37, 9))
    x = rng.standard_normal((2 * mm._TN_CHUNK + 37, 6))
    out = np.ones((9, 6))
    matmul_tn(dy, x, out=out, accumulate=True)
    assert_close(out, 1 + dy.T @ x, rtol=1e-12, atol=1e-11)
    assert_close(matmul_tn(dy, x), dy.T @ x, rtol=1e-12, atol=1e-11)
