"""The encoder in one compiled call (kernels/encoder.py): by sequence (model._by_sequence),
a frozen batch's layers, each sequence through every layer on one thread; and layered
(model._layered), the layer loop compiled whole, every kernel on all threads (one sentence,
or a batch that does not run by sequence). Each must give the layered pass's bits exactly
(the same kernels, each sum in the same order), for every way the batch's rows can form
sequences (padded with a mask, packed without padding, lengths that are not a multiple of
any tile, one token), every sharing of the layers, both dtypes, one thread and all; and
each must run only where it applies."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minialbert.model as model_module
from minialbert import kernels
from minialbert.kernels import mask_bias
from minialbert.layers import Dropout, Sequences, Weights
from minialbert.model import AlbertModel, by_sequence_groups, encoder_forward
from reference import assert_close, assert_runs_without_jit, hf_from_params, n, require
from test_model import tiny


def cfg_of(**kw):  # test_model's tiny config, a little wider and longer
    return tiny(**{**dict(vocab_size=60, hidden_size=24, intermediate_size=40,
                          max_position_embeddings=64), **kw})


def both_ways(cfg, h, seqs, params, by=True):
    # (the pass by=True (by sequence) or None (decide: layered compiled, for what does not
    # run by sequence), the layered pass from Python)
    weights = Weights(params)
    run = [encoder_forward(h, params, cfg, seqs, Dropout(), weights=weights, keep=False,
                           hidden=False, by_sequence=b)[0] for b in (by, False)]
    return run


def counting(monkeypatch, name):  # -> the list of x.shape of each call of model.<name>
    calls, original = [], getattr(model_module, name)

    def counted(*a):
        calls.append(a[0].shape)
        return original(*a)
    monkeypatch.setattr(model_module, name, counted)
    return calls


def random_params(cfg, dtype, seed):  # every weight, bias and LayerNorm random
    rng = np.random.default_rng(seed)
    return {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype)
            for k, v in AlbertModel(cfg, seed=seed).params.items()}


@settings(max_examples=12, deadline=None)
@given(lens=st.lists(st.integers(1, 37), min_size=2, max_size=6),
       packed=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       one_thread=st.booleans(), seed=st.integers(0, 2**16))
def test_by_sequence_gives_the_layered_bits(lens, packed, dtype, one_thread, seed):
    cfg = cfg_of()
    rng = np.random.default_rng(seed)
    B, T, H = len(lens), max(lens), cfg.hidden_size
    params = random_params(cfg, dtype, seed)
    if packed:  # the padding removed: sequence b in rows starts[b]..starts[b]+lens[b]
        n = sum(lens)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        seqs = Sequences(B, T, starts=starts, lens=np.array(lens, np.int64))
    else:  # padded to T, the padding's keys masked
        n = B * T
        mask = (np.arange(T)[None] < np.array(lens)[:, None]).astype(np.int64)
        seqs = Sequences(B, T, bias=mask_bias(mask, dtype))
    h = rng.standard_normal((n, H)).astype(dtype)
    threads = kernels.get_threads()
    try:
        if one_thread:
            kernels.set_threads(1)
        by_seq, layered = both_ways(cfg, h, seqs, params)
    finally:
        kernels.set_threads(threads)
    assert np.isfinite(layered).all()
    np.testing.assert_array_equal(by_seq, layered)


@pytest.mark.parametrize("sharing", [dict(sharing="none"), dict(sharing="attention"),
                                     dict(sharing="ffn"),
                                     dict(num_hidden_layers=4, num_hidden_groups=2,
                                          inner_group_num=2)])
def test_by_sequence_reads_each_layers_own_weights(sharing, rng, monkeypatch):
    """With weights not shared by every layer, each application reads its own (the kernel
    gets them stacked, one row per distinct application)."""
    cfg = cfg_of(**sharing)
    params = random_params(cfg, np.float32, 3)
    B, T = 4, 19
    seqs = Sequences(B, T, bias=np.zeros((B, T), np.float32))
    h = rng.standard_normal((B * T, cfg.hidden_size)).astype(np.float32)
    by_seq, layered = both_ways(cfg, h, seqs, params)
    np.testing.assert_array_equal(by_seq, layered)
    compiled = counting(monkeypatch, "encoder_layered")  # one sentence: the loop compiled
    one = Sequences(1, T, bias=np.zeros((1, T), np.float32))  # only for one shared layer
    both = both_ways(cfg, h[:T], one, params, by=None)  # (else its panels stacked: a copy)
    np.testing.assert_array_equal(*both)
    assert len(compiled) == (1 if len(model_module._applications(cfg)[0]) == 1 else 0)


def test_stacked_panels_start_on_a_cache_line(rng, monkeypatch):
    """Layers that do not share their weights get them stacked, one row per application:
    a copy, which keeps the packed panels' cache-line start (aligned_empty) for every row,
    as the PackedWeights have it."""
    cfg = cfg_of(sharing="none")
    seen, original = [], model_module.encoder_by_sequence

    def spy(*a):
        seen.append([a[i] for i in (9, 11, 15, 17)])  # Wqkv, Wo, W1, W2: [U, panels]
        return original(*a)
    monkeypatch.setattr(model_module, "encoder_by_sequence", spy)
    B, T = 3, 11
    seqs = Sequences(B, T, bias=np.zeros((B, T), np.float32))
    h = rng.standard_normal((B * T, cfg.hidden_size)).astype(np.float32)
    both_ways(cfg, h, seqs, random_params(cfg, np.float32, 1))
    assert len(seen) == 1
    for W in seen[0]:
        assert W.shape[0] == cfg.num_hidden_layers > 1
        assert all(W[u].ctypes.data % 64 == 0 for u in range(W.shape[0]))


def test_a_frozen_batch_runs_by_sequence_where_it_applies(rng, monkeypatch):
    """A frozen model's batch goes through the encoder by sequence (one call), a single
    sequence through the layered pass compiled (one call, its products shared by the
    threads); training mode, hidden states, attention maps, the BLAS switch and an
    activation other than gelu_new take neither; the outputs are the same bits."""
    calls = counting(monkeypatch, "encoder_by_sequence")
    layered = counting(monkeypatch, "encoder_layered")
    cfg = cfg_of()
    m = AlbertModel(cfg, seed=4)
    ids = rng.integers(5, cfg.vocab_size, (4, 21))
    plain = m.forward(ids)[0]["last_hidden_state"]  # training mode: layer by layer
    one = m.forward(ids[:1])[0]["last_hidden_state"]
    assert calls == [] and layered == []
    m.freeze()
    frozen = m.forward(ids)[0]["last_hidden_state"]
    assert calls == [(4 * 21, cfg.hidden_size)] and layered == []
    np.testing.assert_array_equal(frozen, plain)
    np.testing.assert_array_equal(m.forward(ids[:1])[0]["last_hidden_state"], one)
    assert len(calls) == 1 and layered == [(21, cfg.hidden_size)]
    m.forward(ids, output_hidden_states=True)
    m.forward(ids, output_attentions=True)
    m.forward(ids[:1], output_attentions=True)
    with kernels.use_blas(True):
        m.forward(ids)
        m.forward(ids[:1])
    assert len(calls) == 1 and len(layered) == 1
    g = AlbertModel(cfg_of(hidden_act="gelu"), seed=4).freeze()
    g.forward(ids)
    g.forward(ids[:1])
    assert len(calls) == 1 and len(layered) == 1
    monkeypatch.setattr(model_module, "BY_SEQUENCE", False)  # the switch for profiles
    np.testing.assert_array_equal(m.forward(ids)[0]["last_hidden_state"], frozen)
    np.testing.assert_array_equal(m.forward(ids[:1])[0]["last_hidden_state"], one)
    assert len(calls) == 1 and len(layered) == 1


@settings(max_examples=12, deadline=None)
@given(lens=st.lists(st.integers(1, 37), min_size=1, max_size=3),
       packed=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       one_thread=st.booleans(), seed=st.integers(0, 2**16))
def test_the_layered_pass_compiled_gives_its_bits(lens, packed, dtype, one_thread, seed):
    """The layer loop compiled as one call (kernels/encoder.encoder_layered) against the
    loop in Python: one sequence, or a batch kept from running by sequence (here: by the
    weights' limit, set to 0), padded or packed; the same bits."""
    cfg = cfg_of()
    rng = np.random.default_rng(seed)
    B, T, H = len(lens), max(lens), cfg.hidden_size
    params = random_params(cfg, dtype, seed)
    if packed:
        n = sum(lens)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        seqs = Sequences(B, T, starts=starts, lens=np.array(lens, np.int64))
    else:
        n = B * T
        mask = (np.arange(T)[None] < np.array(lens)[:, None]).astype(np.int64)
        seqs = Sequences(B, T, bias=mask_bias(mask, dtype))
    h = rng.standard_normal((n, H)).astype(dtype)
    threads = kernels.get_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_module, "BY_SEQUENCE_WEIGHT_BYTES", 0)
        layered = counting(mp, "encoder_layered")
        try:
            if one_thread:
                kernels.set_threads(1)
            compiled, python = both_ways(cfg, h, seqs, params, by=None)
        finally:
            kernels.set_threads(threads)
    assert layered == [(n, H)]
    assert np.isfinite(python).all()
    np.testing.assert_array_equal(compiled, python)


