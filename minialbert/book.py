"""The book as a website, built offline: ``minialbert book`` (pip install -e ".[book]").

    minialbert book                      # -> book/_build/html/index.html
    minialbert book --out site/

What it builds, from a source checkout (the book and the tutorials are not installed with
the package): every chapter of ``book/`` in order, with its tables (the ``{include}``
files the tutorials wrote) and figures; a page per tutorial (its cells as text and code,
and the tutorial as a notebook to download, made by jupytext); a page per module of the
library with its source; a first page with the README's two commands. Sphinx with MyST
and the book theme; the math is typeset in the browser by a MathJax that ships inside the
site (sphinx-mathjax-offline), so a page looks the same with the network off.

The chapters are copied into a staging folder beside the output and lightly rewritten
there (``tutorials/05_attention.py`` and ``minialbert/x.py`` become links to their pages),
so the sources under ``book/`` stay what a code host shows. A chapter that includes a
table or figure that does not exist stops the build, naming both.
"""
import json
import pathlib
import re
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


class BookError(RuntimeError):
    pass


CONF = '''# written by minialbert/book.py for each build
project = "minialbert: ALBERT from scratch"
author = "the minialbert authors"
extensions = ["myst_parser", "sphinx-mathjax-offline"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "figures/*.md", "extra"]
html_theme = "sphinx_book_theme"
html_title = "minialbert"
html_theme_options = {"show_toc_level": 2, "use_download_button": False,
                      "use_fullscreen_button": False}
html_context = {"default_mode": "light"}  # else the theme logs an error on a first visit
html_static_path = []
html_extra_path = ["extra"]  # pages the chapters embed as they are (12_attention.html)
suppress_warnings = ["myst.header"]
'''


def _sources():
    book, tutorials = ROOT / "book", ROOT / "tutorials"
    if not book.is_dir() or not tutorials.is_dir():
        raise BookError(f"the book's sources are not here ({book}): the book builds from a "
                        "source checkout (git clone, then pip install -e '.[book]')")
    chapters = sorted(p for p in book.glob("[0-9][0-9]_*.md"))
    tuts = sorted(tutorials.glob("[0-9][0-9]_*.py"))
    return book, chapters, tuts


def check_includes(book, chapters):
    """Every figure or table a chapter names exists (else a BookError naming them)."""
    missing = []
    for md in chapters:
        for name in re.findall(r"figures/([\w.\-]+)", md.read_text(encoding="utf-8")):
            if not (book / "figures" / name).exists():
                missing.append(f"{md.name} includes figures/{name}")
    if missing:
        raise BookError("missing figures or tables (run the chapter's tutorial to make "
                        "them): " + "; ".join(missing))


def _title(md_text, fallback):
    m = re.search(r"^#\s+(.+)$", md_text, re.M)
    return m.group(1).strip() if m else fallback


def tutorial_page(py, outputs=None):
    """A percent-format tutorial -> MyST Markdown: ``# %% [markdown]`` cells as text, the
    other cells as Python code blocks, each followed by what it printed when the tutorial
    ran (``outputs``: its _output.jsonl, records of the line that printed and the text)."""
    cells, kind, lines, first, no = [], None, [], 1, 0
    for no, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# %%"):
            if kind is not None:
                cells.append((kind, lines, first, no))
            kind, lines, first = ("md" if "[markdown]" in line else "code"), [], no
            continue
        lines.append(line)
    if kind is not None:
        cells.append((kind, lines, first, no + 1))
    out = []
    for kind, lines, start, end in cells:
        if kind == "md":
            out.append("\n".join(l[2:] if l.startswith("# ") else l.lstrip("#")
                                 for l in lines).strip())
            continue
        code = "\n".join(lines).strip("\n")
        if code.strip():
            out.append("```python\n" + code + "\n```")
        printed = "".join(r["text"] for r in outputs or () if start <= r["line"] < end)
        if printed.strip():
            out.append(_output_block(printed))
    return "\n\n".join(out) + "\n"


