"""The whole model: float64 finite differences of every parameter, and parity with
transformers.AlbertForPreTraining (eager attention) on random weights copied by name.

Tolerances. float64 vs torch float64: 1e-9 relative (the same math summed in another
order). float32 vs torch float32: outputs 1e-4 relative/absolute, gradients 1e-3
relative + 1e-5 of the tensor's largest entry absolute — a whole network chains ~50
ops, each rounding at ~6e-8, and a gradient sums over every token and layer use.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialbert.config import AlbertConfig, preset
from minialbert.gradcheck import gradcheck
from minialbert.heads import AlbertForPreTraining, count_parameters, init_params
from minialbert.params import WORD, layer_prefixes, zeros_like_params
from reference import assert_close, assert_grads_match, hf_from_params, n, require

CONFIGS = {
    "E<H": dict(),
    "E=H": dict(embedding_size=12),
    "groups2_inner2": dict(num_hidden_groups=2, inner_group_num=2, num_hidden_layers=4),
    "odd_heads": dict(hidden_size=15, num_attention_heads=5, intermediate_size=7),
    "not_shared": dict(sharing="none"),
    "gelu": dict(hidden_act="gelu"),
}


def tiny(**kw):
    base = dict(vocab_size=50, embedding_size=8, hidden_size=12, num_hidden_layers=3,
                num_attention_heads=3, intermediate_size=20, max_position_embeddings=16,
                initializer_range=0.3)
    base.update(kw)
    return AlbertConfig(**base)


def batch(rng, B=3, T=7, V=50):
    ids = rng.integers(1, V, (B, T))  # no pad id 0: its lookup gradient is dropped (HF)
    tt = np.zeros((B, T), np.int64)
    tt[:, T // 2:] = 1
    am = np.ones((B, T), np.int64)
    am[1, T - 2:] = 0  # padding in the batch
    labels = np.full((B, T), -100)
    for b in range(B):
        labels[b, rng.choice(np.arange(1, T - 2), size=2, replace=False)] = rng.integers(0, V, 2)
    sop = rng.integers(0, 2, B)
    return dict(input_ids=ids, token_type_ids=tt, attention_mask=am, labels=labels,
                sentence_order_label=sop)


# ----------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("name", ["E<H", "groups2_inner2", "not_shared"])
def test_whole_model_finite_differences(name, rng):
    cfg = tiny(**CONFIGS[name])
    m = AlbertForPreTraining(cfg, seed=1, dtype=np.float64)
    b = batch(rng)
    out, cache = m.forward(**b)
    grads = m.backward(cache)
    f = lambda: m.forward(**b)[0]["loss"]  # noqa: E731
    for k, p in m.params.items():
        if k.endswith("attention.key.bias"):
            # exactly zero: a key bias adds q.b to every score of a row, and softmax is
            # invariant to that; both sides are rounding noise, so check the zero itself
            assert np.abs(grads[k]).max() < 1e-12, k
            continue
        res = gradcheck(f, p, grads[k], k, max_entries=12)
        assert res.max_rel_error < 1e-6, res


def test_finite_differences_with_dropout_on(rng):
    """Dropout masks are a function of (seed, step, site): the same in every forward, so the
    finite differences see the same network as the backward."""
    cfg = tiny(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
               classifier_dropout_prob=0.3)
    m = AlbertForPreTraining(cfg, seed=2, dtype=np.float64)
    b = batch(rng)
    out, cache = m.forward(**b, train=True, seed=5, step=9)
    grads = m.backward(cache)
    f = lambda: m.forward(**b, train=True, seed=5, step=9)[0]["loss"]  # noqa: E731
    for k in (WORD, "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
              "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight",
              "albert.pooler.weight", "sop_classifier.classifier.weight"):
        res = gradcheck(f, m.params[k], grads[k], k, max_entries=12)
        assert res.max_rel_error < 1e-6, res
    assert out["loss"] != m.forward(**b, train=True, seed=5, step=10)[0]["loss"]


# ----------------------------------------------------------------------------- parity

def hf_model(cfg, params, torch_dtype):
    return hf_from_params(cfg, params, torch_dtype)


def run_parity(cfg, dtype, rng, mlm_path="all"):
    torch = require("torch")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    m = AlbertForPreTraining(cfg, seed=3, dtype=dtype)
    b = batch(rng)
    hf = hf_model(cfg, m.params, tdt)
    hf.eval()  # no dropout on either side (gradients are still computed in eval mode)
    o = hf(**{k: torch.from_numpy(np.asarray(v)) for k, v in b.items()},
           output_hidden_states=True, output_attentions=True)
    o.loss.backward()
    out, cache = m.forward(**b, mlm_path=mlm_path, output_attentions=True,
                           output_hidden_states=True)
    grads = m.backward(cache)
    return m, b, hf, o, out, grads


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_parity_with_transformers(name, dt, rng):
    cfg = tiny(**CONFIGS[name])
    m, b, hf, o, out, grads = run_parity(cfg, dt, rng)
    f64 = dt == np.float64
    tol_out = dict(rtol=1e-9, atol=1e-10) if f64 else dict(rtol=1e-4, atol=1e-4)
    assert_close(out["loss"], n(o.loss), **tol_out, what="loss")
    assert_close(out["prediction_logits"].reshape(n(o.prediction_logits).shape),
                 n(o.prediction_logits), **tol_out, what="prediction logits")
    assert_close(out["sop_logits"], n(o.sop_logits), **tol_out, what="sop logits")
    assert len(out["hidden_states"]) == len(o.hidden_states)
    for i, (a, h) in enumerate(zip(out["hidden_states"], o.hidden_states)):
        assert_close(a, n(h), **tol_out, what=f"hidden state {i}")
    assert len(out["attentions"]) == len(o.attentions)
    for i, (a, h) in enumerate(zip(out["attentions"], o.attentions)):
        assert_close(a, n(h), **tol_out, what=f"attention {i}")
    hf_grads = {k: n(p.grad) for k, p in hf.named_parameters()}
    assert set(hf_grads) == set(grads), set(hf_grads) ^ set(grads)
    assert_grads_match(grads, hf_grads, dt)


def test_masked_mlm_path_equals_all_positions(rng):
    cfg = tiny()
    m = AlbertForPreTraining(cfg, seed=4, dtype=np.float64)
    b = batch(rng)
    out_all, c_all = m.forward(**b, mlm_path="all")
    out_m, c_m = m.forward(**b, mlm_path="masked")
    rows = out_m["mlm_rows"]
    assert_close(out_m["loss"], out_all["loss"], rtol=1e-12, atol=0)
    assert_close(out_m["prediction_logits"], out_all["prediction_logits"][rows], rtol=1e-12,
                 atol=1e-12)
    g_all, g_m = m.backward(c_all), m.backward(c_m)
    for k in g_all:
        assert_close(g_m[k], g_all[k], rtol=1e-9, atol=1e-12, what=k)


# ----------------------------------------------------------------------------- sharing

def untie(cfg, params):
    """The same network with every layer application holding its own copy of the weights:
    a not-shared model (sharing='none', inner 1) whose layers are copies."""
    L = cfg.num_hidden_layers * cfg.inner_group_num
    ucfg = cfg.replace(sharing="none", num_hidden_layers=L, num_hidden_groups=L,
                       inner_group_num=1)
    up = {k: v for k, v in params.items() if "albert.encoder.albert_layer_groups" not in k
          and "unshared_layers" not in k}
    apps = [(l, i) for l in range(cfg.num_hidden_layers) for i in range(cfg.inner_group_num)]
    for u, (l, i) in enumerate(apps):
        a_src, f_src = layer_prefixes(cfg, l, i)
        a_dst, f_dst = layer_prefixes(ucfg, u, 0)
        for k, v in params.items():
            if k.startswith(a_src):
                up[a_dst + k[len(a_src):]] = v.copy()
            elif k.startswith(f_src) and not k.startswith(f_src + "attention."):
                up[f_dst + k[len(f_src):]] = v.copy()
    return ucfg, up, apps


@pytest.mark.parametrize("kw", [dict(), dict(sharing="attention"), dict(sharing="ffn"),
                                dict(num_hidden_groups=2, inner_group_num=2, num_hidden_layers=4)],
                         ids=["all", "attention", "ffn", "groups2_inner2"])
def test_shared_gradient_is_the_sum_over_untied_copies(kw, rng):
    cfg = tiny(**kw)
    m = AlbertForPreTraining(cfg, seed=5, dtype=np.float64)
    b = batch(rng)
    out, cache = m.forward(**b)
    g = m.backward(cache)
    ucfg, up, apps = untie(cfg, m.params)
    mu = AlbertForPreTraining(ucfg, params=up)
    assert set(mu.params) == set(up)
    out_u, cache_u = mu.forward(**b)
    gu = mu.backward(cache_u)
    assert_close(out_u["loss"], out["loss"], rtol=1e-12, atol=0, what="same function")
    summed = zeros_like_params(m.params)
    for u, (l, i) in enumerate(apps):
        a_src, f_src = layer_prefixes(cfg, l, i)
        a_dst, f_dst = layer_prefixes(ucfg, u, 0)
        for k in m.params:
            if k.startswith(a_src):
                summed[k] += gu[a_dst + k[len(a_src):]]
            elif k.startswith(f_src) and not k.startswith(f_src + "attention."):
                summed[k] += gu[f_dst + k[len(f_src):]]
    for k in m.params:
        if "albert_layer_groups" in k or "unshared_layers" in k:
            assert_close(g[k], summed[k], rtol=1e-10, atol=1e-14, what=k)


# ----------------------------------------------------------------------------- counts, config

def test_parameter_counts_match_hugging_face_for_albert_base():
    expected = {64: (9_681_408, 87_648_000), 128: (11_683_584, 89_650_176),
                256: (15_687_936, 93_654_528), 768: (31_705_344, 109_671_936)}
    for E, (shared, unshared) in expected.items():
        assert count_parameters(preset("albert-base-v2", embedding_size=E))["total"] == shared
        assert count_parameters(preset("albert-base-v2", embedding_size=E,
                                       sharing="none"))["total"] == unshared


def test_parameter_count_matches_transformers_module():
    require("torch")
    transformers = require("transformers")
    cfg = tiny(num_hidden_groups=3, inner_group_num=2)
    hm = transformers.AlbertModel(transformers.AlbertConfig(**cfg.to_dict(hf=True)))
    assert count_parameters(cfg)["total"] == sum(p.numel() for p in hm.parameters())


@pytest.mark.parametrize("kw,field", [(dict(hidden_size=10, num_attention_heads=3), "hidden_size"),
                                      (dict(num_hidden_groups=5), "num_hidden_groups"),
                                      (dict(hidden_act="swishy"), "hidden_act"),
                                      (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
                                      (dict(sharing="half"), "sharing")])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"AlbertConfig.{field}"):
        tiny(**kw)


def test_partial_sharing_cannot_be_written_as_hugging_face_config():
    with pytest.raises(ValueError, match="cannot be written as a Hugging Face"):
        tiny(sharing="attention").to_dict(hf=True)


def test_config_round_trips_through_json(tmp_path):
    cfg = tiny(num_hidden_groups=3)
    cfg.save(tmp_path / "config.json")
    assert AlbertConfig.load(tmp_path / "config.json") == cfg


def test_init_follows_hugging_face():
    cfg = tiny(initializer_range=0.02)
    p = init_params(cfg, seed=0)
    assert not p[WORD][cfg.pad_token_id].any()
    assert (p["albert.embeddings.LayerNorm.weight"] == 1).all()
    assert not p["albert.pooler.bias"].any()
    assert abs(p[WORD][1:].std() - 0.02) < 0.002
    assert all(v.dtype == np.float32 for v in p.values())


# ----------------------------------------------------------------------------- inputs

def test_sequence_longer_than_position_table_is_clear(rng):
    m = AlbertForPreTraining(tiny(), seed=0)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        m.forward(rng.integers(1, 50, (1, 17)))


def test_out_of_vocabulary_id_is_clear():
    m = AlbertForPreTraining(tiny(), seed=0)
    with pytest.raises(IndexError, match="input_ids holds 50"):
        m.forward(np.array([[1, 50]]))


@given(T=st.integers(1, 9), pad=st.integers(0, 7), seed=st.integers(0, 100))
def test_padding_never_changes_unpadded_outputs(T, pad, seed):
    r = np.random.default_rng(seed)
    m = AlbertForPreTraining(tiny(), seed=seed, dtype=np.float64)
    ids = r.integers(1, 50, (1, T))
    out, _ = m.forward(ids)
    padded = np.concatenate([ids, r.integers(0, 50, (1, pad))], 1)
    mask = np.concatenate([np.ones((1, T)), np.zeros((1, pad))], 1)
    out_p, _ = m.forward(padded, attention_mask=mask)
    assert_close(out_p["last_hidden_state"][:, :T], out["last_hidden_state"], rtol=1e-10,
                 atol=1e-10)
    assert_close(out_p["sop_logits"], out["sop_logits"], rtol=1e-10, atol=1e-10)


@given(B=st.integers(2, 4), seed=st.integers(0, 100))
def test_batch_elements_are_independent(B, seed):
    r = np.random.default_rng(seed)
    m = AlbertForPreTraining(tiny(), seed=seed, dtype=np.float64)
    ids = r.integers(0, 50, (B, 6))
    out, _ = m.forward(ids)
    one, _ = m.forward(ids[1:2])
    assert_close(out["last_hidden_state"][1:2], one["last_hidden_state"], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- no padding work

def _ragged_batch(r, lens, T, V=50):
    B = len(lens)
    ids = r.integers(1, V, (B, T))
    am = (np.arange(T)[None] < np.asarray(lens)[:, None]).astype(np.int64)
    labels = np.full((B, T), -100)
    for b, L in enumerate(lens):
        if L > 1:
            labels[b, r.integers(1, L)] = r.integers(0, V)
    tt = np.zeros((B, T), np.int64)
    return dict(input_ids=ids, token_type_ids=tt, attention_mask=am, labels=labels,
                sentence_order_label=r.integers(0, 2, B))


@given(lens=st.lists(st.integers(1, 9), min_size=1, max_size=4), extra=st.integers(0, 3),
       seed=st.integers(0, 100), mlm_path=st.sampled_from(["all", "masked"]))
def test_padding_removed_gives_the_same_loss_and_gradients(lens, extra, seed, mlm_path):
    """unpad: the encoder runs on the real tokens only (attention over each sequence's
    own rows). Loss, every gradient and every output at a real position equal the padded
    run's in float64; lengths from 1 (T = 1 rows) to the full T, and full batches."""
    r = np.random.default_rng(seed)
    T = max(lens) + extra
    b = _ragged_batch(r, lens, T)
    m = AlbertForPreTraining(tiny(), seed=seed, dtype=np.float64)
    out, cache = m.forward(**b, mlm_path=mlm_path)
    g = m.backward(cache)
    m.unpad = True
    out_u, cache_u = m.forward(**b, mlm_path=mlm_path)
    g_u = m.backward(cache_u)
    assert (cache_u.enc.rows is not None) == (min(lens) < T)  # packed iff there is padding
    assert_close(out_u["loss"], out["loss"], rtol=1e-12, atol=1e-13)
    real = b["attention_mask"].astype(bool)
    assert_close(out_u["last_hidden_state"][real], out["last_hidden_state"][real], rtol=1e-10,
                 atol=1e-12)
    assert_close(out_u["sop_logits"], out["sop_logits"], rtol=1e-10, atol=1e-12)
    for k in g:
        assert_close(g_u[k], g[k], rtol=1e-9, atol=1e-12, what=k)


