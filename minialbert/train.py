"""Pretraining: the loop, evaluation, checkpoints and exact resume; `minialbert pretrain`
and `evaluate` (fill-mask is in inference.py).

One step: a batch (a pure function of seed, epoch and index: data.py), forward and
backward in micro-batches (their gradients add up), a NaN check, global-norm clipping,
the learning rate from the schedule, the optimizer update. Dropout masks are a hash of
(seed, step, site), the data position is (epoch, index), the optimizer state is saved:
so a resumed run continues with exactly the losses the uninterrupted run would have had
(at the same thread count: every kernel is deterministic for a fixed thread count, and
most for any — see the README).
"""
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .memory import keep_freed_memory
from .checkpoint import CheckpointError, check_tokenizer, load_checkpoint
from .distributed import (FlatGradients, check_same, checksum, my_pieces, on_root,
                          report_error, world)
from .rundir import (FollowerRunDir, RunDir, StopRequests, given_settings, resume_settings,
                     stopped_inside_a_step)
from .config import AlbertConfig, parse_setting, preset
from .corpus import load_corpus
from .data import DataError, PretrainingData, tokenize_corpus
from .model import AlbertForPreTraining
from .options import OptionError
from .optim import clip_by_global_norm, learning_rate, make_optimizer, no_decay
from .plots import plot_pretraining


class TrainingError(RuntimeError):
    pass


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    corpus: list = None  # None: the embedded Python docs
    format: str = "auto"
    preset: str = "small"
    config: str = None  # a config.json instead of the preset
    tokenizer: str = None  # a folder with spiece.model; None: train one on the corpus
    vocab_size: int = 4000
    seq_len: int = 64
    batch_size: int = 64
    micro_batches: int = 1
    steps: int = None  # None: as many as fit in time_budget
    time_budget: float = 600.0  # seconds, used when steps is None
    lr: float = 5e-3
    warmup: float = 0.05  # fraction of the steps
    schedule: str = "albert"
    optimizer: str = "lamb"
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    threads: int = None
    eval_every: int = 50
    eval_batches: int = 16
    save_every: int = 100
    mlm_path: str = "masked"
    heldout_fraction: float = 0.1
    progress: bool = True
    stop_after: int = None  # stop (and save) after this many steps: an interruption, for tests
    distributed: bool = None  # None: data parallel when started by an MPI launcher
    deterministic: bool = False  # sum the micro-batches' gradients in a fixed order
    extra: dict = field(default_factory=dict)  # model config overrides


# ------------------------------------------------------------------------------ pieces

def progress_bar(enabled, total, initial):
    """A tqdm bar over steps (None when disabled or tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stdout)


_MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")


def evaluate_batches(model, batches, mlm_path="masked"):
    """Held-out MLM loss/accuracy and (AlbertForPreTraining only) SOP loss/accuracy,
    weighted by counts. An AlbertForMaskedLM has no SOP head: its SOP entries are None."""
    sop = model.head == "pretraining"
    keys = _MODEL_KEYS if sop else _MODEL_KEYS[:4]
    mlm_nll = mlm_ok = mlm_n = sop_nll = sop_ok = sop_n = 0.0
    for b in batches:
        out, cache = model.forward(**{k: b[k] for k in keys}, mlm_path=mlm_path)
        lab = b["labels"].reshape(-1)
        rows = out["mlm_rows"] if out["mlm_rows"] is not None else np.flatnonzero(lab != -100)
        logits = out["prediction_logits" if sop else "logits"]
        if out["mlm_rows"] is None:
            logits = logits[rows]
        lab = lab[rows]
        n = len(lab)
        mlm_nll += float(out["mlm_loss" if sop else "loss"]) * n
        mlm_ok += float((logits.argmax(1) == lab).sum())
        mlm_n += n
        if sop:
            s = b["sentence_order_label"]
            sop_nll += float(out["sop_loss"]) * len(s)
            sop_ok += float((out["sop_logits"].argmax(1) == s).sum())
            sop_n += len(s)
    mlm_loss = mlm_nll / max(mlm_n, 1)
    return dict(mlm_loss=mlm_loss, mlm_acc=mlm_ok / max(mlm_n, 1), perplexity=math.exp(mlm_loss),
                sop_loss=sop_nll / sop_n if sop_n else None,
                sop_acc=sop_ok / sop_n if sop_n else None,
                predictions=int(mlm_n), pairs=int(sop_n))


def unigram_cross_entropy(train_tokens, vocab_size, batches):
    """The baseline a model that ignores context reaches: -mean log p_unigram(label) of the
    held-out masked tokens, with p estimated from the training tokens (add-one)."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1
    logp = np.log(counts / counts.sum())
    labels = np.concatenate([b["labels"][b["labels"] != -100] for b in batches])
    return float(-logp[labels].mean())


