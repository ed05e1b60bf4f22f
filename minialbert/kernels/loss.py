"""Softmax cross-entropy with an ignore index, forward and backward fused.

Legend: R rows (predictions), C classes (V for the MLM head, 2 for SOP).

    loss = mean over counted rows of  logsumexp(z) - z[label]
    dz   = (softmax(z) - onehot(label)) / count     (zero rows for ignored labels)

Rows whose label is ``ignore_index`` (-100, as torch and Hugging Face) do not count.
Stable for any logit size: the row max is subtracted before exp.
A batch where every label is ignored returns loss 0 and a zero gradient (torch returns
NaN there: mean of nothing); a NaN would stop a training run for no fault of the model.
"""
import math

import numpy as np
from numba import njit, prange

from ._base import FASTMATH, cast_like, exp_nonpositive32
from .reduce import vmax, vsum


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _xent_rows(logits, labels, ignore_index, want_grad, dlogits, row_loss, mult):
    # mult: what the gradient is multiplied by (scale / count), applied in the same pass
    # (a pass of its own over [R, C] would read and write the whole gradient once more)
    R, C = logits.shape
    for r in prange(R):
        lab = labels[r]
        if lab == ignore_index:
            row_loss[r] = 0.0
            if want_grad:
                for j in range(C):
                    dlogits[r, j] = 0.0
            continue
        z = logits[r]
        m = vmax(z)  # reduce.py: vectorised (a NaN in z still makes the loss NaN, below)
        e = dlogits[r] if want_grad else np.empty(C, dtype=logits.dtype)
        for j in range(C):
            e[j] = exp_nonpositive32(z[j] - m)  # (z[j] <= m: _base.exp_nonpositive32)
        s = vsum(e)  # reduce.py: a vector sum in a fixed order
        row_loss[r] = m + math.log(s) - z[lab]  # logsumexp(z) - z[label]
        if want_grad:  # (softmax(z) - onehot(label)) * mult
            inv = cast_like(logits, 1.0) / s
            p_lab = e[lab] * inv
            for j in range(C):
                e[j] = (e[j] * inv) * mult
            e[lab] = (p_lab - cast_like(logits, 1.0)) * mult


def cross_entropy(logits, labels, ignore_index=-100, grad=True, scale=1.0):
    """logits: [R,C] float, labels: [R] int -> (loss, dlogits [R,C] or None, count).

    ``dlogits`` is the gradient of ``scale * loss`` (scale = upstream gradient, e.g. the
    SOP weight).  The loss is summed in float64 in row order (deterministic), then cast
    to the logits' dtype.
    """
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    R, C = logits.shape
    if labels.shape != (R,):
        raise ValueError(f"labels shape {labels.shape} does not match logits {logits.shape}")
    counted = labels != ignore_index
    bad = labels[counted & ((labels < 0) | (labels >= C))]
    if bad.size:
        raise IndexError(f"label {bad[0]} is outside 0..{C - 1} (and is not ignore_index)")
    count = int(counted.sum())
    row_loss = np.empty(R, dtype=logits.dtype)
    dlogits = np.empty_like(logits) if grad else np.empty((1, 1), logits.dtype)
    mult = logits.dtype.type(scale / max(count, 1))
    _xent_rows(logits, labels, ignore_index, grad, dlogits, row_loss, mult)
    if count == 0:
        loss = logits.dtype.type(0.0)
        return loss, (np.zeros_like(logits) if grad else None), 0
    loss = logits.dtype.type(row_loss.astype(np.float64).sum() / count)
    return loss, (dlogits if grad else None), count


# The two losses below act on a handful of numbers per example ([B, C] logits), so they
# are plain NumPy: there is nothing for a kernel to win.

def mse_loss(pred, target):
    """mean((pred - target)^2) -> (loss, dpred). Regression heads (num_labels = 1)."""
    pred = np.asarray(pred)
    diff = pred - np.asarray(target, dtype=pred.dtype).reshape(pred.shape)
    loss = pred.dtype.type(np.mean(diff.astype(np.float64) ** 2))
    return loss, diff * pred.dtype.type(2.0 / diff.size)


def bce_with_logits(logits, targets):
    """Binary cross-entropy on logits, averaged over every entry (torch's
    BCEWithLogitsLoss): max(z, 0) - z y + log(1 + exp(-|z|)) -> (loss, dlogits)."""
    z = np.asarray(logits)
    y = np.asarray(targets, dtype=z.dtype).reshape(z.shape)
    per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    loss = z.dtype.type(per.astype(np.float64).mean())
    sig = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
    return loss, ((sig - y) / z.size).astype(z.dtype)
