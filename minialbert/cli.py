"""The `minialbert` command (`minialbert COMMAND --help` for each one's options).

    minialbert demo                          gradient checks + matmul vs BLAS
    minialbert tokenizer train ...           a SentencePiece model with albert-v2's settings
    minialbert data show ...                 what the model sees: segments, masks, labels
    minialbert pretrain ...                  pretrain on the embedded corpus or your files
    minialbert evaluate --checkpoint DIR     held-out MLM accuracy/perplexity, SOP accuracy
    minialbert finetune ...                  a classifier, regressor or SQuAD reader
    minialbert fill-mask --checkpoint DIR "text with [MASK]"
    minialbert embed / classify / answer --checkpoint DIR ...
    minialbert convert SRC DST               Hugging Face folder <-> minialbert checkpoint

Every --checkpoint takes a minialbert run or checkpoint folder or a Hugging Face folder.
Exit status: 0 done, 2 bad input (one line says what), 3 training stopped (NaN),
130 / 143 interrupted by Ctrl-C / SIGTERM after saving a checkpoint.
"""
import argparse
import os
import sys
import time


class UsageError(Exception):
    pass


# ------------------------------------------------------------------------------ demo

def cmd_demo(args):
    """Gradient checks of every kernel, then our matmul against NumPy's BLAS."""
    import numba

    from . import kernels
    from .demo import blas_info, cpu_name, gradcheck_table, matmul_table

    if args.threads:
        kernels.set_threads(args.threads)
    t0 = time.time()
    print("minialbert demo: compiling the kernels (first run only: Numba caches them)...")
    kernels.warmup(processes=min(2, os.cpu_count() or 1))
    print(f"  ready in {time.time() - t0:.1f} s\n")
    print("1. Every backward against float64 central differences "
          "(correct: ~1e-7 or smaller; a bug: 1e-2 or larger)")
    res = gradcheck_table()
    worst = max(r.max_rel_error for r in res)
    print(f"   worst relative error {worst:.1e}: {'all correct' if worst < 1e-5 else 'FAILED'}\n")
    print("2. Our matmul vs NumPy's BLAS (float32, GFLOP/s; ratio > 1: ours is faster)")
    print(f"   CPU: {cpu_name()}; threads: {numba.get_num_threads()}; BLAS: {blas_info()}")
    sizes = [256, 512] if args.quick else [256, 512, 1024]
    matmul_table([(f"square {n}", (n, n, n)) for n in sizes] +
                 [("ALBERT tiny FFN", (4096, 256, 1024))])
    print(f"\ndone in {time.time() - t0:.0f} s")
    return 0 if worst < 1e-5 else 1


# ------------------------------------------------------------------------------ tokenizer, data

def cmd_tokenizer_train(args):
    from .corpus import load_corpus
    from .tokenizer import train_tokenizer

    corpus = load_corpus(args.corpus, args.format)
    t0 = time.time()
    tok = train_tokenizer(corpus.sentences(), args.vocab_size, args.out)
    print(f"trained a {tok.vocab_size}-piece unigram SentencePiece model on "
          f"{corpus.info['sentences']} sentences in {time.time() - t0:.1f} s -> "
          f"{args.out}/spiece.model")
    print("first pieces:", " ".join(tok.id_to_piece(i) for i in range(13, 33)))
    return 0


def _load_tokenizer(args, corpus):
    from .tokenizer import AlbertTokenizer, train_tokenizer

    if args.tokenizer:
        return AlbertTokenizer(args.tokenizer)
    return train_tokenizer(corpus.sentences(), args.vocab_size)


def show_instance(tok, batch, i):
    """One instance as text: segments A and B, masked tokens as [shown→label]."""
    ids = batch["input_ids"][i]
    n = int(batch["attention_mask"][i].sum())
    labels = batch["labels"][i]
    tt = batch["token_type_ids"][i]
    parts = {0: [], 1: []}
    for t in range(n):
        piece = tok.id_to_piece(ids[t])
        if labels[t] != -100:
            target = tok.id_to_piece(labels[t])
            piece = f"[{piece}→{target}]" if piece != target else f"[={target}]"
        parts[int(tt[t])].append(piece)
    label = int(batch["sentence_order_label"][i])
    masked = int((labels != -100).sum())
    head = (f"instance {i}: {n} tokens, {masked} to predict, SOP label {label} "
            f"({'B then A: swapped' if label else 'in order'})")
    return head + "\n  A: " + " ".join(parts[0]) + "\n  B: " + " ".join(parts[1])


