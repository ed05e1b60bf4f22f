"""profiler.KernelProfile: what it times, the GEMMs' arithmetic it counts, and that it puts
every kernel back when the block ends (chapter 10 and bench_inference print from it)."""
import numpy as np
import pytest

from minialbert import layers, model
from minialbert.config import AlbertConfig
from minialbert.kernels import PackedWeight, matmul_nn, matmul_nt, matmul_tn
from minialbert.model import AlbertModel
from minialbert.profiler import GEMM, ONE_CALL, KernelProfile, gemm_flops


@pytest.mark.parametrize("name, a, b, mnk", [
    ("matmul_nt", (5, 7), (3, 7), (5, 3, 7)),  # A [M, K], B [N, K]
    ("matmul_nn", (5, 7), (7, 3), (5, 3, 7)),  # A [M, K], B [K, N]
    ("matmul_tn", (7, 5), (7, 3), (5, 3, 7)),  # A [K, M], B [K, N]
])
def test_gemm_flops_reads_each_form(name, a, b, mnk):
    A, B = np.ones(a, np.float32), np.ones(b, np.float32)
    M, N, K = mnk
    assert gemm_flops(name, A, B) == 2 * M * N * K
    f = {"matmul_nt": matmul_nt, "matmul_nn": matmul_nn, "matmul_tn": matmul_tn}[name]
    assert f(A, B).shape == (M, N)  # the shapes above are the forms' own
    if name == "matmul_nt":
        assert gemm_flops(name, A, PackedWeight(B)) == 2 * M * N * K


@pytest.mark.parametrize("frozen, by_sequence, B", [(False, True, 2), (True, False, 2),
                                                    (True, True, 2), (True, True, 1)])
def test_profile_counts_every_gemm_of_a_forward_pass(frozen, by_sequence, B, monkeypatch):
    V, E, H, I, L, nh = 40, 8, 12, 20, 3, 3
    cfg = AlbertConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_hidden_layers=L,
                       num_attention_heads=nh, intermediate_size=I, max_position_embeddings=16)
    m = AlbertModel(cfg, seed=0)
    if frozen:
        m.freeze()
    monkeypatch.setattr(model, "BY_SEQUENCE", by_sequence)
    T = 5
    ids = np.random.default_rng(0).integers(1, V, (B, T))
    original = layers.matmul_nt
    with KernelProfile() as prof:
        assert layers.matmul_nt is not original  # wrapped while the block runs
        out, _ = m.forward(ids)
    assert layers.matmul_nt is original  # and put back after it
    n = B * T
    outside = (2 * n * E * H  # the embeddings' projection to H
               + 2 * B * H * H)  # the pooler
    layer_flops = L * 2 * n * H * (3 * H + H + I + I)  # q|k|v, attention output, FFN in, out
    # a frozen pass runs its layers in one call of their own (model.py: a batch by
    # sequence, one sentence layered), unless the switch for profiles is off
    one_call = frozen and by_sequence
    assert prof.calls[ONE_CALL] == (1 if one_call else 0)
    assert prof.one_call_flops == (layer_flops if one_call else 0)
    assert prof.gemm_flops == outside + (0 if one_call else layer_flops)
    assert prof.calls[GEMM] == 1 + (0 if one_call else 4 * L) + 1
    assert prof.seconds[GEMM] > 0 and prof.gemm_gflops() > 0
    assert prof.calls["attention (QK^T, softmax, PV)"] == (0 if one_call else L)
    ref, _ = m.forward(ids)  # the profile changes no value
    np.testing.assert_array_equal(out["last_hidden_state"], ref["last_hidden_state"])


def test_bench_inference_counts_the_arithmetic_of_a_pass(monkeypatch):
    # its ceilings (the most any GEMM reaches against HF on this machine) rest on
    # pass_flops: the dense part against what KernelProfile counts in a pass, the
    # attention part against the products the naive attention makes, counted one by one
    import pathlib
    import sys

    bench = str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        import bench_inference
    finally:
        sys.path.remove(bench)
    from minialbert.kernels import attention

    kw = dict(vocab_size=40, embedding_size=8, hidden_size=12, num_hidden_layers=3,
              num_attention_heads=3, intermediate_size=20)
    B, T = 2, 7
    dense, att = bench_inference.pass_flops(kw, B, T)
    m = AlbertModel(AlbertConfig(**kw, max_position_embeddings=16), seed=0).freeze()
    monkeypatch.setattr(model, "BY_SEQUENCE", False)  # every product its own call
    with KernelProfile() as prof:
        m.forward(np.random.default_rng(0).integers(1, 40, (B, T)))
    assert prof.gemm_flops == dense
    counted = []
    for name in ("matmul_nt", "matmul_nn"):
        f = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda A, B_, f=f, name=name: (
            counted.append(gemm_flops(name, A, B_)), f(A, B_))[1])
    q, k, v = np.random.default_rng(1).standard_normal((3, B, T, 12)).astype(np.float32)
    attention.attention_forward_naive(q, k, v, np.zeros((B, T), np.float32), 3, 0.0, 0)
    assert len(counted) == 2 * B * 3  # QK^T and P V, each head of each sequence
    assert kw["num_hidden_layers"] * sum(counted) == att
    # the ceiling: HF's time over those flops at the peak
    c = bench_inference.ceilings("tiny", [10.0, 20.0, 30.0], 100.0)
    for (_, B, T), hf_ms, got in zip(bench_inference.SHAPES, (10.0, 20.0, 30.0), c):
        at_peak_ms = sum(bench_inference.pass_flops(bench_inference.CONFIGS["tiny"], B, T)) \
            / 100e9 * 1e3
        assert got == pytest.approx(hf_ms / at_peak_ms)


@pytest.mark.parametrize("skip_unread", [False, True])
def test_profile_counts_attention_arithmetic_of_a_training_step(skip_unread):
    # forward QK^T and P V: 4 L_q L H a sequence and layer; the backward's four: 8 L_q L H.
    # Padding removed (the lengths below), and with skip_unread the last layer's queries
    # only at the rows the heads read (the masked positions and [CLS])
    from minialbert.heads import AlbertForPreTraining
    from minialbert.params import zeros_like_params

    V, E, H, I, L, nh, B, T = 40, 8, 12, 20, 3, 3, 3, 9
    cfg = AlbertConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_hidden_layers=L,
                       num_attention_heads=nh, intermediate_size=I, max_position_embeddings=16)
    m = AlbertForPreTraining(cfg, seed=0)
    m.unpad, m.skip_unread = True, skip_unread
    rng = np.random.default_rng(0)
    lens = np.array([9, 5, 7])
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int64)
    labels = np.full((B, T), -100)
    labels[0, [2, 5]], labels[1, 3], labels[2, [1, 4, 6]] = 7, 8, 9
    batch = dict(input_ids=rng.integers(5, V, (B, T)) * mask, attention_mask=mask,
                 token_type_ids=np.zeros((B, T), np.int64), labels=labels,
                 sentence_order_label=np.array([0, 1, 0]))
    with KernelProfile() as prof:
        out, cache = m.forward(**batch, mlm_path="masked")
        m.backward(cache, zeros_like_params(m.params))
    full = int((lens * lens).sum())  # every query of every sequence against its keys
    read = (labels != -100).sum(1) + 1  # the masked positions and [CLS]
    last = int((read * lens).sum()) if skip_unread else full
    assert prof.attention_flops == (4 + 8) * H * ((L - 1) * full + last)
    assert prof.calls["attention (QK^T, softmax, PV)"] == 2 * L