# ------------------------------------------------------------------------------ pretrain

def check_settings(pc):
    """What cannot work, said before anything runs (the CLI has checked each number)."""
    if pc.batch_size < 1 or pc.micro_batches < 1 or pc.batch_size % pc.micro_batches:
        raise OptionError(f"--micro-batches {pc.micro_batches} does not divide --batch-size "
                          f"{pc.batch_size}")
    if pc.steps is not None and pc.steps < 1:
        raise OptionError(f"--steps must be a positive integer, got {pc.steps}")
    if pc.steps is None and not (pc.time_budget and pc.time_budget > 0):
        raise OptionError("give --steps or a positive --time-budget")
    if not (pc.lr > 0 and math.isfinite(pc.lr)) or not pc.clip > 0:
        raise OptionError(f"--lr and --clip must be positive (got {pc.lr}, {pc.clip})")


def _model_config(pc, vocab_size):
    if pc.config:
        if not pathlib.Path(pc.config).is_file():
            raise OptionError(f"--config {pc.config}: no such file")
        try:
            cfg = AlbertConfig.load(pc.config)
        except (ValueError, TypeError) as e:
            raise OptionError(f"--config {pc.config}: {e}") from None
        if cfg.vocab_size != vocab_size:
            raise CheckpointError(f"{pc.config} says vocab_size={cfg.vocab_size}, but the "
                                  f"tokenizer has {vocab_size} pieces")
    else:
        try:
            cfg = preset(pc.preset, vocab_size=vocab_size, **pc.extra)
        except (ValueError, TypeError) as e:
            raise OptionError(f"the model settings do not work: {e}") from None
    if pc.seq_len > cfg.max_position_embeddings:
        raise DataError(f"seq_len {pc.seq_len} is longer than max_position_embeddings="
                        f"{cfg.max_position_embeddings}")
    return cfg


# what a resumed run may change (say so in the log); the rest would make it another run
RESUMABLE = ("steps", "lr", "warmup", "schedule", "clip", "weight_decay", "eval_every",
             "eval_batches", "save_every", "micro_batches", "mlm_path")


def _calibrate(model, data, pc, eval_batches, t_start, say, w):
    """How many steps fit in the time budget: forward + backward of this rank's share of real
    batches timed (the first pays one-time costs: the fastest of three), evaluations and
    overhead allowed for. Every rank takes the root's count."""
    per_step = float("inf")
    for i in range(3):
        b = data.batch(0, i, pc.batch_size)
        t0 = time.perf_counter()
        for j in my_pieces(w, pc.micro_batches):
            mb = _piece(b, pc.micro_batches, j)
            o, c = model.forward(**{k: mb[k] for k in _MODEL_KEYS}, mlm_path=pc.mlm_path)
            model.backward(c)
        per_step = min(per_step, time.perf_counter() - t0)
    per_step *= 1.1  # the optimizer step, logging
    evals = max(1, pc.time_budget / per_step / pc.eval_every) if pc.eval_every else 0
    eval_cost = len(eval_batches) * per_step / 3
    total = max(1, int((pc.time_budget - time.time() + t_start - evals * eval_cost)
                       / (per_step * 1.05)))
    total = w.bcast(total)
    say(f"time budget {pc.time_budget:.0f} s at {per_step:.2f} s/step: {total} steps")
    return total


def _piece(batch, k, j):
    """Micro-batch ``j`` of ``k``: rows [j·B/k, (j+1)·B/k) of the batch."""
    m = batch["input_ids"].shape[0] // k
    return {key: v[j * m:(j + 1) * m] for key, v in batch.items()}


