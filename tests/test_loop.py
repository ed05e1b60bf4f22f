"""loop.train_step, the one step pretraining and fine-tuning share, for every head: the
micro-batches' gradients add up (each weighted by its share of the batch's rows), a loss
that is a mean over rows gets exactly the whole batch's gradient, a NaN loss stops the
step with its number, and clipping bounds the norm."""
import numpy as np
import pytest

from minialbert.distributed import FlatGradients, world
from minialbert.heads import AlbertForPreTraining
from minialbert.loop import TrainingError, micro_batch, model_inputs, train_step
from reference import assert_close
from test_heads import CASES, make
from test_model import batch, tiny

NO_DROPOUT = dict(classifier_dropout_prob=0.0, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
# a loss that is a mean over the batch's rows (question answering is not here: its test
# batch has an ignored answer, so its mean is over the rows that count; the token-level
# losses are means over labelled tokens). For those, the step's loss is the rows-weighted
# mean of the micro-batches' means, as Hugging Face's Trainer computed it before
# num_items_in_batch: the first check below is the definition for every head.
ROW_MEAN = ("sequence_classification", "regression", "multi_label", "multiple_choice")


def _model(case, rng):
    if case == "pretraining":
        cfg = tiny(**NO_DROPOUT)
        return AlbertForPreTraining(cfg, seed=7, dtype=np.float64), batch(rng, B=3), \
            dict(mlm_path="masked")
    _, _, _, m, b = make(case, np.float64, rng, **NO_DROPOUT)
    return m, b, {}


def _step(m, b, k, fk, clip=1e9):
    g = FlatGradients(m.params)
    rec = train_step(m, g, b, micro_batches=k, seed=0, step=0, clip=clip, w=world(False),
                     forward_kw=fk)
    return g, rec


@pytest.mark.parametrize("case", list(CASES) + ["pretraining"])
def test_micro_batches_add_up_for_every_head(case, rng):
    m, b, fk = _model(case, rng)
    rows = len(b["input_ids"])
    g2, rec2 = _step(m, b, 2, fk)  # 3 rows in 2 micro-batches: 1 + 2
    by_hand = {k: np.zeros_like(v) for k, v in m.params.items()}
    loss = 0.0
    for j in range(2):
        mb = micro_batch(b, 2, j)
        o, c = m.forward(**model_inputs(m, mb), train=True, seed=0, step=j, **fk)
        m.backward(c, by_hand, scale=len(mb["input_ids"]) / rows)
        loss += float(o["loss"]) * len(mb["input_ids"]) / rows
    for k, v in by_hand.items():
        assert_close(g2.views[k], v, rtol=1e-12, atol=1e-14, what=k)
    assert abs(rec2["loss"] - loss) < 1e-12
    if case in ROW_MEAN:  # then the weighted sum is the whole batch's mean exactly
        g1, rec1 = _step(m, b, 1, fk)
        assert_close(g2.flat, g1.flat, rtol=1e-10, atol=1e-12, what="accumulated vs whole")
        assert abs(rec2["loss"] - rec1["loss"]) < 1e-10
    if case == "pretraining":
        assert 0 <= rec2["mlm_acc"] <= 1 and 0 <= rec2["sop_acc"] <= 1


def test_nan_loss_names_the_step_and_clipping_bounds_the_norm(rng):
    m, b, fk = _model("sequence_classification", rng)
    g, rec = _step(m, b, 1, fk, clip=1e-3)
    assert rec["grad_norm"] > 1e-3  # the norm before clipping is what the log records
    assert np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.views.values())) \
        == pytest.approx(1e-3, rel=1e-6)
    m.params["classifier.bias"][:] = np.nan
    with pytest.raises(TrainingError, match=r"the loss is nan at step 1: .*minialbert "
                       r"pretrain --resume --lr"):
        _step(m, b, 1, fk)
