"""Fine-tuning: `minialbert finetune` on a classification / regression TSV, on SQuAD v1.1
JSON, or on the embedded default task; progress, checkpoints and exact resume as in
pretraining (train.py).

The model starts from ``init`` — a minialbert pretraining run or checkpoint, or a Hugging
Face folder — with the task's head added (initialised as Hugging Face does, and reported),
or, with ``from_scratch``, from random weights of the same shape and the same tokenizer:
the comparison that shows what pretraining bought.

A batch is a pure function of (seed, epoch, index): a seeded permutation of the training
examples per epoch. Step s is batch divmod(s, batches per epoch), dropout is keyed by
(seed, step), the optimizer state is saved: a resumed run continues exactly.

Layer-wise learning-rate decay (optional, ``layerwise_lr_decay`` < 1): the rate of a
parameter at depth d is lr * decay^(D - d), depth counting embeddings 0, then each group of
the encoder in order (each layer, when nothing is shared), then the pooler and head at D.
With ALBERT's all-shared weights there is one encoder group, so there are three depths.
Popular write-ups attribute the method to ALBERT; the paper does not use it.
"""
import dataclasses
import json
import math
import pathlib
import re
import sys
import time
import types

import numpy as np

from . import kernels
from .memory import keep_freed_memory
from .checkpoint import CheckpointError, atomic_write_text, load_run_tokenizer
from .distributed import FlatGradients, world
from .heads import model_class
from .loop import TrainingError, interrupted_summary, model_inputs, run_loop, train_step
from .rundir import RunDir, given_settings, resume_run
from .optim import learning_rate, make_optimizer, no_decay
from .settings import FINETUNE_RESUMABLE as RESUMABLE, FinetuneConfig
from .plots import confusion, plot_run
from .tasks import (TaskError, classification_scores, default_task, qa_decode, qa_features,
                    regression_scores, squad_scores, squad_task, tsv_task)


# ------------------------------------------------------------------------------ LR decay

def depth_of(name, cfg):
    """0 embeddings; 1 + g for encoder group g (1 + l for the own layer l of a partially
    shared model); D = the number of encoder depths + 1 for the pooler and the head."""
    if name.startswith("albert.embeddings.") or "embedding_hidden_mapping_in" in name:
        return 0
    m = re.match(r"albert\.encoder\.albert_layer_groups\.(\d+)\.", name)
    if m:
        return 1 + int(m.group(1))
    m = re.match(r"albert\.encoder\.unshared_layers\.(\d+)\.", name)
    if m:
        return 1 + int(m.group(1))
    return None  # pooler and head: the top


def layerwise_lr_scales(params, cfg, decay):
    """{name: multiplier of the learning rate}: decay ** (D - depth)."""
    depths = {k: depth_of(k, cfg) for k in params}
    D = max(d for d in depths.values() if d is not None) + 1
    return {k: decay ** (D - (D if d is None else d)) for k, d in depths.items()}


# ------------------------------------------------------------------------------ data

def build_task(fc):
    if fc.task == "default":
        return default_task(heldout_fraction=fc.heldout_fraction)
    if not fc.train or not fc.dev:
        raise TaskError(f"--task {fc.task} needs --train and --dev files")
    if fc.task == "tsv":
        return tsv_task(fc.train, fc.dev, fc.regression, text_column=fc.text_column,
                        pair_column=fc.pair_column, label_column=fc.label_column)
    if fc.task == "squad":
        return squad_task(fc.train, fc.dev)
    raise TaskError(f"unknown task {fc.task!r}: default, tsv or squad")


HEAD_OF = {"classification": "sequence_classification", "regression": "sequence_classification",
           "qa": "question_answering"}


class Batches:
    """Encoded examples (or QA windows) and batch(epoch, index): a pure function."""

    def __init__(self, task, tok, fc, split="train"):
        self.kind, self.seed = task.kind, fc.seed
        examples = task.train if split == "train" else task.dev
        if not examples:
            raise TaskError(f"the {split} split of {task.name} is empty")
        if task.kind == "qa":
            self.arrays, self.meta = qa_features(examples, tok, fc.seq_len, fc.doc_stride,
                                                 fc.max_query_length, train=split == "train")
            self.n = len(self.meta)
            return
        enc = [tok(e.text, e.pair, max_length=fc.seq_len) for e in examples]
        self.n, T = len(enc), max(len(e["input_ids"]) for e in enc)
        self.arrays = {k: np.zeros((self.n, T), np.int64)
                       for k in ("input_ids", "token_type_ids", "attention_mask")}
        for i, e in enumerate(enc):
            for k in self.arrays:
                self.arrays[k][i, :len(e[k])] = e[k]
        lab = [e.label for e in examples]
        self.arrays["labels"] = np.array(lab, np.float32 if task.kind == "regression" else np.int64)

    def num_batches(self, B):
        return math.ceil(self.n / B)

    def take(self, rows):
        b = {k: v[rows] for k, v in self.arrays.items()}
        T = int(b["attention_mask"].sum(1).max())  # trim the padding no row needs
        return {k: (v[:, :T] if v.ndim == 2 and k != "labels" else v) for k, v in b.items()}

    def batch(self, epoch, index, B):
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self.take(np.sort(order[index * B:(index + 1) * B]))


