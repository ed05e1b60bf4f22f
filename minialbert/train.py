"""Pretraining: `minialbert pretrain` — a composition of the shared step and loop
(loop.py), the run folder (rundir.py), the data (data.py) and evaluation (evaluation.py;
fill-mask is in inference.py).

One step: a batch (a pure function of seed, epoch and index: data.py), forward and
backward in micro-batches (their gradients add up), a NaN check, global-norm clipping,
the learning rate from the schedule, the optimizer update. Dropout masks are a hash of
(seed, step, site), the data position is (epoch, index), the optimizer state is saved:
so a resumed run continues with exactly the losses the uninterrupted run would have had
(at the same thread count: every kernel is deterministic for a fixed thread count, and
most for any — see the README).
"""
import dataclasses
import math
import os
import pathlib
import statistics
import sys
import time
import types

import numpy as np

from . import kernels
from .memory import keep_freed_memory
from .checkpoint import CheckpointError, check_tokenizer, load_run_tokenizer
from .distributed import FlatGradients, check_same, checksum, my_pieces, on_root, report_error, world
from .loop import (TrainingError, interrupted_summary, micro_batch, model_inputs,  # noqa: F401
                   run_loop, train_step)
from .rundir import FollowerRunDir, RunDir, given_settings, resume_run
from .config import AlbertConfig, parse_setting, preset
from .corpus import load_corpus
from .data import DataError, PretrainingData, tokenize_corpus
from .evaluation import (evaluate_batches, evaluate_checkpoint, eval_set,  # noqa: F401
                         load_pretrained, unigram_cross_entropy)
from .heads import AlbertForPreTraining
from .options import OptionError
from .optim import clip_by_global_norm, learning_rate, make_optimizer, no_decay
from .settings import PRETRAIN_RESUMABLE as RESUMABLE, PretrainConfig
from .plots import plot_pretraining


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


def seconds_per_step(run_step, warm=2, timed=5, clock=time.perf_counter):
    """The median wall time of ``timed`` calls run_step(i), after ``warm`` calls not timed.
    The first step of a process loads every kernel it calls from Numba's cache, and the
    second still pays for first uses (on a 2-core EPYC, Zen 3, the small preset: 1.9 s and
    0.31 s, then 0.16-0.26 s a step); the median, not the fastest, because on a shared
    machine steps vary by a quarter and the budget is for a typical one. (The rule before,
    the fastest of a process's first three steps, ended runs at 68-82 % of their budget.)"""
    for i in range(warm):
        run_step(i)
    times = []
    for i in range(warm, warm + timed):
        t0 = clock()
        run_step(i)
        times.append(clock() - t0)
    return statistics.median(times)


def steps_in_budget(budget, spent, per_step, eval_every, eval_cost):
    """How many steps of ``per_step`` seconds fit in what is left of ``budget`` after the
    ``spent`` seconds, with an evaluation (``eval_cost`` seconds) every ``eval_every``
    steps (0: none) and one at the end (_finish): n per_step + (n / eval_every + 1)
    eval_cost <= budget - spent. At least 1."""
    left = budget - spent - eval_cost
    per = per_step + (eval_cost / eval_every if eval_every else 0.0)
    return max(1, int(left / per))


