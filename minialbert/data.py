"""From a tokenized corpus to pretraining batches: SOP segment pairs and n-gram masking,
as google-research/albert's create_pretraining_data.py makes them, with three changes
(chapter 14): every draw comes from one seeded generator, masks are drawn afresh each
epoch (dynamic, not 40 static copies), and a chunk of one sentence is split in two
instead of taking segment B from another document (which leaks topic into the SOP label).

Legend: B batch, T sequence length, P max predictions per sequence.

Randomness is addressed, not streamed: the instances of epoch e come from the generator
seeded (seed, e), and batch b of that epoch masks with the generator (seed, e, b). So a
batch is a pure function of (seed, epoch, index) — which is what exact resume needs.
"""
import hashlib
import json
import os
import pathlib
from dataclasses import dataclass

import numpy as np

from .tokenizer import CLS, MASK, PAD, SEP

N_SPECIAL = 5  # <pad> <unk> [CLS] [SEP] [MASK]: never a random replacement
_PUNCT = set('!"#$%&\'()*+,-./:;?@[\\]^_`{|}~') | {"€", "£"}
_ENGLISH = set("abcdefghijklmnopqrstuvwxyz")


class DataError(ValueError):
    pass


def is_start_piece(piece):
    """The original's word-start rule for SentencePiece pieces: a piece starts a word if it
    begins with "▁" or "<", is punctuation, or holds a character outside a-z and
    punctuation (foreign characters are always whole words)."""
    return (piece.startswith("▁") or piece.startswith("<") or piece in _PUNCT
            or not all(c.lower() in _ENGLISH or c in _PUNCT for c in piece))


# ------------------------------------------------------------------------------ tokenized corpus

@dataclass
class TokenizedCorpus:
    """Token ids of every sentence, flat: sentence s is tokens[sent[s]:sent[s+1]], document d
    is sentences doc[d]..doc[d+1]-1. Loaded memory-mapped from a cache folder."""
    tokens: np.ndarray  # [n_tokens] int32
    sent: np.ndarray  # [n_sentences + 1] int64
    doc: np.ndarray  # [n_documents + 1] int64

    def document(self, d):
        s0, s1 = self.doc[d], self.doc[d + 1]
        tokens = np.asarray(self.tokens)  # a plain array over the memory map (no per-item
        # overhead of np.memmap's __getitem__ later)
        return [tokens[self.sent[s]:self.sent[s + 1]] for s in range(s0, s1)]

    def __len__(self):
        return len(self.doc) - 1

    @property
    def n_tokens(self):
        return int(self.sent[-1])


_TOKENS_VERSION = 2  # 2: mode "transformers" follows transformers 5.25 (tokenizer.py)


def tokenize_corpus(corpus, tokenizer, cache_dir=None):
    """Tokenize every sentence once. With ``cache_dir``, the result is stored there as .npy
    files keyed by the corpus and tokenizer checksums and, next time, memory-mapped
    instead of recomputed (corpora larger than memory stay on disk). The key holds the
    tokenizer's mode and the rule version too: the same model file gives other ids in
    another mode, or after a mode's rule changed (transformers 5.25's, _TOKENS_VERSION)."""
    how = f"{getattr(tokenizer, 'mode', 'json')}/{_TOKENS_VERSION}"
    key = hashlib.sha256((corpus.checksum + tokenizer.checksum + how).encode()
                         ).hexdigest()[:16]
    folder = None if cache_dir is None else pathlib.Path(cache_dir) / f"tokens-{key}"
    if folder is not None and (folder / "meta.json").exists():
        return TokenizedCorpus(*(np.load(folder / f"{n}.npy", mmap_mode="r")
                                 for n in ("tokens", "sent", "doc")))
    toks, sent, doc = [], [0], [0]
    for d in corpus.documents:
        for s in d:
            ids = tokenizer.encode(s)
            if ids:
                toks.append(np.asarray(ids, np.int32))
                sent.append(sent[-1] + len(ids))
        if len(sent) - 1 > doc[-1]:
            doc.append(len(sent) - 1)
    tc = TokenizedCorpus(np.concatenate(toks) if toks else np.zeros(0, np.int32),
                         np.asarray(sent, np.int64), np.asarray(doc, np.int64))
    if folder is not None:
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for n in ("tokens", "sent", "doc"):
            np.save(tmp / f"{n}.npy", getattr(tc, n))
        (tmp / "meta.json").write_text(json.dumps(dict(corpus=corpus.checksum,
                                                       tokenizer=tokenizer.checksum)))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process made it first: use theirs
            pass
    return tc