def _predict(model, task, dev, batch_size=64):
    """The model's outputs on the dev set, batch by batch -> (outputs, loss sums)."""
    preds, losses = [], []
    for i in range(0, dev.n, batch_size):
        b = dev.take(np.arange(i, min(i + batch_size, dev.n)))
        o, _ = model.forward(**model_inputs(model, b))
        if "loss" in o:
            losses.append(float(o["loss"]) * len(b["input_ids"]))
        preds.append((o["start_logits"], o["end_logits"]) if task.kind == "qa" else o["logits"])
    return preds, losses


def dev_confusion(model, task, dev, batch_size=64):
    """Classification: the dev confusion matrix and each class's scores (plots.confusion)."""
    preds, _ = _predict(model, task, dev, batch_size)
    return confusion(np.concatenate(preds).argmax(1), dev.arrays["labels"], task.labels)


def evaluate(model, task, dev, tok=None, batch_size=64):
    """Dev metrics: accuracy and macro-F1 (classification), MSE/Pearson/Spearman
    (regression), exact match and F1 (QA); plus the mean loss where labels exist."""
    preds, losses = _predict(model, task, dev, batch_size)
    out = {"loss": sum(losses) / dev.n} if losses else {}
    if task.kind == "qa":
        # windows have different lengths per batch: pad the logits to the widest
        T = max(p[0].shape[1] for p in preds)
        pad = lambda a: np.pad(a, ((0, 0), (0, T - a.shape[1])), constant_values=-1e9)  # noqa: E731
        s = np.concatenate([pad(p[0]) for p in preds])
        e = np.concatenate([pad(p[1]) for p in preds])
        answers = qa_decode(task.dev, dev.meta, s, e)
        out.update(squad_scores(task.dev, answers))
    elif task.kind == "regression":
        out.update(regression_scores(np.concatenate(preds)[:, 0], dev.arrays["labels"]))
    else:
        out.update(classification_scores(np.concatenate(preds).argmax(1), dev.arrays["labels"],
                                         task.num_labels))
    return out


# ------------------------------------------------------------------------------ the model

def initial_model(fc, task):
    """(model, tokenizer, a line saying where the weights came from)."""
    from .inference import load_model

    head = HEAD_OF[task.kind]
    over = dict(num_labels=task.num_labels)
    if task.kind == "classification":
        over["extra"] = {"id2label": {str(i): n for i, n in enumerate(task.labels)}}
    elif task.kind == "regression":
        over["extra"] = {"problem_type": "regression"}
    init = pathlib.Path(fc.init)
    if not init.exists():
        raise TaskError(f"{init}: no such checkpoint. Pretrain one first (minialbert pretrain), "
                        "or give --init a minialbert run/checkpoint or a Hugging Face folder")
    model, tok, report = load_model(init, head=head, seed=fc.seed, ignore_mismatched_sizes=True,
                                    **over)
    if fc.seq_len > model.config.max_position_embeddings:
        raise TaskError(f"seq_len {fc.seq_len} is longer than max_position_embeddings="
                        f"{model.config.max_position_embeddings}")
    if fc.from_scratch:
        model = type(model)(model.config, seed=fc.seed)
        return model, tok, f"random weights (the shape and tokenizer of {init})"
    new = ", ".join(report.missing) or "none"
    return model, tok, f"{init} (newly initialized: {new})"


# ------------------------------------------------------------------------------ the loop

