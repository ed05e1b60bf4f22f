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
from minialbert.kernels.norm import layernorm_forward
from reference import assert_close, assert_runs_without_jit, n, require, t

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


def test_long_reduction_is_blocked_correctly(rng):
    """A weight gradient sums over thousands of tokens: the GEMM walks K in KC blocks, the
    first written (or added, with accumulate) and the rest added, in order."""
    from minialbert.kernels import matmul as mm
    KC = mm.blocking(np.float64, 9, 6)["KC"]
    dy = rng.standard_normal((2 * KC + 37, 9))
    x = rng.standard_normal((2 * KC + 37, 6))
    out = np.ones((9, 6))
    matmul_tn(dy, x, out=out, accumulate=True)
    assert_close(out, 1 + dy.T @ x, rtol=1e-12, atol=1e-11)
    assert_close(matmul_tn(dy, x), dy.T @ x, rtol=1e-12, atol=1e-11)


def test_empty_reduction_gives_zeros_or_leaves_out():
    A = np.ones((3, 0), np.float32)
    B = np.ones((4, 0), np.float32)
    assert np.array_equal(matmul_nt(A, B), np.zeros((3, 4), np.float32))
    out = np.full((3, 4), 2.0, np.float32)
    matmul_nt(A, B, out=out, accumulate=True)
    assert np.array_equal(out, np.full((3, 4), 2.0, np.float32))


# ---------------------------------------------------------------------------- the packed GEMM

def _kernels():
    """Every micro-kernel this CPU can run (the plain-loop twin on any CPU)."""
    from minialbert.kernels.microkernel import host_isa, kernels_up_to
    return kernels_up_to(host_isa())


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("isa", _kernels())
def test_microkernel_matches_its_readable_twin(dt, isa, rng):
    """The IR micro-kernel (vector registers, FMA) against ``microkernel_loops`` on the same
    packed panels: the same MR x NR tile, written and then accumulated."""
    from minialbert.kernels import matmul as mm
    from minialbert.kernels.microkernel import kernel_tile, microkernel_loops
    MR, NR = kernel_tile(dt, isa)
    for kc in (1, 3, 64):
        A = rng.standard_normal((MR, kc)).astype(dt)
        B = rng.standard_normal((kc, NR)).astype(dt)
        out = np.empty((MR, NR), dt)
        mm.gemm(A, False, B, False, out, False, kernel=isa)  # one tile: the micro-kernel alone
        Ap = np.ascontiguousarray(A.T).reshape(-1)
        ref = np.zeros(MR * NR, dt)
        microkernel_loops(kc, Ap, 0, np.ascontiguousarray(B).reshape(-1), 0, ref, 0, NR,
                          False, MR, NR)
        assert_close(out.reshape(-1), ref, **_tol(dt), what=f"{isa} kc={kc}")
        mm.gemm(A, False, B, False, out, True, kernel=isa)
        assert_close(out.reshape(-1), 2 * ref, **_tol(dt), what=f"{isa} kc={kc} accumulate")


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("isa", _kernels())
def test_ragged_tile_writes_its_block_only_with_the_whole_tiles_bits(dt, isa, rng):
    """A ragged tile (microkernel_edge: masked stores) writes, or adds into, exactly its
    first mr rows and nr columns of C, with the bits of the whole tile computed by the
    plain micro-kernel; every value around it (the rest of the tile's rows and columns,
    and the rows and columns beyond) is left as it was. So does the packing kernel's
    (microkernel_packing_edge), which also packs the whole panel of A on the way."""
    from numba import njit

    from minialbert.kernels.microkernel import (KERNELS, kernel_tile, microkernel,
                                                microkernel_edge, microkernel_packing_edge)

    @njit
    def whole(isa, kc, Ap, Bp, C, MR, NR):
        microkernel(isa, kc, Ap, 0, Bp, 0, C, 0, NR, False, MR, NR)

    @njit
    def ragged(isa, kc, Ap, Bp, C, c0, ldc, add, MR, NR, mr, nr):
        microkernel_edge(isa, kc, Ap, 0, Bp, 0, C, c0, ldc, add, MR, NR, mr, nr)

    @njit
    def ragged_packing(isa, kc, A, Ap, Bp, C, c0, ldc, add, MR, NR, mr, nr):
        # A: [MR, kc] rows along the reduction (an NT form's A), read in place
        microkernel_packing_edge(isa, kc, A, 0, kc, 1, Ap, 0, Bp, 0, C, c0, ldc, add, MR, NR,
                                 mr, nr)

    MR, NR = kernel_tile(dt, isa)
    W = NR // KERNELS[isa][3]  # the floats in one vector
    kc = 37
    Ap = rng.standard_normal(kc * MR).astype(dt)
    Bp = rng.standard_normal(kc * NR).astype(dt)
    full = np.empty(MR * NR, dt)
    whole(isa, kc, Ap, Bp, full, MR, NR)
    full = full.reshape(MR, NR)
    ldc = NR + 3
    for mr in sorted({1, max(MR - 1, 1), MR}):
        for nr in sorted({n for n in (1, W - 1, W, W + 1, NR - 1, NR) if 1 <= n <= NR}):
            for add in (False, True):
                C = rng.standard_normal((MR + 2, ldc)).astype(dt)
                start = C.copy()
                ragged(isa, kc, Ap, Bp, C.reshape(-1), ldc + 1, ldc, add, MR, NR, mr, nr)
                want = start.copy()
                block = full[:mr, :nr]
                want[1:1 + mr, 1:1 + nr] = start[1:1 + mr, 1:1 + nr] + block if add else block
                assert np.array_equal(C, want), (isa, dt, mr, nr, add)
                C = start.copy()
                packed = np.full(kc * MR, np.nan, dt)
                ragged_packing(isa, kc, np.ascontiguousarray(Ap.reshape(kc, MR).T).reshape(-1),
                               packed, Bp, C.reshape(-1), ldc + 1, ldc, add, MR, NR, mr, nr)
                assert np.array_equal(C, want), ("packing", isa, dt, mr, nr, add)
                assert np.array_equal(packed, Ap), ("packing", isa, dt)


