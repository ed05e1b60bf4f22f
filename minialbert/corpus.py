"""Corpora: the embedded default (the documentation of the Python running us) and the
reader for a user's own text files.

A corpus is a list of documents, each a list of sentences (strings). Pretraining makes
its segment pairs from consecutive sentences of one document (data.py).

The embedded corpus is extracted at run time from the user's own Python — nothing is
downloaded and no text is copied into this repository: the pydoc topics
(``pydoc_data.topics``, the language reference's prose) and the docstrings of the
standard library's modules, classes and functions, read from the source files with
``ast`` (no module is imported). It differs between Python versions, so every run
records the Python version and the corpus checksum.
"""
import ast
import gzip
import hashlib
import json
import os
import pathlib
import re
import sys
import sysconfig
import tempfile
import zlib
from dataclasses import dataclass, field


class CorpusError(ValueError):
    """A corpus that cannot be used, with a message that says which file and why."""


# ------------------------------------------------------------------------------- sentences

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Mr|Dr|No)\.$")


def split_sentences(text):
    """A paragraph of prose -> sentences (a simple rule: end punctuation, whitespace, then a
    capital or a digit; common abbreviations do not end a sentence)."""
    text = " ".join(text.split())
    if not text:
        return []
    out, start = [], 0
    for m in _SENT_END.finditer(text):
        piece = text[start:m.start()].strip()
        if _ABBREV.search(piece):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def _prose_paragraphs(text):
    """Blank-line separated paragraphs of prose, leaving out code: doctest lines, indented
    blocks (reST literal blocks) and reST directives."""
    paras, cur = [], []
    for line in text.splitlines():
        s = line.rstrip()
        if not s.strip():
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        if s[0] in " \t" or s.startswith((">>>", "...", ".. ")) or set(s.strip()) <= set("=-~*^#"):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        cur.append(s.strip())
    if cur:
        paras.append(" ".join(cur))
    return paras


def text_to_sentences(text):
    return [s for p in _prose_paragraphs(text) for s in split_sentences(p)]


# ------------------------------------------------------------------------------- corpus

@dataclass
class Corpus:
    documents: list  # list of documents, each a list of sentences
    names: list  # one name per document (where it came from)
    source: str = ""
    info: dict = field(default_factory=dict)
    keys: list = None  # what the held-out split hashes, one per document (None: the names)

    def __post_init__(self):
        if self.keys is None:
            self.keys = list(self.names)
        if "sha256" not in self.info:
            self.info = dict(self.info, **self._stats())

    def _stats(self):
        h = hashlib.sha256()
        for doc in self.documents:
            for s in doc:
                h.update(s.encode("utf-8"))
                h.update(b"\n")
            h.update(b"\n")
        return dict(sha256=h.hexdigest(), documents=len(self.documents),
                    sentences=sum(len(d) for d in self.documents),
                    characters=sum(len(s) for d in self.documents for s in d))

    @property
    def checksum(self):
        return self.info["sha256"]

    def __len__(self):
        return len(self.documents)

    def sentences(self):
        for d in self.documents:
            yield from d

    def split(self, heldout_fraction=0.05):
        """(train, held-out) by document, decided by a hash of the document's key: the
        same document always lands on the same side, whatever else the corpus holds. The
        embedded corpus's keys are its names (a topic, a module's function); a file's
        documents are keyed by their text, so that the split of a corpus does not change
        when its folder moves or another file joins it (the checksum, which a resumed run
        checks, is of the text alone too)."""
        held = [zlib.crc32(k.encode("utf-8")) / 2**32 < heldout_fraction for k in self.keys]
        if all(held):  # every document hashed to the held-out side (one or two documents):
            held = [False] * len(held)  # train on them; there is nothing to hold out
        pick = lambda flag: Corpus([d for d, h in zip(self.documents, held) if h == flag],  # noqa: E731
                                   [n for n, h in zip(self.names, held) if h == flag],
                                   self.source, {k: v for k, v in self.info.items()
                                                 if k in ("python", "source")},
                                   [k for k, h in zip(self.keys, held) if h == flag])
        return pick(False), pick(True)


def default_corpus(min_sentences=2, min_chars=200):
    """The documentation of the running Python: pydoc topics + standard-library docstrings.
    Read once per process, and kept on disk between processes (``cache_dir()``): parsing
    the standard library takes ~5 s, and a run, its evaluation, a resumed run and a
    tutorial each ask for it. Every call gets a Corpus of its own."""
    key = (min_sentences, min_chars)
    if key not in _DEFAULT:
        _DEFAULT[key] = _cached_default_corpus(min_sentences, min_chars)
    c = _DEFAULT[key]
    return Corpus(list(c.documents), list(c.names), c.source, dict(c.info), list(c.keys))


_DEFAULT = {}  # (min_sentences, min_chars) -> the Corpus read
_SKIP = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "__pycache__",
         "ensurepip", "turtledemo", "tkinter"}


