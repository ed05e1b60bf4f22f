"""Every head, each Hugging Face's AlbertFor* with a hand-written backward.

    head                     reads           layer                        loss
    pretraining              sequence,       MLM (below); SOP: dropout,   MLM CE + SOP CE
                             pooled [B,H]    dense H->2
    masked_lm                sequence [r,H]  dense H->E, act, LN, E->V    CE over labels
                                             (the word table, tied)
    sequence_classification  pooled [B,H]    dropout, dense H->C          CE / MSE (C=1) / BCE
    token_classification     sequence [n,H]  dropout, dense H->C          CE over labels
    question_answering       sequence [n,H]  dense H->2                   (CE(start)+CE(end))/2
    multiple_choice          pooled [B*K,H]  dropout, dense H->1          CE over the K choices

Each class declares its head's parameters (``head_shapes``) and whether it reads the
pooler (``pooled``); the registry ``MODEL_CLASSES`` is built from the classes. Every class
has ``forward(...) -> (out, cache)`` and ``backward(cache, grads=None, ..., scale=1.0) ->
grads``; backward starts from the gradient of the loss that forward stored (``scale`` =
the micro-batch's share when micro-batches are accumulated), or from an upstream gradient
you pass.
"""
from typing import NamedTuple

import numpy as np

from .kernels import (cross_entropy, dropout_backward, dropout_forward, matmul_nn, matmul_nt,
                      matmul_tn)
from .kernels.act import activation
from .kernels.loss import bce_with_logits, mse_loss
from .kernels.matmul import bias_grad
from .layers import (Dropout, LayerNormCache, dense_act_forward, dense_backward, dense_forward,
                     layernorm_bwd, layernorm_fwd)
from .model import AlbertModel, ModelCache, scatter_rows
from .params import WORD, count_by_part, init_weights, zeros_like_params


class HeadCache(NamedTuple):  # what a fine-tuning head keeps for its backward
    enc: ModelCache
    head: tuple  # the head layer's own cache
    dout: np.ndarray  # the loss's gradient by the head's output (None without labels)


def _upstream(stored, given, scale, dtype):
    """The gradient a head's backward starts from: the one given, or the loss's own
    (stored by forward), times ``scale`` (a micro-batch's share of the batch)."""
    d = stored if given is None else given
    if d is None:
        raise ValueError("backward needs a forward with labels (or an upstream gradient)")
    return d * dtype.type(scale) if scale != 1.0 else d


def _classifier(name, C, cfg):  # a dense layer H -> C
    return {name + ".weight": (C, cfg.hidden_size), name + ".bias": (C,)}


def _drop_dense(x, params, name, p, drop):
    # x: [r, H] -> dropout(p) -> dense -> [r, out]
    p = drop.p(p)
    xd, keep = dropout_forward(x, p, drop.key() if p > 0 else 0)
    y, _ = dense_forward(xd, params, name)
    return y, (xd, keep, p)


def _drop_dense_backward(dy, cache, params, grads, name):  # dy: [r, out] -> dx: [r, H]
    xd, keep, p = cache
    return dropout_backward(dense_backward(dy, xd, params, grads, name), keep, p)


class _Head(AlbertModel):
    def step_losses(self, out):
        """The losses a training step logs (the first is what it minimises)."""
        return {"loss": float(out["loss"])}

    def step_counts(self, out, batch):
        """{metric: (right, of)} a training step adds up over its micro-batches."""
        return {}

    def _run(self, input_ids, token_type_ids, attention_mask, train, seed, step,
             output_attentions, read=None, output_hidden_states=False):
        # read: the flat positions of [B*T] the head reads (None: all; [CLS] is added when
        # the model is pooled): with skip_unread on, the last layer makes only those
        drop = Dropout(train, seed, step)
        out, enc = self.encode(input_ids, token_type_ids, attention_mask, drop, output_attentions,
                               read, output_hidden_states)
        return drop, out, enc

    def _finish(self, cache, dseq, dpooled, grads):
        self.encode_backward(dseq, dpooled, cache.enc, grads)
        return grads


# ------------------------------------------------------------------------------ MLM head

class MLMCache(NamedTuple):
    x: np.ndarray  # [r, H] the rows the head predicts
    m: np.ndarray  # [r, E] after the dense layer
    e: np.ndarray  # [r, E] after the activation and the LayerNorm: the decoder's input
    ln: LayerNormCache


def _mlm_shapes(cfg):
    V, E, H = cfg.vocab_size, cfg.embedding_size, cfg.hidden_size
    return {"predictions.bias": (V,), "predictions.dense.weight": (E, H),
            "predictions.dense.bias": (E,), "predictions.LayerNorm.weight": (E,),
            "predictions.LayerNorm.bias": (E,)}  # the decoder is the word table (tied)


