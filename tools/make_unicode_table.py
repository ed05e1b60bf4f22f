"""Write minialbert/unicode_tf5.json.gz: the character tables with which the tokenizer's
default mode reproduces transformers 5's ALBERT normalizer (the `tokenizers` library's
NFKD, StripAccents, Lowercase and Precompiled steps) exactly, independent of the Python
version's own Unicode data.

Run by a maintainer (it needs `tokenizers`, as the test extra installs); the tests check
the shipped table against the installed `tokenizers` over every code point.

    python tools/make_unicode_table.py
"""
import gzip
import json
import pathlib
import sys
import tempfile

from tokenizers import __version__ as tk_version
from tokenizers import normalizers as N
from tokenizers import pre_tokenizers as P

OUT = pathlib.Path(__file__).resolve().parent.parent / "minialbert" / "unicode_tf5.json.gz"
CODE_POINTS = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
BASE2 = "\u00a0"  # a 2-byte character the charsmap maps (to a space): shows what joins it


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def _precompiled(folder):
    """transformers 5's normalizer for a SentencePiece model (ours: nmt_nfkc, as ALBERT's),
    accents kept and case too, so that only the Replace and Precompiled steps act."""
    from transformers import AlbertTokenizer
    return AlbertTokenizer.from_pretrained(folder, keep_accents=True,
                                           do_lower_case=False)._tokenizer.normalizer


def main(charsmap_source=None):
    nfkd, strip, lower = N.NFKD(), N.StripAccents(), N.Lowercase()
    table = {"tokenizers": tk_version, "nfkd": {}, "lower": {}}
    marks, space = [], []
    ws = P.WhitespaceSplit()
    for cp in CODE_POINTS:
        c = chr(cp)
        d = nfkd.normalize_str(c)
        if d != c and not 0xAC00 <= cp <= 0xD7A3:  # Hangul syllables: computed
            table["nfkd"][cp] = d
        if strip.normalize_str(c) == "":
            marks.append(cp)
        lo = lower.normalize_str(c)
        if lo != c:
            table["lower"][cp] = lo
        if not ws.pre_tokenize_str("a" + c + "b")[0][0] == "a" + c + "b":
            space.append(cp)
    if charsmap_source is None:  # a small tokenizer of our own: its map is nmt_nfkc
        from minialbert.corpus import default_corpus
        from minialbert.tokenizer import train_tokenizer
        charsmap_source = tempfile.mkdtemp()
        train_tokenizer(default_corpus().sentences(), 1000, charsmap_source)
    table["marks"] = ranges(marks)
    table["whitespace"] = ranges(space)
    # the grapheme clusters of the Precompiled step, seen through it: it maps a cluster
    # shorter than 6 bytes as a whole by its first matching prefix, and a mapped first
    # character then swallows the rest of the cluster
    pre = _precompiled(charsmap_source)
    mapped = pre.normalize_str(BASE2)
    small = [cp for cp in CODE_POINTS if len(chr(cp).encode()) <= 3]
    # joins the character before it (Extend, ZWJ, SpacingMark)
    join = [cp for cp in small if pre.normalize_str(chr(cp)) != ""
            and pre.normalize_str(BASE2 + chr(cp)) == mapped]
    # a mapped character that a following mark does not join (a Control)
    alone = [cp for cp in small if pre.normalize_str(chr(cp)) != chr(cp)
             and pre.normalize_str(chr(cp) + "\u0301")
             == pre.normalize_str(chr(cp)) + pre.normalize_str("\u0301")]
    # joins the character after it (Prepend): a 2-byte one keeps "o" + U+030B from being
    # composed to one character, as it would be in a cluster of its own
    prepend = [cp for cp in CODE_POINTS if len(chr(cp).encode()) == 2
               and pre.normalize_str(chr(cp) + "o\u030b")
               != pre.normalize_str(chr(cp)) + pre.normalize_str("o\u030b")]
    table["join"], table["alone"], table["prepend"] = ranges(join), ranges(alone), ranges(prepend)
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        json.dump(table, f, ensure_ascii=True, separators=(",", ":"))
    print(f"{OUT}: tokenizers {tk_version}; {len(table['nfkd'])} decompositions, "
          f"{len(marks)} marks, {len(table['lower'])} lower-case mappings, "
          f"{len(space)} whitespace, {len(join)} joiners, {len(alone)} alone, "
          f"{len(prepend)} prepend")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
