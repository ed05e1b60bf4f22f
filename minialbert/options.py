"""Command-line options checked when they are parsed: a bad number is one line naming the
option (``argument --steps: must be a positive integer, got '-5'``), exit status 2, before
anything runs. Used by every command's parser; imports nothing of minialbert.
"""
import argparse
import dataclasses
import math


class OptionError(ValueError):
    """A setting that cannot work (raised after parsing, e.g. by the Python API)."""


def _number(kind, cond, what):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if (kind is float and not math.isfinite(v)) or not cond(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0 (0: off)")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonneg_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
unit_interval = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
any_int = _number(int, lambda v: True, "an integer")


class Help(argparse.RawDescriptionHelpFormatter):
    """Each option's help followed by its default (when it has one worth printing)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "%(default)" in h or "(default" in h or action.default in (None, False,
                                                                          argparse.SUPPRESS):
            return h
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return h + " (default: %(default)s)"
        return h


def setting(default, help, type=None, choices=None, cli=True):
    """A field of a run's settings dataclass (train.PretrainConfig, finetune.FinetuneConfig)
    that is also its command's option ``--field-name``: the help text, the parser of its
    value and its choices live beside the default, and ``add_settings`` makes the option.
    A bool is a switch (``--from-scratch``); a list takes several values."""
    kind = list if isinstance(default, list) else None
    factory = (lambda: list(default)) if kind else None
    meta = dict(help=help, type=type, choices=choices, cli=cli)
    if factory:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# the settings pretraining and fine-tuning share, with the same meaning and help
SHARED = {
    "lr": (positive_float, "peak learning rate"),
    "warmup": (fraction, "fraction of the steps spent warming up"),
    "weight_decay": (nonneg_float, "decoupled weight decay"),
    "clip": (positive_float, "clip the gradients' global norm to this"),
    "threads": (positive_int, "Numba threads (none: all cores)"),
    "save_every": (nonneg_int, "checkpoint every N steps (0: at the end only)"),
    "seq_len": (positive_int, None),
    "batch_size": (positive_int, None),
    "micro_batches": (positive_int, None),
    "seed": (nonneg_int, None),
}


def shared(name, default, help=None):
    """A setting of SHARED: its parser and (unless given) its help."""
    kind, text = SHARED[name]
    return setting(default, help or text, kind)


def add_settings(p, cls, resumable=()):
    """An option for every field of ``cls`` that has a ``setting``'s help, in the order of
    the fields. Each defaults to None, so that the command knows which were given (a
    resumed run applies only those); the help shows the dataclass's own default."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = "--" + f.name.replace("_", "-")
        if isinstance(default, bool) or f.type in (bool, "bool"):
            p.add_argument(name, action="store_true", default=None, help=m["help"])
            continue
        shown = "none" if default is None else default
        kw = dict(nargs="*") if isinstance(default, list) or f.type in (list, "list") else {}
        p.add_argument(name, type=m["type"], choices=m["choices"], default=None,
                       help=f"{m['help']} (default: {shown})", **kw)
    if resumable:
        p.add_argument("--resume", action="store_true", help="continue the run in --out (the "
                       "options " + ", ".join("--" + r.replace("_", "-") for r in resumable)
                       + " may change; the log records it)")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that "
                   "holds a run (its checkpoints and log are removed)")