def cache_dir():
    """Where minialbert keeps what it can always rebuild (the default corpus's sentences):
    $MINIALBERT_CACHE, else $XDG_CACHE_HOME/minialbert, else ~/.cache/minialbert. Deleting
    it loses nothing but time."""
    if os.environ.get("MINIALBERT_CACHE"):
        return pathlib.Path(os.environ["MINIALBERT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "minialbert"


def _stdlib_sources(stdlib):
    """The standard library's .py files the corpus reads, in the order it reads them."""
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        for f in sorted(files):
            if f.endswith(".py"):
                yield pathlib.Path(root) / f


def _fingerprint(stdlib, min_sentences, min_chars):
    """What the default corpus is a function of: this file (the extraction rules), the
    Python, and every source file it reads, by path, size and modification time (a stat
    each: 10-20 ms for the whole standard library, against ~5 s to parse it)."""
    h = hashlib.sha256(pathlib.Path(__file__).read_bytes())
    h.update(repr((sys.version, str(stdlib), min_sentences, min_chars)).encode())
    try:  # found, not imported (4 ms): on a cache hit the topics are never read
        import importlib.util
        spec = importlib.util.find_spec("pydoc_data.topics")
        files = [pathlib.Path(spec.origin)] if spec and spec.origin else []
    except ImportError:
        files = []
    for path in files + list(_stdlib_sources(stdlib)):
        try:
            st = path.stat()
        except OSError:
            continue
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cached_default_corpus(min_sentences, min_chars):
    # the cache file holds the documents, their names and the checksum of the text; a file
    # that does not load, or whose text does not give its checksum, is read again from the
    # sources and replaced. Written to a temporary name and renamed: a reader never sees
    # half a file, and two processes writing at once leave one whole file.
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    v = sys.version_info
    stem = f"python-docs-{v.major}.{v.minor}.{v.micro}-{min_sentences}-{min_chars}-"
    path = cache_dir() / (stem + _fingerprint(stdlib, min_sentences, min_chars)[:24] + ".json.gz")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            d = json.load(f)
        c = Corpus(d["documents"], d["names"], "python-docs",
                   dict(python=d["python"], source="python-docs"))
        if c.checksum == d["sha256"]:
            return c
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error):
        pass  # no cache yet, or a damaged one: read the sources
    c = _read_default_corpus(min_sentences, min_chars, stdlib)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json.gz")
        try:
            with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
                json.dump(dict(documents=c.documents, names=c.names, python=c.info["python"],
                               sha256=c.checksum), f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        for old in path.parent.glob(stem + "*.json.gz"):  # this Python's older versions
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full disk: the next process reads the sources again
    return c


def _read_default_corpus(min_sentences, min_chars, stdlib):
    docs, names = [], []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions ship Python without pydoc_data
        topics = {}
    for name in sorted(topics):
        sents = text_to_sentences(topics[name])
        if len(sents) >= min_sentences:
            docs.append(sents)
            names.append(f"topic:{name}")
    for path in _stdlib_sources(stdlib):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        mod = ".".join(path.relative_to(stdlib).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if not doc or len(doc) < min_chars:
                    continue
                sents = text_to_sentences(doc)
                if len(sents) >= min_sentences:
                    docs.append(sents)
                    names.append(f"{mod}:{getattr(node, 'name', '')}")
    if not docs:
        raise CorpusError(f"no documentation found in this Python ({stdlib}); "
                          "point --corpus at your own text files")
    v = sys.version_info
    return Corpus(docs, names, "python-docs",
                  dict(python=f"{v.major}.{v.minor}.{v.micro}", source="python-docs"))


# ------------------------------------------------------------------------------- user files

def _read_text(path):
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise CorpusError(f"{path}: not valid UTF-8 at byte {e.start} (line {line}): "
                          f"{data[max(0, e.start - 20):e.start + 5]!r}; convert the file to "
                          "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _files(paths, pattern):
    out = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = pathlib.Path(p)
        if p.is_dir():
            found = sorted(q for q in p.rglob(pattern) if q.is_file())
            other = sorted(q for q in p.rglob("*") if q.is_file() and q not in set(found)
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not found:
                raise CorpusError(f"{p}: a folder with no {pattern} files" + (
                    f" ({len(other)} other files, e.g. {other[0].name}; name files to read "
                    "them whatever their suffix)" if other else ""))
            if other:
                print(f"note: {p}: read {len(found)} {pattern} files, skipped {len(other)} "
                      f"others ({', '.join(q.name for q in other[:3])}"
                      f"{', …' if len(other) > 3 else ''}); name files to read them",
                      file=sys.stderr)
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise CorpusError(f"{p}: no such file or folder")
    return out


def read_corpus(paths, format="auto", pattern="*.txt"):
    """Read text files (or folders of them) into a Corpus.

    format="lines": the original ALBERT/BERT format — one sentence per line, a blank line
                    between documents;
    format="text":  prose wrapped at any width — blank lines separate paragraphs, each
                    paragraph is split into sentences, and a paragraph is a document;
    format="auto":  "lines" if most non-empty lines end a sentence, else "text" (per file).
    """
    docs, names = [], []
    files = _files(paths, pattern)
    for path in files:
        text = _read_text(path)
        lines = [l.strip() for l in text.splitlines()]
        fmt = format
        if fmt == "auto":
            nonempty = [l for l in lines if l]
            ends = sum(l[-1] in ".!?\"')" for l in nonempty)
            fmt = "lines" if nonempty and ends >= 0.8 * len(nonempty) else "text"
        if fmt not in ("lines", "text"):
            raise CorpusError(f"unknown corpus format {format!r}: use lines, text or auto")
        block = []
        for l in lines + [""]:
            if l:
                block.append(l)
                continue
            if block:
                sents = block if fmt == "lines" else split_sentences(" ".join(block))
                if sents:
                    docs.append(sents)
                    names.append(f"{path}:{len(docs)}")
                block = []
    if not docs or not any(s.strip() for d in docs for s in d):
        raise CorpusError(f"no text in {', '.join(map(str, files))}: the corpus is empty")
    return Corpus(docs, names, ",".join(map(str, files)),
                  dict(source=",".join(map(str, files))), ["\n".join(d) for d in docs])


def load_corpus(spec=None, format="auto"):
    """None or "python-docs": the embedded corpus; otherwise files/folders."""
    if spec in (None, "python-docs"):
        return default_corpus()
    return read_corpus(spec, format)
