"""The fine-tuning heads, each Hugging Face's AlbertFor* with a hand-written backward.

    head                       reads            layer                loss
    sequence_classification    pooled [B,H]     dropout, dense H->C  CE / MSE (C=1) / BCE
    token_classification       sequence [n,H]   dropout, dense H->C  CE over labels != -100
    question_answering         sequence [n,H]   dense H->2           (CE(start)+CE(end)) / 2
    multiple_choice            pooled [B*K,H]   dropout, dense H->1  CE over the K choices

(The masked-LM head and the pretraining heads live in model.py.) Every class has
``forward(...) -> (out, cache)`` and ``backward(cache, grads=None, scale=1.0) -> grads``;
backward starts from the gradient of the loss that forward stored (``scale`` = 1/k when k
micro-batches are accumulated), or from an upstream gradient you pass.
"""
import numpy as np

from .kernels import cross_entropy, dropout_backward, dropout_forward
from .kernels.loss import bce_with_logits, mse_loss
from .layers import Dropout, dense_backward, dense_forward
from .model import (AlbertForMaskedLM, AlbertForPreTraining, AlbertModel, _upstream,
                    zeros_like_params)


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
    def _run(self, input_ids, token_type_ids, attention_mask, train, seed, step,
             output_attentions):
        drop = Dropout(train, seed, step)
        out, enc = self.encode(input_ids, token_type_ids, attention_mask, drop, output_attentions)
        return drop, out, enc

    def _finish(self, cache, dseq, dpooled, grads):
        self.encode_backward(dseq, dpooled, cache["enc"], grads)
        return grads


class AlbertForSequenceClassification(_Head):
    """[CLS] pooled -> dropout(classifier_dropout_prob) -> classifier: logits [B, C].

    The loss follows Hugging Face's ``problem_type``: "regression" (MSE; chosen when
    num_labels = 1), "single_label_classification" (cross-entropy; integer labels) or
    "multi_label_classification" (BCE with logits; float labels [B, C]). Set it in
    ``config.extra["problem_type"]`` or let the labels decide, as Hugging Face does."""

    head = "sequence_classification"

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
                train=False, seed=0, step=0, output_attentions=False):
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions)
        logits, hc = _drop_dense(out["pooler_output"], self.params, "classifier",
                                 self.config.classifier_dropout_prob, drop)
        out["logits"] = logits
        cache = dict(enc=enc, head=hc, d=None)
        if labels is not None:
            pt = self.problem_type(labels)
            if pt == "regression":
                out["loss"], cache["d"] = mse_loss(logits, labels)
            elif pt == "single_label_classification":
                out["loss"], cache["d"], _ = cross_entropy(logits, np.asarray(labels).reshape(-1))
            elif pt == "multi_label_classification":
                out["loss"], cache["d"] = bce_with_logits(logits, labels)
            else:
                raise ValueError(f"unknown problem_type {pt!r}")
        return out, cache

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache["d"], dlogits, scale, self.dtype)
        dpooled = _drop_dense_backward(d, cache["head"], self.params, grads, "classifier")
        return self._finish(cache, None, dpooled, grads)


class AlbertForTokenClassification(_Head):
    """Every token's hidden state -> dropout -> classifier: logits [B, T, C]; cross-entropy
    over the tokens whose label is not -100 (padding and continuation pieces)."""

    head = "token_classification"

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, output_attentions=False):
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions)
        B, T, H = out["last_hidden_state"].shape
        logits, hc = _drop_dense(out["last_hidden_state"].reshape(B * T, H), self.params,
                                 "classifier", self.config.classifier_dropout_prob, drop)
        out["logits"] = logits.reshape(B, T, -1)
        cache = dict(enc=enc, head=hc, d=None)
        if labels is not None:
            out["loss"], cache["d"], _ = cross_entropy(logits, np.asarray(labels).reshape(-1))
        return out, cache

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache["d"], None if dlogits is None else
                      dlogits.reshape(-1, dlogits.shape[-1]), scale, self.dtype)
        dseq = _drop_dense_backward(d, cache["head"], self.params, grads, "classifier")
        return self._finish(cache, dseq, None, grads)


