"""Transformers 5's ALBERT text normalization, written out.

transformers 5's AlbertTokenizer is built on the `tokenizers` library. Before the unigram
model sees a word, the text goes through (tokenization_albert.py):

  1. Replace "``" and "''" by '"';
  2. unless keep_accents: NFKD, then StripAccents — drop every character of general
     category Mark (Mn, Mc, Me: also Devanagari vowel signs and U+FE0F, not only the
     "combining" ones the original code drops);
  3. if lower-casing: Lowercase, one character at a time (so a final capital sigma becomes
     "σ", not the "ς" Python's str.lower() gives at the end of a word);
  4. Precompiled: the SentencePiece model's own character map (nmt_nfkc), applied to one
     grapheme cluster at a time — a cluster shorter than 6 bytes is looked up whole, by
     its first matching prefix; anything else one character at a time. (So "Hangul
     syllables decomposed by NFKD stay decomposed: SentencePiece alone would recompose
     them; and control characters such as U+000B and U+001C..U+001F are deleted.)
  5. WhitespaceSplit on Unicode's White_Space characters, "▁" before every word;
  6. the unigram model on each "▁word", with no further normalization.

Steps 2, 3 and 5 depend on the Unicode tables compiled into `tokenizers` (a Rust crate's
version of Unicode, not this Python's), and step 4 on its grapheme rules; the tables in
``unicode_tf5.json.gz`` are those, extracted by ``tools/make_unicode_table.py`` and checked
against the installed `tokenizers` over every code point by the tests.
"""
import functools
import gzip
import json
import pathlib
import unicodedata

import numpy as np

_TABLE = pathlib.Path(__file__).with_name("unicode_tf5.json.gz")


def _in_ranges(ranges):
    return frozenset(cp for a, b in ranges for cp in range(a, b + 1))


@functools.lru_cache(maxsize=None)
def tables():
    with gzip.open(_TABLE, "rt", encoding="utf-8") as f:
        t = json.load(f)
    return dict(
        tokenizers=t["tokenizers"],
        nfkd={int(k): v for k, v in t["nfkd"].items()},
        lower={int(k): v for k, v in t["lower"].items()},
        marks=_in_ranges(t["marks"]),
        whitespace=frozenset(chr(cp) for cp in _in_ranges(t["whitespace"])),
        join=_in_ranges(t["join"]),
        alone=_in_ranges(t["alone"]),
        prepend=_in_ranges(t["prepend"]),
    )


# ------------------------------------------------------------------ 2. NFKD, StripAccents

_S_BASE, _L_BASE, _V_BASE, _T_BASE, _V_COUNT, _T_COUNT, _S_COUNT = (
    0xAC00, 0x1100, 0x1161, 0x11A7, 21, 28, 11172)


def _decompose(c, nfkd):
    cp = ord(c)
    if _S_BASE <= cp < _S_BASE + _S_COUNT:  # Hangul syllable: L V (T), by arithmetic
        s = cp - _S_BASE
        t = s % _T_COUNT
        out = chr(_L_BASE + s // (_V_COUNT * _T_COUNT)) + chr(_V_BASE + (s % (_V_COUNT * _T_COUNT)) // _T_COUNT)
        return out + chr(_T_BASE + t) if t else out
    return nfkd.get(cp, c)


def nfkd(text):
    """NFKD with `tokenizers`' decomposition table; marks put in canonical order."""
    table = tables()["nfkd"]
    chars = list("".join(_decompose(c, table) for c in text))
    i = 0
    while i < len(chars):  # canonical ordering: a stable sort of each run of marks
        if unicodedata.combining(chars[i]):
            j = i
            while j < len(chars) and unicodedata.combining(chars[j]):
                j += 1
            chars[i:j] = sorted(chars[i:j], key=unicodedata.combining)
            i = j
        else:
            i += 1
    return "".join(chars)


def strip_accents(text):
    marks = tables()["marks"]
    return "".join(c for c in text if ord(c) not in marks)


def lowercase(text):
    table = tables()["lower"]
    return "".join(table.get(ord(c), c) for c in text)


# ------------------------------------------------------------------ 4. the character map

class CharsMap:
    """SentencePiece's precompiled character map: a double-array trie (darts-clone) over
    the UTF-8 bytes of the strings it rewrites, followed by their replacements (each ends
    in a zero byte). ``transform(s)`` is the replacement of the first (shortest) key that
    is a prefix of ``s``, or None."""

    def __init__(self, blob):
        size = int.from_bytes(blob[:4], "little")
        self.units = np.frombuffer(blob[4:4 + size], dtype="<u4").tolist()
        self.normalized = blob[4 + size:]
        self._one = {}  # character -> its replacement: most text repeats few characters

    def transform(self, s):
        units = self.units
        pos = 0
        unit = units[0]
        pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)  # offset of the root
        for byte in s.encode("utf-8"):
            pos ^= byte
            unit = units[pos]
            if (unit & ((1 << 31) | 0xFF)) != byte:  # the label must be this byte
                return None
            pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
            if (unit >> 8) & 1:  # a key ends here: its value indexes the replacement
                start = int(units[pos] & ((1 << 31) - 1))
                end = self.normalized.index(b"\0", start)
                return self.normalized[start:end].decode("utf-8")
        return None

    def apply(self, text):
        """The Precompiled step: short grapheme clusters whole, the rest per character."""
        t = tables()
        join, alone, prepend = t["join"], t["alone"], t["prepend"]
        out, i, n = [], 0, len(text)
        while i < n:  # the cluster text[i:j], as far as it matters here
            j = i + 1
            if text[i] == "\r" and j < n and text[j] == "\n":
                j += 1
            else:
                while ord(text[j - 1]) in prepend and j < n and ord(text[j]) not in alone:
                    j += 1  # a Prepend character joins the one after it
                if ord(text[j - 1]) not in alone:
                    while j < n and ord(text[j]) in join:
                        j += 1  # marks, ZWJ, spacing marks join the one before them
            cluster = text[i:j]
            if j - i > 1 and len(cluster.encode("utf-8")) < 6:
                m = self.transform(cluster)
                if m is not None:
                    out.append(m)
                    i = j
                    continue
            for c in cluster:
                m = self._one.get(c)
                if m is None:
                    r = self.transform(c)
                    m = self._one[c] = c if r is None else r
                out.append(m)
            i = j
        return "".join(out)