def _piece_step(model, grads, mb, pc, seed_step, inv):
    """Forward and backward of one micro-batch, its gradient added into ``grads`` (its loss
    scaled by ``inv`` = 1/k). -> ((loss, mlm, sop), [MLM right, MLM n, SOP right, SOP n]).
    A non-finite loss skips the backward; the step reports it once every rank has said."""
    o, c = model.forward(**{key: mb[key] for key in _MODEL_KEYS}, train=True,
                         seed=pc.seed, step=seed_step, mlm_path=pc.mlm_path)
    losses = (float(o["loss"]), float(o["mlm_loss"]), float(o["sop_loss"]))
    if not math.isfinite(losses[0]):
        return losses, np.zeros(4)
    model.backward(c, grads, dlogits=c["dlogits"] * inv, dsop_logits=c["dsop"] * inv)
    logits, lab = o["prediction_logits"], mb["labels"].reshape(-1)
    if o["mlm_rows"] is not None:
        lab = lab[o["mlm_rows"]]
    else:
        sel = lab != -100
        logits, lab = logits[sel], lab[sel]
    return losses, np.array([(logits.argmax(1) == lab).sum(), len(lab),
                             (o["sop_logits"].argmax(1) == mb["sentence_order_label"]).sum(),
                             len(mb["sentence_order_label"])], dtype=np.float64)


def _train_step(model, grads, batch, pc, step, last_ck, w):
    """One optimizer step's gradient over ``batch``: this rank's micro-batches, then the sum
    over the ranks (distributed.py), clipped. -> (log record fields). ``grads`` is a
    FlatGradients; with ``grads.rows`` (deterministic) each micro-batch has its own."""
    k = pc.micro_batches
    inv = np.float32(1.0 / k)
    grads.flat.fill(0)
    if grads.rows is not None:
        grads.rows.fill(0)
    records = []
    for i, j in enumerate(my_pieces(w, k)):
        g = grads.views if grads.rows is None else grads.row_views[i]
        records.append(_piece_step(model, g, _piece(batch, k, j), pc, step * k + j, inv))
    records = [r for rank in w.allgather(records) for r in rank]  # in micro-batch order
    bad = next((l[0] for l, _ in records if not math.isfinite(l[0])), None)
    if bad is not None:
        e = TrainingError(
            f"the loss is {bad} at step {step + 1}: training stopped. "
            f"The last good checkpoint is {last_ck or 'not written yet'}; resume "
            "from it with a lower --lr (minialbert pretrain --resume --lr ...)")
        e.all_ranks = True
        raise e
    t0 = time.perf_counter()
    if grads.rows is None:
        w.allreduce_sum_(grads.flat)
    else:  # every micro-batch's gradient, added in micro-batch order on every rank
        rows = w.allgather_rows(grads.rows)
        grads.flat[:] = rows[0]
        for r in rows[1:]:
            grads.flat += r
    comm = time.perf_counter() - t0
    norm = clip_by_global_norm(grads.views, pc.clip)
    if not math.isfinite(norm):
        e = TrainingError(f"the gradient norm is {norm} at step {step + 1}: training "
                          f"stopped. The last good checkpoint is {last_ck}")
        e.all_ranks = True
        raise e
    loss, mlm, sop = np.mean([l for l, _ in records], axis=0)
    stats = sum((s for _, s in records), np.zeros(4))
    rec = dict(loss=loss, mlm_loss=mlm, sop_loss=sop, mlm_acc=stats[0] / max(stats[1], 1),
               sop_acc=stats[2] / stats[3], grad_norm=norm)
    if w.size > 1:
        rec["comm_s"] = comm
    return rec


def _resume_state(out, pc, given):
    """What a resumed run continues from -> (pc, changed, total, cfg, params, state,
    optimizer arrays, tokenizer), or None when there is nothing left to do."""
    cfg, params, state, opt_arrays, ck = load_checkpoint(out)
    if "run" not in state or "optimizer" not in state:
        raise CheckpointError(f"{ck} was not written by minialbert pretrain (no run "
                              "settings or optimizer state): it cannot be resumed")
    if "time_budget" in given and "steps" not in given:
        raise CheckpointError("--time-budget cannot change when a run is resumed: give "
                              "--steps (the total to reach)")
    pc, changed = resume_settings(PretrainConfig, state["run"], given, RESUMABLE)
    total = pc.steps if "steps" in changed else state["total_steps"]
    if total < state["step"]:
        raise CheckpointError(f"--steps {total}: the run is already at step {state['step']}")
    if total == state["step"] and not changed:
        return None, dict(step=total, checkpoint=str(ck))
    from .checkpoint import load_tokenizer
    tok = load_tokenizer(ck, cfg.vocab_size)
    return (pc, changed, total, cfg, params, state, opt_arrays, tok), None