def mlm_head_forward(x, params, cfg):
    # x: [r, H] -> dense H->E, activation, LayerNorm -> decoder E->V tied to the word
    # table -> logits: [r, V]
    m, g = dense_act_forward(x, params, "predictions.dense", cfg.hidden_act)  # [r, E] each
    e, ln = layernorm_fwd(g, params, "predictions.LayerNorm", cfg.layer_norm_eps)
    logits = matmul_nt(e, params[WORD], bias=params["predictions.bias"])  # [r, V] = e @ W.T + b
    return logits, MLMCache(x, m, e, ln)


def mlm_head_backward(dlogits, cache, params, grads, cfg):  # dlogits: [r, V] -> dx: [r, H]
    x, m, e, ln = cache
    # The decoder is the word table: its gradient is the second of the two contributions
    # the word embeddings receive (the first is the lookup's scatter-add).
    bias_grad(dlogits, grads["predictions.bias"])
    matmul_tn(dlogits, e, out=grads[WORD], accumulate=True)  # dWord += dlogits.T @ e
    de = matmul_nn(dlogits, params[WORD])  # [r, E]
    dg = layernorm_bwd(de, ln, params, grads, "predictions.LayerNorm")
    _, act_b = activation(cfg.hidden_act)
    dm = act_b(dg.reshape(-1), m.reshape(-1)).reshape(dg.shape)
    return dense_backward(dm, x, params, grads, "predictions.dense")


def _masked(labels, mlm_path):  # the positions the masked path reads (None: every one)
    if mlm_path != "masked" or labels is None:
        return None
    return np.flatnonzero(np.asarray(labels).reshape(-1) != -100)


_CLS_ONLY = np.zeros(0, np.int64)  # a pooled head reads [CLS] alone


def mlm_rows(seq, labels, mlm_path):
    """The rows the MLM head predicts: all of [B*T] or only those with a label.
    -> (x [r, H], rows (None: all), flat labels [B*T] or None)."""
    B, T, H = seq.shape
    x = seq.reshape(B * T, H)
    flat = None if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
    if mlm_path == "masked":
        if flat is None:
            raise ValueError("mlm_path='masked' needs labels (it predicts only there)")
        rows = np.flatnonzero(flat != -100)
        return np.ascontiguousarray(x[rows]), rows, flat
    if mlm_path == "all":
        return x, None, flat
    raise ValueError(f"mlm_path must be 'all' or 'masked', got {mlm_path!r}")


def _mlm_counts(logits, rows, labels):
    """(right, of): the MLM head's argmax against the labels it was trained on."""
    lab = np.asarray(labels).reshape(-1)
    if rows is not None:
        lab = lab[rows]
    else:
        sel = lab != -100
        logits, lab = logits[sel], lab[sel]
    return int((logits.argmax(1) == lab).sum()), len(lab)


class MLMHeadCache(NamedTuple):
    enc: ModelCache
    mlm: MLMCache
    rows: np.ndarray  # the predicted rows of [B*T] (None: every row)
    dout: np.ndarray  # the loss's gradient by the logits (None without labels)


class AlbertForMaskedLM(_Head):
    """AlbertModel (no pooler) + the MLM head; loss = mean cross-entropy over labels != -100.
    ``mlm_path`` as in AlbertForPreTraining."""

    head = "masked_lm"
    pooled = False
    head_shapes = staticmethod(_mlm_shapes)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, mlm_path="all", output_attentions=False,
                output_hidden_states=False):
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions, _masked(labels, mlm_path),
                                   output_hidden_states=output_hidden_states)
        x, rows, flat = mlm_rows(out["last_hidden_state"], labels, mlm_path)
        logits, mc = mlm_head_forward(x, self.params, self.config)
        out.update(logits=logits, mlm_rows=rows)
        d = None
        if flat is not None:
            out["loss"], d, _ = cross_entropy(logits, flat if rows is None else flat[rows])
        return out, MLMHeadCache(enc, mc, rows, d)

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache.dout, dlogits, scale, self.dtype)
        dx = mlm_head_backward(d, cache.mlm, self.params, grads, self.config)
        dseq = scatter_rows(dx, cache.rows, cache.enc.B, cache.enc.T, self.dtype)
        return self._finish(cache, dseq, None, grads)

    def step_counts(self, out, batch):
        return {"mlm_acc": _mlm_counts(out["logits"], out["mlm_rows"], batch["labels"])}