def _calibrate(model, data, pc, eval_batches, t_start, say, w):
    """How many steps fit in the time budget: forward + backward of this rank's share of real
    batches timed (seconds_per_step), the optimizer step, logging and evaluations allowed
    for. Every rank takes the root's count: it is fixed here, saved in every checkpoint, and
    the learning-rate schedule follows it (so a resumed run continues the same schedule)."""
    n_batches = data.num_batches(pc.batch_size)

    def run_step(i):  # batch i of the first epoch, round again when it has fewer
        b = data.batch(0, i % n_batches, pc.batch_size)
        for j in my_pieces(w, pc.micro_batches):
            mb = micro_batch(b, pc.micro_batches, j)
            o, c = model.forward(**model_inputs(model, mb), mlm_path=pc.mlm_path)
            model.backward(c)

    # the update (clipping and the optimizer's step), timed on copies of the weights with a
    # throwaway optimizer of the run's kind, so that nothing of the run changes
    params = {k: v.copy() for k, v in model.params.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    opt = _optimizer(pc)

    def update(i):
        clip_by_global_norm(grads, pc.clip)
        opt.step(params, grads, 1e-9)

    # x 1.05: logging and the loop around the step
    per_step = (seconds_per_step(run_step) + seconds_per_step(update, warm=1, timed=3)) * 1.05
    eval_cost = len(eval_batches) * per_step / 3  # forward only: about a third of a step
    total = steps_in_budget(pc.time_budget, time.time() - t_start, per_step, pc.eval_every,
                            eval_cost)
    total = w.bcast(total)
    say(f"time budget {pc.time_budget:.0f} s at {per_step:.2f} s/step: {total} steps")
    return total


def _optimizer(pc):
    return make_optimizer(pc.optimizer, weight_decay=pc.weight_decay, **(
        {"exclude": no_decay} if pc.optimizer == "adamw" else {}))


def _resume_state(out, pc, given):
    """What a resumed run continues from -> (pc, changed, total, cfg, params, state,
    optimizer arrays, tokenizer), or None when there is nothing left to do."""
    pc, changed, cfg, params, state, opt_arrays, ck = resume_run(
        out, PretrainConfig, given, RESUMABLE, "pretrain")
    if "time_budget" in given and "steps" not in given:
        raise CheckpointError("--time-budget cannot change when a run is resumed: give "
                              "--steps (the total to reach)")
    total = pc.steps if "steps" in changed else state["total_steps"]
    if total < state["step"]:
        raise CheckpointError(f"--steps {total}: the run is already at step {state['step']}")
    if total == state["step"] and not changed:
        return None, dict(step=total, checkpoint=str(ck))
    tok = load_run_tokenizer(ck, cfg.vocab_size)
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


class _Position:
    """Where in the data the run is: (epoch, index), advanced with every step."""

    def __init__(self, data, batch_size, epoch=0, index=0):
        self.data, self.B, self.epoch, self.index = data, batch_size, epoch, index

    def next(self):  # -> (batch, advance): the loop advances once the step is counted
        if self.index >= self.data.num_batches(self.B, self.epoch):
            self.epoch, self.index = self.epoch + 1, 0
        return self.data.batch(self.epoch, self.index, self.B), self.advance

    def advance(self):
        self.index += 1


def _tokenizer_and_model(pc, r, train_c, say):
    """A new run: the tokenizer (given, or trained on the training split) and the model;
    a resumed one: the checkpoint's, the tokenizer checked against it."""
    if r.state is not None:
        check_tokenizer(r.tok, r.cfg.vocab_size, r.state.get("tokenizer_sha256"))
        return r.tok, AlbertForPreTraining(r.cfg, params=r.params)
    if pc.tokenizer:
        from .tokenizer import AlbertTokenizer
        tok = AlbertTokenizer(pc.tokenizer)
    else:
        t0 = time.time()
        from .tokenizer import train_tokenizer
        tok = train_tokenizer(train_c.sentences(), pc.vocab_size)
        say(f"tokenizer: {tok.vocab_size} pieces trained in {time.time() - t0:.1f} s")
    return tok, AlbertForPreTraining(_model_config(pc, tok.vocab_size), seed=pc.seed)


def _eval_batches(held_tc, tok, pc, w, say):
    """The held-out set every evaluation uses (the root's; empty when it is too small)."""
    if not w.is_root:
        return []
    try:
        return eval_set(held_tc, tok, pc.seq_len, pc.batch_size, pc.eval_batches, pc.seed + 1)
    except DataError:
        say("note: the held-out split is too small for one evaluation batch; no evaluation")
        return []


def _build(pc, r, w, say):
    """Corpus, tokenizer, model, data and held-out set of a run (new or resumed) -> r."""
    r.corpus = corpus = load_corpus(pc.corpus, pc.format)
    check_same(w, "the corpus (its SHA-256)", corpus.checksum)
    if r.state is not None and corpus.checksum != r.state["corpus_sha256"] and w.is_root:
        print(f"warning: the corpus changed since the checkpoint was written (SHA-256 "
              f"{r.state['corpus_sha256'][:12]}… then, {corpus.checksum[:12]}… now); "
              "continuing on the new one", file=sys.stderr)
    train_c, held_c = corpus.split(pc.heldout_fraction)
    r.split_sha256 = train_c.checksum  # which documents are trained on (the split's rule too)
    was = (r.state or {}).get("train_split_sha256")
    if was is not None and was != r.split_sha256 and corpus.checksum == r.state[
            "corpus_sha256"] and w.is_root:
        print("warning: the same corpus is split into training and held-out documents "
              f"differently from when the checkpoint was written (training split SHA-256 "
              f"{was[:12]}… then, {r.split_sha256[:12]}… now: a minialbert whose split rule "
              "changed); continuing on the new split",
              file=sys.stderr)
    r.tok, r.model = _tokenizer_and_model(pc, r, train_c, say)
    r.cfg = r.model.config
    check_same(w, "the tokenizer (its SHA-256)", r.tok.checksum)
    if w.size > 1:  # a CRC of every weight: only worth computing when there are ranks
        check_same(w, "the initial weights", checksum(r.model.params))
    r.model.unpad = True  # no work on padding (the same loss and gradients: chapter 10)
    r.model.skip_unread = True  # the last layer only where the heads read (chapter 10)
    tc = tokenize_corpus(train_c, r.tok, r.out / "cache")
    r.data = PretrainingData(tc, r.tok, pc.seq_len, seed=pc.seed)
    if r.data.num_batches(pc.batch_size) < 1:
        raise DataError(f"the training split has {len(r.data.instances(0))} instances, fewer "
                        f"than one batch of {pc.batch_size}: give more text or a smaller "
                        "--batch-size")
    r.eval_batches = _eval_batches(tokenize_corpus(held_c, r.tok, r.out / "cache"), r.tok, pc,
                                   w, say)
    r.unigram = unigram_cross_entropy(tc.tokens, r.cfg.vocab_size, r.eval_batches) \
        if r.eval_batches else None
    r.opt = _optimizer(pc)
    if r.state is not None:
        r.opt.load_state_dict(r.opt_arrays, r.state["optimizer"])
    return r


def _describe(pc, r, w):
    cfg = r.cfg
    n_params = sum(v.size for v in r.model.params.values())
    return (f"model: {cfg.describe_layers()}, H {cfg.hidden_size}, E {cfg.embedding_size}, "
            f"V {cfg.vocab_size}: {n_params:,} parameters; {pc.optimizer} lr {pc.lr}, "
            f"batch {pc.batch_size} × {pc.seq_len}; corpus {r.corpus.info.get('source')} "
            f"({r.corpus.info['sentences']} sentences, SHA-256 {r.corpus.checksum[:12]}…); "
            f"{kernels.get_threads()} threads" + (
                f" × {w.size} ranks ({pc.micro_batches // w.size} micro-batch(es) each, "
                f"{'deterministic' if pc.deterministic else 'MPI'} sum)" if w.size > 1 else ""))


def _open(pc, given, resume, overwrite, w):
    """The run folder, threads and (resuming) the checkpoint's state -> (run, done): done is
    the summary when there is nothing left to do."""
    r = types.SimpleNamespace(out=pathlib.Path(pc.out), state=None, changed={}, pc=pc)
    r.rd = on_root(w, lambda: RunDir(r.out, resume=resume, overwrite=overwrite)) or \
        FollowerRunDir(r.out)
    w.barrier()  # the root has made (or emptied) the folder
    kernels.set_threads(_threads(pc, w))
    keep_freed_memory()  # a step reuses the last step's pages (memory.py)
    if resume:
        resumed, done = _resume_state(r.out, pc, given)
        if resumed is None:
            if w.is_root:
                print(f"{r.out}: the run is already at step {done['step']} of {done['step']}: "
                      "nothing to do (give --steps to train further)")
            return r, r.rd.read_summary() or done
        (r.pc, r.changed, r.total, r.cfg, r.params, r.state, r.opt_arrays, r.tok) = resumed
    check_settings(r.pc)
    my_pieces(w, r.pc.micro_batches)  # a clear error now if the ranks cannot share a batch
    return r, None


@kernels.keeps_threads
def pretrain(pc=None, resume=False, overwrite=False, **overrides):
    """Pretrain AlbertForPreTraining. Returns a summary dict (also written to summary.json).

    ``pretrain(PretrainConfig(...))`` or ``pretrain(out=..., steps=..., ...)``. A folder
    that holds a run is refused unless ``resume`` (continue it from its latest checkpoint,
    with the settings it was started with; of the settings given, those in RESUMABLE
    apply — written to the log — and the others are refused) or ``overwrite``.

    Started by an MPI launcher (or with ``distributed=True``), each rank runs this same
    function on its share of every batch (distributed.py); the root alone writes."""
    given = given_settings(PretrainConfig, pc, overrides)
    t_start = time.time()
    pc = dataclasses.replace(pc or PretrainConfig(), **overrides)
    w = world(pc.distributed)
    r, done = _open(pc, given, resume, overwrite, w)
    if done is not None:
        return done
    pc, say = r.pc, (print if w.is_root else (lambda *a, **k: None))
    _build(pc, r, w, say)
    st = r.state or {}
    pos = _Position(r.data, pc.batch_size, st.get("epoch", 0), st.get("index", 0))
    step = st.get("step", 0)
    if r.state is None:
        r.total = pc.steps if pc.steps is not None else \
            _calibrate(r.model, r.data, pc, r.eval_batches, t_start, say, w)
    say(_describe(pc, r, w))
    kept = on_root(w, lambda: r.rd.start_log(resume_step=step if r.state is not None else None))
    r.ev, r.ev_step = next(((e, e["step"]) for e in reversed(kept or []) if e.get("eval")),
                           (None, None))
    if r.changed:
        r.rd.log(resumed=True, step=step, changed=r.changed)
        say(f"resumed at step {step} with changed settings: " +
            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in r.changed.items()))
    grads = FlatGradients(r.model.params,
                          rows=len(my_pieces(w, pc.micro_batches)) if pc.deterministic else 0)
    r.tokens_seen, t_loop = 0, time.time()
    end = run_loop(
        r.model, r.opt, grads, w, step=step, total=r.total, next_batch=pos.next,
        do_step=lambda b, s, ck: train_step(
            r.model, grads, b, micro_batches=pc.micro_batches, seed=pc.seed, step=s,
            clip=pc.clip, w=w, last_ck=ck, forward_kw=dict(mlm_path=pc.mlm_path)),
        lr_at=lambda s: learning_rate(s, pc.lr, r.total, int(pc.warmup * r.total), pc.schedule),
        log=lambda s, rec, b, dt: _log_step(r, s, rec, b, dt, pos, t_start),
        checkpoint=lambda s: _checkpoint(r, s, pos, w), evaluate=lambda s: _evaluate(r, s),
        save_every=pc.save_every, stop_after=pc.stop_after, progress=pc.progress,
        check_every=pc.eval_every or 50, out=r.out)
    if end.interrupted:
        return interrupted_summary(end, w)
    return _finish(r, end, w, t_start, t_loop, say)