def test_padding_removed_matches_transformers_float32(rng):
    """The packed path against transformers (float32, its padded run): loss and every
    gradient, on a batch with rows of 2..T tokens."""
    torch = require("torch")
    cfg = tiny()
    m = AlbertForPreTraining(cfg, seed=3, dtype=np.float32)
    m.unpad = True
    b = _ragged_batch(rng, [7, 2, 5, 6], 7)
    hf = hf_model(cfg, m.params, torch.float32)
    hf.eval()
    o = hf(**{k: torch.from_numpy(np.asarray(v)) for k, v in b.items()})
    o.loss.backward()
    out, cache = m.forward(**b)
    assert cache.enc.rows is not None
    assert_close(out["loss"], n(o.loss), rtol=1e-4, atol=1e-4, what="loss")
    grads = m.backward(cache)
    assert_grads_match(grads, {k: n(p.grad) for k, p in hf.named_parameters()}, np.float32)


def test_padding_kept_where_removing_it_would_change_the_result(rng):
    """Padded anyway: output_attentions (the maps are [B, N, T, T]), a row whose position 0
    is padding (the pooler reads position 0), a row with no token at all, and question
    answering (its softmax over positions spans the padding)."""
    from minialbert.heads import AlbertForQuestionAnswering
    m = AlbertForPreTraining(tiny(), seed=0, dtype=np.float64)
    m.unpad = True
    b = _ragged_batch(rng, [5, 3], 5)
    assert m.forward(**b, output_attentions=True)[1].enc.rows is None
    left = dict(b, attention_mask=b["attention_mask"][:, ::-1].copy())
    assert m.forward(**left)[1].enc.rows is None
    empty = dict(b, attention_mask=np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]))
    assert m.forward(**empty)[1].enc.rows is None
    qa = AlbertForQuestionAnswering(tiny(num_labels=2), seed=0, dtype=np.float64)
    qa.unpad = True
    assert qa.forward(b["input_ids"], attention_mask=b["attention_mask"])[1].enc.rows is None