@pytest.mark.parametrize("isa", _kernels())
@given(data=st.data())
def test_packed_gemm_any_shape_every_isa_every_form(isa, data):
    """Shapes around the tile and block sizes (1, primes, MR±1, NR±1, KC±1), each form,
    each micro-kernel, write and accumulate, against NumPy in float64."""
    from minialbert.kernels import matmul as mm
    b = mm.blocking(np.float64, 64, 64, kernel=isa)
    MR, NR, KC = b["MR"], b["NR"], b["KC"]
    dims = st.sampled_from([1, 2, 7, 13, MR - 1, MR + 1, NR - 1, NR + 1, 2 * NR + 3])
    M, N = data.draw(dims), data.draw(dims)
    K = data.draw(st.sampled_from([1, 5, KC - 1, KC + 1, 2 * KC + 7]))
    form = data.draw(st.sampled_from(["nt", "nn", "tn"]))
    accumulate = data.draw(st.booleans())
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    A = r.standard_normal((K, M) if form == "tn" else (M, K))
    B = r.standard_normal((N, K) if form == "nt" else (K, N))
    ref = {"nt": lambda: A @ B.T, "nn": lambda: A @ B, "tn": lambda: A.T @ B}[form]()
    out = r.standard_normal((M, N))
    start = out.copy()
    mm.gemm(A, form == "tn", B, form == "nt", out, accumulate, kernel=isa)
    assert_close(out, ref + start if accumulate else ref, rtol=1e-12, atol=1e-11,
                 what=f"{isa} {form} M={M} K={K} N={N} accumulate={accumulate}")