# ------------------------------------------------------------------------------ pretraining

class SOPCache(NamedTuple):
    dropped: np.ndarray  # [B, H] the pooled output after dropout: the classifier's input
    keep: np.ndarray  # the dropout mask, and its rate
    p: float


def sop_head_forward(pooled, params, cfg, drop):
    # pooled: [B, H] -> dropout(classifier_dropout_prob) -> dense H->2: sentence-order logits
    p = drop.p(cfg.classifier_dropout_prob)
    dropped, keep = dropout_forward(pooled, p, drop.key() if p > 0 else 0)
    logits, _ = dense_forward(dropped, params, "sop_classifier.classifier")
    return logits, SOPCache(dropped, keep, p)


def sop_head_backward(dlogits, cache, params, grads):  # dlogits: [B, 2] -> dpooled: [B, H]
    ddropped = dense_backward(dlogits, cache.dropped, params, grads,
                              "sop_classifier.classifier")
    return dropout_backward(ddropped, cache.keep, cache.p)


class PretrainingCache(NamedTuple):
    enc: ModelCache
    mlm: MLMCache
    rows: np.ndarray  # the MLM head's rows of [B*T] (None: every row)
    sop: SOPCache
    dlogits: np.ndarray  # the loss's gradients by the MLM and SOP logits (None: no labels)
    dsop: np.ndarray


class AlbertForPreTraining(_Head):
    """AlbertModel + MLM head (decoder tied to the word embeddings) + SOP head.

    loss = MLM cross-entropy (mean over labels != -100) + sop_weight * SOP cross-entropy.

    ``mlm_path="all"`` computes logits at every position (Hugging Face's way);
    ``mlm_path="masked"`` only at positions whose label is not -100 (the original TF
    code's way: far cheaper, [n_masked, V] instead of [B*T, V]). Both give the same loss,
    gradients and logits at the masked positions."""

    head = "pretraining"

    @staticmethod
    def head_shapes(cfg):
        H, C = cfg.hidden_size, cfg.num_labels
        return dict(_mlm_shapes(cfg), **{"sop_classifier.classifier.weight": (C, H),
                                         "sop_classifier.classifier.bias": (C,)})

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                sentence_order_label=None, train=False, seed=0, step=0, mlm_path="all",
                output_attentions=False, output_hidden_states=False):
        cfg, params = self.config, self.params
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions, _masked(labels, mlm_path),
                                   output_hidden_states=output_hidden_states)
        x, rows, flat_labels = mlm_rows(out["last_hidden_state"], labels, mlm_path)
        logits, mc = mlm_head_forward(x, params, cfg)
        sop_logits, sc = sop_head_forward(out["pooler_output"], params, cfg, drop)
        out.update(prediction_logits=logits, sop_logits=sop_logits, mlm_rows=rows)
        dlogits = dsop = None
        if flat_labels is not None and sentence_order_label is not None:
            mlm_loss, dlogits, _ = cross_entropy(logits, flat_labels if rows is None
                                                 else flat_labels[rows])
            order = np.asarray(sentence_order_label).reshape(-1)
            sop_loss, dsop, _ = cross_entropy(sop_logits, order, scale=cfg.sop_weight)
            out["mlm_loss"], out["sop_loss"] = mlm_loss, sop_loss
            out["loss"] = self.dtype.type(mlm_loss + self.dtype.type(cfg.sop_weight) * sop_loss)
        return out, PretrainingCache(enc, mc, rows, sc, dlogits, dsop)

    def backward(self, cache, grads=None, dlogits=None, dsop_logits=None, scale=1.0):
        """Gradients of the loss (or of given upstream gradients) for every parameter."""
        cfg, params = self.config, self.params
        grads = zeros_like_params(params) if grads is None else grads
        if (cache.dlogits if dlogits is None else dlogits) is None or \
                (cache.dsop if dsop_logits is None else dsop_logits) is None:
            raise ValueError("backward needs a forward with labels and sentence_order_label")
        dlogits = _upstream(cache.dlogits, dlogits, scale, self.dtype)
        dsop = _upstream(cache.dsop, dsop_logits, scale, self.dtype)
        dpooled = sop_head_backward(dsop, cache.sop, params, grads)
        dx = mlm_head_backward(dlogits, cache.mlm, params, grads, cfg)
        dseq = scatter_rows(dx, cache.rows, cache.enc.B, cache.enc.T, self.dtype)
        return self._finish(cache, dseq, dpooled, grads)

    def step_losses(self, out):
        return {k: float(out[k]) for k in ("loss", "mlm_loss", "sop_loss")}

    def step_counts(self, out, batch):
        order = np.asarray(batch["sentence_order_label"]).reshape(-1)
        return {"mlm_acc": _mlm_counts(out["prediction_logits"], out["mlm_rows"],
                                       batch["labels"]),
                "sop_acc": (int((out["sop_logits"].argmax(1) == order).sum()), len(order))}