# ----------------------------------------------------------------------------- rows no head reads

def _step(m, b, **kw):
    out, cache = m.forward(**b, **kw)
    return out, cache, m.backward(cache)


@given(lens=st.lists(st.integers(1, 9), min_size=1, max_size=4), extra=st.integers(0, 3),
       seed=st.integers(0, 100), unpad=st.booleans(), dropout=st.booleans(),
       inner=st.sampled_from([1, 2]))
def test_last_layer_on_read_rows_gives_the_same_loss_and_gradients(lens, extra, seed, unpad,
                                                                   dropout, inner):
    """skip_unread: the last layer makes only the rows the heads read (the masked positions
    and [CLS]). Loss, logits and every gradient equal the full run's in float64, padded and
    packed, with dropout on (each kept row gets the mask it had) and with two layers per
    group; the rows not made are NaN in last_hidden_state."""
    r = np.random.default_rng(seed)
    T = max(lens) + extra
    b = _ragged_batch(r, lens, T)
    p = 0.2 if dropout else 0.0
    m = AlbertForPreTraining(tiny(hidden_dropout_prob=p, attention_probs_dropout_prob=p,
                                  inner_group_num=inner), seed=seed, dtype=np.float64)
    m.unpad = unpad
    kw = dict(mlm_path="masked", train=True, seed=seed, step=3)
    out, _, g = _step(m, b, **kw)
    m.skip_unread = True
    out_s, cache_s, g_s = _step(m, b, **kw)
    rows = cache_s.enc.encoder.layers[-1].attention.rows
    read = (b["labels"] != -100)
    read[:, 0] = True  # [CLS]: the pooler
    real = b["attention_mask"].astype(bool)
    made = real if cache_s.enc.rows is not None else np.ones_like(real)  # the encoder's rows
    if read[made].all():  # every row the encoder has is read: nothing to skip
        assert rows is None
    else:
        assert len(rows) == read.sum()
        assert cache_s.enc.encoder.layers[-1].ffn.h.shape[0] == read.sum()
        assert np.isnan(out_s["last_hidden_state"][real & ~read]).all()
    assert all(c.attention.rows is None for c in cache_s.enc.encoder.layers[:-1])
    assert_close(out_s["loss"], out["loss"], rtol=1e-12, atol=1e-13)
    assert_close(out_s["prediction_logits"], out["prediction_logits"], rtol=1e-10, atol=1e-12)
    assert_close(out_s["sop_logits"], out["sop_logits"], rtol=1e-10, atol=1e-12)
    assert_close(out_s["last_hidden_state"][read], out["last_hidden_state"][read], rtol=1e-10,
                 atol=1e-12)
    for k in g:
        assert_close(g_s[k], g[k], rtol=1e-9, atol=1e-12, what=k)