@pytest.mark.parametrize("isa", _kernels())
@given(data=st.data())
def test_packing_in_the_first_column_gives_the_bits_of_packing_first(isa, data):
    """The GEMM packs each block of A inside the first column of micro-kernel calls
    (microkernel_packing). It must give exactly the bits of packing the block first and
    then running the plain macro-kernel (one thread): the same numbers in the same order
    — ragged panels, several KC blocks, every form, both dtypes. So must attention's
    one-thread driver, _gemm_block."""
    from minialbert.kernels import matmul as mm
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    b = mm.blocking(dt, 64, 64, kernel=isa)
    MR, NR, KC = b["MR"], b["NR"], b["KC"]
    dims = st.sampled_from([1, 3, MR - 1, MR, MR + 1, 2 * MR + 5, NR + 1, 300])
    M, N = data.draw(dims), data.draw(dims)
    K = data.draw(st.sampled_from([1, 9, KC, KC + 1, 2 * KC + 7]))
    form = data.draw(st.sampled_from(["nt", "nn", "tn"]))
    if form == "tn" and data.draw(st.booleans()):  # rows of A 4 KiB apart: the TN form
        M = 4096 // np.dtype(dt).itemsize  # copies A's blocks first (gemm's copy_a)
    accumulate = data.draw(st.booleans())
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    A = r.standard_normal((K, M) if form == "tn" else (M, K)).astype(dt)
    B = r.standard_normal((N, K) if form == "nt" else (K, N)).astype(dt)
    out = r.standard_normal((M, N)).astype(dt)
    ref = out.copy()
    ref_in = out.copy()
    mm.gemm(A, form == "tn", B, form == "nt", out, accumulate, kernel=isa)
    Ap, Bp = mm.packing_buffers(M, N, K, MR, NR, KC, dt)
    single = ref.copy()
    ref_f = ref.reshape(-1)
    mm._zero_if_empty(K, accumulate, ref_f, 0, N, M, N)
    for p0 in range(0, K, KC):  # pack A's block, pack B's block, then the macro-kernel
        kc = min(KC, K - p0)
        mm._pack(A, form == "tn", p0, kc, 0, M, MR, Ap)
        mm._pack(B, form != "nt", p0, kc, 0, N, NR, Bp)
        b_end = np.int64(Bp.size if p0 == 0 else 0)  # with and without the next panel's prefetch
        mm._macrokernel(Ap, 0, Bp, 0, kc, M, N, ref_f, 0, N, accumulate or p0 > 0, isa, MR, NR,
                        b_end)
    assert np.array_equal(out, ref), (isa, form, M, K, N, accumulate)
    # both ways of packing B (whole before the products; by each task, a KC block of its
    # columns at a time), with C cut into several blocks across M and N, give them too
    none = np.empty(0, dt)
    for b_in_task in (False, True):
        for MC, NC in ((MR, NR), (2 * MR, 3 * NR), (M, N)):
            MC, NC = -(-MC // MR) * MR, -(-NC // NR) * NR
            tasks = -(-M // MC) * -(-N // NC)
            Apw = np.empty(tasks * mm.fused_a_size(MC, K, MR, KC), dt)
            Bpw = np.empty(max(tasks * mm.fused_a_size(NC, K, NR, KC),
                               -(-N // NR) * NR * K), dt)
            other = ref_in.copy()
            mm._gemm_fused(A, form == "tn", B, form == "nt", other, accumulate, isa, MR, NR,
                           KC, MC, NC, Apw, Bpw, True, False, none, 0, none, none, none, none,
                           0.0, b_in_task)
            assert np.array_equal(other, ref), (isa, form, M, K, N, MC, NC, b_in_task)
    # attention's one-thread driver (A read in place through its strides) gives them too
    rs, cs = (1, M) if form == "tn" else (K, 1)
    mm._gemm_block(A.reshape(-1), 0, rs, cs, M, B, form == "nt", 0, N, K, single.reshape(-1),
                   0, N, accumulate, isa, MR, NR, KC, Ap, Bp)
    assert np.array_equal(single, ref), (isa, form, M, K, N, accumulate)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_packed_panels_start_on_a_cache_line(dt, rng):
    """B's packed panels are read a vector at a time: every buffer that holds them starts
    a cache line (kernels._base.aligned_empty, in a kernel and from Python) — a
    PackedWeight's panels, the workspace gemm packs into, _gemm_block's scratch (one head
    of attention). NumPy's own arrays start 16 bytes into a line, Numba's 32."""
    from minialbert.kernels import PackedWeight
    from minialbert.kernels._base import ALIGN, aligned_empty, aligned_empty_py
    from minialbert.kernels.matmul import _workspace, packing_buffers
    assert ALIGN == 64
    for n in (1, 5, 17, 1000, 123457):
        for make in (aligned_empty, aligned_empty_py):
            a = make(n, np.dtype(dt))
            assert a.shape == (n,) and a.dtype == dt and a.ctypes.data % ALIGN == 0, (n, make)
    for M, N, K in [(5, 7, 3), (37, 130, 129), (300, 97, 1000)]:
        x, W = rng.standard_normal((M, K)).astype(dt), rng.standard_normal((N, K)).astype(dt)
        Wp = PackedWeight(W)
        matmul_nt(x, Wp)
        matmul_nn(rng.standard_normal((M, N)).astype(dt), Wp)
        matmul_tn(x, rng.standard_normal((M, N)).astype(dt))  # packs B into the workspace
        assert len(Wp.panel_sets) == 2
        assert all(p.ctypes.data % ALIGN == 0 for p in Wp.panel_sets.values()), (M, N, K)
        assert all(b.ctypes.data % ALIGN == 0 for b in _workspace.buffers.values())
        for MR, NR in [(6, 16), (8, 48)]:
            Bp = packing_buffers(M, N, K, MR, NR, 384, np.dtype(dt))[1]
            assert Bp.ctypes.data % ALIGN == 0 and Bp.size == -(-N // NR) * NR * min(K, 384)


@given(data=st.data())
def test_packed_weight_gives_the_same_bits_as_packing_on_the_fly(data):
    """A PackedWeight (a weight packed once, reused by every application of the shared
    layer) gives bitwise the products of the plain call, forward (NT) and backward (NN),
    write and accumulate, for row counts that pick different tiles (so one PackedWeight
    holds panels for several tiles), float32 and float64; reused, it packs nothing new."""
    from minialbert.kernels import PackedWeight
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    N = data.draw(st.sampled_from([1, 7, 32, 47, 48, 49, 130]))
    K = data.draw(st.sampled_from([1, 13, 127, 129, 300]))
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    W = r.standard_normal((N, K)).astype(dt)
    Wp = PackedWeight(W)
    for M in data.draw(st.lists(st.sampled_from([1, 5, 12, 36, 64, 97]), min_size=1,
                                max_size=3)):
        x = r.standard_normal((M, K)).astype(dt)
        dy = r.standard_normal((M, N)).astype(dt)
        assert np.array_equal(matmul_nt(x, Wp), matmul_nt(x, W))
        assert np.array_equal(matmul_nn(dy, Wp), matmul_nn(dy, W))
        out, ref = np.ones((M, N), dt), np.ones((M, N), dt)
        matmul_nt(x, Wp, out=out, accumulate=True)
        matmul_nt(x, W, out=ref, accumulate=True)
        assert np.array_equal(out, ref)
        kept = Wp.nbytes()
        matmul_nt(x, Wp)
        assert Wp.nbytes() == kept  # the second use packs nothing
    with use_blas(True):
        assert_close(matmul_nt(x, Wp), x @ W.T, **_tol(dt))


@given(data=st.data())
def test_epilogue_gives_the_bits_of_the_separate_kernels(data):
    """The dense layer's epilogue (bias, a residual, gelu_new, gelu_new's gradient applied
    to each block of C as soon as it is summed; LayerNorm of each block of whole rows)
    gives bitwise what the product followed by bias_add / += / gelu_new_forward /
    gelu_new_backward / layernorm_forward gives: for shapes that cut C into
    several blocks (across M and N), ragged tiles, K below and above KC, a PackedWeight or
    a plain B, float32 and float64, 1 thread and all; and, under the BLAS switch, the same
    layer as BLAS + those kernels."""
    from minialbert.kernels import PackedWeight
    from minialbert.kernels.act import gelu_new_backward, gelu_new_forward
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    M = data.draw(st.sampled_from([1, 2, 13, 37, 300, 601]))
    K = data.draw(st.sampled_from([1, 7, 128, 129, 300]))
    N = data.draw(st.sampled_from([1, 5, 32, 48, 97, 1100]))
    packed = data.draw(st.booleans())
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = r.standard_normal((M, K)).astype(dt)
    W = (r.standard_normal((N, K)) / np.sqrt(K)).astype(dt) * 3
    b = r.standard_normal(N).astype(dt)
    dy = r.standard_normal((M, N)).astype(dt)
    Wb = PackedWeight(W) if packed else W
    ref_h = bias_add(matmul_nt(x, W), b)
    ref_g = gelu_new_forward(ref_h.reshape(-1)).reshape(M, N)
    Wt = (r.standard_normal((K, N))).astype(dt)  # the backward's W: [N(out) = K, N(in)]
    ref_dh = gelu_new_backward(matmul_nn(x, Wt).reshape(-1), ref_h.reshape(-1)).reshape(M, N)
    ln = (r.standard_normal(N).astype(dt), r.standard_normal(N).astype(dt), 1e-12)
    ref_y = layernorm_forward(ref_h + dy, *ln)[0]
    saved = numba.get_num_threads()
    try:
        for threads in (1, saved):
            numba.set_num_threads(threads)
            assert np.array_equal(matmul_nt(x, Wb, bias=b), ref_h)
            g = np.full((M, N), np.nan, dt)
            h = matmul_nt(x, Wb, bias=b, gelu_out=g)
            assert np.array_equal(h, ref_h) and np.array_equal(g, ref_g), (M, K, N, threads)
            g = np.full((M, N), np.nan, dt)  # in place: out is gelu_out
            assert matmul_nt(x, Wb, out=g, bias=b, gelu_out=g) is g
            assert np.array_equal(g, ref_g), (M, K, N, threads)
            assert np.array_equal(matmul_nn(x, Wt, gelu_grad_of=ref_h), ref_dh)
            assert np.array_equal(matmul_nt(x, Wb, bias=b, residual=dy), ref_h + dy)
            y = matmul_nt(x, Wb, bias=b, residual=dy, layernorm=ln)
            assert np.array_equal(y, ref_y), (M, K, N, threads)
    finally:
        numba.set_num_threads(saved)
    with use_blas(True):
        g = np.empty((M, N), dt)
        h = matmul_nt(x, Wb, bias=b, gelu_out=g)
        assert_close(h, x @ W.T + b, **_tol(dt))
        assert np.array_equal(g, gelu_new_forward(h.reshape(-1)).reshape(M, N))
        h2 = np.empty((M, N), dt)
        matmul_nt(x, Wb, out=h2, bias=b, gelu_out=h2)
        assert np.array_equal(h2, g)
        dh = matmul_nn(x, Wt, gelu_grad_of=ref_h)
        assert_close(dh, ref_dh, **_tol(dt))
        assert_close(matmul_nt(x, Wb, bias=b, residual=dy), x @ W.T + b + dy, **_tol(dt))
        o = matmul_nt(x, Wb, bias=b, residual=dy)
        assert np.array_equal(matmul_nt(x, Wb, bias=b, residual=dy, layernorm=ln),
                              layernorm_forward(o, *ln)[0])


def test_layernorm_epilogue_in_the_tasks_and_after_them(rng):
    """matmul_nt's layernorm runs in each task when the blocking gives every task whole
    rows, and after the product when it cuts the columns (a few rows against a wide W):
    both give layernorm_forward's bits, with and without a bias and a residual."""
    from minialbert.kernels import matmul as mm
    from minialbert.kernels import PackedWeight, get_threads
    threads = get_threads()
    for M, N, whole in ((600, 256, True), (2, 1100, threads == 1)):
        x = rng.standard_normal((M, 64)).astype(np.float32)
        W = PackedWeight(rng.standard_normal((N, 64)).astype(np.float32))
        b, res = rng.standard_normal(N).astype(np.float32), rng.standard_normal((M, N))
        res = res.astype(np.float32)
        ln = (rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(
            np.float32), 1e-5)
        assert (mm.blocking(np.float32, M, N, b_packed=True, b_trans=True, K=64)["NC"] >= N) \
            == whole
        for kw in ({}, {"bias": b}, {"bias": b, "residual": res}):
            out = np.full((M, N), np.nan, np.float32)
            assert matmul_nt(x, W, out=out, layernorm=ln, **kw) is out
            assert np.array_equal(out, layernorm_forward(matmul_nt(x, W, **kw), *ln)[0]), \
                (M, N, kw.keys())


def test_epilogue_arguments_are_checked(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    W = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="bias"):
        matmul_nt(x, W, bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="bias"):
        matmul_nt(x, W, bias=np.zeros(5, np.float64))
    with pytest.raises(ValueError, match="shape"):
        matmul_nt(x, W, gelu_out=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="accumulate"):
        matmul_nt(x, W, out=np.zeros((3, 5), np.float32), accumulate=True,
                  bias=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="shape"):
        matmul_nn(x, W.T.copy(), gelu_grad_of=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        matmul_nt(x, W, residual=np.zeros((5, 3), np.float32))
    g = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="gamma"):
        matmul_nt(x, W, layernorm=(np.ones(4, np.float32), g, 1e-12))
    with pytest.raises(ValueError, match="beta"):
        matmul_nt(x, W, layernorm=(g, g.astype(np.float64), 1e-12))
    with pytest.raises(ValueError, match="accumulate"):
        matmul_nt(x, W, out=np.zeros((3, 5), np.float32), accumulate=True,
                  layernorm=(g, g, 1e-12))


def test_tile_is_picked_from_the_shape():
    """AVX-512 has three tiles: 8 x 48 unless 12 x 32 or 8 x 32 covers the product with
    less padding (N = 128, the embedding size; N = 64, a head; M = 128, one sentence or a
    head's queries); on a tie the first of them. Rows count as a block's panels cover
    them: 12 x 32's blocks end in 8-row panels (tail_start), so 12 x 32 covers 128 rows
    (10 x 12 + 8) and 2500 (207 x 12 + 2 x 8) exactly, and wins the tie with 8 x 32. The
    choice depends on the shape only, never on the machine's thread count. (Pure logic:
    runs on any CPU.)"""
    from minialbert.kernels.microkernel import pick_kernel
    assert pick_kernel(np.float32, "avx512", 1024, 768) == (3, 8, 48)
    assert pick_kernel(np.float32, "avx512", 2508, 128) == (4, 12, 32)  # 2508 = 12 x 209
    assert pick_kernel(np.float32, "avx512", 2500, 128) == (4, 12, 32)  # 207 x 12 + 2 x 8
    # 2504 rows either way (208 x 12 + 8 and 313 x 8): a tie. (Where 8 x 32 covers the
    # rows exactly, so does 12 x 32 with its tail: 8 x 32 now runs as that tail.)
    assert pick_kernel(np.float32, "avx512", 2502, 128) == (4, 12, 32)
    assert pick_kernel(np.float32, "avx512", 128, 64) == (4, 12, 32)
    assert pick_kernel(np.float32, "avx512", 128, 768) == (3, 8, 48)  # a tie: the first
    assert pick_kernel(np.float64, "avx512", 1024, 768) == (3, 8, 24)
    assert pick_kernel(np.float64, "avx512", 128, 64) == (4, 12, 16)
    assert pick_kernel(np.float32, "avx2", 2500, 128) == (2, 6, 16)


def test_blocking_is_kept_per_shape_and_packs_a_transposed_b_once():
    """blocking() is worked out once per shape and kept; each call gets a dict of its own.
    With more row blocks than threads, a B whose rows run along the reduction (NT: a
    transposing pack) is packed once, whole; the TN form's B (row copies) by each task.
    (Pure logic: runs on any CPU; which path gives the same bits is the test above.)"""
    from minialbert.kernels import matmul as mm
    a = mm.blocking(np.float32, 1024, 768, "avx512", threads=2)
    a["MC"] = -1
    assert mm.blocking(np.float32, 1024, 768, "avx512", threads=2)["MC"] == 256  # 4 x 256
    assert mm.blocking(np.float32, 1024, 768, "avx512", threads=2, b_trans=True)["b_in_task"] \
        is False
    assert mm.blocking(np.float32, 1024, 768, "avx512", threads=2)["b_in_task"] is True
    # one block of rows per thread: each packs its own, either form
    assert mm.blocking(np.float32, 512, 768, "avx512", threads=2, b_trans=True)["b_in_task"]
    # ... unless the whole packed B is small (K x N x 4 bytes <= 2 MiB): then once, whole
    assert not mm.blocking(np.float32, 512, 768, "avx512", threads=2, K=512)["b_in_task"]
    assert mm.blocking(np.float32, 512, 768, "avx512", threads=2, K=4096)["b_in_task"]
    # one block of rows: nothing is shared, each task packs its own columns
    assert mm.blocking(np.float32, 256, 1024, "avx512", threads=2, K=128)["b_in_task"]
    # rows that fit one block, cut only to give each thread work: the columns are cut
    # instead, each task packs its own share of B (one parallel region, not two)
    b = mm.blocking(np.float32, 256, 256, "avx2", threads=2, b_trans=True, K=256)
    assert (b["MC"], b["NC"], b["b_in_task"]) == (258, 128, True)
    # ... but not when the rows need two blocks anyway
    assert not mm.blocking(np.float32, 520, 256, "avx2", threads=2, K=256)["b_in_task"]


def test_small_products_and_one_thread_run_serially():
    """gemm's plan: one thread, one task, or a product under _SERIAL_FLOPS runs on the
    calling thread (_gemm_serial: no parallel region to wake); the rest in parallel.
    Which path gives the same bits: test_packed_gemm_bitwise_across_threads_and_runs."""
    from minialbert.kernels import matmul as mm
    f32 = np.dtype(np.float32)

    def run(M, N, K, threads):
        return mm._plan(f32, M, N, K, "avx2", threads, None, False, False, True)[0]
    assert run(8, 8, 8, 2) is mm._gemm_serial
    assert run(60, 64, 64, 2) is mm._gemm_serial  # 2 M N K just under 2^19
    assert run(64, 64, 64, 2) is mm._gemm_fused  # 2^19
    assert run(128, 128, 128, 2) is mm._gemm_fused
    assert run(512, 512, 512, 1) is mm._gemm_serial


@given(data=st.data())
def test_serial_and_parallel_drivers_give_the_same_bits(data):
    """_gemm_serial runs _gemm_fused's tasks in order on one thread: the same bits for
    every form, both dtypes, accumulate or not, with the bias + gelu epilogue, on shapes
    either side of the serial threshold and the column cut."""
    from minialbert.kernels import matmul as mm
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    dims = st.sampled_from([1, 5, 16, 17, 64, 130, 300])
    M, N, K = data.draw(dims), data.draw(dims), data.draw(st.sampled_from([1, 7, 129, 300]))
    form = data.draw(st.sampled_from(["nt", "nn", "tn"]))
    accumulate = form != "nt" and data.draw(st.booleans())
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    A = r.standard_normal((K, M) if form == "tn" else (M, K)).astype(dt)
    B = r.standard_normal((N, K) if form == "nt" else (K, N)).astype(dt)
    start = r.standard_normal((M, N)).astype(dt)
    epi = {}
    if form == "nt":  # the FFN's forward: bias and gelu_new in the epilogue
        epi = dict(bias=r.standard_normal(N).astype(dt), act=mm.EPI_GELU)
    outs = []
    for run in (mm._gemm_fused, mm._gemm_serial):
        out = start.copy()
        X = np.empty((M, N), dt) if epi else None
        mm.gemm(A, form == "tn", B, form == "nt", out, accumulate, X=X, run=run, **epi)
        outs.append((out, X))
    assert np.array_equal(outs[0][0], outs[1][0]), (form, M, N, K, dt)
    if epi:
        assert np.array_equal(outs[0][1], outs[1][1])


@given(data=st.data())
def test_transposing_pack_matches_numpy(data):
    """The NT form's pack: a [kc, n] block of X.T (X is [*, K], rows of unit stride but
    any row stride) into panels [kc, R], 8 x 8 blocks through the register transpose
    (float32) or loops (float64), ragged edges a value at a time, columns past n zero."""
    from minialbert.kernels import matmul as mm
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    R = data.draw(st.sampled_from([8, 12, 16, 48]))
    n = data.draw(st.integers(1, 2 * R + 9))
    kc = data.draw(st.integers(1, 40))
    j0, p0 = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    pad = data.draw(st.integers(0, 3))  # X a column slice of a wider array: row stride > K
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    wide = r.standard_normal((j0 + n + 2, p0 + kc + 1 + pad)).astype(dt)
    X = wide[:, :p0 + kc + 1]
    panels = -(-n // R)
    out = np.full(panels * kc * R, np.nan, dt)
    mm._pack(X, False, p0, kc, j0, n, R, out)
    # R = 12 (AVX-512's 12 x 32 tile packing A) ends in panels of 8 from tail_start on
    t0, T = mm.tail_start(n, R), mm.tail_mr(R)
    heights = [R] * -(-t0 // R) + [T] * -(-(n - t0) // T)
    cols = X[j0:j0 + n, p0:p0 + kc].T
    parts, c = [], 0
    for h in heights:
        block = np.zeros((kc, h), dt)
        block[:, :min(h, n - c)] = cols[:, c:c + h]
        parts.append(block.reshape(-1))
        c += h
    ref = np.concatenate(parts)
    assert np.array_equal(out[:ref.size], ref), (dt, R, n, kc, j0, p0, pad)


@given(data=st.data())
def test_whole_pack_of_b_lays_out_every_panel(data):
    """_pack_b packs B whole, in parallel, several panels a task (_b_group: up to 8, so
    that a task reads long strips of B's rows) — and _gemm_serial's loop the same tasks:
    every KC block's panels [kc, NR] side by side, columns past N zero, for widths that
    leave the last group or the last panel short, both layouts of B, both dtypes."""
    from minialbert.kernels import matmul as mm
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    NR = data.draw(st.sampled_from([16, 32, 48]))
    N = data.draw(st.sampled_from([1, NR * 15 + 1, NR * 16, NR * 17 - 5, NR * 64 + 3]))
    K, KC = data.draw(st.sampled_from([(1, 384), (40, 16), (300, 128)]))
    b_trans = data.draw(st.booleans())  # B [N, K] (the NT form) or [K, N] (NN and TN)
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    B = r.standard_normal((N, K) if b_trans else (K, N)).astype(dt)
    opB = B.T if b_trans else B  # [K, N]
    Np = -(-N // NR)
    ref = []
    for p0 in range(0, K, KC):
        block = np.zeros((min(KC, K - p0), Np * NR), dt)
        block[:, :N] = opB[p0:p0 + KC]
        ref += [block[:, j * NR:(j + 1) * NR].reshape(-1) for j in range(Np)]
    ref = np.concatenate(ref)
    out = np.full(Np * NR * K, np.nan, dt)
    mm._pack_b(B, b_trans, N, K, NR, KC, out)
    assert np.array_equal(out, ref), (dt, NR, N, K, KC, b_trans)
    out[:] = np.nan
    for t in range(mm._pack_tasks.py_func(N, K, NR, KC)):  # as _gemm_serial runs it
        mm._pack_b_task(t, B, b_trans, N, K, NR, KC, out)
    assert np.array_equal(out, ref), (dt, NR, N, K, KC, b_trans)


@given(kc=st.integers(1, 600), NR=st.sampled_from([16, 32, 48]), rows=st.integers(1, 300),
       MR=st.sampled_from([4, 6, 8, 12]), itemsize=st.sampled_from([4, 8]))
def test_a_column_of_tiles_asks_for_every_line_of_the_next_panel_once(kc, NR, rows, MR,
                                                                      itemsize):
    """The next panel's prefetch (_prefetch_share): the tiles of one column, each asking
    for its share of the next panel of B, together ask for each of its cache lines once —
    for any kc, tile and number of rows (one tile, a ragged last tile, more tiles than
    lines) — and for nothing past it."""
    from minialbert.kernels import matmul as mm
    size = kc * NR  # the panel's values
    share = mm._panel_share.py_func(size, rows, MR, itemsize)
    asked = []
    for k in range(-(-rows // MR)):  # the column's tiles
        lo, hi, step = mm.share_range.py_func(k, share, size, itemsize)
        asked += [q * itemsize // 64 for q in range(lo, hi, step)]
    assert sorted(asked) == list(range(-(-size * itemsize // 64))), (kc, NR, rows, MR)

@given(data=st.data())
def test_row_pack_matches_the_transposing_pack_and_stays_in_its_block(data):
    """AVX2's pack of A's rows (_pack_rows: eight steps of a panel at a time through
    registers, each 8-wide store spilling past its MR values onto what is written next)
    gives the panels of the plain transposing pack, for any rows, row stride, kc and
    offset, both dtypes — and writes nothing past its panels: in the GEMM the next values
    belong to another task's block. (On AVX2's tile, MR 6, the last rows of a block go in
    panels of 4 from tail_start on: both packs lay them out so.)"""
    from minialbert.kernels import matmul as mm
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    MR = data.draw(st.sampled_from([4, 6, 8]))
    m = data.draw(st.integers(1, 4 * MR + 3))
    kc = data.draw(st.sampled_from([1, 5, 7, 8, 9, 16, 23, 64]))
    i0, p0 = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 9))
    pad = data.draw(st.integers(0, 5))  # row stride beyond p0 + kc
    r = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    A = r.standard_normal((i0 + m + 2, p0 + kc + pad)).astype(dt)
    t0 = mm.tail_start(m, MR)  # m: no tail
    size = (-(-t0 // MR) * MR + -(-(m - t0) // mm.TAIL_MR) * mm.TAIL_MR) * kc
    assert size <= -(-m // MR) * MR * kc  # within the buffer packing_buffers gives
    ref = np.full(size, np.nan, dt)
    mm._pack(A, False, p0, kc, i0, m, MR, ref)
    lead = data.draw(st.integers(0, 3))  # the block at an offset of its buffer
    out = np.full(lead + size + 16, -7.0, dt)
    mm._pack_rows(A.reshape(-1), i0 * A.shape[1] + p0, A.shape[1], kc, m, MR,
                  out[lead:lead + size])
    assert np.array_equal(out[lead:lead + size], ref), (dt, MR, m, kc, i0, p0, pad)
    assert np.all(out[:lead] == -7.0) and np.all(out[lead + size:] == -7.0)


def test_tail_panels_start_where_the_tile_would_be_ragged():
    """tail_start: AVX2's 6-row tile ends a block of m = 6q + r rows (r = 1..4) in panels
    of 4, AVX-512's 12-row tile one of m = 12q + r (r = 1..8) in panels of 8; every other
    tile has none. (Pure logic: runs on any CPU.)"""
    from minialbert.kernels import matmul as mm
    ms = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 32, 128)
    assert [mm.tail_start(m, 6) for m in ms] == [0, 0, 0, 0, 5, 6, 0, 0, 6, 11, 12, 6, 24,
                                                   120]
    ms12 = (1, 4, 8, 9, 12, 13, 16, 17, 20, 21, 24, 28, 32, 64, 128)
    assert [mm.tail_start(m, 12) for m in ms12] == [0, 0, 0, 9, 12, 0, 0, 12, 12, 21, 24,
                                                    12, 24, 48, 120]
    assert [mm.tail_rows(m, 12) for m in ms12] == [8, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24,
                                                   28, 32, 64, 128]
    assert all(mm.tail_start(m, MR) == m for m in ms for MR in (4, 8, 16))  # other tiles
    # a block's rows a multiple of MR - tail_mr(MR) on such a tile: two blocks of 64
    for isa in ("avx512", "avx2"):
        assert mm.blocking(np.float32, 128, 1024, isa, threads=2, b_packed=True)["MC"] == 64


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("code", [c for c in (2, 4) if c in _kernels()])
def test_tail_panels_give_the_main_tiles_bits(dt, code, rng):
    """AVX2's 6-row tile (code 2) leaves a block of m = 6q + r rows (r = 1..4) a ragged
    last panel, computed whole; those rows go in panels of 4 instead (tail_start: 128 rows
    as 20 x 6 + 2 x 4), run by the 4-row tail tile. AVX-512's 12 x 32 (code 4) likewise
    ends in panels of 8, run by its 8 x 32 tile (128 rows as 10 x 12 + 8). Every row gets
    the bits the main tile gives it: each row against the same row computed in a block of
    5 rows on AVX2 (no tail: one 6-row panel masked to 5), of 11 on AVX-512 (one 12-row
    panel masked to 11), in the three forms, one KC block and three, written and
    accumulated, and with packed weights."""
    from minialbert.kernels import matmul as mm
    ref_rows = 5 if code == 2 else 11
    assert mm.tail_start(ref_rows, 6 if code == 2 else 12) == ref_rows  # no tail
    KC = mm.blocking(dt, 64, 64, kernel=code)["KC"]
    N = 37
    for M in (1, 2, 3, 4, 7, 8, 10, 13, 20, 32, 128):
        for K in (5, 2 * KC + 3):
            for form in ("nt", "nn", "tn", "packed"):
                a_trans, b_trans = form == "tn", form in ("nt", "packed")
                A = rng.standard_normal((K, M) if a_trans else (M, K)).astype(dt)
                B = rng.standard_normal((N, K) if b_trans else (K, N)).astype(dt)
                Bop = mm.PackedWeight(B) if form == "packed" else B
                start = rng.standard_normal((M, N)).astype(dt)
                for accumulate in (False, True):
                    out = start.copy()
                    mm.gemm(A, a_trans, Bop, b_trans, out, accumulate, kernel=code)
                    for i in range(M):  # row i as the first of a block of ref_rows rows
                        A5 = np.zeros((K, ref_rows) if a_trans else (ref_rows, K), dt)
                        rows = min(ref_rows, M - i)
                        if a_trans:
                            A5[:, :rows] = A[:, i:i + rows]
                        else:
                            A5[:rows] = A[i:i + rows]
                        out5 = np.zeros((ref_rows, N), dt)
                        out5[0] = start[i]
                        mm.gemm(A5, a_trans, Bop, b_trans, out5, accumulate, kernel=code)
                        assert np.array_equal(out[i], out5[0]), (dt, M, K, form, accumulate,
                                                                 i)


def test_packed_gemm_bitwise_across_threads_and_runs(rng):
    """Float32, shapes that split into many blocks: 1 thread, all threads, and a repeat
    give the very same bits (each tile's sum runs in one fixed order)."""
    A = rng.standard_normal((517, 700)).astype(np.float32)
    B = rng.standard_normal((300, 700)).astype(np.float32)
    prev = numba.get_num_threads()
    try:
        results = []
        for th in (1, numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(th)
            results.append((matmul_nt(A, B), matmul_nn(A[:, :300], B), matmul_tn(A, A[:, :64])))
    finally:
        numba.set_num_threads(prev)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert np.array_equal(x, y)


def test_the_three_steps_of_chapter_01_agree(rng):
    from minialbert.kernels.matmul import matmul_nt_4x4
    A = rng.standard_normal((37, 50)).astype(np.float32)
    B = rng.standard_normal((29, 50)).astype(np.float32)
    ref = matmul_nt_naive(A, B)
    assert_close(matmul_nt_4x4(A, B), ref, **_tol(np.float32), what="4x4")
    assert_close(matmul_nt(A, B), ref, **_tol(np.float32), what="packed")


def test_gemm_runs_as_plain_python_under_disable_jit():
    """Chapter 01: NUMBA_DISABLE_JIT=1 steps through every kernel in a debugger; the GEMM
    then uses the plain-loop micro-kernel (the IR one cannot run as Python)."""
    assert_runs_without_jit(
        "import numpy as np; from minialbert.kernels import matmul as mm;"
        "r = np.random.default_rng(0); A = r.standard_normal((5, 19)); B = r.standard_normal((17, 19));"
        "assert mm.ISA == 'loops', mm.ISA;"
        "assert np.allclose(mm.matmul_nt(A, B), A @ B.T, rtol=1e-12, atol=1e-12);"
        "assert np.allclose(mm.matmul_tn(A, A), A.T @ A, rtol=1e-12, atol=1e-12); print('ok')")