def _output_block(text, most=40):
    """What a cell printed, as a text block (the first and last lines of a long one)."""
    rows = text.rstrip("\n").splitlines()
    if len(rows) > most:
        rows = rows[:most // 2] + [f"... ({len(rows) - most} more lines)"] + rows[-most // 2:]
    fence = "````" if any(r.lstrip().startswith("```") for r in rows) else "```"
    return fence + "text\n" + "\n".join(rows) + "\n" + fence


def read_outputs(path):
    """A tutorial's recorded output (tutorials/_common.py), or None if it has not run."""
    try:
        return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l]
    except (OSError, ValueError):
        return None


def _link_sources(text, tut_names, modules):
    """`tutorials/05_x.py` -> a link to its page; `minialbert/x.py` -> the module's page."""
    def tut(m):
        stem = m.group(1)
        return f"[`tutorials/{stem}.py`](tutorials/{stem}.md)" if stem in tut_names else m.group(0)

    def mod(m):
        path = m.group(1)
        page = path.replace("/", ".").removesuffix(".py")
        return f"[`minialbert/{path}`](code/{page}.md)" if page in modules else m.group(0)

    text = re.sub(r"`tutorials/(\d\d_\w+)\.py`", tut, text)
    return re.sub(r"`minialbert/([\w/]+\.py)`", mod, text)


