"""Command-line options checked when they are parsed: a bad number is one line naming the
option (``argument --steps: must be a positive integer, got '-5'``), exit status 2, before
anything runs. Used by every command's parser; imports nothing of minialbert.
"""
import argparse
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


def settings_option(p, d, name, type=None, help="", **kw):
    """``--name`` for field ``name`` of the settings dataclass ``d``: default None (so the
    command knows what was given — a resumed run applies only those), the dataclass's own
    default shown in the help."""
    default = getattr(d, name.replace("-", "_"))
    shown = "none" if default is None else default
    p.add_argument(f"--{name}", type=type, default=None, help=f"{help} (default: {shown})", **kw)


def optimization_options(opt):
    """The options pretraining and fine-tuning share, with the same meaning and help.
    ``opt(name, type, help=...)`` adds one (settings_option bound to a parser)."""
    opt("lr", positive_float, help="peak learning rate")
    opt("warmup", fraction, help="fraction of the steps spent warming up")
    opt("weight-decay", nonneg_float, help="decoupled weight decay")
    opt("clip", positive_float, help="clip the gradients' global norm to this")
    opt("threads", positive_int, help="Numba threads (none: all cores)")
    opt("save-every", nonneg_int, help="checkpoint every N steps (0: at the end only)")