# ------------------------------------------------------------------------------ fine-tuning


class AlbertForSequenceClassification(_Head):
    """[CLS] pooled -> dropout(classifier_dropout_prob) -> classifier: logits [B, C].

    The loss follows Hugging Face's ``problem_type``: "regression" (MSE; chosen when
    num_labels = 1), "single_label_classification" (cross-entropy; integer labels) or
    "multi_label_classification" (BCE with logits; float labels [B, C]). Set it in
    ``config.extra["problem_type"]`` or let the labels decide, as Hugging Face does."""

    head = "sequence_classification"
    head_shapes = staticmethod(lambda cfg: _classifier("classifier", cfg.num_labels, cfg))

    def problem_type(self, labels):
        pt = self.config.extra.get("problem_type")
        if pt:
            return pt
        if self.config.num_labels == 1:
            return "regression"
        if np.issubdtype(np.asarray(labels).dtype, np.integer):
            return "single_label_classification"
        return "multi_label_classification"

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, output_attentions=False,
                output_hidden_states=False):
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions, _CLS_ONLY,
                                   output_hidden_states=output_hidden_states)
        logits, hc = _drop_dense(out["pooler_output"], self.params, "classifier",
                                 self.config.classifier_dropout_prob, drop)
        out["logits"] = logits
        d = None
        if labels is not None:
            pt = self.problem_type(labels)
            if pt == "regression":
                out["loss"], d = mse_loss(logits, labels)
            elif pt == "single_label_classification":
                out["loss"], d, _ = cross_entropy(logits, np.asarray(labels).reshape(-1))
            elif pt == "multi_label_classification":
                out["loss"], d = bce_with_logits(logits, labels)
            else:
                raise ValueError(f"unknown problem_type {pt!r}")
        return out, HeadCache(enc, hc, d)

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache.dout, dlogits, scale, self.dtype)
        dpooled = _drop_dense_backward(d, cache.head, self.params, grads, "classifier")
        return self._finish(cache, None, dpooled, grads)


class AlbertForTokenClassification(_Head):
    """Every token's hidden state -> dropout -> classifier: logits [B, T, C]; cross-entropy
    over the tokens whose label is not -100 (padding and continuation pieces)."""

    head = "token_classification"
    pooled = False
    head_shapes = staticmethod(lambda cfg: _classifier("classifier", cfg.num_labels, cfg))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, output_attentions=False,
                output_hidden_states=False):
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions, output_hidden_states=output_hidden_states)
        B, T, H = out["last_hidden_state"].shape
        logits, hc = _drop_dense(out["last_hidden_state"].reshape(B * T, H), self.params,
                                 "classifier", self.config.classifier_dropout_prob, drop)
        out["logits"] = logits.reshape(B, T, -1)
        d = None
        if labels is not None:
            out["loss"], d, _ = cross_entropy(logits, np.asarray(labels).reshape(-1))
        return out, HeadCache(enc, hc, d)

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache.dout, None if dlogits is None else
                      dlogits.reshape(-1, dlogits.shape[-1]), scale, self.dtype)
        dseq = _drop_dense_backward(d, cache.head, self.params, grads, "classifier")
        return self._finish(cache, dseq, None, grads)