def _log_step(r, step, rec, batch, dt, pos, t_start):
    ntok = int(batch["attention_mask"].sum())
    r.tokens_seen += ntok
    r.rd.log(step=step, **rec, tokens_per_s=ntok / dt, epoch=pos.epoch,
             elapsed=time.time() - t_start)


def _checkpoint(r, step, pos, w):
    st = dict(epoch=pos.epoch, index=pos.index, total_steps=r.total,
              run=dataclasses.asdict(r.pc), corpus_sha256=r.corpus.checksum,
              train_split_sha256=r.split_sha256, corpus_info=r.corpus.info, python=r.corpus.info.get("python"),
              threads=kernels.get_threads(), ranks=w.size)
    return on_root(w, lambda: r.rd.save(step, r.model.params, r.cfg, st, r.opt, r.tok))


def _evaluate(r, step):
    """Every eval_every steps: the held-out metrics, logged -> a line for the progress bar."""
    if not (r.pc.eval_every and step % r.pc.eval_every == 0):
        return None
    r.ev, r.ev_step = _run_eval(r, step), step
    if not r.ev or not r.pc.progress:
        return None
    return (f"step {step}: held-out MLM loss {r.ev['mlm_loss']:.3f} (unigram "
            f"{r.unigram:.3f}), MLM acc {r.ev['mlm_acc']:.3f}, SOP acc {r.ev['sop_acc']:.3f}")