def test_last_layer_on_read_rows_only_where_a_head_reads_few(rng):
    """Skipped for a pooled head ([CLS] only) and the masked MLM path; not for the MLM at
    every position, token classification, attention maps asked for, or with skip_unread off
    (the default)."""
    from minialbert.heads import (AlbertForMultipleChoice, AlbertForSequenceClassification,
                                  AlbertForTokenClassification)
    b = _ragged_batch(rng, [6, 4, 7], 7)
    m = AlbertForPreTraining(tiny(), seed=0, dtype=np.float64)
    assert m.forward(**b, mlm_path="masked")[1].enc.encoder.layers[-1].attention.rows is None
    m.skip_unread = True
    assert m.forward(**b, mlm_path="all")[1].enc.encoder.layers[-1].attention.rows is None
    assert m.forward(**b, mlm_path="masked")[1].enc.encoder.layers[-1].attention.rows is not None
    out, c = m.forward(**b, mlm_path="masked", output_attentions=True)  # the maps: all rows
    assert c.enc.encoder.layers[-1].attention.rows is None
    assert out["attentions"][-1].shape == (3, 3, 7, 7)
    tc = AlbertForTokenClassification(tiny(num_labels=3), seed=0, dtype=np.float64)
    tc.skip_unread = True
    assert tc.forward(b["input_ids"])[1].enc.encoder.layers[-1].attention.rows is None
    for cls, ids, labels in [(AlbertForSequenceClassification, b["input_ids"], [0, 2, 1]),
                             (AlbertForMultipleChoice, b["input_ids"][None], [1])]:
        full = cls(tiny(num_labels=3), seed=0, dtype=np.float64)
        out, c = full.forward(ids, labels=np.array(labels))
        g = full.backward(c)
        full.skip_unread = True
        out_s, c_s = full.forward(ids, labels=np.array(labels))
        g_s = full.backward(c_s)
        assert len(c_s.enc.encoder.layers[-1].attention.rows) == ids.reshape(-1, 7).shape[0]
        assert_close(out_s["loss"], out["loss"], rtol=1e-12, atol=1e-13)
        for k in g:
            assert_close(g_s[k], g[k], rtol=1e-9, atol=1e-12, what=k)