def _open(fc, given, resume, overwrite):
    """The run folder, threads, and (resuming) the checkpoint -> a namespace of the run."""
    r = types.SimpleNamespace(out=pathlib.Path(fc.out), fc=fc, state=None, changed={})
    r.rd = RunDir(r.out, resume=resume, overwrite=overwrite)
    kernels.set_threads(fc.threads)
    keep_freed_memory()  # a step reuses the last step's pages (memory.py)
    r.task = None
    if resume:
        r.fc, r.changed, cfg, params, r.state, r.opt_arrays, r.ck = resume_run(
            r.out, FinetuneConfig, given, RESUMABLE, "finetune")
        r.model = model_class(r.state["head"])(cfg, params=params)
        r.tok = load_run_tokenizer(r.ck, cfg.vocab_size)
        r.origin = r.state["origin"]
    r.task = build_task(r.fc)
    if r.state is None:
        r.model, r.tok, r.origin = initial_model(r.fc, r.task)
    r.model.unpad = True  # no work on padding (the same loss and gradients: chapter 10)
    r.model.skip_unread = True  # the last layer only where the head reads (chapter 10)
    r.train = Batches(r.task, r.tok, r.fc, "train")
    r.dev = Batches(r.task, r.tok, r.fc, "dev")
    r.nb = r.train.num_batches(r.fc.batch_size)
    r.total = max(1, int(round(r.fc.epochs * r.nb)))
    r.step = r.state["step"] if r.state is not None else 0
    if r.total < r.step:
        raise CheckpointError(f"--epochs {r.fc.epochs:g} is {r.total} steps: the run is "
                              f"already at step {r.step}")
    return r


def _optimizer(r):
    fc = r.fc
    opt = make_optimizer(fc.optimizer, weight_decay=fc.weight_decay,
                         **({"exclude": no_decay} if fc.optimizer == "adamw" else {}))
    if fc.layerwise_lr_decay != 1.0:
        opt.lr_scale = layerwise_lr_scales(r.model.params, r.model.config,
                                           fc.layerwise_lr_decay)
    if r.state is not None:
        opt.load_state_dict(r.opt_arrays, r.state["optimizer"])
    return opt


def _describe(r):
    fc, task = r.fc, r.task
    baseline = task.majority_baseline()
    print(f"task {task.name}: {task.kind}, {len(task.train)} train / {len(task.dev)} dev "
          "examples" + (f" ({r.train.n} / {r.dev.n} windows)" if task.kind == "qa" else "")
          + (f", {task.num_labels} classes, majority-class baseline {baseline:.3f}"
             if baseline is not None else ""))
    print(f"start: {r.origin}; {r.total} steps ({fc.epochs:g} epochs × {r.nb}), "
          f"{fc.optimizer} lr {fc.lr}" + (f", layer-wise decay {fc.layerwise_lr_decay}"
                                          if fc.layerwise_lr_decay != 1.0 else ""))


class _Position:  # step s reads batch divmod(s, batches per epoch)
    def __init__(self, r):
        self.r, self.step = r, r.step

    def next(self):
        epoch, index = divmod(self.step, self.r.nb)
        return self.r.train.batch(epoch, index, self.r.fc.batch_size), self.advance

    def advance(self):
        self.step += 1


def _evaluate(r, step):
    """At the end of each epoch (or every eval_every steps): dev metrics, logged."""
    due = step % r.fc.eval_every == 0 if r.fc.eval_every else \
        (step % r.nb == 0 or step == r.total)
    if not due:
        return None
    r.ev = dict(evaluate(r.model, r.task, r.dev), step=step)
    r.rd.log(eval=True, **r.ev)
    return f"step {step}: dev " + ", ".join(f"{k} {v:.4f}" for k, v in r.ev.items()
                                            if k != "step")


def _checkpoint(r, step, opt):
    task = r.task
    st = dict(head=r.model.head, origin=r.origin, run=dataclasses.asdict(r.fc),
              total_steps=r.total,
              task=dict(name=task.name, kind=task.kind, labels=task.labels, **task.info),
              threads=kernels.get_threads())
    return r.rd.save(step, r.model.params, r.model.config, st, opt, r.tok)