def _threads(pc, w):
    """--threads, or the cores of this machine shared among the ranks on it."""
    if pc.threads is not None or w.size == 1:
        return pc.threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores // w.local_size, kernels.get_threads()))


def pretrain(pc=None, resume=False, overwrite=False, **overrides):
    """Pretrain AlbertForPreTraining. Returns a summary dict (also written to summary.json).

    ``pretrain(PretrainConfig(...))`` or ``pretrain(out=..., steps=..., ...)``. A folder
    that holds a run is refused unless ``resume`` (continue it from its latest checkpoint,
    with the settings it was started with; of the settings given, those in RESUMABLE
    apply — written to the log — and the others are refused) or ``overwrite``.

    Started by an MPI launcher (or with ``distributed=True``), each rank runs this same
    function on its share of every batch (distributed.py); the root alone writes."""
    given = given_settings(PretrainConfig, pc, overrides)
    pc = dataclasses.replace(pc or PretrainConfig(), **overrides)
    out = pathlib.Path(pc.out)
    t_start = time.time()
    w = world(pc.distributed)
    rd = on_root(w, lambda: RunDir(out, resume=resume, overwrite=overwrite)) or \
        FollowerRunDir(out)
    w.barrier()  # the root has made (or emptied) the folder
    kernels.set_threads(_threads(pc, w))
    keep_freed_memory()  # a step reuses the last step's pages (memory.py)
    state, changed = None, {}
    if resume:
        resumed, done = _resume_state(out, pc, given)
        if resumed is None:
            if w.is_root:
                print(f"{out}: the run is already at step {done['step']} of {done['step']}: "
                      "nothing to do (give --steps to train further)")
            return rd.read_summary() or done
        pc, changed, total, cfg, params, state, opt_arrays, tok = resumed
    say = print if w.is_root else (lambda *a, **k: None)
    check_settings(pc)
    my_pieces(w, pc.micro_batches)  # a clear error now if the ranks cannot share a batch

    corpus = load_corpus(pc.corpus, pc.format)
    check_same(w, "the corpus (its SHA-256)", corpus.checksum)
    if state is not None and corpus.checksum != state["corpus_sha256"] and w.is_root:
        print(f"warning: the corpus changed since the checkpoint was written (SHA-256 "
              f"{state['corpus_sha256'][:12]}… then, {corpus.checksum[:12]}… now); "
              "continuing on the new one", file=sys.stderr)
    train_c, held_c = corpus.split(pc.heldout_fraction)
    if state is None:
        if pc.tokenizer:
            from .tokenizer import AlbertTokenizer
            tok = AlbertTokenizer(pc.tokenizer)
        else:
            t0 = time.time()
            from .tokenizer import train_tokenizer
            tok = train_tokenizer(train_c.sentences(), pc.vocab_size)
            say(f"tokenizer: {tok.vocab_size} pieces trained in {time.time() - t0:.1f} s")
        cfg = _model_config(pc, tok.vocab_size)
        model = AlbertForPreTraining(cfg, seed=pc.seed)
    else:
        check_tokenizer(tok, cfg.vocab_size, state.get("tokenizer_sha256"))
        model = AlbertForPreTraining(cfg, params=params)
    check_same(w, "the tokenizer (its SHA-256)", tok.checksum)
    if w.size > 1:  # a CRC of every weight: only worth computing when there are ranks
        check_same(w, "the initial weights", checksum(model.params))
    model.unpad = True  # no work on padding (the same loss and gradients: chapter 10)
    tc = tokenize_corpus(train_c, tok, out / "cache")
    held_tc = tokenize_corpus(held_c, tok, out / "cache")
    data = PretrainingData(tc, tok, pc.seq_len, seed=pc.seed)
    if data.num_batches(pc.batch_size) < 1:
        raise DataError(f"the training split has {len(data.instances(0))} instances, fewer "
                        f"than one batch of {pc.batch_size}: give more text or a smaller "
                        "--batch-size")
    eval_batches = []
    if w.is_root:
        try:
            held = PretrainingData(held_tc, tok, pc.seq_len, seed=pc.seed + 1)
            n_eval = min(pc.eval_batches, held.num_batches(pc.batch_size))
            eval_batches = [held.batch(0, i, pc.batch_size) for i in range(n_eval)]
        except DataError:
            eval_batches = []
        if not eval_batches:
            say("note: the held-out split is too small for one evaluation batch; no evaluation")
    unigram = unigram_cross_entropy(tc.tokens, cfg.vocab_size, eval_batches) if eval_batches else None
    opt = make_optimizer(pc.optimizer, weight_decay=pc.weight_decay, **(
        {"exclude": no_decay} if pc.optimizer == "adamw" else {}))
    if state is not None:
        opt.load_state_dict(opt_arrays, state["optimizer"])
        step, epoch, index = state["step"], state["epoch"], state["index"]
    else:
        step = epoch = index = 0
        total = pc.steps if pc.steps is not None else \
            _calibrate(model, data, pc, eval_batches, t_start, say, w)
    warmup = int(pc.warmup * total)
    run = {k: v for k, v in dataclasses.asdict(pc).items()}
    n_params = sum(v.size for v in model.params.values())
    say(f"model: {cfg.describe_layers()}, H {cfg.hidden_size}, E {cfg.embedding_size}, "
        f"V {cfg.vocab_size}: {n_params:,} parameters; {pc.optimizer} lr {pc.lr}, "
        f"batch {pc.batch_size} × {pc.seq_len}; corpus {corpus.info.get('source')} "
        f"({corpus.info['sentences']} sentences, SHA-256 {corpus.checksum[:12]}…); "
        f"{kernels.get_threads()} threads" + (
            f" × {w.size} ranks ({pc.micro_batches // w.size} micro-batch(es) each, "
            f"{'deterministic' if pc.deterministic else 'MPI'} sum)" if w.size > 1 else ""))
    kept = on_root(w, lambda: rd.start_log(resume_step=step if state is not None else None))
    ev, ev_step = next(((r, r["step"]) for r in reversed(kept or []) if r.get("eval")),
                       (None, None))
    if changed:
        rd.log(resumed=True, step=step, changed=changed)
        say(f"resumed at step {step} with changed settings: " +
            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    grads = FlatGradients(model.params,
                          rows=len(my_pieces(w, pc.micro_batches)) if pc.deterministic else 0)
    check_every = pc.eval_every or 50
    last_ck = None

    def checkpoint():
        st = dict(epoch=epoch, index=index, total_steps=total, run=run,
                  corpus_sha256=corpus.checksum, corpus_info=corpus.info,
                  python=corpus.info.get("python"), threads=kernels.get_threads(),
                  ranks=w.size)
        return on_root(w, lambda: rd.save(step, model.params, cfg, st, opt, tok))

    def run_eval():
        if not eval_batches:
            return None
        e = evaluate_batches(model, eval_batches, pc.mlm_path)
        rd.log(eval=True, step=step, unigram=unigram, **e)
        return e

    bar = progress_bar(pc.progress and w.is_root, total, step)
    tokens_seen = 0
    t_loop = time.time()
    interrupted = updating = hard = False
    with StopRequests() as stop:
        try:
            while step < total and not w.any(stop.requested):
                if index >= data.num_batches(pc.batch_size, epoch):
                    epoch, index = epoch + 1, 0
                batch = data.batch(epoch, index, pc.batch_size)
                t0 = time.perf_counter()
                rec = _train_step(model, grads, batch, pc, step, last_ck, w)
                lr = learning_rate(step, pc.lr, total, warmup, pc.schedule)
                updating = True  # params are half-updated until the step is counted
                opt.step(model.params, grads.views, lr)
                step += 1
                index += 1
                updating = False
                dt = time.perf_counter() - t0
                ntok = int(batch["attention_mask"].sum())
                tokens_seen += ntok
                rd.log(step=step, **rec, lr=lr, tokens_per_s=ntok / dt, epoch=epoch,
                       elapsed=time.time() - t_start)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", mlm_acc=f"{rec['mlm_acc']:.3f}",
                                    sop_acc=f"{rec['sop_acc']:.2f}", tok_s=f"{ntok / dt:.0f}")
                    bar.update(1)
                if w.size > 1 and step % check_every == 0:
                    check_same(w, f"the weights after step {step}", checksum(model.params))
                if pc.eval_every and step % pc.eval_every == 0:
                    ev, ev_step = run_eval(), step
                    if bar is not None and ev:
                        bar.write(f"step {step}: held-out MLM loss {ev['mlm_loss']:.3f} (unigram "
                                  f"{unigram:.3f}), MLM acc {ev['mlm_acc']:.3f}, SOP acc "
                                  f"{ev['sop_acc']:.3f}")
                if pc.save_every and step % pc.save_every == 0:
                    last_ck = checkpoint()
                if pc.stop_after is not None and step >= pc.stop_after:
                    interrupted = True
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            if bar is not None:
                bar.close()
            if updating:
                return stopped_inside_a_step(out, step)
            interrupted = hard = True
        if bar is not None:
            bar.close()
        interrupted = interrupted or (stop.requested and step < total)
        interrupted = w.any(interrupted)
        last_ck = checkpoint()
    if interrupted:
        code = stop.exit_code if stop.requested else 130 if hard else 0
        say(f"interrupted at step {step}: checkpoint {last_ck} (continue with --resume)")
        return dict(interrupted=True, step=step, checkpoint=str(last_ck), exit_code=code)
    if ev_step != step:  # not evaluated at this step yet
        ev = run_eval()
    wall = time.time() - t_start
    summary = dict(step=step, checkpoint=str(last_ck), wall_seconds=wall,
                   train_seconds=time.time() - t_loop,
                   tokens_per_s=tokens_seen / max(time.time() - t_loop, 1e-9),
                   unigram_cross_entropy=unigram, heldout=ev, python=corpus.info.get("python"),
                   corpus_sha256=corpus.checksum, threads=kernels.get_threads(), ranks=w.size,
                   optimizer=pc.optimizer, lr=pc.lr)
    if not w.is_root:
        return summary
    rd.write_summary(summary)
    png = plot_pretraining(out / "log.jsonl", out / "curves.png")
    say(f"done: {step} steps in {wall / 60:.1f} min ({summary['tokens_per_s']:.0f} tokens/s)")
    if ev:
        say(f"held-out: MLM loss {ev['mlm_loss']:.3f} vs unigram {unigram:.3f}, MLM accuracy "
            f"{ev['mlm_acc']:.3f}, SOP accuracy {ev['sop_acc']:.3f}")
    say(f"checkpoint: {last_ck}; log: {out / 'log.jsonl'}; " +
        (f"curves: {png}" if png else "no plot (pip install matplotlib, or -e '.[plot]')"))
    return summary


