"""Tokenizer: albert-v2 layout, ALBERT preprocessing, parity with transformers 5."""
import os
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minialbert.corpus import default_corpus
from minialbert.tokenizer import (CLS, MASK, MODES, SEP, SPECIAL, USER_DEFINED,
                                  AlbertTokenizer, TokenizerError, preprocess, train_tokenizer)
from reference import require

TEXTS = ["Hello World, the cat sat.", "  multiple   spaces\tand\ttabs\nnewlines ",
         "Café naïve résumé Ångström", "``quoted'' text", "1,000,000 and 3.14",
         "!!!??? ... ---", "日本語のテキスト", "emoji 🙂 here", "", "The [MASK] sat on the mat.",
         "e.g. i.e. etc.", "Ünïcödé – £5 €10", '(parens) and "quotes" - dash',
         "a.b.c", " . ", "don't stop", "def f(x): return x**2  # squares", "ÀÉÎÕÜ çñ ß"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(default_corpus().sentences(), 2000, d)
    return d


def test_layout_is_albert_v2s(tok_dir):
    tok = AlbertTokenizer(tok_dir)
    assert [tok.id_to_piece(i) for i in range(13)] == SPECIAL + USER_DEFINED
    assert tok.vocab_size == 2000


def test_training_is_deterministic(tok_dir, tmp_path):
    train_tokenizer(default_corpus().sentences(), 2000, tmp_path)
    assert (tmp_path / "spiece.model").read_bytes() == (tok_dir / "spiece.model").read_bytes()


def test_too_large_vocab_says_the_largest_possible():
    with pytest.raises(TokenizerError, match=r"the largest it can is \d+"):
        train_tokenizer(["a few words here.", "and some more words there."] * 5, 5000)


def test_empty_corpus_and_bad_model_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="empty corpus"):
        train_tokenizer(["", "   "], 100)
    with pytest.raises(TokenizerError, match="no such SentencePiece model"):
        AlbertTokenizer(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        AlbertTokenizer(tmp_path)


def test_preprocessing():
    assert preprocess("  Héllo\t ``World''  ") == 'hello "world"'
    assert preprocess("Héllo", keep_accents=True) == "héllo"


@pytest.mark.parametrize("mode", ["transformers", "sentencepiece"])
def test_mask_in_text_and_pairs(tok_dir, mode):
    tok = AlbertTokenizer(tok_dir, mode=mode)
    ids = tok.encode("the [MASK] sat")
    assert MASK in ids and ids.count(MASK) == 1
    e = tok("first part", "second part")
    n_a = len(tok.encode("first part"))
    assert e["input_ids"][0] == CLS and e["input_ids"][n_a + 1] == SEP and e["input_ids"][-1] == SEP
    assert e["token_type_ids"] == [0] * (n_a + 2) + [1] * (len(e["input_ids"]) - n_a - 2)


def test_truncation_longest_first_and_padding(tok_dir):
    tok = AlbertTokenizer(tok_dir)
    long_a = "word " * 40
    e = tok(long_a, "short", max_length=16)
    assert len(e["input_ids"]) == 16
    b = tok.batch_encode(["one", "a much longer sentence than the first"], max_length=12)
    assert b["input_ids"].shape == (2, b["attention_mask"].sum(1).max())
    assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60))
def test_decode_inverts_encode_up_to_normalization(text):
    """decode(encode(t)) gives back t as preprocessing and SentencePiece's own normalizer
    (NFKC, control characters dropped) see it — unless a character is unknown (<unk>)."""
    tok = _TOK
    ids = tok.encode(text)
    if tok.unk_token_id not in ids and not any(s in text for s in ("[MASK]", "[CLS]", "[SEP]")):
        expected = tok.sp.normalize(tok.preprocess(text))
        assert tok.decode(ids) == expected.replace("▁", " ").strip()


_TOK = None


@pytest.fixture(autouse=True, scope="module")
def _set_tok(tok_dir):
    global _TOK
    _TOK = AlbertTokenizer(tok_dir, mode="sentencepiece")
    yield


def test_parity_with_transformers_5(tok_dir):
    """Our default mode matches transformers 5's tokenizers-backed AlbertTokenizer loaded with
    from_pretrained(folder holding spiece.model): ids, pairs with token types, decodes."""
    require("google.protobuf")
    transformers = require("transformers")
    hf = transformers.AlbertTokenizer.from_pretrained(str(tok_dir))
    ours = AlbertTokenizer(tok_dir)
    for t in TEXTS:
        assert ours.encode(t) == hf(t, add_special_tokens=False)["input_ids"], t
        e = hf(t, "second one", return_token_type_ids=True)
        o = ours(t, "second one")
        assert o["input_ids"] == e["input_ids"] and o["token_type_ids"] == e["token_type_ids"], t
        ids = ours.encode(t)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), t


