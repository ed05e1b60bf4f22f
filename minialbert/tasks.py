"""Fine-tuning tasks: GLUE-style TSV files, SQuAD v1.1 JSON, and the embedded default task.

A classification task is a list of ``Example(text, pair, label)`` and its label names
(none for regression). A QA task is a list of ``QAExample(id, question, context,
answers)``; ``qa_features`` cuts each into windows of the document (``doc_stride``) with
start/end token positions, and ``qa_decode`` turns start/end logits back into a span of
the original context text.

The default task, built from the embedded corpus so it runs offline: *which area of the
standard library does this passage document?* — seven areas, each a set of top-level
modules (the pydoc topics are the language reference). A passage is up to three
sentences of one docstring. Train and dev are split by document with the same hash as
pretraining's held-out split, so with the same fraction the dev passages come from
documents the pretrained model never saw.
"""
import collections
import csv
import json
import pathlib
import re
import string
from dataclasses import dataclass, field

import numpy as np


class TaskError(ValueError):
    pass


@dataclass
class Example:
    text: str
    pair: str = None
    label: object = None  # class index (int) or a float (regression)


@dataclass
class Task:
    name: str
    kind: str  # "classification", "regression" or "qa"
    train: list
    dev: list
    labels: list = None  # class names
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self):
        return 2 if self.kind == "qa" else (1 if self.kind == "regression" else len(self.labels))

    def majority_baseline(self):
        """Accuracy on dev of always answering the most frequent training class."""
        if self.kind != "classification" or not self.dev:
            return None
        top = collections.Counter(e.label for e in self.train).most_common(1)[0][0]
        return float(np.mean([e.label == top for e in self.dev]))


# ------------------------------------------------------------------------------ the default task

AREAS = {
    "language reference": ["topic"],
    "internet and email": ["email", "http", "urllib", "smtplib", "nntplib", "ftplib", "imaplib",
                           "poplib", "xmlrpc", "wsgiref", "mimetypes", "socket", "ssl",
                           "socketserver", "ipaddress", "mailbox", "webbrowser"],
    "text and data formats": ["xml", "json", "csv", "html", "difflib", "textwrap", "codecs",
                              "encodings", "configparser", "string", "re", "base64", "quopri",
                              "plistlib", "tomllib", "gettext", "locale", "pprint"],
    "concurrency": ["asyncio", "threading", "concurrent", "multiprocessing", "subprocess",
                    "queue", "sched", "selectors", "signal"],
    "numbers and math": ["_pydecimal", "decimal", "fractions", "statistics", "random", "numbers",
                         "cmath", "colorsys"],
    "development and debugging": ["unittest", "doctest", "pdb", "bdb", "traceback", "dis", "code",
                                  "codeop", "pickletools", "profile", "cProfile", "pstats",
                                  "timeit", "trace", "tracemalloc", "logging", "inspect", "ast",
                                  "tokenize", "warnings"],
    "files and storage": ["os", "shutil", "tarfile", "zipfile", "lzma", "bz2", "gzip", "tempfile",
                          "pathlib", "glob", "fnmatch", "_pyio", "io", "stat", "filecmp",
                          "fileinput", "shelve", "dbm", "pickle", "zipimport", "ntpath",
                          "posixpath", "genericpath"],
}
_AREA_OF = {m: a for a, mods in AREAS.items() for m in mods}


def area_of(doc_name):
    top = "topic" if doc_name.startswith("topic:") else doc_name.split(":")[0].split(".")[0]
    return _AREA_OF.get(top)


def default_task(corpus=None, heldout_fraction=0.1, sentences=3):
    """The embedded task: stdlib area (7 classes) of a passage of Python's documentation."""
    from .corpus import default_corpus

    corpus = corpus or default_corpus()
    labels = list(AREAS)
    train_c, dev_c = corpus.split(heldout_fraction)

    def examples(c):
        out = []
        for doc, name in zip(c.documents, c.names):
            area = area_of(name)
            if area is None:
                continue
            for i in range(0, len(doc), sentences):
                out.append(Example(" ".join(doc[i:i + sentences]), None, labels.index(area)))
        return out

    train = examples(train_c)
    seen = {e.text for e in train}  # a docstring copied into two documents stays in train
    dev = [e for e in examples(dev_c) if e.text not in seen]
    return Task("python-docs-areas", "classification", train, dev, labels,
                dict(corpus_sha256=corpus.checksum, heldout_fraction=heldout_fraction,
                     python=corpus.info.get("python")))