class AlbertForQuestionAnswering(_Head):
    """Every token's hidden state -> qa_outputs (H -> 2): start and end logits [B, T].

    loss = (CE(start) + CE(end)) / 2 over the batch. As Hugging Face: positions are clamped
    to [0, T] and T is ignored (an answer outside this window of the document counts
    nothing); no dropout in this head."""

    head = "question_answering"
    unpad_exact = False  # its softmax over start/end positions spans the padding

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, train=False, seed=0, step=0, output_attentions=False):
        if self.config.num_labels != 2:
            raise ValueError(f"question answering needs num_labels = 2 (start, end), the "
                             f"config has {self.config.num_labels}")
        drop, out, enc = self._run(input_ids, token_type_ids, attention_mask, train, seed, step,
                                   output_attentions)
        B, T, H = out["last_hidden_state"].shape
        x = out["last_hidden_state"].reshape(B * T, H)
        logits, _ = dense_forward(x, self.params, "qa_outputs")  # [n, 2]
        start = np.ascontiguousarray(logits[:, 0].reshape(B, T))
        end = np.ascontiguousarray(logits[:, 1].reshape(B, T))
        out.update(start_logits=start, end_logits=end)
        cache = dict(enc=enc, x=x, d=None)
        if start_positions is not None and end_positions is not None:
            sp = np.clip(np.asarray(start_positions).reshape(-1), 0, T)
            ep = np.clip(np.asarray(end_positions).reshape(-1), 0, T)
            ls, ds, _ = cross_entropy(start, sp, ignore_index=T, scale=0.5)
            le, de, _ = cross_entropy(end, ep, ignore_index=T, scale=0.5)
            out["loss"] = self.dtype.type((ls + le) / 2)
            cache["d"] = np.stack([ds.reshape(-1), de.reshape(-1)], axis=1)  # [n, 2]
        return out, cache

    def backward(self, cache, grads=None, dstart=None, dend=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        given = None
        if dstart is not None or dend is not None:
            z = np.zeros_like(dstart if dstart is not None else dend)
            given = np.stack([(dstart if dstart is not None else z).reshape(-1),
                              (dend if dend is not None else z).reshape(-1)], axis=1)
        d = _upstream(cache["d"], given, scale, self.dtype)
        dseq = dense_backward(np.ascontiguousarray(d), cache["x"], self.params, grads,
                              "qa_outputs")
        return self._finish(cache, dseq, None, grads)


class AlbertForMultipleChoice(_Head):
    """input_ids [B, K, T] (K choices, each "[CLS] context [SEP] choice [SEP]"), run as
    [B*K, T]; pooled -> dropout -> classifier (H -> 1): logits [B, K]; cross-entropy over
    the choices."""

    head = "multiple_choice"

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, output_attentions=False):
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 3:
            raise ValueError(f"multiple choice wants input_ids [batch, choices, seq], got "
                             f"shape {input_ids.shape}")
        B, K, T = input_ids.shape
        flat = [None if a is None else np.asarray(a).reshape(B * K, T)
                for a in (token_type_ids, attention_mask)]
        drop, out, enc = self._run(input_ids.reshape(B * K, T), flat[0], flat[1], train, seed,
                                   step, output_attentions)
        logits, hc = _drop_dense(out["pooler_output"], self.params, "classifier",
                                 self.config.classifier_dropout_prob, drop)
        out["logits"] = logits.reshape(B, K)
        cache = dict(enc=enc, head=hc, d=None)
        if labels is not None:
            loss, d, _ = cross_entropy(out["logits"], np.asarray(labels).reshape(-1))
            out["loss"], cache["d"] = loss, d.reshape(B * K, 1)
        return out, cache

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache["d"], None if dlogits is None else dlogits.reshape(-1, 1), scale,
                      self.dtype)
        dpooled = _drop_dense_backward(d, cache["head"], self.params, grads, "classifier")
        return self._finish(cache, None, dpooled, grads)


MODEL_CLASSES = {c.head: c for c in (AlbertModel, AlbertForPreTraining, AlbertForMaskedLM,
                                     AlbertForSequenceClassification,
                                     AlbertForTokenClassification, AlbertForQuestionAnswering,
                                     AlbertForMultipleChoice)}
# Hugging Face's class name (config.json "architectures") <-> our head name
ARCHITECTURES = {c.__name__: h for h, c in MODEL_CLASSES.items()}


def model_class(head):
    try:
        return MODEL_CLASSES[head]
    except KeyError:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(MODEL_CLASSES)}") from None