def test_the_layered_pass_compiled_normalises_after_a_product_of_column_blocks(rng,
                                                                              monkeypatch):
    """Where a product's tasks are blocks of columns (NC < N), its LayerNorm cannot run in
    the tasks' epilogue: then, as gemm does, after the product (layernorm_forward). Every
    product is cut into blocks of one panel of columns here; the same bits as the loop in
    Python under the same cut."""
    from minialbert.kernels import matmul

    original = matmul._plan

    def narrow(dtype, M, N, K, isa, threads, kernel, packed, a_trans, b_trans):
        p = list(original(dtype, M, N, K, isa, threads, kernel, packed, a_trans, b_trans))
        MR, NR, KC, MC = p[2], p[3], p[4], p[5]
        p[6] = NC = NR  # one panel of columns a task
        tasks = -(-M // MC) * -(-N // NC)
        p[7] = tasks * -(-MC // MR) * MR * max(1, min(KC, K))  # a_size, as _plan counts it
        p[0] = matmul._gemm_serial if threads == 1 or tasks == 1 else matmul._gemm_fused
        cut.append(NC < N)
        return tuple(p)
    cut = []
    monkeypatch.setattr(matmul, "_plan", narrow)
    cfg = cfg_of(hidden_size=81, intermediate_size=96)  # H over any tile's NR (64 at most)
    params = random_params(cfg, np.float32, 7)
    T = 23
    seqs = Sequences(1, T, bias=np.zeros((1, T), np.float32))
    h = rng.standard_normal((T, cfg.hidden_size)).astype(np.float32)
    layered = counting(monkeypatch, "encoder_layered")
    compiled, python = both_ways(cfg, h, seqs, params, by=None)
    assert layered == [(T, cfg.hidden_size)] and all(cut) and cut
    np.testing.assert_array_equal(compiled, python)


def test_sequences_are_dealt_out_evenly_or_not_at_all():
    groups, order = by_sequence_groups([128] * 32, 2, 1000, 10)
    assert list(groups) == [0, 16, 32] and sorted(order) == list(range(32))
    for t in range(2):  # each thread's sequences in their batch order
        part = order[groups[t]:groups[t + 1]]
        assert list(part) == sorted(part)
    assert by_sequence_groups([128] * 3, 2, 1000, 10) is None  # 2 against 1.5
    assert by_sequence_groups([128] * 3, 1, 1000, 10) is not None  # one thread: all
    lens = [100, 90, 60, 50, 40, 30, 20, 10, 5, 5]
    groups, order = by_sequence_groups(lens, 2, 1000, 10)
    work = [sum(lens[b] * (1000 + 10 * lens[b]) for b in order[groups[t]:groups[t + 1]])
            for t in range(2)]
    assert max(work) <= 1.05 * sum(work) / 2
    assert by_sequence_groups([300, 10, 10, 10], 2, 1000, 10) is None  # one long sequence


def test_by_sequence_on_a_fully_masked_sequence(rng):
    """A padded sequence whose every key is masked (its attention uniform, as in
    transformers) and a one-token sequence: the layered bits."""
    cfg = cfg_of()
    params = random_params(cfg, np.float32, 5)
    B, T = 4, 11
    mask = np.ones((B, T), np.int64)
    mask[1] = 0
    mask[2, 1:] = 0
    seqs = Sequences(B, T, bias=mask_bias(mask, np.float32))
    h = rng.standard_normal((B * T, cfg.hidden_size)).astype(np.float32)
    by_seq, layered = both_ways(cfg, h, seqs, params)
    assert np.isfinite(layered).all()
    np.testing.assert_array_equal(by_seq, layered)


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-10, 1e-12),
                                               (np.float32, 1e-4, 1e-5)])