def _readme_start():
    """The README's opening: its text up to the first section, which holds the two
    commands (install and run; install the tests and run them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text.split("\n## ", 1)[0]
    head = re.sub(r"^# .*\n", "", head, count=1)
    head = re.sub(r"\]\(book/(\d\d_\w+)\.md\)", r"](\1.md)", head)
    return "# Start here\n\n" + head.strip() + "\n"


def _modules():
    """{dotted module name: path under minialbert/} of every module of the package."""
    modules = {}
    for py in sorted((ROOT / "minialbert").rglob("*.py")):
        rel = py.relative_to(ROOT / "minialbert")
        name = ".".join(rel.with_suffix("").parts)
        if name.endswith("__init__"):
            name = name[:-len(".__init__")] or "__init__"
        modules[name] = rel
    return modules


def _tutorial_pages(book, tuts, dst):
    """A page and a notebook per tutorial, the page linking the notebook and its chapter."""
    import jupytext

    pages = []
    for py in tuts:
        jupytext.write(jupytext.read(py), dst / "tutorials" / f"{py.stem}.ipynb")
        outputs = read_outputs(book / "figures" / f"{py.stem}_output.jsonl")
        body = tutorial_page(py, outputs)
        if outputs is None:
            body += ("\n*(The outputs of this tutorial's last full run are not recorded yet: "
                     f"`python tutorials/{py.name}` writes them.)*\n")
        body = body.replace("\n", f"\n\n*Run it: `python tutorials/{py.name}` (full) or "
                            f"`MINIALBERT_QUICK=1 python tutorials/{py.name}` (seconds); "
                            f"as a notebook: {{download}}`{py.stem}.ipynb`. The chapter: "
                            f"[{py.stem}](../{py.stem}.md).*\n\n", 1) \
            if (book / f"{py.stem}.md").exists() else body
        (dst / "tutorials" / f"{py.stem}.md").write_text(body, encoding="utf-8")
        pages.append(f"tutorials/{py.stem}")
    return pages


def _code_pages(modules, dst):
    """A page per module showing its source (copied into the site)."""
    pages = []
    (dst / "code" / "src").mkdir()
    for name, rel in modules.items():
        src = dst / "code" / "src" / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "minialbert" / rel, src)
        (dst / "code" / f"{name}.md").write_text(
            f"# `minialbert/{rel.as_posix()}`\n\n```{{literalinclude}} src/{rel.as_posix()}\n"
            ":language: python\n:linenos:\n```\n", encoding="utf-8")
        pages.append(f"code/{name}")
    return pages


def _toc(caption, pages):
    return (f"```{{toctree}}\n:caption: {caption}\n:maxdepth: 1\n\n" + "\n".join(pages)
            + "\n```\n")


def stage(dst):
    """Copy and generate every page of the site into ``dst`` (a fresh folder)."""
    book, chapters, tuts = _sources()
    check_includes(book, chapters)
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "tutorials").mkdir(parents=True)
    (dst / "code").mkdir()
    shutil.copytree(book / "figures", dst / "figures")
    (dst / "extra" / "figures").mkdir(parents=True)
    for page in (book / "figures").glob("*.html"):  # served as they are, beside the chapters
        shutil.copy2(page, dst / "extra" / "figures" / page.name)
    modules = _modules()
    tut_names = {p.stem for p in tuts}
    chapter_pages = []
    for md in chapters:
        text = _link_sources(md.read_text(encoding="utf-8"), tut_names, modules)
        (dst / md.name).write_text(text, encoding="utf-8")
        chapter_pages.append(md.stem)
    tut_pages = _tutorial_pages(book, tuts, dst)
    code_pages = _code_pages(modules, dst)
    (dst / "start.md").write_text(_readme_start(), encoding="utf-8")
    index = ["# minialbert: ALBERT from scratch, in NumPy and Numba\n",
             "Every forward and backward pass written by hand, every kernel a Numba function, "
             "every gradient checked. Read the chapters in order; each runs as a tutorial "
             "whose numbers and figures are the ones shown.\n",
             _toc("Start", ["start"]), _toc("Chapters", chapter_pages),
             _toc("Tutorials", tut_pages), _toc("The code", code_pages)]
    (dst / "index.md").write_text("\n".join(index), encoding="utf-8")
    (dst / "conf.py").write_text(CONF, encoding="utf-8")
    return dict(chapters=len(chapter_pages), tutorials=len(tut_pages), code=len(code_pages))


def build(out=None, quiet=True):
    """Stage the pages and run Sphinx -> dict(out, pages, seconds, warnings)."""
    try:
        from sphinx.cmd.build import build_main
    except ImportError:
        raise BookError("the book needs Sphinx and MyST: pip install -e '.[book]'") from None
    out = pathlib.Path(out) if out else ROOT / "book" / "_build" / "html"
    staging = out.parent / (out.name + "-src")
    t0 = time.time()
    counts = stage(staging)
    warnings = out.parent / (out.name + "-warnings.txt")
    args = ["-b", "html", "-E", "-w", str(warnings)] + (["-q"] if quiet else []) + \
        [str(staging), str(out)]
    if build_main(args) != 0:
        raise BookError(f"Sphinx failed; see {warnings}")
    pages = sorted(p for p in out.rglob("*.html") if "_static" not in p.parts)
    return dict(out=out, index=out / "index.html", pages=len(pages),
                seconds=time.time() - t0, warnings=warnings, **counts)


def _cmd_book(args):
    try:
        r = build(args.out)
    except BookError as e:
        print(f"minialbert: error: {e}", file=sys.stderr)
        return 2
    n_warn = len([l for l in r["warnings"].read_text().splitlines() if "WARNING" in l]) \
        if r["warnings"].exists() else 0
    print(f"book: {r['pages']} pages ({r['chapters']} chapters, {r['tutorials']} tutorials, "
          f"{r['code']} code pages) in {r['seconds']:.0f} s -> {r['index']}"
          + (f"; {n_warn} Sphinx warnings in {r['warnings']}" if n_warn else ""))
    return 0


def add_commands(sub):
    from .options import Help

    p = sub.add_parser("book", formatter_class=Help,
                       help="build the book as an offline website (pip install -e '.[book]')")
    p.add_argument("--out", default=None, help="the site's folder (default: book/_build/html)")
    p.set_defaults(func=_cmd_book)