@kernels.keeps_threads
def finetune(fc=None, resume=False, overwrite=False, **overrides):
    """Fine-tune; returns a summary dict (also in summary.json). A folder that holds a run
    is refused unless ``resume`` (continue from its latest checkpoint with the settings it
    started with; of those given, the ones in RESUMABLE apply and the others are refused)
    or ``overwrite``."""
    given = given_settings(FinetuneConfig, fc, overrides)
    t_start = time.time()
    r = _open(dataclasses.replace(fc or FinetuneConfig(), **overrides), given, resume,
              overwrite)
    fc, step = r.fc, r.step
    if r.state is not None and r.total == step and not r.changed:
        print(f"{r.out}: the run is already at step {step} of {r.total}: nothing to do "
              "(give --epochs to train further)")
        return r.rd.read_summary() or dict(step=step, checkpoint=str(r.ck))
    opt = _optimizer(r)
    _describe(r)
    kept = r.rd.start_log(resume_step=step if r.state is not None else None)
    r.ev = next((e for e in reversed(kept) if e.get("eval") and e["step"] == step), None)
    if r.changed:
        r.rd.log(resumed=True, step=step, changed=r.changed)
        print(f"resumed at step {step} with changed settings: " +
              ", ".join(f"{k} {a} -> {b}" for k, (a, b) in r.changed.items()))
    w, grads = world(False), FlatGradients(r.model.params)
    end = run_loop(
        r.model, opt, grads, w, step=step, total=r.total, next_batch=_Position(r).next,
        do_step=lambda b, s, ck: train_step(
            r.model, grads, b, micro_batches=fc.micro_batches, seed=fc.seed, step=s,
            clip=fc.clip, w=w, last_ck=ck, command="finetune"),
        lr_at=lambda s: learning_rate(s, fc.lr, r.total, int(fc.warmup * r.total),
                                      fc.schedule),
        log=lambda s, rec, b, dt: r.rd.log(step=s, **rec, epoch=(s - 1) // r.nb,
                                           elapsed=time.time() - t_start),
        checkpoint=lambda s: _checkpoint(r, s, opt), evaluate=lambda s: _evaluate(r, s),
        save_every=fc.save_every, stop_after=fc.stop_after, progress=fc.progress, out=r.out)
    if end.interrupted:
        return interrupted_summary(end, w)
    return _finish(r, end, t_start)


def _finish(r, end, t_start):
    """A last evaluation if the last step had none, summary.json, the confusion matrix and
    the pictures."""
    fc, task, step = r.fc, r.task, end.step
    ev = r.ev if r.ev is not None and r.ev.get("step", step) == step else \
        evaluate(r.model, task, r.dev)
    ev = {k: v for k, v in ev.items() if k not in ("eval", "step")}
    baseline = task.majority_baseline()
    summary = dict(task=task.name, kind=task.kind, start=r.origin, from_scratch=fc.from_scratch,
                   step=step, dev=ev, majority_baseline=baseline,
                   checkpoint=str(end.checkpoint), wall_seconds=time.time() - t_start,
                   threads=kernels.get_threads(), train_examples=len(task.train),
                   dev_examples=len(task.dev), layerwise_lr_decay=fc.layerwise_lr_decay,
                   lr=fc.lr)
    r.rd.write_summary(summary)
    if task.kind == "classification" and task.labels:
        conf = dev_confusion(r.model, task, r.dev)
        atomic_write_text(r.out / "confusion.json", json.dumps(conf, indent=1))
        print("dev, per class: " + "; ".join(
            f"{c['label']} P {c['precision']:.2f} R {c['recall']:.2f} F1 {c['f1']:.2f} "
            f"(n {c['support']})" for c in conf["per_class"]))
    pictures = plot_run(r.out)
    if pictures:
        print("pictures: " + ", ".join(str(p) for p in pictures))
    print(f"done: {step} steps in {summary['wall_seconds'] / 60:.1f} min; dev: "
          + ", ".join(f"{key} {v:.4f}" for key, v in ev.items())
          + (f" (majority-class baseline {baseline:.4f})" if baseline is not None else ""))
    print(f"checkpoint: {end.checkpoint}  (minialbert classify / answer --checkpoint {r.out})")
    return summary


# ------------------------------------------------------------------------------ CLI

def _cmd_finetune(args):
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.no_progress:
        kw["progress"] = False
    try:
        s = finetune(resume=args.resume, overwrite=args.overwrite, **kw)
    except TrainingError as e:
        print(f"minialbert: error: {e}", file=sys.stderr)
        return 3
    return s.get("exit_code", 0) if s and s.get("interrupted") else 0


def add_commands(sub):
    from .options import Help, add_settings

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune", formatter_class=Help,
        help="fine-tune on a TSV / SQuAD file or the embedded default task (which stdlib area "
        "a passage documents)",
        epilog=f"default --lr {d.lr}: measured for the small pretrained preset (chapter 11); "
        "for albert-base-sized models use 1e-5 to 5e-5, as the paper did.\nexamples:\n"
        "  minialbert finetune --init runs/pretrain\n"
        "  minialbert finetune --task tsv --train train.tsv --dev dev.tsv --init "
        "path/to/albert-base-v2 --lr 3e-5")
    add_settings(p, FinetuneConfig, resumable=RESUMABLE)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_finetune)
