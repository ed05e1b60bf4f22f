"""Tokenizer: albert-v2 layout, ALBERT preprocessing, parity with transformers 5."""
import os
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialbert.corpus import default_corpus
from minialbert.tokenizer import (CLS, MASK, SEP, SPECIAL, USER_DEFINED, AlbertTokenizer,
                                  TokenizerError, preprocess, train_tokenizer)
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


def test_sentencepiece_mode_differs_only_at_user_defined_pieces(tok_dir):
    a = AlbertTokenizer(tok_dir)
    b = AlbertTokenizer(tok_dir, mode="sentencepiece")
    for t in TEXTS:
        if not any(c in t for c in USER_DEFINED):
            assert a.encode(t) == b.encode(t), t
    assert a.tokenize("3.14") != b.tokenize("3.14")


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
