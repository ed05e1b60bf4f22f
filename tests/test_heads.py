"""The fine-tuning heads: parity with the corresponding transformers AlbertFor* (outputs,
loss and every parameter gradient) on random weights, and float64 finite differences.
Tolerances as in test_model.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialbert.gradcheck import gradcheck
from minialbert.heads import MODEL_CLASSES, AlbertForMultipleChoice, AlbertForQuestionAnswering
from minialbert.heads import parameter_shapes
from minialbert.params import WORD
from reference import assert_close, assert_grads_match, hf_from_params, n, require
from test_model import tiny

B, T, V = 3, 7, 50


def inputs(rng, head, cfg, shape=(B, T)):
    ids = rng.integers(1, V, shape)
    tt = np.zeros(shape, np.int64)
    tt[..., shape[-1] // 2:] = 1
    am = np.ones(shape, np.int64)
    am[..., 1, -2:] = 0 if len(shape) == 2 else 1
    if len(shape) == 3:
        am[1, :, -2:] = 0
    d = dict(input_ids=ids, token_type_ids=tt, attention_mask=am)
    C = cfg.num_labels
    if head == "masked_lm":
        lab = np.full(shape, -100)
        lab[:, 2], lab[:, 4] = rng.integers(0, V, B), rng.integers(0, V, B)
        d["labels"] = lab
    elif head == "token_classification":
        lab = rng.integers(0, C, shape)
        lab[1, -2:] = -100  # padding
        d["labels"] = lab
    elif head == "question_answering":
        d["start_positions"] = np.array([1, 3, T + 5])  # the last: outside, ignored (clamped)
        d["end_positions"] = np.array([2, 5, 0])
    elif head == "multiple_choice":
        d["labels"] = rng.integers(0, shape[1], shape[0])
    elif head == "regression":
        d["labels"] = rng.standard_normal(B)
    elif head == "multi_label":
        d["labels"] = (rng.random((B, C)) < 0.5).astype(np.float64)
    else:
        d["labels"] = rng.integers(0, C, B)
    return d


CASES = {  # name -> (our head, HF class, config overrides, input shape)
    "masked_lm": ("masked_lm", "AlbertForMaskedLM", {}, (B, T)),
    "sequence_classification": ("sequence_classification", "AlbertForSequenceClassification",
                                dict(num_labels=3), (B, T)),
    "regression": ("sequence_classification", "AlbertForSequenceClassification",
                   dict(num_labels=1), (B, T)),
    "multi_label": ("sequence_classification", "AlbertForSequenceClassification",
                    dict(num_labels=4), (B, T)),
    "token_classification": ("token_classification", "AlbertForTokenClassification",
                             dict(num_labels=5), (B, T)),
    "question_answering": ("question_answering", "AlbertForQuestionAnswering", {}, (B, T)),
    "multiple_choice": ("multiple_choice", "AlbertForMultipleChoice", {}, (B, 2, 5)),
}
ZERO_BIAS_GRAD = {"question_answering": ("qa_outputs.weight",),
                  "multiple_choice": ("classifier.weight",)}
OUTPUTS = {"question_answering": ("start_logits", "end_logits")}


def make(case, dtype, rng, **over):
    head, hf_cls, kw, shape = CASES[case]
    cfg = tiny(**kw, **over)
    m = MODEL_CLASSES[head](cfg, seed=7, dtype=dtype)
    return head, hf_cls, cfg, m, inputs(rng, case, cfg, shape)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_head_parity_with_transformers(case, dt, rng):
    torch = require("torch")
    head, hf_cls, cfg, m, b = make(case, dt, rng)
    tdt = torch.float64 if dt == np.float64 else torch.float32
    hf = hf_from_params(cfg, m.params, tdt, hf_cls)
    hf.eval()
    tb = {}
    for k, v in b.items():
        v = np.asarray(v)
        tb[k] = torch.from_numpy(v.astype(dt) if v.dtype.kind == "f" else v)
    o = hf(**tb, output_hidden_states=True, output_attentions=True)
    o.loss.backward()
    out, cache = m.forward(**b, output_attentions=True, output_hidden_states=True)
    grads = m.backward(cache)
    f64 = dt == np.float64
    tol = dict(rtol=1e-9, atol=1e-10) if f64 else dict(rtol=1e-4, atol=1e-4)
    assert_close(out["loss"], n(o.loss), **tol, what="loss")
    assert len(out["hidden_states"]) == len(o.hidden_states)
    assert out["hidden_states"][-1] is out["last_hidden_state"]  # (NaN at rows a head
    for i, (a, h) in enumerate(zip(out["hidden_states"][:-1], o.hidden_states)):  # skips)
        assert_close(a.reshape(n(h).shape), n(h), **tol, what=f"hidden state {i}")
    for name in OUTPUTS.get(head, ("logits",)):
        ours = out[name]
        assert_close(ours.reshape(n(o[name]).shape), n(o[name]), **tol, what=name)
    for i, (a, h) in enumerate(zip(out["attentions"], o.attentions)):
        assert_close(a, n(h), **tol, what=f"attention {i}")
    hf_grads = {k: n(p.grad) for k, p in hf.named_parameters() if p.grad is not None}
    names = {k for k, _ in hf.named_parameters()}
    assert names == set(m.params) == set(parameter_shapes(cfg, head)), names ^ set(m.params)
    assert_grads_match(grads, hf_grads, dt, ZERO_BIAS_GRAD.get(case, ()))


def test_base_model_parity_with_transformers(rng):
    torch = require("torch")
    cfg = tiny()
    m = MODEL_CLASSES["base"](cfg, seed=3, dtype=np.float64)
    hf = hf_from_params(cfg, m.params, torch.float64, "AlbertModel")
    b = inputs(rng, "base", cfg)
    del b["labels"]
    o = hf(**{k: torch.from_numpy(v) for k, v in b.items()})
    out, _ = m.forward(**b)
    assert_close(out["last_hidden_state"], n(o.last_hidden_state), 1e-9, 1e-10, "sequence")
    assert_close(out["pooler_output"], n(o.pooler_output), 1e-9, 1e-10, "pooled")


@pytest.mark.parametrize("case", list(CASES))
def test_head_finite_differences(case, rng):
    head, _, cfg, m, b = make(case, np.float64, rng, hidden_dropout_prob=0.1,
                              classifier_dropout_prob=0.2)
    out, cache = m.forward(**b, train=True, seed=3, step=1)
    grads = m.backward(cache)
    f = lambda: m.forward(**b, train=True, seed=3, step=1)[0]["loss"]  # noqa: E731
    own = [k for k in m.params if not k.startswith("albert.")]
    for k in own + [WORD, "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight",
                    "albert.embeddings.LayerNorm.weight"]:
        if k.endswith(".bias") and k[:-4] + "weight" in ZERO_BIAS_GRAD.get(case, ()):
            assert np.abs(grads[k]).max() < 1e-12, k  # exactly zero (see above)
            continue
        res = gradcheck(f, m.params[k], grads[k], k, max_entries=10)
        assert res.max_rel_error < 1e-6, res


def test_scale_equals_scaling_the_loss(rng):
    """backward(scale=s) is the gradient of s * loss: what micro-batch accumulation uses."""
    _, _, _, m, b = make("sequence_classification", np.float64, rng)
    out, cache = m.forward(**b)
    g1 = m.backward(cache)
    g2 = m.backward(cache, scale=0.25)
    for k in g1:
        assert_close(g2[k], 0.25 * g1[k], 1e-12, 1e-15, k)


def test_question_answering_needs_two_labels(rng):
    m = AlbertForQuestionAnswering(tiny(num_labels=3), seed=0)
    with pytest.raises(ValueError, match="num_labels = 2"):
        m.forward(rng.integers(1, V, (1, 4)))


def test_wrong_parameters_are_named(rng):
    cfg = tiny(num_labels=3)
    p = MODEL_CLASSES["sequence_classification"](cfg).params
    with pytest.raises(ValueError, match="classifier.weight"):
        MODEL_CLASSES["sequence_classification"](tiny(num_labels=4), params=p)
    with pytest.raises(ValueError, match="missing"):
        MODEL_CLASSES["question_answering"](tiny(), params=p)


@given(Bc=st.integers(1, 3), K=st.integers(1, 4), Tc=st.integers(1, 6), seed=st.integers(0, 50))
def test_multiple_choice_shapes_and_independence(Bc, K, Tc, seed):
    """Any batch / choice / length (T = 1, one choice): the logits of a choice do not depend
    on the other choices."""
    r = np.random.default_rng(seed)
    m = AlbertForMultipleChoice(tiny(), seed=seed, dtype=np.float64)
    ids = r.integers(0, V, (Bc, K, Tc))
    out, cache = m.forward(ids, labels=r.integers(0, K, Bc))
    assert out["logits"].shape == (Bc, K) and np.isfinite(out["loss"])
    one, _ = m.forward(ids[:, :1])
    assert_close(one["logits"][:, 0], out["logits"][:, 0], 1e-10, 1e-10)
    g = m.backward(cache)
    assert all(np.isfinite(v).all() for v in g.values())