# ------------------------------------------------------------------ the whole normalizer

def normalize(text, charsmap, lower=True, keep_accents=False):
    """Steps 1-4: the text the unigram model's words come from."""
    text = text.replace("``", '"').replace("''", '"')
    if text.isascii():  # the common case, fast: NFKD and the marks change no ASCII, and
        text = text.lower() if lower else text  # the map only the control characters
        if charsmap is None or all(" " <= c < "\x7f" for c in text):
            return text
        return charsmap.apply(text)
    if not keep_accents:
        text = strip_accents(nfkd(text))
    if lower:
        text = lowercase(text)
    return charsmap.apply(text) if charsmap is not None else text


def split_words(text):
    """Step 5: words between White_Space characters (`tokenizers`' set, not str.split's,
    which also splits at U+001C..U+001F)."""
    ws = tables()["whitespace"]
    words, cur = [], []
    for c in text:
        if c in ws:
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(c)
    if cur:
        words.append("".join(cur))
    return words


# ------------------------------------------------------------------ the model file

def _varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def _fields(buf):
    """(field number, wire type, value bytes or int) of a protobuf message, in order."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        start = i
        if wt == 0:
            v, i = _varint(buf, i)
            yield num, wt, v, buf[start:i]
        elif wt == 2:
            ln, i = _varint(buf, i)
            yield num, wt, buf[i:i + ln], buf[start:i + ln]
            i += ln
        elif wt == 5:
            i += 4
            yield num, wt, buf[start:i], buf[start:i]
        elif wt == 1:
            i += 8
            yield num, wt, buf[start:i], buf[start:i]
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")


def _varint_bytes(v):
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _key(num, wt):
    return _varint_bytes((num << 3) | wt)


NORMALIZER_SPEC = 3  # ModelProto.normalizer_spec (sentencepiece_model.proto)


def split_model(proto):
    """A SentencePiece ModelProto -> (its precompiled charsmap, the same model with an
    identity normalizer that adds the "▁" before a word and changes nothing else) — the
    second runs step 6 on words that steps 1-5 produced."""
    charsmap = b""
    out = bytearray()
    for num, wt, val, raw in _fields(proto):
        if num == NORMALIZER_SPEC:
            for n2, _, v2, _ in _fields(val):
                if n2 == 2:  # NormalizerSpec.precompiled_charsmap
                    charsmap = bytes(v2)
            continue
        out += _key(num, wt) + raw
    spec = (_key(1, 2) + _varint_bytes(8) + b"identity"  # name
            + _key(3, 0) + b"\x01"  # add_dummy_prefix
            + _key(4, 0) + b"\x00"  # remove_extra_whitespaces
            + _key(5, 0) + b"\x01")  # escape_whitespaces
    out += _key(NORMALIZER_SPEC, 2) + _varint_bytes(len(spec)) + spec
    return (CharsMap(charsmap) if charsmap else None), bytes(out)