def test_equal_scoring_segmentations_may_break_ties_differently(tok_dir):
    """50 × "x" has many segmentations with the same unigram score ("xx"+"x" in any order).
    SentencePiece and the tokenizers library pick different ones; both pick an optimum, so
    the pieces agree as a multiset. (Seen with this 2000-piece model; not an error.)"""
    transformers = require("transformers")
    hf = transformers.AlbertTokenizer.from_pretrained(str(tok_dir))
    ours = AlbertTokenizer(tok_dir)
    a, b = ours.encode("x" * 50), hf("x" * 50, add_special_tokens=False)["input_ids"]
    assert sorted(a) == sorted(b)


def test_the_three_modes_differ_where_documented(tok_dir):
    """transformers >= 5.25 (the default) and the original both let the unigram model cut
    the user-defined pieces out of a word; transformers 5.0-5.24 split the raw text at them
    first, so every other segment starts a word of its own ("3.14" decodes as "3. 14")."""
    a = AlbertTokenizer(tok_dir)
    old = AlbertTokenizer(tok_dir, mode="transformers<5.25")
    b = AlbertTokenizer(tok_dir, mode="sentencepiece")
    for t in TEXTS:
        if t.isascii():  # the normalizers agree on ASCII
            assert a.encode(t) == b.encode(t), t
        if not any(c in t for c in USER_DEFINED):
            assert a.encode(t) == old.encode(t), t
    assert a.tokenize("3.14") == b.tokenize("3.14") != old.tokenize("3.14")
    assert a.decode(a.encode("pi is 3.14")) == "pi is 3.14"
    assert old.decode(old.encode("pi is 3.14")) == "pi is 3. 14"
    assert old.tokenize('a "b" (c)')[:2] == a.tokenize("a") + ['"']  # no "▁" of its own
    assert a.tokenize('a "b" (c)')[:3] == a.tokenize("a") + ["▁", '"']
    with pytest.raises(ValueError, match="mode"):
        AlbertTokenizer(tok_dir, mode="transformers5")


def test_digit_comma_option(tok_dir):
    tok = AlbertTokenizer(tok_dir, mode="sentencepiece", split_digit_comma=True)
    pieces = tok.tokenize("1,000 people")
    assert "," in pieces and not any(p.endswith(",") and len(p) > 1 and p[-2].isdigit()
                                     for p in pieces)


@pytest.mark.opt_in
def test_real_albert_base_v2_spiece():
    """Opt-in: MINIALBERT_ALBERT_BASE_V2=/path/to/albert-base-v2 (a downloaded folder)."""
    path = os.environ.get("MINIALBERT_ALBERT_BASE_V2")
    if not path:
        pytest.skip("set MINIALBERT_ALBERT_BASE_V2 to a downloaded albert-base-v2 folder")
    transformers = require("transformers")
    ours = AlbertTokenizer(path)
    hf = transformers.AlbertTokenizer.from_pretrained(path)
    assert ours.vocab_size == 30000
    for t in TEXTS:
        assert ours.encode(t) == hf(t, add_special_tokens=False)["input_ids"], t


# ------------------------------------------------------------------ arbitrary Unicode

SETTINGS = [(True, False), (False, True), (True, True), (False, False)]  # (lower, keep_accents)
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
# the characters that need care, often: marks, Hangul, controls, spaces, CR LF, emoji
HARD = st.lists(st.sampled_from(
    list("aoAΣΟ \r\n\t\x0b\x1c\x1f\x7f\x85\xa0\u2028\u3000\u200b\u200c\u200d\ufe0f")
    + ["\u0301", "\u030b", "\u0600", "\u093e", "\u094d", "\u0915", "\u09be", "\u1100",
       "\u1161", "\u11a8", "\uac00", "\u2160", "\ufb01", "\u2460", "\U0001f600",
       "\U0001f3fb", "``", "''", "(", "."]), max_size=30).map("".join)


@pytest.fixture(scope="module")
def both_tokenizers(tok_dir):
    transformers = require("transformers")
    return [(AlbertTokenizer(tok_dir, lower=lo, keep_accents=ka),
             transformers.AlbertTokenizer.from_pretrained(str(tok_dir), do_lower_case=lo,
                                                          keep_accents=ka))
            for lo, ka in SETTINGS]


def test_unicode_tables_match_the_installed_tokenizers():
    """minialbert/unicode_tf5.json.gz (NFKD, marks, lower case, White_Space as the Rust
    crates inside `tokenizers` have them) against `tokenizers` itself, every code point."""
    require("tokenizers")
    from tokenizers import normalizers as N
    from tokenizers import pre_tokenizers as P

    from minialbert import normalize as ours
    nfkd, strip, lower, ws = N.NFKD(), N.StripAccents(), N.Lowercase(), P.WhitespaceSplit()
    bad = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        if (ours.nfkd(c) != nfkd.normalize_str(c) or ours.strip_accents(c) != strip.normalize_str(c)
                or ours.lowercase(c) != lower.normalize_str(c)
                or (c in ours.tables()["whitespace"]) != (len(ws.pre_tokenize_str("a" + c + "b")) == 2)):
            bad.append(hex(cp))
    assert not bad, f"{len(bad)} code points differ (regenerate: python tools/make_unicode_table.py): {bad[:10]}"