def cmd_data_show(args):
    from .corpus import load_corpus
    from .data import PretrainingData, tokenize_corpus

    corpus = load_corpus(args.corpus, args.format)
    tok = _load_tokenizer(args, corpus)
    data = PretrainingData(tokenize_corpus(corpus, tok), tok, args.seq_len, seed=args.seed)
    batch = data.batch(args.epoch, 0, args.n)
    print(f"corpus: {corpus.source} ({corpus.info['documents']} documents, "
          f"{corpus.info['sentences']} sentences); vocab {tok.vocab_size}; "
          f"{len(data.instances(args.epoch))} instances in epoch {args.epoch}")
    print("[shown→label]: a position the model must predict ([MASK] 80%, random 10%, "
          "unchanged [=...] 10%)\n")
    for i in range(args.n):
        print(show_instance(tok, batch, i) + "\n")
    return 0


# ------------------------------------------------------------------------------ main

def build_parser():
    from .options import Help, nonneg_int, positive_int

    ap = argparse.ArgumentParser(prog="minialbert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", formatter_class=Help,
                       help="gradient checks and the matmul benchmark, as a table")
    p.add_argument("--quick", action="store_true", help="fewer sizes")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="Numba threads (default: all)")
    p.set_defaults(func=cmd_demo)

    def corpus_args(p):
        p.add_argument("--corpus", default=None, nargs="*",
                       help="text files or folders (default: the embedded Python docs)")
        p.add_argument("--format", default="auto", choices=["auto", "lines", "text"],
                       help="lines: a sentence per line, blank line between documents; "
                            "text: wrapped prose, a paragraph per document")

    p = sub.add_parser("tokenizer", help="tokenizer commands: train")
    tsub = p.add_subparsers(dest="tcommand", required=True)
    t = tsub.add_parser("train", formatter_class=Help,
                        help="train a SentencePiece model with albert-v2's settings")
    corpus_args(t)
    t.add_argument("--vocab-size", type=positive_int, default=4000, help="pieces")
    t.add_argument("--out", required=True, help="the folder to write spiece.model into")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="data commands: show")
    dsub = p.add_subparsers(dest="dcommand", required=True)
    d = dsub.add_parser("show", formatter_class=Help,
                        help="print a few pretraining instances, masks made visible")
    corpus_args(d)
    d.add_argument("--tokenizer", default=None, help="folder with spiece.model "
                   "(default: train one on the corpus)")
    d.add_argument("--vocab-size", type=positive_int, default=4000,
                   help="pieces of the tokenizer trained on the corpus")
    d.add_argument("--seq-len", type=positive_int, default=64, help="tokens per instance")
    d.add_argument("-n", type=positive_int, default=3, help="instances to show")
    d.add_argument("--seed", type=nonneg_int, default=0, help="seeds the data order and masks")
    d.add_argument("--epoch", type=nonneg_int, default=0, help="which epoch's instances")
    d.set_defaults(func=cmd_data_show)

    from . import (book, evaluation, finetune, hf, inference, lookinside, plots,  # beside
                   train)  # their code
    train.add_commands(sub)
    evaluation.add_commands(sub)
    finetune.add_commands(sub)
    inference.add_commands(sub)
    hf.add_commands(sub)
    book.add_commands(sub)
    lookinside.add_commands(sub)
    plots.add_commands(sub)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .corpus import CorpusError
    from .data import DataError
    from .distributed import DistributedError, current, report_error
    from .hf import HFCheckpointError
    from .options import OptionError
    from .tasks import TaskError
    from .tokenizer import TokenizerError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nminialbert: interrupted", file=sys.stderr)
        return 130
    except (CorpusError, TokenizerError, DataError, CheckpointError, UsageError,
            HFCheckpointError, TaskError, OptionError, DistributedError) as e:
        return report_error(e, 2)
    except Exception as e:  # under MPI: one rank's bug must not leave the others waiting
        w = current()
        if w.size == 1:
            raise
        import traceback
        traceback.print_exc()
        return report_error(e, 1)


if __name__ == "__main__":
    sys.exit(main())
