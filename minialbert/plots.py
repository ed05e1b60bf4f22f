"""A run's pictures, from its own files: ``minialbert plot RUN_DIR``.

    pretraining:  curves.png      MLM loss (train, held-out, unigram baseline), MLM and SOP
                                  accuracy, by step
    fine-tuning:  curves.png      training loss and every dev metric, by step
                  confusion.png   (classification) the dev confusion matrix, with each
                                  class's precision, recall and F1 in confusion.json

Both trainers draw them at the end of a run; the command redraws them from log.jsonl (and
confusion.json) at any time, also for a run still going. matplotlib draws them (a runtime
dependency); without it nothing is drawn and None is returned.
"""
import json
import pathlib

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _records(log_path):
    lines = pathlib.Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    recs = []
    for line in lines:
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line (rundir.py): skipped here too
            pass
    return recs


def plot_pretraining(log_path, png_path):
    """The pretraining curves -> png_path (None without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None
    recs = _records(log_path)
    tr = [r for r in recs if "mlm_loss" in r and not r.get("eval")]
    ev = [r for r in recs if r.get("eval")]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot([r["step"] for r in tr], [r["mlm_loss"] for r in tr], lw=0.8, label="train")
    if ev:
        ax[0].plot([r["step"] for r in ev], [r["mlm_loss"] for r in ev], "o-", label="held-out")
        if ev[-1].get("unigram") is not None:
            ax[0].axhline(ev[-1]["unigram"], ls=":", c="gray", label="unigram baseline")
    ax[0].set_title("MLM cross-entropy")
    ax[1].plot([r["step"] for r in tr], [r["mlm_acc"] for r in tr], lw=0.8, label="train")
    ax[1].plot([r["step"] for r in ev], [r["mlm_acc"] for r in ev], "o-", label="held-out")
    ax[1].set_title("MLM accuracy")
    ax[2].plot([r["step"] for r in tr], [r["sop_acc"] for r in tr], lw=0.8, alpha=0.5,
               label="train")
    ax[2].plot([r["step"] for r in ev], [r["sop_acc"] for r in ev], "o-", label="held-out")
    ax[2].axhline(0.5, ls=":", c="gray")
    ax[2].set_title("SOP accuracy")
    for a in ax:
        a.set_xlabel("step")
        a.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def plot_finetuning(log_path, png_path):
    """Training loss and every dev metric by step -> png_path (None without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None
    recs = _records(log_path)
    tr = [r for r in recs if "loss" in r and not r.get("eval") and "mlm_loss" not in r]
    ev = [r for r in recs if r.get("eval")]
    metrics = sorted({k for r in ev for k, v in r.items()
                      if k not in ("eval", "step") and isinstance(v, (int, float))})
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.8, label="train")
    if "loss" in metrics:
        ax[0].plot([r["step"] for r in ev], [r["loss"] for r in ev], "o-", label="dev")
    ax[0].set_title("loss")
    for k in metrics:
        if k != "loss":
            ax[1].plot([r["step"] for r in ev if k in r], [r[k] for r in ev if k in r], "o-",
                       label=k)
    ax[1].set_title("dev metrics")
    for a in ax:
        a.set_xlabel("step")
        if a.lines:
            a.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def confusion(pred, gold, labels):
    """-> dict(labels, matrix[gold][pred], per_class=[dict(label, precision, recall, f1,
    support)])."""
    n = len(labels)
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(gold, np.int64), np.asarray(pred, np.int64)), 1)
    per = []
    for c in range(n):
        tp, fp, fn = m[c, c], m[:, c].sum() - m[c, c], m[c, :].sum() - m[c, c]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        per.append(dict(label=str(labels[c]), precision=float(p), recall=float(r),
                        f1=float(2 * p * r / (p + r)) if p + r else 0.0,
                        support=int(m[c, :].sum())))
    return dict(labels=[str(x) for x in labels], matrix=m.tolist(), per_class=per)


def plot_confusion(conf, png_path):
    plt = _pyplot()
    if plt is None:
        return None
    m = np.array(conf["matrix"])
    n = len(conf["labels"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(m, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(n), conf["labels"], rotation=45, ha="right")
    ax.set_yticks(range(n), conf["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("dev confusion matrix")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def plot_run(run):
    """Redraw a run's pictures from its files -> the paths written."""
    run = pathlib.Path(run)
    log = run / "log.jsonl"
    if not log.exists():
        raise FileNotFoundError(f"{run}: no log.jsonl (not a minialbert run folder?)")
    recs = _records(log)
    pretraining = any("mlm_loss" in r for r in recs)
    out = [(plot_pretraining if pretraining else plot_finetuning)(log, run / "curves.png")]
    if (run / "confusion.json").exists():
        out.append(plot_confusion(json.loads((run / "confusion.json").read_text()),
                                  run / "confusion.png"))
    return [p for p in out if p is not None]


def _cmd_plot(args):
    import sys
    try:
        paths = plot_run(args.run)
    except FileNotFoundError as e:
        print(f"minialbert: error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print("minialbert: error: matplotlib is not installed (pip install matplotlib)",
              file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_commands(sub):
    from .options import Help

    p = sub.add_parser("plot", formatter_class=Help,
                       help="redraw a run's curves (and confusion matrix) from its log")
    p.add_argument("run", help="a pretraining or fine-tuning run folder")
    p.set_defaults(func=_cmd_plot)
