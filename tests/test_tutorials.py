"""Every tutorial runs in quick mode (every cell, small sizes, key numbers asserted inside
the tutorial), writing into a temporary folder so that committed figures are untouched."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_in_quick_mode(path, tmp_path):
    env = dict(os.environ, MINIALBERT_QUICK="1", MINIALBERT_OUT=str(tmp_path))
    r = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the tutorial wrote no table or figure"


def test_every_tutorial_has_its_book_chapter():
    for path in TUTORIALS:
        assert (ROOT / "book" / (path.stem + ".md")).exists(), path.stem


def test_book_includes_only_files_the_tutorials_write():
    import re
    for md in (ROOT / "book").glob("*.md"):
        for name in re.findall(r"figures/([\w.]+)", md.read_text()):
            assert (ROOT / "book" / "figures" / name).exists(), (md.name, name)


def test_quick_mode_by_hand_never_writes_into_the_book(tmp_path):
    """A reader who runs a tutorial with MINIALBERT_QUICK=1 and no MINIALBERT_OUT gets its
    small-size outputs in a temporary folder, not over the committed book/figures."""
    import subprocess
    import sys
    tut = pathlib.Path(__file__).resolve().parents[1] / "tutorials"
    env = {k: v for k, v in os.environ.items() if k != "MINIALBERT_OUT"}
    code = "import _common; print(_common.OUT)"
    for quick, in_book in (("1", False), ("", True)):
        r = subprocess.run([sys.executable, "-c", code], cwd=tut, capture_output=True,
                           text=True, env=dict(env, MINIALBERT_QUICK=quick), check=True)
        out = pathlib.Path(r.stdout.strip().splitlines()[-1])
        assert (out == tut.parent / "book" / "figures") == in_book, out
