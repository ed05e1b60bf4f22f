"""The encoder by sequence (kernels/encoder.py, model._by_sequence): a frozen batch's
layers, each sequence through every layer on one thread. It must give the layered pass's
bits exactly (the same kernels, each sum in the same order), for every way the batch's rows
can form sequences (padded with a mask, packed without padding, lengths that are not a
multiple of any tile, one token), every sharing of the layers, both dtypes, one thread and
all; and it must run only where it applies."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minialbert.model as model_module
from minialbert import kernels
from minialbert.kernels import mask_bias
from minialbert.layers import Dropout, Sequences, Weights
from minialbert.model import AlbertModel, by_sequence_groups, encoder_forward
from reference import assert_close, hf_from_params, n, require
from test_model import tiny


def cfg_of(**kw):  # test_model's tiny config, a little wider and longer
    return tiny(**{**dict(vocab_size=60, hidden_size=24, intermediate_size=40,
                          max_position_embeddings=64), **kw})


def both_ways(cfg, h, seqs, params):
    weights = Weights(params)
    run = [encoder_forward(h, params, cfg, seqs, Dropout(), weights=weights, keep=False,
                           hidden=False, by_sequence=by)[0] for by in (True, False)]
    return run


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
def test_by_sequence_reads_each_layers_own_weights(sharing, rng):
    """With weights not shared by every layer, each application reads its own (the kernel
    gets them stacked, one row per distinct application)."""
    cfg = cfg_of(**sharing)
    params = random_params(cfg, np.float32, 3)
    B, T = 4, 19
    seqs = Sequences(B, T, bias=np.zeros((B, T), np.float32))
    h = rng.standard_normal((B * T, cfg.hidden_size)).astype(np.float32)
    by_seq, layered = both_ways(cfg, h, seqs, params)
    np.testing.assert_array_equal(by_seq, layered)


def test_a_frozen_batch_runs_by_sequence_where_it_applies(rng, monkeypatch):
    """A frozen model's batch goes through the encoder by sequence (one call), a single
    sequence layer by layer; training mode, hidden states, attention maps, the BLAS switch
    and an activation other than gelu_new never do; the outputs are the same bits."""
    calls = []
    original = model_module.encoder_by_sequence

    def counted(*a):
        calls.append(a[0].shape)
        return original(*a)
    monkeypatch.setattr(model_module, "encoder_by_sequence", counted)
    cfg = cfg_of()
    m = AlbertModel(cfg, seed=4)
    ids = rng.integers(5, cfg.vocab_size, (4, 21))
    plain = m.forward(ids)[0]["last_hidden_state"]  # training mode: layer by layer
    assert calls == []
    m.freeze()
    frozen = m.forward(ids)[0]["last_hidden_state"]
    assert calls == [(4 * 21, cfg.hidden_size)]
    np.testing.assert_array_equal(frozen, plain)
    m.forward(ids[:1])  # one sequence: its products shared by the threads instead
    m.forward(ids, output_hidden_states=True)
    m.forward(ids, output_attentions=True)
    with kernels.use_blas(True):
        m.forward(ids)
    assert len(calls) == 1
    g = AlbertModel(cfg_of(hidden_act="gelu"), seed=4).freeze()
    g.forward(ids)
    assert len(calls) == 1
    monkeypatch.setattr(model_module, "BY_SEQUENCE", False)  # the switch for profiles
    np.testing.assert_array_equal(m.forward(ids)[0]["last_hidden_state"], frozen)
    assert len(calls) == 1


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
def test_a_frozen_batch_by_sequence_matches_transformers(dtype, rtol, atol, rng,
                                                          monkeypatch):
    """The frozen batch (by sequence) against transformers.AlbertModel on the same random
    weights, a padded batch with a mask: last_hidden_state at the real tokens, and the
    pooler."""
    torch = require("torch")
    cfg = cfg_of(num_hidden_groups=1)
    m = AlbertModel(cfg, seed=6, dtype=dtype)
    m.params.update(random_params(cfg, dtype, 6))
    m.freeze()
    B, T = 4, 17
    ids = rng.integers(5, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 9:] = mask[3, 2:] = 0
    calls = []
    original = model_module.encoder_by_sequence

    def counted(*a):
        calls.append(1)
        return original(*a)
    monkeypatch.setattr(model_module, "encoder_by_sequence", counted)
    out = m.forward(ids, attention_mask=mask)[0]
    assert calls == [1]  # (the by-sequence pass ran)
    hf = hf_from_params(cfg, m.params, getattr(torch, np.dtype(dtype).name), cls="AlbertModel")
    hf.eval()
    with torch.inference_mode():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    real = mask.astype(bool)
    assert_close(out["last_hidden_state"][real], n(ref.last_hidden_state)[real], rtol=rtol,
                 atol=atol, what="last_hidden_state")
    assert_close(out["pooler_output"], n(ref.pooler_output), rtol=rtol, atol=atol,
                 what="pooler_output")
