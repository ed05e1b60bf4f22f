"""SentencePiece tokenization with ALBERT's preprocessing.

The albert-*-v2 ``spiece.model`` is a SentencePiece unigram model with <pad>=0, <unk>=1,
the control symbols [CLS]=2, [SEP]=3, [MASK]=4, the user-defined pieces
( ) " - . – £ € = 5..12, and no bos/eos. ``train_tokenizer`` makes one with the same
settings from any corpus; ``AlbertTokenizer`` loads one (ours or a real albert-base-v2)
and encodes text the way Hugging Face's ``AlbertTokenizer`` does:

  1. preprocess: strip and collapse whitespace; `` and '' -> "; unless keep_accents,
     NFKD-decompose and drop combining marks; lower-case;
  2. SentencePiece;
  3. optionally (``split_digit_comma``, off by default) re-split a piece that ends in
     "<digit>," so that the comma stands alone — the original code and transformers 4's
     slow tokenizer do this; transformers 5 does not ("1,000" -> "▁1," "000").

Three modes, because transformers changed what step 2 means twice:
  mode="transformers" (default; the parity target): as transformers 5.25's (and later)
     tokenizers-backed AlbertTokenizer: its own normalizer on the whole text (see
     normalize.py), split at whitespace, each word through the bare unigram model, which
     cuts the user-defined pieces ( ) " - . – £ € out of the word as SentencePiece does:
     "3.14" -> "▁3" "." "14", '"b"' -> "▁" '"' "b" '"'.
  mode="transformers<5.25": as transformers 5.0-5.24, which treated the user-defined
     pieces as added tokens: the *raw* text is split at each of them first, every other
     segment normalized and encoded on its own (so it starts a new "▁" word). "3.14" ->
     "▁3" "." "▁" "14", which decodes as "3. 14".
  mode="sentencepiece": SentencePiece sees the whole text after the original ALBERT code's
     preprocessing, as the original code and transformers 4's slow tokenizer: "3.14" ->
     "▁3" "." "14".
All three agree on text without those characters; "transformers" and "sentencepiece" differ
only where their normalizers do (text outside plain English, chapter 03).
"""
import hashlib
import io
import os
import pathlib
import re
import unicodedata

import numpy as np

from . import normalize

SPECIAL = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
CONTROL = ["[CLS]", "[SEP]", "[MASK]"]
USER_DEFINED = ["(", ")", '"', "-", ".", "–", "£", "€"]
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
_SPECIAL_IN_TEXT = re.compile(r"(\[MASK\]|\[CLS\]|\[SEP\])")
_USER_IN_TEXT = re.compile("(" + "|".join(re.escape(c) for c in USER_DEFINED) + ")")
MODES = ("transformers", "transformers<5.25", "sentencepiece")


class TokenizerError(ValueError):
    pass


def _spm():
    import sentencepiece as spm

    return spm


def preprocess(text, lower=True, remove_space=True, keep_accents=False):
    """ALBERT's text preprocessing (as transformers' AlbertTokenizer)."""
    if remove_space:
        text = " ".join(text.strip().split())
    text = text.replace("``", '"').replace("''", '"')
    if not keep_accents:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    if lower:
        text = text.lower()
    return text


MAX_LINE_BYTES = 1 << 15  # SentencePiece silently skips longer training lines


def _chunks(line, limit):
    """A line longer than ``limit`` bytes in UTF-8, cut at spaces (or anywhere, if a piece
    has none) into lines that are not — SentencePiece would skip it whole."""
    if len(line.encode("utf-8")) <= limit:
        return [line]
    out, cur, size = [], [], 0
    for word in line.split(" "):
        wb = len(word.encode("utf-8")) + 1
        if size + wb > limit and cur:
            out.append(" ".join(cur))
            cur, size = [], 0
        while wb > limit:  # one "word" longer than the limit: cut by characters
            cut = limit // 4
            out.append(word[:cut])
            word = word[cut:]
            wb = len(word.encode("utf-8")) + 1
        cur.append(word)
        size += wb
    if cur:
        out.append(" ".join(cur))
    return [c for c in out if c]


def train_tokenizer(sentences, vocab_size, out_dir=None, character_coverage=0.99995,
                    lower=True, keep_accents=False):
    """Train a unigram SentencePiece model with albert-v2's settings on an iterable of
    sentences (preprocessed here as they will be at encoding time). Writes
    ``out_dir/spiece.model`` if out_dir is given. Deterministic for a given input."""
    spm = _spm()
    lines = [preprocess(s, lower, True, keep_accents) for s in sentences]
    lines = [c for l in lines if l for c in _chunks(l, MAX_LINE_BYTES)]
    if not lines:
        raise TokenizerError("cannot train a tokenizer on an empty corpus")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=int(vocab_size),
            model_type="unigram", character_coverage=character_coverage,
            pad_id=PAD, unk_id=UNK, bos_id=-1, eos_id=-1, pad_piece="<pad>", unk_piece="<unk>",
            control_symbols=CONTROL, user_defined_symbols=USER_DEFINED,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
            max_sentence_length=1 << 16, minloglevel=2, hard_vocab_limit=True)
    except RuntimeError as e:
        m = re.search(r"Vocabulary size (?:is )?too high \((\d+)\).*?<= (\d+)", str(e))
        if m:
            raise TokenizerError(f"vocab_size {m.group(1)} is more than this corpus can support; "
                                 f"the largest it can is {m.group(2)}") from None
        raise TokenizerError(f"SentencePiece training failed: {e}") from None
    tok = AlbertTokenizer(model_proto=buf.getvalue(), lower=lower, keep_accents=keep_accents)
    if out_dir is not None:
        tok.save(out_dir)
    return tok