def test_last_layer_on_read_rows_matches_transformers_float32(rng):
    """The trainers' configuration (no padding work, last layer on the read rows, masked MLM
    path) against transformers' padded full run: loss and every gradient."""
    torch = require("torch")
    cfg = tiny()
    m = AlbertForPreTraining(cfg, seed=3, dtype=np.float32)
    m.unpad = m.skip_unread = True
    b = _ragged_batch(rng, [7, 2, 5, 6], 7)
    hf = hf_model(cfg, m.params, torch.float32)
    hf.eval()
    o = hf(**{k: torch.from_numpy(np.asarray(v)) for k, v in b.items()})
    o.loss.backward()
    out, cache = m.forward(**b, mlm_path="masked")
    assert cache.enc.encoder.layers[-1].attention.rows is not None
    assert_close(out["loss"], n(o.loss), rtol=1e-4, atol=1e-4, what="loss")
    grads = m.backward(cache)
    assert_grads_match(grads, {k: n(p.grad) for k, p in hf.named_parameters()}, np.float32)


def test_frozen_model_keeps_nothing_for_a_backward(rng):
    """A frozen model's forward pass (inference) keeps no layer's activations: each layer's
    are freed while the next one runs, so the pass holds about one layer's at a time.
    Measured with tracemalloc (the arrays NumPy allocates: the GEMMs' outputs, most of a
    layer's memory) on six layers: the frozen pass's peak is under half the training-mode
    pass's. The outputs are the same bits, attention maps still come on request, and a
    backward through such a cache is a clear error, not gradients without the encoder's."""
    import tracemalloc

    from minialbert.heads import AlbertForSequenceClassification
    cfg = tiny(num_hidden_layers=6, num_labels=3, max_position_embeddings=32)
    m = AlbertForSequenceClassification(cfg, seed=1)
    ids = rng.integers(5, cfg.vocab_size, (4, 32))

    def peak(f):
        tracemalloc.start()
        try:
            out = f()
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    (train_out, train_cache), train_peak = peak(lambda: m.forward(ids, labels=np.zeros(4, np.int64)))
    assert len(train_cache.enc.encoder.layers) == 6
    m.freeze()
    m.forward(ids)  # the first frozen call packs the weights (kept: not the pass's memory)
    (out, cache), frozen_peak = peak(lambda: m.forward(ids, labels=np.zeros(4, np.int64)))
    assert cache.enc.encoder.layers == []
    assert frozen_peak < 0.5 * train_peak, (frozen_peak, train_peak)
    assert np.array_equal(out["logits"], train_out["logits"])
    assert np.array_equal(out["loss"], train_out["loss"])
    maps = m.forward(ids, output_attentions=True)[0]["attentions"]
    assert len(maps) == 6 and maps[0].shape == (4, cfg.num_attention_heads, 32, 32)
    with pytest.raises(RuntimeError, match="frozen.*unfreeze"):
        m.backward(cache)
    m.unfreeze()
    _, cache = m.forward(ids, labels=np.zeros(4, np.int64))
    assert len(cache.enc.encoder.layers) == 6
    m.backward(cache)