@pytest.mark.parametrize("B, kernel", [(4, "encoder_by_sequence"), (1, "encoder_layered")])
def test_a_frozen_batch_by_sequence_matches_transformers(dtype, rtol, atol, B, kernel, rng,
                                                          monkeypatch):
    """The frozen batch (by sequence) and one sentence (layered, compiled) against
    transformers.AlbertModel on the same random weights, padded with a mask:
    last_hidden_state at the real tokens, and the pooler."""
    torch = require("torch")
    cfg = cfg_of(num_hidden_groups=1)
    m = AlbertModel(cfg, seed=6, dtype=dtype)
    m.params.update(random_params(cfg, dtype, 6))
    m.freeze()
    T = 17
    ids = rng.integers(5, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[B // 4, 9:] = mask[B - 1, 2 if B > 1 else 13:] = 0
    calls = counting(monkeypatch, kernel)
    out = m.forward(ids, attention_mask=mask)[0]
    assert len(calls) == 1  # (the by-sequence pass, or the layered one compiled, ran)
    hf = hf_from_params(cfg, m.params, getattr(torch, np.dtype(dtype).name), cls="AlbertModel")
    hf.eval()
    with torch.inference_mode():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    real = mask.astype(bool)
    assert_close(out["last_hidden_state"][real], n(ref.last_hidden_state)[real], rtol=rtol,
                 atol=atol, what="last_hidden_state")
    assert_close(out["pooler_output"], n(ref.pooler_output), rtol=rtol, atol=atol,
                 what="pooler_output")


def test_the_layered_pass_compiled_runs_as_python_under_disable_jit():
    """Book chapter 01: NUMBA_DISABLE_JIT=1 steps through every kernel in a debugger; the
    compiled layer loop then runs as the Python it is written in, with the same bits."""
    assert_runs_without_jit(
        "import numpy as np; from minialbert.config import AlbertConfig;"
        "from minialbert import model as M;"
        "cfg = AlbertConfig(vocab_size=40, embedding_size=8, hidden_size=12,"
        " num_hidden_layers=2, num_attention_heads=3, intermediate_size=20,"
        " max_position_embeddings=16);"
        "m = M.AlbertModel(cfg, seed=0, dtype=np.float64);"
        "ids = np.random.default_rng(0).integers(1, 40, (1, 6));"
        "plain = m.forward(ids)[0]['last_hidden_state']; calls = []; f = M.encoder_layered;"
        "M.encoder_layered = lambda *a: (calls.append(1), f(*a))[1]; m.freeze();"
        "frozen = m.forward(ids)[0]['last_hidden_state'];"
        "assert calls == [1] and np.array_equal(plain, frozen); print('ok')")