def _run_eval(r, step):
    if not r.eval_batches:
        return None
    e = evaluate_batches(r.model, r.eval_batches, r.pc.mlm_path)
    r.rd.log(eval=True, step=step, unigram=r.unigram, **e)
    return e


def _finish(r, end, w, t_start, t_loop, say):
    """The end of a run that reached its total: a last evaluation, summary.json, curves."""
    step, ev = end.step, r.ev
    if r.ev_step != step:  # not evaluated at this step yet
        ev = _run_eval(r, step)
    wall, train_s = time.time() - t_start, time.time() - t_loop
    summary = dict(step=step, checkpoint=str(end.checkpoint), wall_seconds=wall,
                   train_seconds=train_s, tokens_per_s=r.tokens_seen / max(train_s, 1e-9),
                   unigram_cross_entropy=r.unigram, heldout=ev,
                   python=r.corpus.info.get("python"), corpus_sha256=r.corpus.checksum,
                   threads=kernels.get_threads(), ranks=w.size, optimizer=r.pc.optimizer,
                   lr=r.pc.lr)
    if not w.is_root:
        return summary
    r.rd.write_summary(summary)
    png = plot_pretraining(r.out / "log.jsonl", r.out / "curves.png")
    say(f"done: {step} steps in {wall / 60:.1f} min ({summary['tokens_per_s']:.0f} tokens/s)")
    if ev:
        say(f"held-out: MLM loss {ev['mlm_loss']:.3f} vs unigram {r.unigram:.3f}, MLM "
            f"accuracy {ev['mlm_acc']:.3f}, SOP accuracy {ev['sop_acc']:.3f}")
    say(f"checkpoint: {end.checkpoint}; log: {r.out / 'log.jsonl'}; " +
        (f"curves: {png}" if png else "no plot (pip install matplotlib, or -e '.[plot]')"))
    return summary


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