def _same_ids(pairs, text):
    for (lo, ka), (ours, hf) in zip(SETTINGS, pairs):
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"], (lo, ka, text)


@settings(max_examples=300)
@given(text=ANY_TEXT)
def test_any_unicode_encodes_as_transformers_5(both_tokenizers, text):
    """Text from every Unicode general category, in all four settings of lower-casing and
    accents: the same ids as transformers 5 (control characters deleted, every mark
    stripped, final sigma as σ, Hangul left decomposed...)."""
    _same_ids(both_tokenizers, text)


@settings(max_examples=300)
@given(text=HARD)
def test_marks_clusters_and_spaces_encode_as_transformers_5(both_tokenizers, text):
    _same_ids(both_tokenizers, text)


def test_the_differences_the_issue_named(both_tokenizers):
    """Each was different before (issue 10, defect 6)."""
    ours, hf = both_tokenizers[0]
    for text in ["a\x0bb c\x1cd e\x1fz", "ΟΔΟΣ ΟΔΟΣ.", "한국어 텍스트", "क्षत्रिय বাংলা",
                 "x\ufe0fy", "\u0600o\u030b", "\xa0\u0301x"]:
        assert ours.tokenize(text) == hf.tokenize(text), text
    assert ours.preprocess("ΟΔΟΣ") == "οδοσ" and preprocess("ΟΔΟΣ") == "οδος"
    assert ours.preprocess("c\x1cd") == "cd" and preprocess("c\x1cd") == "c d"


@settings(max_examples=300)
@given(ids=st.lists(st.one_of(st.integers(0, 4), st.integers(5, 1999)), max_size=12))
def test_decode_as_transformers_5(both_tokenizers, ids):
    ours, hf = both_tokenizers[0]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def _google_research_preprocess_text(inputs, remove_space=True, lower=False):
    """The original code's preprocess_text (google-research/albert tokenization.py), its
    logic written out here as the reference for mode="sentencepiece": Python's whitespace,
    NFKD, only *combining* characters dropped, Python's str.lower (final sigma: ς)."""
    import unicodedata
    outputs = " ".join(inputs.strip().split()) if remove_space else inputs
    outputs = outputs.replace("``", '"').replace("''", '"')
    outputs = unicodedata.normalize("NFKD", outputs)
    outputs = "".join(c for c in outputs if not unicodedata.combining(c))
    return outputs.lower() if lower else outputs


@given(text=st.one_of(ANY_TEXT, HARD), lower=st.booleans())
def test_sentencepiece_mode_preprocesses_as_the_original_code(tok_dir, text, lower):
    tok = AlbertTokenizer(tok_dir, mode="sentencepiece", lower=lower)
    assert tok.preprocess(text) == _google_research_preprocess_text(text, True, lower)


@pytest.mark.parametrize("mode", MODES)
def test_a_checkpoint_keeps_its_tokenizer_mode(tok_dir, tmp_path, mode):
    """A run's data was tokenized in one mode; its checkpoint records the mode and gives the
    same tokenizer back (resume, fine-tuning and inference see the ids it trained on). One
    written before the mode was recorded ran the default of that time: transformers<5.25."""
    import json

    from minialbert.checkpoint import CheckpointError, load_run_tokenizer, save_checkpoint
    from minialbert.config import preset
    from minialbert.heads import AlbertForPreTraining
    tok = AlbertTokenizer(tok_dir, mode=mode)
    cfg = preset("tiny", vocab_size=tok.vocab_size, num_hidden_layers=1, hidden_size=16,
                 num_attention_heads=2, intermediate_size=32, embedding_size=8)
    ck = save_checkpoint(tmp_path / "run", 1, AlbertForPreTraining(cfg, seed=0).params, cfg,
                         {"head": "pretraining"}, tokenizer=tok)
    back = load_run_tokenizer(ck, cfg.vocab_size)
    assert back.mode == mode and back.encode('a "b" 3.14') == tok.encode('a "b" 3.14')
    state = json.loads((ck / "state.json").read_text())
    del state["tokenizer_mode"]
    (ck / "state.json").write_text(json.dumps(state))
    assert load_run_tokenizer(ck, cfg.vocab_size).mode == "transformers<5.25"
    (ck / "state.json").write_text(json.dumps(dict(state, tokenizer_mode="bpe")))
    with pytest.raises(CheckpointError, match="tokenizer_mode 'bpe'"):
        load_run_tokenizer(ck, cfg.vocab_size)