# ------------------------------------------------------------------------------ SOP instances

def truncate_seq_pair(a, b, max_num_tokens, rng):
    """Drop tokens from the longer segment, from its front or back at random, until the
    pair fits: -> (a, b), slices of the two arrays. The original (google-research/albert)
    deletes one token at a time, the longer segment's (b's on a tie), at its front when a
    draw rng.random() is under 0.5. Here the same draws, all at once: which segment each
    of the E draws trims follows from the lengths alone (the longer one until both are
    equal, then b, a, b, a, ...), so each segment's front and back cuts are counts of
    draws, in linear time (a 2-million-token line took minutes with ``del a[0]``)."""
    la, lb = len(a), len(b)
    E = la + lb - max_num_tokens  # the draws: one per token dropped
    if E <= 0:
        return a, b
    coins = rng.random(E) < 0.5  # True: the front; the same stream as E scalar draws
    first = min(E, abs(la - lb))  # draws on the longer segment until the two are equal
    on_a = np.zeros(E, dtype=bool)
    on_a[:first] = la > lb
    on_a[first + 1::2] = True  # then, equal: b, a, b, a, ...
    n_a = (first if la > lb else 0) + (E - first) // 2  # draws on a
    front_a = np.count_nonzero(coins & on_a)
    front_b = np.count_nonzero(coins) - front_a
    return a[front_a:la - (n_a - front_a)], b[front_b:lb - (E - n_a - front_b)]


def instances_from_document(document, max_seq_length, short_seq_prob, rng):
    """One document (list of sentence id arrays) -> [(tokens_a, tokens_b, label)] (int32
    arrays), label 1 = swapped. As the original: fill a chunk with consecutive sentences
    up to a target length, split it at a random sentence boundary, swap A and B half the
    time."""
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_num_tokens + 1))
    out, chunk, length = [], [], 0
    for i, seg in enumerate(document):
        chunk.append(seg)
        length += len(seg)
        if i == len(document) - 1 or length >= target:
            if len(chunk) >= 2:
                a_end = int(rng.integers(1, len(chunk)))  # 1 .. len-1
                a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
            else:  # one sentence: split it (the original took B from another document)
                seg = chunk[0]
                if len(seg) < 2:
                    chunk, length = [], 0
                    continue
                cut = int(rng.integers(1, len(seg)))
                a, b = seg[:cut], seg[cut:]
            label = 0
            if rng.random() < 0.5:
                a, b, label = b, a, 1
            a, b = truncate_seq_pair(a, b, max_num_tokens, rng)
            out.append((a, b, label))
            chunk, length = [], 0
    return out


# ------------------------------------------------------------------------------ n-gram masking

def mask_tokens(tokens, is_start, vocab_size, rng, masked_lm_prob=0.15, max_predictions=20,
                max_ngram=3, stats=None):
    """ALBERT's n-gram masking of one sequence (list of ids with [CLS]/[SEP]).

    Returns (output ids, sorted masked positions, labels). n (whole words) is drawn with
    p(n) ∝ 1/n — the paper's 6/11, 3/11, 2/11 — and falls back to shorter n-grams near the
    prediction budget, and near the end of the sequence the span is what is left, as in the
    original. Each masked token: 80% [MASK], 10% a random token, 10% unchanged.
    ``stats`` (a dict) collects the sampled n, for the tests and chapter 08."""
    cand = []  # whole words: lists of positions
    for i, t in enumerate(tokens):
        if t == CLS or t == SEP or t == PAD:
            continue
        if cand and not is_start[t]:
            cand[-1].append(i)
        else:
            cand.append([i])
    out = list(tokens)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    ngrams = np.arange(1, max_ngram + 1)
    pvals = 1.0 / ngrams
    pvals /= pvals.sum()
    spans = [[cand[i:i + n] for n in ngrams] for i in range(len(cand))]
    order = rng.permutation(len(spans))
    masked, covered = [], set()
    for k in order:
        if len(masked) >= num_to_predict:
            break
        span = spans[k]
        n = int(rng.choice(ngrams, p=pvals))
        if stats is not None:
            stats.setdefault("n", []).append(n)
        index_set = [p for w in span[n - 1] for p in w]
        while len(masked) + len(index_set) > num_to_predict and n > 1:  # try shorter
            n -= 1
            index_set = [p for w in span[n - 1] for p in w]
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(p in covered for p in index_set):
            continue
        for p in index_set:
            covered.add(p)
            r = rng.random()
            if r < 0.8:
                out[p] = MASK
            elif r < 0.9:
                out[p] = tokens[p]
            else:
                out[p] = int(rng.integers(N_SPECIAL, vocab_size))
            masked.append(p)
    masked.sort()
    return out, masked, [tokens[p] for p in masked]