MODEL_OPTIONS = (("embedding-size", "E, the factorized embedding size"),
                 ("hidden-size", "H"), ("num-hidden-layers", "layer applications"),
                 ("num-attention-heads", "heads"), ("intermediate-size", "the FFN's width"))


def add_commands(sub):
    from .options import Help, add_settings, positive_int

    p = sub.add_parser(
        "pretrain", formatter_class=Help,
        help="pretrain a small ALBERT (default: ~10 min on the embedded Python docs)",
        description="Pretrain AlbertForPreTraining (MLM + SOP) with checkpoints, a log, "
        "held-out evaluation and exact resume.",
        epilog="examples:\n  minialbert pretrain                                   # the "
        "embedded Python docs, ~10 min\n  minialbert pretrain --corpus my_texts/ --steps 2000 "
        "--out runs/mine\n  minialbert pretrain --out runs/mine --resume --steps 4000   # "
        "continue further")
    add_settings(p, PretrainConfig, resumable=RESUMABLE)
    for name, what in MODEL_OPTIONS:
        p.add_argument(f"--{name}", type=positive_int, default=None,
                       help=f"override the preset's {name.replace('-', '_')} ({what})")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any model "
                   "setting (an AlbertConfig field, as in a Hugging Face config.json), "
                   "repeatable: --set sharing=none --set hidden_act=gelu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary "
                   "is still printed)")
    p.set_defaults(func=_cmd_pretrain)
