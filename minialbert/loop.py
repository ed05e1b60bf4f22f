"""One training step and one training loop, shared by pretraining (train.py) and
fine-tuning (finetune.py): what a step does is the same for every head.

    train_step   a batch in micro-batches: forward, backward scaled by the micro-batch's
                 share of the rows (the gradients add up to the batch's), a NaN guard, the
                 sum over the ranks (distributed.py), global-norm clipping
    run_loop     steps until the total or a stop request: the optimizer update (never cut
                 in half by Ctrl-C), the log, evaluations, checkpoints, the progress bar

A head takes part through three methods (heads.py): ``forward(..., train, seed, step)``,
``backward(cache, grads, scale=)``, and ``step_losses`` / ``step_counts``, the numbers a
step logs.
"""
import inspect
import math
import sys
import time
from typing import NamedTuple

import numpy as np

from .distributed import check_same, checksum, my_pieces
from .optim import clip_by_global_norm
from .rundir import StopRequests, stopped_inside_a_step


class TrainingError(RuntimeError):
    pass


def progress_bar(enabled, total, initial):
    """A tqdm bar over steps (None when disabled or tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stdout)


def micro_batch(batch, k, j):
    """Micro-batch ``j`` of ``k``: rows [j·B//k, (j+1)·B//k) of the batch."""
    n = len(batch["input_ids"])
    return {key: v[j * n // k:(j + 1) * n // k] for key, v in batch.items()}


def model_inputs(model, batch):
    """The entries of ``batch`` that the model's forward takes (labels included)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in accepted}


def _stop(what, step, last_ck, command):
    e = TrainingError(f"{what} at step {step + 1}: training stopped. The last good checkpoint "
                      f"is {last_ck or 'not written yet'}; resume from it with a lower --lr "
                      f"(minialbert {command} --resume --lr ...)")
    e.all_ranks = True  # every rank finds it alike (distributed.report_error)
    return e


def _piece(model, grads, mb, share, seed, seed_step, forward_kw):
    """Forward and backward of one micro-batch, its gradient (times ``share``) added into
    ``grads``. -> (share, losses, counts). A non-finite loss skips the backward: the step
    reports it once every rank has said."""
    o, c = model.forward(**model_inputs(model, mb), train=True, seed=seed, step=seed_step,
                         **forward_kw)
    losses = model.step_losses(o)
    if not math.isfinite(losses["loss"]):
        return share, losses, {}
    model.backward(c, grads, scale=share)
    return share, losses, model.step_counts(o, mb)


def train_step(model, grads, batch, *, micro_batches, seed, step, clip, w, last_ck=None,
               forward_kw=None, command="pretrain"):
    """The gradient of one optimizer step over ``batch`` into ``grads`` (a FlatGradients):
    this rank's micro-batches, the sum over the ranks, clipped to ``clip``. Micro-batch j
    of step s draws its dropout with step s·k + j. -> the step's log record: the losses
    (weighted by the micro-batches' rows), the head's accuracies, the gradient norm."""
    k, rows = micro_batches, len(batch["input_ids"])
    grads.flat.fill(0)
    if grads.rows is not None:
        grads.rows.fill(0)
    records = []
    for i, j in enumerate(my_pieces(w, k)):
        mb = micro_batch(batch, k, j)
        if len(mb["input_ids"]):
            g = grads.views if grads.rows is None else grads.row_views[i]
            records.append(_piece(model, g, mb, len(mb["input_ids"]) / rows, seed,
                                  step * k + j, forward_kw or {}))
    records = [r for rank in w.allgather(records) for r in rank]  # in micro-batch order
    bad = next((l["loss"] for _, l, _ in records if not math.isfinite(l["loss"])), None)
    if bad is not None:
        raise _stop(f"the loss is {bad}", step, last_ck, command)
    t0 = time.perf_counter()
    if grads.rows is None:
        w.allreduce_sum_(grads.flat)
    else:  # every micro-batch's gradient, added in micro-batch order on every rank
        row_sums = w.allgather_rows(grads.rows)
        grads.flat[:] = row_sums[0]
        for r in row_sums[1:]:
            grads.flat += r
    comm = time.perf_counter() - t0
    norm = clip_by_global_norm(grads.views, clip)
    if not math.isfinite(norm):
        raise _stop(f"the gradient norm is {norm}", step, last_ck, command)
    rec = {name: sum(share * l[name] for share, l, _ in records) for name in records[0][1]}
    for name in records[0][2]:
        right, of = np.sum([c[name] for _, _, c in records], axis=0)
        rec[name] = float(right / max(of, 1))
    rec["grad_norm"] = norm
    if w.size > 1:
        rec["comm_s"] = comm
    return rec


class LoopEnd(NamedTuple):
    step: int
    checkpoint: object  # the last checkpoint written (the one at the end included)
    interrupted: bool
    exit_code: int  # for an interrupted run: 130 (Ctrl-C), the signal's code, 0 (stop_after)
    stopped_inside: dict = None  # a second Ctrl-C inside an update: nothing was saved


def _postfix(rec):
    shown = {k: rec[k] for k in ("loss", "mlm_acc", "sop_acc", "acc") if k in rec}
    return {k: f"{v:.3f}" for k, v in shown.items()}


def run_loop(model, opt, grads, w, *, step, total, next_batch, do_step, lr_at, log,
             checkpoint, evaluate=None, save_every=0, stop_after=None, progress=True,
             check_every=50, out=None):
    """Steps ``step`` .. ``total``. Each: ``next_batch()`` -> (batch, advance), the record of
    ``do_step(batch, step, last_checkpoint)``, the update at ``lr_at(step)``, ``advance()``
    (the data position moves with the step count, never ahead of it), ``log(step, record,
    batch, seconds)``; then ``evaluate(step)`` (a line to print, or None), a checkpoint
    every ``save_every`` steps (``checkpoint(step)`` -> its folder) and at the end.

    The first Ctrl-C (or SIGTERM) finishes the step and saves; a second one inside the
    update stops at once and saves nothing (the weights would be half-updated)."""
    bar = progress_bar(progress and w.is_root, total, step)
    say = (bar.write if bar is not None else print) if w.is_root else (lambda *a: None)
    last_ck, interrupted, updating, hard = None, False, False, False
    with StopRequests() as stop:
        try:
            while step < total and not w.any(stop.requested):
                batch, advance = next_batch()
                t0 = time.perf_counter()
                rec = do_step(batch, step, last_ck)
                lr = lr_at(step)
                updating = True  # params are half-updated until the step is counted
                opt.step(model.params, grads.views, lr)
                step += 1
                advance()
                updating = False
                dt = time.perf_counter() - t0
                rec["lr"] = lr
                log(step, rec, batch, dt)
                if bar is not None:
                    bar.set_postfix(**_postfix(rec))
                    bar.update(1)
                if w.size > 1 and step % check_every == 0:
                    check_same(w, f"the weights after step {step}", checksum(model.params))
                line = evaluate(step) if evaluate is not None else None
                if line:
                    say(line)
                if save_every and step % save_every == 0:
                    last_ck = checkpoint(step)
                if stop_after is not None and step >= stop_after and step < total:
                    interrupted = True
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            if bar is not None:
                bar.close()
            if updating:
                return LoopEnd(step, None, True, 130, stopped_inside_a_step(out, step))
            interrupted = hard = True
        if bar is not None:
            bar.close()
        interrupted = w.any(interrupted or (stop.requested and step < total))
        last_ck = checkpoint(step)
    code = (stop.exit_code if stop.requested else 130 if hard else 0) if interrupted else 0
    return LoopEnd(step, last_ck, interrupted, code)


def interrupted_summary(end, w):
    """What an interrupted run says and returns."""
    if end.stopped_inside is not None:
        return end.stopped_inside
    if w.is_root:
        print(f"interrupted at step {end.step}: checkpoint {end.checkpoint} (continue with "
              "--resume)")
    return dict(interrupted=True, step=end.step, checkpoint=str(end.checkpoint),
                exit_code=end.exit_code)
