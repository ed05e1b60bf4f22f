"""Evaluation: held-out MLM and SOP metrics of a model, of a run's checkpoint (on the very
set its run evaluated on) or of a Hugging Face folder; `minialbert evaluate`.
"""
import dataclasses
import math
import sys

import numpy as np

from .checkpoint import CheckpointError, check_tokenizer, load_checkpoint
from .corpus import load_corpus
from .data import DataError, PretrainingData, tokenize_corpus
from .heads import AlbertForPreTraining
from .settings import PretrainConfig


_MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")


def evaluate_batches(model, batches, mlm_path="masked"):
    """Held-out MLM loss/accuracy and (AlbertForPreTraining only) SOP loss/accuracy,
    weighted by counts. An AlbertForMaskedLM has no SOP head: its SOP entries are None."""
    sop = model.head == "pretraining"
    keys = _MODEL_KEYS if sop else _MODEL_KEYS[:4]
    # The weights do not change while it runs: frozen for its duration (model.freeze), its
    # matrices are packed once for all the batches, not once per batch, and a pass keeps
    # nothing for a backward — the same numbers (a frozen pass gives the same bits), 1.14x
    # faster on the small preset's held-out batches (4 x 64 x 64, a 2-core Zen 4 EPYC).
    thaw = not model.frozen
    if thaw:
        model.freeze()
    try:
        return _evaluate(model, batches, mlm_path, sop, keys)
    finally:
        if thaw:
            model.unfreeze()


def _evaluate(model, batches, mlm_path, sop, keys):
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


def load_pretrained(path):
    """-> (AlbertForPreTraining, AlbertTokenizer, state) from a run or checkpoint folder."""
    from .checkpoint import check_finite, load_run_tokenizer

    cfg, params, state, _, ck = load_checkpoint(path)
    head = state.get("head", "pretraining")
    if head != "pretraining":
        raise CheckpointError(f"{ck} holds a fine-tuned model (head {head!r}); this needs a "
                              "pretraining checkpoint (minialbert pretrain's run folder)")
    check_finite(params, ck)
    tok = load_run_tokenizer(ck, cfg.vocab_size)
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
    from .hf import from_pretrained, load_folder_tokenizer

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
    c = load_corpus(corpus if corpus is not None else run["corpus"],
                    fmt if corpus else run["format"])
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


def add_commands(sub):
    from .options import Help, positive_int

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