# ------------------------------------------------------------------------------ using a checkpoint

def load_pretrained(path):
    """-> (AlbertForPreTraining, AlbertTokenizer, state) from a run or checkpoint folder."""
    from .checkpoint import check_finite, load_tokenizer

    cfg, params, state, _, ck = load_checkpoint(path)
    head = state.get("head", "pretraining")
    if head != "pretraining":
        raise CheckpointError(f"{ck} holds a fine-tuned model (head {head!r}); this needs a "
                              "pretraining checkpoint (minialbert pretrain's run folder)")
    check_finite(params, ck)
    tok = load_tokenizer(ck, cfg.vocab_size)
    check_tokenizer(tok, cfg.vocab_size, state.get("tokenizer_sha256"))
    return AlbertForPreTraining(cfg, params=params), tok, state


def eval_set(tcorpus, tok, seq_len, batch_size, batches, seed):
    """The first ``batches`` batches of pretraining instances (masks and sentence order
    drawn with ``seed``) from a tokenized corpus: the held-out set evaluations use."""
    held = PretrainingData(tcorpus, tok, seq_len, seed=seed)
    n = min(batches, held.num_batches(batch_size))
    if n < 1:
        raise DataError(f"the evaluation text has fewer instances than one batch of "
                        f"{batch_size} (try a smaller --batch-size)")
    return [held.batch(0, i, batch_size) for i in range(n)]