class _Inputs:
    """What every tokenizer here builds on ``encode``: ALBERT's model inputs."""

    pad_token_id, unk_token_id, cls_token_id, sep_token_id, mask_token_id = PAD, UNK, CLS, SEP, MASK

    def build_inputs(self, ids_a, ids_b=None):
        """[CLS] A [SEP] (B [SEP]) with token types 0 for [CLS] A [SEP], 1 for B [SEP]."""
        ids = [CLS] + list(ids_a) + [SEP]
        types = [0] * len(ids)
        if ids_b is not None:
            ids += list(ids_b) + [SEP]
            types += [1] * (len(ids_b) + 1)
        return ids, types

    def __call__(self, text, text_pair=None, max_length=None, truncation=True):
        a = self.encode(text)
        b = None if text_pair is None else self.encode(text_pair)
        if max_length is not None:
            budget = max_length - (2 if b is None else 3)
            if budget < 0:
                raise ValueError(f"max_length {max_length} leaves no room for the special tokens")
            if len(a) + (len(b) if b else 0) > budget:
                if not truncation:
                    raise ValueError(f"the input is {len(a) + (len(b) if b else 0) + 3} tokens, "
                                     f"longer than max_length={max_length}")
                a, b = truncate_longest_first(a, b, budget)
        ids, types = self.build_inputs(a, b)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}

    def batch_encode(self, texts, text_pairs=None, max_length=None, padding="longest"):
        """Many texts (or pairs) -> NumPy arrays [B, T] padded with <pad> (attention 0)."""
        pairs = text_pairs if text_pairs is not None else [None] * len(texts)
        enc = [self(t, p, max_length=max_length) for t, p in zip(texts, pairs)]
        T = max_length if padding == "max_length" else max(len(e["input_ids"]) for e in enc)
        out = {k: np.zeros((len(enc), T), np.int64) for k in ("input_ids", "token_type_ids",
                                                              "attention_mask")}
        for i, e in enumerate(enc):
            for k in out:
                out[k][i, :len(e[k])] = e[k]
        return out