def test_hidden_states_only_on_request(rng, monkeypatch):
    """As Hugging Face's: hidden_states is None unless asked for (output_hidden_states),
    then L + 1 arrays [B, T, H], the last of them last_hidden_state itself; padded and
    packed (unpad) runs give the same ones at the real tokens; asking changes no other
    output's bits; and a frozen pass that is not asked keeps no layer's output past the
    next layer (tracemalloc: its peak is below the asked pass's by most of the L - 1
    outputs that one keeps)."""
    import gc
    import tracemalloc

    from minialbert.model import AlbertModel
    cfg = tiny(num_hidden_layers=5, max_position_embeddings=32)
    B, T, H = 4, 32, cfg.hidden_size
    ids = rng.integers(5, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 20:] = mask[3, 9:] = 0
    m = AlbertModel(cfg, seed=2, dtype=np.float64)
    out, _ = m.forward(ids, attention_mask=mask)
    assert out["hidden_states"] is None
    asked, _ = m.forward(ids, attention_mask=mask, output_hidden_states=True)
    hs = asked["hidden_states"]
    assert len(hs) == 6 and all(h.shape == (B, T, H) for h in hs)
    assert hs[-1] is asked["last_hidden_state"]
    assert np.array_equal(asked["last_hidden_state"], out["last_hidden_state"])
    assert np.array_equal(asked["pooler_output"], out["pooler_output"])
    assert not np.array_equal(hs[0], hs[1])  # (each its own layer's output)
    m.unpad = True
    packed, cache = m.forward(ids, attention_mask=mask, output_hidden_states=True)
    assert cache.rows is not None  # the packed path ran
    real = mask.astype(bool)
    for i, (a, b) in enumerate(zip(packed["hidden_states"], hs)):
        assert_close(a[real], b[real], rtol=1e-10, atol=1e-12, what=f"hidden state {i}")
        assert np.all(a[~real] == 0)  # packed: the padding's rows are zeros

    import minialbert.model as model_module  # the layered pass (a batch of such small
    monkeypatch.setattr(model_module, "BY_SEQUENCE", False)  # rows would run by sequence,
    # whose scratch per thread is of the size of a few layer outputs here)
    m32 = AlbertModel(cfg, seed=2).freeze()
    m32.forward(ids)  # packs the weights (kept: not the passes' memory)

    def peak(**kw):  # the highest of three passes' peaks, for both: a single pass's peak
        # came out lower now and then (arrays that did not overlap in time; a Zen 4 EPYC:
        # the asked pass's 103-107 KB instead of 111 KB, once in four passes or so), and
        # the test failed in about one run in five at 0.64 of four outputs for 0.77
        peaks = []
        for _ in range(3):
            gc.collect()
            tracemalloc.start()
            try:
                m32.forward(ids, **kw)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        return max(peaks)
    one_output = B * T * H * 4
    kept, not_kept = peak(output_hidden_states=True), peak()
    assert kept - not_kept > 0.75 * (cfg.num_hidden_layers - 1) * one_output, (kept, not_kept)


