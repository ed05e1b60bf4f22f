# %% [markdown]
# # 03 — Tokenization: SentencePiece and ALBERT's preprocessing
#
# ALBERT reads SentencePiece pieces: a unigram language model over subword strings, with
# "▁" marking the start of a word. We train one with albert-v2's settings on the embedded
# corpus (the documentation of the Python running this), then look at what it does to text.

# %%
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import QUICK, write_table  # noqa: E402

from minialbert.corpus import default_corpus  # noqa: E402
from minialbert.tokenizer import (AlbertTokenizer, TokenizerError, preprocess,  # noqa: E402
                                  train_tokenizer)

corpus = default_corpus()
print(f"corpus: Python {corpus.info['python']} documentation, {corpus.info['documents']} "
      f"documents, {corpus.info['sentences']} sentences, {corpus.info['characters']:,} "
      f"characters, SHA-256 {corpus.checksum[:16]}…")
print("a document:", corpus.documents[len(corpus) // 2][:3])

# %% [markdown]
# Parsing the standard library takes seconds, so the sentences are kept on disk between
# processes (`minialbert.corpus.cache_dir()`), keyed by the Python and every source file's
# size and time. Read from the sources again (as the first process does) and from the
# cache (as every later one does) — the same corpus, to the bit:

# %%
import minialbert.corpus as C  # noqa: E402

stdlib = pathlib.Path(C.sysconfig.get_paths()["stdlib"])
t0 = time.perf_counter()
parsed = C._read_default_corpus(2, 200, stdlib)
t1 = time.perf_counter()
C._DEFAULT.clear()  # forget this process's copy: load as a new process would
cached = C.default_corpus()
t2 = time.perf_counter()
assert (parsed.documents, parsed.names, parsed.checksum) == \
    (cached.documents, cached.names, cached.checksum)
print(f"parsed from the sources in {t1 - t0:.2f} s, loaded from {C.cache_dir()} in "
      f"{t2 - t1:.3f} s: the same {cached.info['documents']} documents")

# %% [markdown]
# ## Training
# Unigram model, `<pad>`=0, `<unk>`=1, control symbols `[CLS]`=2 `[SEP]`=3 `[MASK]`=4,
# user-defined pieces `( ) " - . – £ €` = 5..12, no bos/eos — albert-base-v2's layout.
# Training text goes through the same preprocessing as encoding (lower-case, accents off).

# %%
V = 1000 if QUICK else 4000
t0 = time.time()
TOKDIR = pathlib.Path(tempfile.mkdtemp())  # the model file is not a figure: keep it out of the book
tok = train_tokenizer(corpus.sentences(), V, TOKDIR)
print(f"{V} pieces in {time.time() - t0:.1f} s")
write_table("03_layout.md", ["id", "piece"], [(i, tok.id_to_piece(i)) for i in range(16)])
assert [tok.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]

# %% [markdown]
# A corpus bounds the vocabulary: SentencePiece cannot make more pieces than the text
# supports, and we say the largest it can.

# %%
try:
    train_tokenizer(corpus.sentences(), 50_000)
except TokenizerError as e:
    print("50,000 pieces:", e)
    largest = int(str(e).rsplit(" ", 1)[1])
write_table("03_limit.md", ["asked", "largest this corpus supports"], [("50,000", f"{largest:,}")])

# %% [markdown]
# ## Preprocessing, then pieces

# %%
examples = ["Return the Absolute Value of a number.", "  naïve   café  ``quoted''",
            "List comprehensions: [x**2 for x in range(10)]", "1,000,000 items cost 3.14 €",
            "The [MASK] method returns a copy."]
rows = []
for t in examples:
    rows.append((f"`{t}`", f"`{preprocess(t)}`", " ".join(f"`{p}`" for p in tok.tokenize(t))))
write_table("03_examples.md", ["text", "preprocessed", "pieces"], rows)
n_tok = sum(len(tok.encode(s)) for s in corpus.sentences())
print(f"{corpus.info['characters'] / n_tok:.2f} characters per token over the corpus")

# %% [markdown]
# ## Three tokenizers that disagree: transformers 5.25, transformers 5.0-5.24, the original
# transformers 5.0 to 5.24 treated the user-defined pieces as "added tokens": they split the
# raw text at each of them, then encoded every other segment as if it started a new word.
# transformers 5.25 (and later) lets the unigram model cut them out of each word, as
# SentencePiece itself does, and the original ALBERT code (and transformers 4's slow
# tokenizer) let SentencePiece see the whole text. We do all three (`mode=`), the newest
# transformers by default, because it is what a transformers user will compare against.

# %%
sp = AlbertTokenizer(TOKDIR, mode="sentencepiece")
hf = AlbertTokenizer(TOKDIR)  # mode="transformers": transformers >= 5.25
old = AlbertTokenizer(TOKDIR, mode="transformers<5.25")
rows = []
for t in ["pi is 3.14", "(see below)", "a - b", "hello world"]:
    rows.append((f"`{t}`", " ".join(hf.tokenize(t)), " ".join(old.tokenize(t)),
                 f"`{old.decode(old.encode(t))}`", " ".join(sp.tokenize(t))))
write_table("03_modes.md", ["text", "transformers ≥ 5.25 (default)", "transformers 5.0–5.24",
                            "5.0–5.24 decodes as", "original / sentencepiece"], rows)
assert hf.tokenize("hello world") == old.tokenize("hello world") == sp.tokenize("hello world")
assert hf.tokenize("pi is 3.14") == sp.tokenize("pi is 3.14") != old.tokenize("pi is 3.14")

# %% [markdown]
# ## Text outside plain English
# The two also normalize differently. The original's `preprocess_text` uses Python: its
# `str.split()` (which counts U+001C..U+001F as spaces), NFKD with only *combining*
# characters dropped, `str.lower()` (a final capital sigma becomes ς); SentencePiece's own
# character map then recomposes what NFKD took apart. transformers 5 runs the `tokenizers`
# library's steps: NFKD, every character of category Mark dropped (also Devanagari vowel
# signs and the emoji variation selector U+FE0F), lower case one character at a time (σ),
# then the same character map one grapheme cluster at a time, which deletes control
# characters and leaves Hangul decomposed. `minialbert/normalize.py` writes those steps
# out, with the Unicode tables of the Rust crates inside `tokenizers`; the tests compare
# the ids with transformers 5 on arbitrary Unicode, in all four settings of case and
# accents.

# %%
rows = []
for label, t in [("control characters", "a\x0bb c\x1cd"), ("final sigma", "ΟΔΟΣ"),
                 ("vowel signs", "क्षत्रिय"), ("variation selector", "ok\u2764\ufe0f"),
                 ("Hangul", "한국어"), ("accents", "Ångström naïve")]:
    a = hf.preprocess(t)  # what the unigram model segments, in each mode
    b = sp.sp.normalize(sp.preprocess(t)).replace("▁", " ").strip()
    rows.append((label, f"`{t!r}`", f"`{a!r}` ({len(a)} characters)",
                 f"`{b!r}` ({len(b)} characters)"))
write_table("03_unicode.md", ["", "text", "transformers 5 (default)",
                              "original / sentencepiece"], rows)
assert hf.preprocess("ΟΔΟΣ").endswith("σ") and sp.preprocess("ΟΔΟΣ").endswith("ς")
assert len(hf.preprocess("한국어")) == 8 and sp.sp.normalize(sp.preprocess("한국어")) == "▁한국어"

# %% [markdown]
# The original also re-splits a piece ending in "digit," so that the comma stands alone
# (`split_digit_comma=True`, off by default; transformers 5 does not do it).

# %%
dc = AlbertTokenizer(TOKDIR, mode="sentencepiece", split_digit_comma=True)
print("1,000 people:", sp.tokenize("1,000 people"), "->", dc.tokenize("1,000 people"))

# %% [markdown]
# ## Pairs
# `[CLS] A [SEP] B [SEP]`, token types 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`.

# %%
e = tok("The first segment.", "And the second.")
print([tok.id_to_piece(i) for i in e["input_ids"]])
print(e["token_type_ids"])
assert e["token_type_ids"][0] == 0 and e["token_type_ids"][-1] == 1