class AlbertTokenizer(_Inputs):
    def __init__(self, model_file=None, model_proto=None, lower=True, remove_space=True,
                 keep_accents=False, split_digit_comma=False, mode="transformers"):
        spm = _spm()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if model_proto is None:
            path = pathlib.Path(model_file)
            if path.is_dir():
                path = path / "spiece.model"
            if not path.exists():
                raise TokenizerError(f"{path}: no such SentencePiece model")
            model_proto = path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # noqa: BLE001  (sentencepiece raises plain RuntimeError/OSError)
            raise TokenizerError(f"not a SentencePiece model ({e})") from None
        self.model_proto = model_proto
        self.lower, self.remove_space, self.keep_accents = lower, remove_space, keep_accents
        if mode != "sentencepiece":  # normalize as `tokenizers` does, then the bare unigram
            self.charsmap, bare = normalize.split_model(model_proto)
            self.sp_words = spm.SentencePieceProcessor()
            self.sp_words.LoadFromSerializedProto(bare)
        self.split_digit_comma = split_digit_comma
        for i, piece in enumerate(SPECIAL):
            if self.sp.id_to_piece(i) != piece:
                raise TokenizerError(f"this SentencePiece model has {self.sp.id_to_piece(i)!r} at "
                                     f"id {i}, not ALBERT's {piece!r}")
        self._special = {p: i for i, p in enumerate(SPECIAL)}
        self._words = {}  # word -> its pieces (modes "transformers*"): a unigram model splits a
        # word the same way every time, and a corpus says the same words over and over (the
        # default corpus: 175K words, 19K different ones; tokenizing it 1.6x faster)

    # -------------------------------------------------------------- properties
    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    @property
    def checksum(self):
        return hashlib.sha256(self.model_proto).hexdigest()

    def id_to_piece(self, i):
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, p):
        return self.sp.piece_to_id(p)

    def save(self, out_dir):
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "spiece.model.tmp"
        tmp.write_bytes(self.model_proto)
        os.replace(tmp, out / "spiece.model")
        return out / "spiece.model"

    # -------------------------------------------------------------- encoding
    def preprocess(self, text):
        """The text the model's words come from: transformers 5's normalizer (modes
        "transformers*"), or the original code's preprocess_text (mode "sentencepiece";
        SentencePiece then applies its own character map)."""
        if self.mode != "sentencepiece":
            return normalize.normalize(text, self.charsmap, self.lower, self.keep_accents)
        return preprocess(text, self.lower, self.remove_space, self.keep_accents)

    def _pieces(self, text):
        if self.mode != "sentencepiece":
            words = normalize.split_words(self.preprocess(text))
            return [p for w in words for p in self._word_pieces(w)]
        pieces = self.sp.encode(self.preprocess(text), out_type=str)
        if not self.split_digit_comma:
            return pieces
        out = []
        for p in pieces:
            if len(p) > 1 and p[-1] == "," and p[-2].isdigit():
                cur = self.sp.encode(p[:-1].replace("▁", ""), out_type=str)
                if p[0] != "▁" and cur and cur[0][0] == "▁":  # keep "no word start" as it was
                    if len(cur[0]) == 1:
                        cur = cur[1:]
                    else:
                        cur[0] = cur[0][1:]
                out += cur + [","]
            else:
                out.append(p)
        return out

    def _word_pieces(self, word):
        pieces = self._words.get(word)
        if pieces is None:
            if len(self._words) >= 1 << 18:  # bounded: a stream of ever-new words
                self._words.clear()
            pieces = self._words[word] = tuple(self.sp_words.encode(word, out_type=str))
        return pieces

    def tokenize(self, text):
        """Text -> pieces; [MASK], [CLS], [SEP] written in the text become those tokens."""
        out = []
        for part in _SPECIAL_IN_TEXT.split(text):
            if part in self._special:
                out.append(part)
            elif part and self.mode != "transformers<5.25":
                out += self._pieces(part)
            elif part:  # transformers 5.0-5.24: user-defined pieces split the raw text first
                for seg in _USER_IN_TEXT.split(part):
                    if seg in USER_DEFINED:
                        out.append(seg)
                    elif seg:
                        out += self._pieces(seg)
        return out

    def encode(self, text):
        """Text -> ids, no special tokens added."""
        return [self._special.get(p, None) if p in self._special else self.sp.piece_to_id(p)
                for p in self.tokenize(text)]

    def decode(self, ids, skip_special_tokens=True):
        """ids -> text. Modes "transformers*": as transformers 5 (its Metaspace decoder: the
        pieces joined, "▁" read as a space, the first one dropped; <unk> and the other
        special tokens removed, or written as their names, "<unk>", with no spaces added).
        Mode "sentencepiece": SentencePiece's decode (<unk> is " ⁇ "), special tokens
        removed or set between spaces."""
        ids = [int(i) for i in ids]
        special = (PAD, UNK, CLS, SEP, MASK)
        if self.mode != "sentencepiece":
            pieces = [self.sp.id_to_piece(i) for i in ids
                      if not (skip_special_tokens and i in special)]
            if pieces and pieces[0].startswith("▁"):
                pieces[0] = pieces[0][1:]
            return "".join(pieces).replace("▁", " ")
        if skip_special_tokens:  # (<unk> counts as special here, as in transformers)
            return self.sp.decode([i for i in ids if i not in special])
        out, run = [], []
        for i in ids:
            if i in (PAD, CLS, SEP, MASK):
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(SPECIAL[i])
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return " ".join(out)


class JsonTokenizer(_Inputs):
    """A tokenizer.json (what transformers 5's save_pretrained writes) read through the
    `tokenizers` package — for a folder without spiece.model. It must have ALBERT's
    special-token layout (<pad> 0, <unk> 1, [CLS] 2, [SEP] 3, [MASK] 4)."""

    model_proto = None

    def __init__(self, path):
        from tokenizers import Tokenizer  # ImportError: the caller says what to install

        self.path = pathlib.Path(path)
        self.json = self.path.read_bytes()
        try:
            self.tk = Tokenizer.from_str(self.json.decode("utf-8"))
        except Exception as e:  # noqa: BLE001  (tokenizers raises its own Exception type)
            raise TokenizerError(f"{path}: not a tokenizers JSON file ({e})") from None
        for i, piece in enumerate(SPECIAL):
            if self.tk.token_to_id(piece) != i:
                raise TokenizerError(f"{path}: {piece!r} is not id {i} (not ALBERT's layout)")

    @property
    def vocab_size(self):
        return self.tk.get_vocab_size()

    @property
    def checksum(self):
        return hashlib.sha256(self.json).hexdigest()

    def id_to_piece(self, i):
        return self.tk.id_to_token(int(i))

    def piece_to_id(self, p):
        return self.tk.token_to_id(p)

    def save(self, out_dir):
        out = pathlib.Path(out_dir) / "tokenizer.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(self.json)
        os.replace(tmp, out)
        return out

    def tokenize(self, text):
        return self.tk.encode(text, add_special_tokens=False).tokens

    def encode(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=True):
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def truncate_longest_first(a, b, budget):
    """Drop tokens from the end of the longer sequence until both fit (HF's longest_first)."""
    a = list(a)
    b = None if b is None else list(b)
    while len(a) + (len(b) if b else 0) > budget:
        if b and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    return a, b