# ------------------------------------------------------------------------------ batches

class PretrainingData:
    """Batches for AlbertForPreTraining from a TokenizedCorpus."""

    def __init__(self, tcorpus, tokenizer, max_seq_length=128, short_seq_prob=0.1,
                 masked_lm_prob=0.15, max_predictions=20, max_ngram=3, seed=0):
        if max_seq_length < 5:
            raise DataError(f"max_seq_length {max_seq_length} is too short for [CLS] A [SEP] B [SEP]")
        self.tc, self.seed = tcorpus, int(seed)
        self.vocab_size = tokenizer.vocab_size
        self.is_start = np.array([is_start_piece(tokenizer.id_to_piece(i))
                                  for i in range(self.vocab_size)])
        self.max_seq_length, self.short_seq_prob = max_seq_length, short_seq_prob
        self.masked_lm_prob, self.max_predictions, self.max_ngram = (masked_lm_prob,
                                                                     max_predictions, max_ngram)
        self._epoch, self._instances = None, None
        if not self.instances(0):
            raise DataError("the corpus is too small to make a single [CLS] A [SEP] B [SEP] "
                            "instance (it needs a document with at least two tokens)")

    def instances(self, epoch):
        """The SOP instances of an epoch, shuffled (cached for the current epoch)."""
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            inst = []
            for d in range(len(self.tc)):
                inst += instances_from_document(self.tc.document(d), self.max_seq_length,
                                                self.short_seq_prob, rng)
            order = rng.permutation(len(inst))
            self._instances, self._epoch = [inst[i] for i in order], epoch
        return self._instances

    def num_batches(self, batch_size, epoch=0):
        return len(self.instances(epoch)) // batch_size

    def batch(self, epoch, index, batch_size, stats=None):
        """Batch ``index`` of ``epoch``: a pure function of (seed, epoch, index)."""
        inst = self.instances(epoch)
        chosen = inst[index * batch_size:(index + 1) * batch_size]
        if len(chosen) < batch_size:
            raise IndexError(f"epoch {epoch} has {len(inst) // batch_size} batches of "
                             f"{batch_size}; asked for batch {index}")
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        rows = []
        for a, b, label in chosen:
            ids = [CLS] + list(a) + [SEP] + list(b) + [SEP]
            types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            out, pos, lab = mask_tokens(ids, self.is_start, self.vocab_size, rng,
                                        self.masked_lm_prob, self.max_predictions,
                                        self.max_ngram, stats)
            rows.append((out, types, pos, lab, label))
        return collate(rows, self.max_predictions)

    def batches(self, batch_size, epoch=0, start=0):
        for i in range(start, self.num_batches(batch_size, epoch)):
            yield i, self.batch(epoch, i, batch_size)


def collate(rows, max_predictions, multiple=8):
    """Rows (ids, types, positions, labels, sop) -> arrays, padded to the longest row
    (rounded up to a multiple of 8)."""
    B = len(rows)
    T = max(len(r[0]) for r in rows)
    T = -(-T // multiple) * multiple
    input_ids = np.full((B, T), PAD, np.int64)
    token_type_ids = np.zeros((B, T), np.int64)
    attention_mask = np.zeros((B, T), np.int64)
    mlm_positions = np.zeros((B, max_predictions), np.int64)
    mlm_labels = np.full((B, max_predictions), -100, np.int64)
    labels = np.full((B, T), -100, np.int64)
    sop = np.zeros(B, np.int64)
    for i, (ids, types, pos, lab, s) in enumerate(rows):
        n = len(ids)
        input_ids[i, :n] = ids
        token_type_ids[i, :n] = types
        attention_mask[i, :n] = 1
        mlm_positions[i, :len(pos)] = pos
        mlm_labels[i, :len(lab)] = lab
        labels[i, pos] = lab
        sop[i] = s
    return dict(input_ids=input_ids, token_type_ids=token_type_ids,
                attention_mask=attention_mask, mlm_positions=mlm_positions,
                mlm_labels=mlm_labels, labels=labels, sentence_order_label=sop)