def _load_hf_for_evaluation(path):
    from .checkpoint import check_finite
    from .hf import from_pretrained, load_tokenizer as load_folder_tokenizer

    model = from_pretrained(path, verbose=False)
    if model.head not in ("pretraining", "masked_lm"):
        raise CheckpointError(f"{path} holds {type(model).__name__} (head {model.head!r}); "
                              "evaluate needs AlbertForPreTraining or AlbertForMaskedLM")
    check_finite(model.params, path)
    tok = load_folder_tokenizer(path)
    check_tokenizer(tok, model.config.vocab_size)
    return model, tok


def evaluate_checkpoint(path, corpus=None, fmt="auto", batches=None, batch_size=None,
                        seq_len=None):
    """Held-out metrics of a pretraining checkpoint, by default on the very set its run
    evaluated on (the run's corpus, held-out fraction, sequence length, seed, batch size
    and number of batches): the numbers agree with the run's own log. A Hugging Face
    folder (AlbertForPreTraining or AlbertForMaskedLM) has no run: it is evaluated on all
    of ``corpus`` with pretrain's default settings. The dict says which set it used
    (``set``); the unigram baseline is None where there is no training text to count."""
    from .hf import is_hf_folder

    defaults = dataclasses.asdict(PretrainConfig())
    if is_hf_folder(path):
        if corpus is None:
            raise DataError(f"{path} is a Hugging Face folder: it holds no run and no corpus; "
                            "give --corpus with text to evaluate on")
        model, tok = _load_hf_for_evaluation(path)
        run, state = defaults, {}
    else:
        model, tok, state = load_pretrained(path)
        run = dict(defaults, **state.get("run", {}))
    c = load_corpus(corpus if corpus is not None else run["corpus"], fmt if corpus else run["format"])
    if corpus is None and c.checksum != state.get("corpus_sha256", c.checksum):
        print("warning: the corpus differs from the one the checkpoint was trained on",
              file=sys.stderr)
    P = model.config.max_position_embeddings
    seq, bs = seq_len or min(run["seq_len"], P), batch_size or run["batch_size"]
    if seq > P:
        raise DataError(f"seq_len {seq} is longer than the model's {P} positions "
                        "(max_position_embeddings)")
    n = run["eval_batches"] if batches is None else batches
    if state:
        train_c, held_c = c.split(run["heldout_fraction"])
        what = f"the held-out {run['heldout_fraction']:g} of"
    else:
        train_c, held_c, what = None, c, "all of"
    ev_batches = eval_set(tokenize_corpus(held_c, tok), tok, seq, bs, n, run["seed"] + 1)
    ev = evaluate_batches(model, ev_batches, run["mlm_path"])
    ev["unigram_cross_entropy"] = None if train_c is None else unigram_cross_entropy(
        tokenize_corpus(train_c, tok).tokens, model.config.vocab_size, ev_batches)
    ev["set"] = (f"{len(ev_batches)} batches of {bs} × {seq} from {what} "
                 f"{c.info.get('source')} (seed {run['seed'] + 1})")
    return ev


