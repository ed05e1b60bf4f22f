"""--json PATH: a benchmark's headline figures, as JSON, for benchmarks/scorecard.py.

Each benchmark prints its full tables as before; with --json it also writes the few
numbers its targets are about (issue 11's: ratios against OpenBLAS or Hugging Face, peak
memory, seconds), so that the scorecard reads them instead of parsing the tables.
"""
import json
import os


def add_option(ap):
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="also write the headline figures to PATH as JSON "
                         "(what benchmarks/scorecard.py reads)")


def check(ap, path):
    """Stop at once, with one line, if --json names a file that cannot be written (its
    folder missing or read-only, or a folder itself), not after the benchmark's minutes."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        ap.error(f"--json {path}: cannot write a file there (a folder that exists and "
                 "can be written to is needed)")


def write(path, figures):
    """figures (a dict of plain numbers, strings and lists) to path, written whole or not at
    all (a temporary file renamed over it)."""
    if not path:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(figures, f, indent=1)
    os.replace(tmp, path)
