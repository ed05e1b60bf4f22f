"""Shared by the tutorials: quick mode and where outputs go.

MINIALBERT_QUICK=1   every cell runs, at small sizes (the test suite uses this)
MINIALBERT_OUT=DIR   where figures and tables go (default: book/figures, which the book
                     chapters include, for a full run; a quick run writes to a new
                     temporary folder, so it never overwrites the book's figures)

What a tutorial prints goes to the terminal and to OUT/<tutorial>_output.jsonl, each piece
with the line of the tutorial that printed it: the book's tutorial page shows every cell's
output under the cell, from the run that made the book's figures (minialbert/book.py).
"""
import json
import os
import pathlib
import sys
import tempfile

QUICK = os.environ.get("MINIALBERT_QUICK", "") not in ("", "0")
if os.environ.get("MINIALBERT_OUT"):
    OUT = pathlib.Path(os.environ["MINIALBERT_OUT"])
elif QUICK:  # small sizes, numbers not for the book
    OUT = pathlib.Path(tempfile.mkdtemp(prefix="minialbert-quick-"))
    print(f"quick mode: outputs in {OUT} (set MINIALBERT_OUT to choose)")
else:
    OUT = pathlib.Path(__file__).resolve().parents[1] / "book" / "figures"
OUT.mkdir(parents=True, exist_ok=True)


class _Recorder:
    """sys.stdout that also writes each piece to a JSON-lines file with the line of the
    tutorial that printed it (progress bars, which redraw with a carriage return, are
    left out)."""

    def __init__(self, stream, script, path):
        self.stream, self.script = stream, script
        self.file = open(path, "w", encoding="utf-8")

    def write(self, text):
        self.stream.write(text)
        if text and "\r" not in text:
            frame = sys._getframe(1)
            while frame is not None and os.path.abspath(frame.f_code.co_filename) != self.script:
                frame = frame.f_back
            self.file.write(json.dumps({"line": frame.f_lineno if frame else 0,
                                        "text": text}) + "\n")
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


_script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
if pathlib.Path(_script).stem[:2].isdigit() and not isinstance(sys.stdout, _Recorder):
    sys.stdout = _Recorder(sys.stdout, _script,
                           OUT / f"{pathlib.Path(_script).stem}_output.jsonl")


def write_table(name, header, rows):
    """A Markdown table the book chapter includes: numbers from the run, not typed."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    (OUT / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def savefig(fig, name):
    fig.savefig(OUT / name, dpi=110, bbox_inches="tight")


def plt():
    """matplotlib if installed (pip install -e '.[plot]'), else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as p

        return p
    except ImportError:
        print("(matplotlib not installed: no figure; pip install -e '.[plot]')")
        return None