# ------------------------------------------------------------------------------ CLI

def _cmd_pretrain(args):
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.no_progress:
        kw["progress"] = False
    if not args.resume and "time_budget" in kw and "steps" not in kw:
        kw["steps"] = None
    extra = {n.replace("-", "_"): getattr(args, n.replace("-", "_")) for n, _ in MODEL_OPTIONS
             if getattr(args, n.replace("-", "_")) is not None}
    for text in args.set or ():
        try:
            name, value = parse_setting(text)
        except ValueError as e:
            raise OptionError(str(e)) from None
        extra[name] = value
    if extra:
        kw["extra"] = extra
    try:
        s = pretrain(resume=args.resume, overwrite=args.overwrite, **kw)
    except TrainingError as e:
        return report_error(e, 3)
    return s.get("exit_code", 0) if s and s.get("interrupted") else 0


def _cmd_evaluate(args):
    ev = evaluate_checkpoint(args.checkpoint, args.corpus, args.format, args.batches,
                             args.batch_size, args.seq_len)
    print(f"evaluated on {ev['set']}")
    uni = ev["unigram_cross_entropy"]
    print(f"held-out: MLM loss {ev['mlm_loss']:.3f}" +
          (f" (unigram baseline {uni:.3f})" if uni is not None else "") +
          f", perplexity {ev['perplexity']:.1f}, MLM accuracy {ev['mlm_acc']:.3f} over "
          f"{ev['predictions']} predictions; " +
          (f"SOP accuracy {ev['sop_acc']:.3f} over {ev['pairs']} pairs" if ev["pairs"]
           else "no SOP head"))
    return 0


MODEL_OPTIONS = (("embedding-size", "E, the factorized embedding size"),
                 ("hidden-size", "H"), ("num-hidden-layers", "layer applications"),
                 ("num-attention-heads", "heads"), ("intermediate-size", "the FFN's width"))


