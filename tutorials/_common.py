"""Shared by the tutorials: quick mode and where outputs go.

MINIALBERT_QUICK=1   every cell runs, at small sizes (the test suite uses this)
MINIALBERT_OUT=DIR   where figures and tables go (default: book/figures, which the book
                     chapters include, for a full run; a quick run writes to a new
                     temporary folder, so it never overwrites the book's figures)
"""
import os
import pathlib
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