# ------------------------------------------------------------------------------ TSV files

TEXT_COLUMNS = ("sentence", "sentence1", "question", "question1", "#1 String", "text", "text_a")
PAIR_COLUMNS = ("sentence2", "question2", "#2 String", "text_b")
LABEL_COLUMNS = ("label", "gold_label", "Quality", "is_duplicate", "score")


def _read_text_file(path):
    path = pathlib.Path(path)
    if not path.exists():
        raise TaskError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None
    if not text.strip():
        raise TaskError(f"{path}: empty")
    return text


def read_tsv(path, text_column=None, pair_column=None, label_column=None, has_header=None):
    """A GLUE-style TSV -> list of (text, pair or None, label string). Columns by header
    name (GLUE's: sentence / sentence1+sentence2 / question+sentence / #1 String+#2 String;
    label / gold_label / Quality / score) or, without a header, text<TAB>label or
    text<TAB>pair<TAB>label."""
    rows = list(csv.reader(_read_text_file(path).splitlines(), delimiter="\t",
                           quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    head = rows[0]
    known = set(TEXT_COLUMNS + PAIR_COLUMNS + LABEL_COLUMNS)
    if has_header is None:
        has_header = bool(known & set(head)) or bool({text_column, label_column} & set(head))
    if has_header:
        cols = {name: i for i, name in enumerate(head)}
        rows = rows[1:]

        def pick(given, options, what, required=True):
            if given is not None:
                if given not in cols:
                    raise TaskError(f"{path}: no column {given!r} (the header has {head})")
                return cols[given]
            for o in options:
                if o in cols:
                    return cols[o]
            if required:
                raise TaskError(f"{path}: cannot tell which column is the {what} (header {head}); "
                                f"name it with --{what}-column")
            return None

        qnli = "question" in cols and "sentence" in cols and text_column is None \
            and pair_column is None  # QNLI: question, sentence
        ti = cols["question"] if qnli else pick(text_column, TEXT_COLUMNS, "text")
        li = pick(label_column, LABEL_COLUMNS, "label")
        pi = cols["sentence"] if qnli else pick(pair_column, PAIR_COLUMNS, "pair", required=False)
    else:
        width = len(head)
        if width == 2:
            ti, pi, li = 0, None, 1
        elif width == 3:
            ti, pi, li = 0, 1, 2
        else:
            raise TaskError(f"{path}: {width} columns and no header naming them; give a header "
                            "row (sentence/sentence1/sentence2/label) or use text<TAB>label")
    out = []
    for n, r in enumerate(rows, start=2 if has_header else 1):
        need = max(i for i in (ti, pi, li) if i is not None)
        if len(r) <= need:
            raise TaskError(f"{path}:{n}: {len(r)} columns, expected at least {need + 1}")
        out.append((r[ti], None if pi is None else r[pi], r[li].strip()))
    if not out:
        raise TaskError(f"{path}: a header but no examples")
    return out


def tsv_task(train_path, dev_path, regression=False, **columns):
    train, dev = read_tsv(train_path, **columns), read_tsv(dev_path, **columns)
    if regression:
        def conv(rows, path):
            try:
                return [Example(t, p, float(lab)) for t, p, lab in rows]
            except ValueError as e:
                raise TaskError(f"{path}: a label is not a number ({e})") from None
        return Task(pathlib.Path(train_path).stem, "regression", conv(train, train_path),
                    conv(dev, dev_path))
    labels = sorted({lab for _, _, lab in train})
    unknown = sorted({lab for _, _, lab in dev} - set(labels))
    if unknown:
        raise TaskError(f"{dev_path}: labels {unknown[:5]} never occur in {train_path}")
    if len(labels) < 2:
        raise TaskError(f"{train_path}: only one label ({labels}); nothing to classify")
    idx = {lab: i for i, lab in enumerate(labels)}
    return Task(pathlib.Path(train_path).stem, "classification",
                [Example(t, p, idx[lab]) for t, p, lab in train],
                [Example(t, p, idx[lab]) for t, p, lab in dev], labels)


# ------------------------------------------------------------------------------ SQuAD

@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list  # [(text, char start)]


def read_squad(path):
    try:
        data = json.loads(_read_text_file(path))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TaskError(f"{path}: not SQuAD v1.1 JSON (a 'data' list of articles with "
                        f"'paragraphs'): {e}") from None
    out = []
    for article in data:
        for para in article["paragraphs"]:
            ctx = para["context"]
            for qa in para["qas"]:
                ans = [(a["text"], int(a["answer_start"])) for a in qa.get("answers", [])]
                for text, start in ans:
                    if ctx[start:start + len(text)] != text:
                        raise TaskError(f"{path}: question {qa['id']}: the answer {text!r} is not at "
                                        f"character {start} of its context")
                out.append(QAExample(str(qa["id"]), qa["question"], ctx, ans))
    if not out:
        raise TaskError(f"{path}: no questions")
    return out


def squad_task(train_path, dev_path):
    return Task(pathlib.Path(train_path).stem, "qa", read_squad(train_path), read_squad(dev_path))


def _words(context):
    """Whitespace words of the context and, for each character, the word it belongs to."""
    words, char_to_word, prev_space = [], [], True
    for ch in context:
        if ch.isspace():
            prev_space = True
        else:
            if prev_space:
                words.append("")
            words[-1] += ch
            prev_space = False
        char_to_word.append(max(len(words) - 1, 0))
    return words, char_to_word


def qa_features(examples, tok, max_seq_length=128, doc_stride=48, max_query_length=32,
                train=True):
    """SQuAD examples -> windows "[CLS] question [SEP] piece of context [SEP]".

    The context is split into whitespace words, each word into pieces (so every piece knows
    its word); a window that does not contain the whole answer points start/end at [CLS]
    (position 0), as BERT's and Hugging Face's SQuAD code do. Returns arrays and, per window,
    (example index, {token position: word index}, the window's context positions)."""
    ids, types, masks, starts, ends, meta = [], [], [], [], [], []
    for ei, ex in enumerate(examples):
        q = tok.encode(ex.question)[:max_query_length]
        words, c2w = _words(ex.context)
        tok_to_word, pieces = [], []
        for wi, w in enumerate(words):
            for p in tok.encode(w):
                tok_to_word.append(wi)
                pieces.append(p)
        ans_tok = None
        if ex.answers:
            text, s = ex.answers[0]
            ws, we = c2w[s], c2w[s + len(text) - 1]
            first = [i for i, wi in enumerate(tok_to_word) if wi == ws]
            last = [i for i, wi in enumerate(tok_to_word) if wi == we]
            if first and last:
                ans_tok = (first[0], last[-1])
        room = max_seq_length - len(q) - 3
        if room <= 0:
            raise TaskError(f"max_seq_length {max_seq_length} leaves no room for the context")
        start = 0
        while True:
            span = pieces[start:start + room]
            seq = [tok.cls_token_id] + q + [tok.sep_token_id] + span + [tok.sep_token_id]
            off = len(q) + 2  # position of the first context piece
            tt = [0] * off + [1] * (len(span) + 1)
            sp = ep = 0
            if ans_tok and start <= ans_tok[0] and ans_tok[1] < start + len(span):
                sp, ep = ans_tok[0] - start + off, ans_tok[1] - start + off
            ids.append(seq)
            types.append(tt)
            starts.append(sp)
            ends.append(ep)
            meta.append((ei, {off + j: tok_to_word[start + j] for j in range(len(span))}))
            if start + room >= len(pieces):
                break
            start += doc_stride
    T = max(len(s) for s in ids)
    arr = lambda rows: np.array([r + [0] * (T - len(r)) for r in rows], np.int64)  # noqa: E731
    masks = [[1] * len(s) for s in ids]
    return dict(input_ids=arr(ids), token_type_ids=arr(types), attention_mask=arr(masks),
                start_positions=np.array(starts), end_positions=np.array(ends)), meta


def qa_decode(examples, meta, start_logits, end_logits, n_best=20, max_answer_length=30):
    """Best span over every window of each example -> {id: answer text}: the highest
    start + end score with start <= end within the context and at most max_answer_length
    pieces, mapped back through words to the original context text."""
    best = {}
    for w, (ei, pos_to_word) in enumerate(meta):
        s, e = start_logits[w], end_logits[w]
        cand_s = [i for i in np.argsort(-s)[:n_best] if i in pos_to_word]
        cand_e = [i for i in np.argsort(-e)[:n_best] if i in pos_to_word]
        for i in cand_s:
            for j in cand_e:
                if i <= j < i + max_answer_length:
                    score = float(s[i] + e[j])
                    if ei not in best or score > best[ei][0]:
                        best[ei] = (score, pos_to_word[i], pos_to_word[j])
    out = {}
    for ei, ex in enumerate(examples):
        if ei not in best:
            out[ex.id] = ""
            continue
        _, w0, w1 = best[ei]
        out[ex.id] = " ".join(_words(ex.context)[0][w0:w1 + 1])
    return out


def qa_pipeline_spans(start_logits, end_logits, context, top_k=1, max_answer_len=15):
    """One window's best spans as transformers' extractive question answering scores them
    (its question-answering pipeline, now its document-QA pipeline's ``select_starts_ends``):
    a softmax over the context positions and [CLS] (position 0) for the start and for the
    end; [CLS] then set to 0; the score of span (i, j) is p_start[i] * p_end[j] for
    i <= j < i + max_answer_len. ``context``: a boolean row, True where a context piece is.
    -> [(score, i, j)], best first, at most top_k (spans of probability 0 are dropped)."""
    allowed = np.asarray(context, bool).copy()
    allowed[0] = True

    def probs(z):
        z = np.where(allowed, np.asarray(z, np.float32), np.float32(-10000.0))
        e = np.exp(z - z.max())
        p = e / e.sum()
        p[0] = 0.0
        return p

    ps, pe = probs(start_logits), probs(end_logits)
    span = np.triu(np.tril(np.outer(ps, pe), max_answer_len - 1))  # j >= i, j - i < max len
    span[~allowed, :] = 0.0
    span[:, ~allowed] = 0.0
    flat = span.ravel()
    best = np.argsort(-flat, kind="stable")[:top_k]
    T = len(ps)
    return [(float(flat[b]), int(b // T), int(b % T)) for b in best if flat[b] > 0]


# ------------------------------------------------------------------------------ metrics

def _normalize(s):
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_scores(examples, predictions):
    """Exact match and token F1 (percent), each the max over an example's gold answers."""
    em = f1 = 0.0
    for ex in examples:
        pred = _normalize(predictions.get(ex.id, ""))
        golds = [_normalize(t) for t, _ in ex.answers] or [""]
        em += max(float(pred == g) for g in golds)
        scores = []
        for g in golds:
            p, gt = pred.split(), g.split()
            common = sum((collections.Counter(p) & collections.Counter(gt)).values())
            if not p or not gt:
                scores.append(float(p == gt))
            elif common == 0:
                scores.append(0.0)
            else:
                prec, rec = common / len(p), common / len(gt)
                scores.append(2 * prec * rec / (prec + rec))
        f1 += max(scores)
    n = max(len(examples), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


def classification_scores(pred, gold, num_labels):
    """Accuracy and macro-F1 (the mean over classes of each class's F1)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    f1s = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == gold)) if len(gold) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


def regression_scores(pred, gold):
    pred, gold = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
    out = {"mse": float(np.mean((pred - gold) ** 2))}
    if len(gold) > 1 and pred.std() > 0 and gold.std() > 0:
        out["pearson"] = float(np.corrcoef(pred, gold)[0, 1])
        rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
        out["spearman"] = float(np.corrcoef(rank(pred), rank(gold))[0, 1])
    return out