def add_commands(sub):
    from .config import PRESETS
    from .options import (Help, fraction, nonneg_int, optimization_options, positive_float,
                          positive_int, settings_option)

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain", formatter_class=Help,
        help="pretrain a small ALBERT (default: ~10 min on the embedded Python docs)",
        description="Pretrain AlbertForPreTraining (MLM + SOP) with checkpoints, a log, "
        "held-out evaluation and exact resume.",
        epilog="examples:\n  minialbert pretrain                                   # the "
        "embedded Python docs, ~10 min\n  minialbert pretrain --corpus my_texts/ --steps 2000 "
        "--out runs/mine\n  minialbert pretrain --out runs/mine --resume --steps 4000   # "
        "continue further")
    p.add_argument("--out", default=d.out, help="the run folder: checkpoints, log.jsonl, "
                   "summary.json, curves.png")
    p.add_argument("--corpus", nargs="*", default=None, help="text files or folders of .txt "
                   "files (default: the embedded Python docs)")
    opt = lambda *a, **k: settings_option(p, d, *a, **k)  # noqa: E731
    opt("format", choices=["auto", "lines", "text"], help="lines: a sentence per line, blank "
        "line between documents; text: wrapped prose, a paragraph per document")
    opt("preset", choices=sorted(PRESETS), help="the model's sizes")
    opt("config", help="a model config.json instead of the preset")
    opt("tokenizer", help="a folder with spiece.model (none: train one on the corpus)")
    opt("vocab-size", positive_int, help="pieces of the tokenizer trained on the corpus")
    for name, what in MODEL_OPTIONS:
        p.add_argument(f"--{name}", type=positive_int, default=None,
                       help=f"override the preset's {name.replace('-', '_')} ({what})")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any model "
                   "setting (an AlbertConfig field, as in a Hugging Face config.json), "
                   "repeatable: --set sharing=none --set hidden_act=gelu")
    opt("seq-len", positive_int, help="tokens per instance, [CLS] and [SEP]s included")
    opt("batch-size", positive_int, help="instances per step")
    opt("micro-batches", positive_int, help="split each batch into this many (gradient "
        "accumulation); must divide --batch-size")
    opt("steps", positive_int, help="steps to train (none: as many as fit in --time-budget)")
    opt("time-budget", positive_float, help="seconds, when --steps is not given")
    optimization_options(opt)
    opt("schedule", choices=["albert", "hf"], help="albert: polynomial decay; hf: linear")
    opt("optimizer", choices=["lamb", "adamw", "adam_weight_decay"], help="the optimizer")
    opt("seed", nonneg_int, help="seeds the weights, the data order, masking and dropout")
    opt("eval-every", nonneg_int, help="evaluate on the held-out split every N steps (0: at "
        "the end only)")
    opt("eval-batches", positive_int, help="held-out batches per evaluation")
    opt("heldout-fraction", fraction, help="fraction of documents held out for evaluation")
    opt("mlm-path", choices=["masked", "all"], help="masked: the MLM head on the masked "
        "positions only; all: at every position (as Hugging Face computes it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (the "
                   "options --steps, --lr, --warmup, --schedule, --clip, --weight-decay, "
                   "--eval-every, --eval-batches, --save-every, --micro-batches, --mlm-path "
                   "may change; the log records it)")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that "
                   "holds a run (its checkpoints and log are removed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary "
                   "is still printed)")
    p.add_argument("--distributed", action="store_true", default=None, help="data parallel "
                   "over MPI even if no launcher is detected (it is detected under mpiexec: "
                   "mpiexec -n 2 minialbert pretrain ...; needs pip install -e '.[mpi]')")
    p.add_argument("--deterministic", action="store_true", default=None, help="add the "
                   "micro-batches' gradients in a fixed order (1 rank and N ranks give the "
                   "same bits; N times the traffic)")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("evaluate", formatter_class=Help,
                       help="held-out MLM (and SOP) metrics of a pretraining checkpoint or a "
                       "Hugging Face masked-LM folder")
    p.add_argument("--checkpoint", required=True, help="a pretraining run or checkpoint "
                   "folder, or a Hugging Face AlbertForPreTraining/AlbertForMaskedLM folder")
    p.add_argument("--corpus", nargs="*", default=None, help="evaluate on these files "
                   "(default: the run's own held-out split; needed for a Hugging Face folder)")
    p.add_argument("--format", default="auto", choices=["auto", "lines", "text"],
                   help="the format of --corpus")
    p.add_argument("--batches", type=positive_int, default=None, help="held-out batches "
                   "(default: the run's --eval-batches)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="instances per "
                   "batch (default: the run's)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="tokens per instance "
                   "(default: the run's, at most the model's positions)")
    p.set_defaults(func=_cmd_evaluate)