def test_frozen_model_packs_once_and_gives_the_same_bits(rng):
    """freeze() (inference: Predictor calls it) keeps the packed matrices across calls:
    the outputs are bitwise those of the unfrozen model, a second call packs nothing new,
    and unfreeze() makes a weight change visible again (a frozen model would not see it —
    which is why training never freezes)."""
    from minialbert.model import AlbertModel
    cfg = tiny(num_hidden_layers=3)
    m = AlbertModel(cfg, seed=1)
    ids = rng.integers(5, cfg.vocab_size, (2, 9))
    plain = m.encode(ids)[0]["last_hidden_state"]
    m.freeze()
    first = m.encode(ids)[0]["last_hidden_state"]
    packed = sum(p.nbytes() for p in m._frozen._packed.values())
    second = m.encode(ids)[0]["last_hidden_state"]
    assert packed > 0 and sum(p.nbytes() for p in m._frozen._packed.values()) == packed
    assert np.array_equal(plain, first) and np.array_equal(first, second)
    ffn = next(k for k in m.params if k.endswith("ffn.weight"))
    m.params[ffn] *= 2  # in place, as an optimizer would
    assert np.array_equal(m.encode(ids)[0]["last_hidden_state"], first)  # stale, as documented
    m.unfreeze()
    assert not np.array_equal(m.encode(ids)[0]["last_hidden_state"], first)