class AlbertForQuestionAnswering(_Head):
    """Every token's hidden state -> qa_outputs (H -> 2): start and end logits [B, T].

    loss = (CE(start) + CE(end)) / 2 over the batch. As Hugging Face: positions are clamped
    to [0, T] and T is ignored (an answer outside this window of the document counts
    nothing); no dropout in this head."""

    head = "question_answering"
    pooled = False
    head_shapes = staticmethod(lambda cfg: _classifier("qa_outputs", cfg.num_labels, cfg))
    unpad_exact = False  # its softmax over start/end positions spans the padding

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, train=False, seed=0, step=0, output_attentions=False,
                output_hidden_states=False):
        if self.config.num_labels != 2:
            raise ValueError(f"question answering needs num_labels = 2 (start, end), the "
                             f"config has {self.config.num_labels}")
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions, output_hidden_states=output_hidden_states)
        B, T, H = out["last_hidden_state"].shape
        x = out["last_hidden_state"].reshape(B * T, H)
        logits, _ = dense_forward(x, self.params, "qa_outputs")  # [n, 2]
        start = np.ascontiguousarray(logits[:, 0].reshape(B, T))
        end = np.ascontiguousarray(logits[:, 1].reshape(B, T))
        out.update(start_logits=start, end_logits=end)
        d = None
        if start_positions is not None and end_positions is not None:
            sp = np.clip(np.asarray(start_positions).reshape(-1), 0, T)
            ep = np.clip(np.asarray(end_positions).reshape(-1), 0, T)
            ls, ds, _ = cross_entropy(start, sp, ignore_index=T, scale=0.5)
            le, de, _ = cross_entropy(end, ep, ignore_index=T, scale=0.5)
            out["loss"] = self.dtype.type((ls + le) / 2)
            d = np.stack([ds.reshape(-1), de.reshape(-1)], axis=1)  # [n, 2]
        return out, HeadCache(enc, x, d)  # the head's cache: its input [n, H]

    def backward(self, cache, grads=None, dstart=None, dend=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        given = None
        if dstart is not None or dend is not None:
            z = np.zeros_like(dstart if dstart is not None else dend)
            given = np.stack([(dstart if dstart is not None else z).reshape(-1),
                              (dend if dend is not None else z).reshape(-1)], axis=1)
        d = _upstream(cache.dout, given, scale, self.dtype)
        dseq = dense_backward(np.ascontiguousarray(d), cache.head, self.params, grads,
                              "qa_outputs")
        return self._finish(cache, dseq, None, grads)


class AlbertForMultipleChoice(_Head):
    """input_ids [B, K, T] (K choices, each "[CLS] context [SEP] choice [SEP]"), run as
    [B*K, T]; pooled -> dropout -> classifier (H -> 1): logits [B, K]; cross-entropy over
    the choices."""

    head = "multiple_choice"
    head_shapes = staticmethod(lambda cfg: _classifier("classifier", 1, cfg))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, output_attentions=False,
                output_hidden_states=False):
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 3:
            raise ValueError(f"multiple choice wants input_ids [batch, choices, seq], got "
                             f"shape {input_ids.shape}")
        B, K, T = input_ids.shape
        flat = [None if a is None else np.asarray(a).reshape(B * K, T)
                for a in (token_type_ids, attention_mask)]
        drop, out, enc = self._run(input_ids.reshape(B * K, T), flat[0], flat[1], train, seed,
                                   step, output_attentions, _CLS_ONLY,
                                   output_hidden_states=output_hidden_states)
        logits, hc = _drop_dense(out["pooler_output"], self.params, "classifier",
                                 self.config.classifier_dropout_prob, drop)
        out["logits"] = logits.reshape(B, K)
        d = None
        if labels is not None:
            loss, d, _ = cross_entropy(out["logits"], np.asarray(labels).reshape(-1))
            out["loss"], d = loss, d.reshape(B * K, 1)
        return out, HeadCache(enc, hc, d)

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache.dout, None if dlogits is None else dlogits.reshape(-1, 1), scale,
                      self.dtype)
        dpooled = _drop_dense_backward(d, cache.head, self.params, grads, "classifier")
        return self._finish(cache, None, dpooled, grads)


# ------------------------------------------------------------------------------ registry

MODEL_CLASSES = {c.head: c for c in (AlbertModel, AlbertForPreTraining, AlbertForMaskedLM,
                                     AlbertForSequenceClassification,
                                     AlbertForTokenClassification, AlbertForQuestionAnswering,
                                     AlbertForMultipleChoice)}
HEADS = tuple(MODEL_CLASSES)
POOLED = tuple(h for h, c in MODEL_CLASSES.items() if c.pooled)
# Hugging Face's class name (config.json "architectures") <-> our head name
ARCHITECTURES = {c.__name__: h for h, c in MODEL_CLASSES.items()}


def model_class(head):
    try:
        return MODEL_CLASSES[head]
    except KeyError:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(MODEL_CLASSES)}") from None


def parameter_shapes(cfg, head="pretraining"):
    """name -> shape for every parameter of the model with the given head."""
    return model_class(head).parameter_shapes(cfg)


def head_shapes(cfg, head):
    """name -> shape of a head's own parameters."""
    return model_class(head).head_shapes(cfg)


def count_parameters(cfg, head="base"):
    """Parameters per component (each shared tensor counted once, as in the paper)."""
    return count_by_part(parameter_shapes(cfg, head))


def init_params(cfg, seed=0, dtype=np.float32, head="pretraining"):
    """Hugging Face's initialisation of the model with that head (params.init_weights)."""
    return init_weights(parameter_shapes(cfg, head), cfg, seed, dtype)
