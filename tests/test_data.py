"""Corpus reading, SOP instances and n-gram masking: properties and every error case."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minialbert.corpus import (Corpus, CorpusError, default_corpus, read_corpus,
                               split_sentences)
from minialbert.data import (DataError, PretrainingData, instances_from_document,
                             is_start_piece, mask_tokens, tokenize_corpus)
from minialbert.tokenizer import CLS, MASK, PAD, SEP, AlbertTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return default_corpus()


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return train_tokenizer(corpus.sentences(), 2000, tmp_path_factory.mktemp("t"))


@pytest.fixture(scope="module")
def data(corpus, tok, tmp_path_factory):
    tc = tokenize_corpus(corpus, tok, tmp_path_factory.mktemp("cache"))
    return PretrainingData(tc, tok, max_seq_length=64, seed=3)


# ----------------------------------------------------------------------------- corpus

def test_default_corpus_is_documentation_with_a_checksum(corpus):
    assert corpus.info["documents"] > 500 and corpus.info["characters"] > 300_000
    assert len(corpus.info["sha256"]) == 64 and corpus.info["python"]
    train, held = corpus.split()
    assert 0 < len(held) < 0.1 * len(corpus) and len(train) + len(held) == len(corpus)
    assert not set(train.names) & set(held.names)
    assert default_corpus().checksum == corpus.checksum  # deterministic


def test_default_corpus_is_kept_on_disk_and_read_again_only_when_its_sources_change(
        tmp_path, monkeypatch):
    """The parse of the standard library (~5 s) is kept in cache_dir() between processes,
    keyed by the sources' paths, sizes and times: a process with the cache gets the same
    corpus without parsing; a changed source, a damaged or tampered cache file is read from
    the sources again (and the file replaced); a cache that cannot be written costs time,
    not the corpus. A small stand-in for the standard library keeps it quick."""
    import os
    import sysconfig

    from minialbert import corpus as C

    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    doc = "Caf\u00e9 r\u00e9sum\u00e9 na\u00efve words here. " * 6
    (lib / "mod.py").write_text(f'"""{doc}\n\n{doc}"""\n\ndef f():\n    """{doc} End."""\n')
    (lib / "pkg" / "sub.py").write_text(f'"""{doc} Another one. {doc}"""\n', encoding="utf-8")
    (lib / "test").mkdir()  # skipped, as in the real walk
    (lib / "test" / "t.py").write_text(f'"""{doc} Skipped. {doc}"""\n')
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(lib)})
    monkeypatch.setenv("MINIALBERT_CACHE", str(tmp_path / "cache"))
    reads = []
    real_read = C._read_default_corpus
    monkeypatch.setattr(C, "_read_default_corpus", lambda *a: reads.append(a) or real_read(*a))

    def fresh():  # as a new process: nothing read in this one yet
        monkeypatch.setattr(C, "_DEFAULT", {})
        return C.default_corpus()

    def files():
        return sorted((tmp_path / "cache").glob("python-docs-*.json.gz"))

    first = fresh()
    assert len(reads) == 1 and len(files()) == 1
    assert any(n.startswith("mod:") for n in first.names)
    assert not any(n.startswith("test.") for n in first.names)
    again = fresh()
    assert len(reads) == 1, "the cached corpus was parsed again"
    assert (again.documents, again.names, again.keys, again.info) == \
        (first.documents, first.names, first.keys, first.info)

    (lib / "pkg" / "sub.py").write_text(f'"""{doc} Changed here. {doc}"""\n')
    st = (lib / "pkg" / "sub.py").stat()
    os.utime(lib / "pkg" / "sub.py", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = fresh()
    assert len(reads) == 2 and changed.checksum != first.checksum
    assert any("Changed here." in s for s in changed.sentences())
    assert len(files()) == 1, "the stale file stays beside the new one"
    (cached,) = files()

    cached.write_bytes(b"not gzip at all")
    assert fresh().checksum == changed.checksum and len(reads) == 3
    assert fresh().checksum == changed.checksum and len(reads) == 3  # the file was mended
    whole = cached.read_bytes()  # a gzip header, then a damaged deflate stream
    cached.write_bytes(whole[:20] + bytes(b ^ 0x5A for b in whole[20:200]) + whole[200:])
    assert fresh().checksum == changed.checksum and len(reads) == 4
    reads.pop()
    import gzip
    import json
    with gzip.open(cached, "rt", encoding="utf-8") as f:
        d = json.load(f)
    d["documents"][0][0] = "Tampered."
    with gzip.open(cached, "wt", encoding="utf-8") as f:
        json.dump(d, f)
    assert fresh().checksum == changed.checksum and len(reads) == 4

    (tmp_path / "plain").write_text("a file where the cache folder would be")
    monkeypatch.setenv("MINIALBERT_CACHE", str(tmp_path / "plain" / "cache"))
    assert fresh().checksum == changed.checksum and len(reads) == 5


def test_split_sentences():
    assert split_sentences("One two. Three four! Is it? e.g. this stays.") == \
        ["One two.", "Three four!", "Is it? e.g. this stays."]


def test_reader_formats(tmp_path):
    (tmp_path / "a.txt").write_text("First sentence.\nSecond sentence.\n\nOther doc one.\nTwo.\n")
    (tmp_path / "b.txt").write_text("A wrapped para-\ngraph goes on. And on\nhere.\n\nNext para. Yes.\n")
    c = read_corpus(tmp_path)
    assert c.documents[0] == ["First sentence.", "Second sentence."]
    assert c.documents[2] == ["A wrapped para- graph goes on.", "And on here."]
    assert len(c) == 4


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path / "empty.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Good line.\nCaf\xe9 line.\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt: not valid UTF-8 at byte 14 \(line 2\)"):
        read_corpus(bad)
    (tmp_path / "d").mkdir()
    with pytest.raises(CorpusError, match="no \\*.txt files"):
        read_corpus(tmp_path / "d")


def test_a_files_split_is_the_same_wherever_it_lies(tmp_path):
    """The held-out split of files hashes each document's text: a corpus moved to another
    folder, or joined by another file before it, splits its documents as before (a resumed
    run, which checks the text's checksum, then sees the same training set)."""
    text = "\n\n".join(f"Document {i} first line.\nIts second line {i * i}." for i in range(200))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "c.txt").write_text(text + "\n", encoding="utf-8")
    (tmp_path / "b" / "c.txt").write_text(text + "\n", encoding="utf-8")
    (tmp_path / "b" / "0.txt").write_text("Another file comes first.\n", encoding="utf-8")
    held_a = read_corpus(tmp_path / "a").split(0.1)[1].documents
    held_b = read_corpus(tmp_path / "b").split(0.1)[1].documents
    assert 5 < len(held_a) < 40 and held_a == held_b


def test_too_small_corpus_is_clear(tok):
    tiny = Corpus([["a"]], ["x"])
    tc = tokenize_corpus(tiny, tok)
    with pytest.raises(DataError, match="too small"):
        PretrainingData(tc, tok, 64)


def test_cache_is_memory_mapped_and_equal(corpus, tok, tmp_path):
    a = tokenize_corpus(corpus, tok, tmp_path)
    b = tokenize_corpus(corpus, tok, tmp_path)
    assert isinstance(b.tokens, np.memmap)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.doc, b.doc)
    # the same model file in another mode gives other ids: its own cache, not this one
    other = AlbertTokenizer(model_proto=tok.model_proto, mode="transformers<5.25")
    c = tokenize_corpus(corpus, other, tmp_path)
    fresh = tokenize_corpus(corpus, other)
    assert len(list(tmp_path.glob("tokens-*"))) == 2
    assert np.array_equal(c.tokens, fresh.tokens)


# ----------------------------------------------------------------------------- instances

def test_word_start_rule():
    assert is_start_piece("▁the") and is_start_piece(".") and is_start_piece("<unk>")
    assert is_start_piece("日本") and not is_start_piece("ing")


@given(lens=st.lists(st.integers(1, 30), min_size=1, max_size=12), seed=st.integers(0, 10**6),
       L=st.sampled_from([8, 16, 64]))
def test_instances_fit_and_come_from_one_document(lens, seed, L):
    rng = np.random.default_rng(seed)
    doc, start = [], 100
    for n in lens:
        doc.append(np.arange(start, start + n))
        start += n
    for a, b, label in instances_from_document(doc, L, 0.1, rng):
        assert 1 <= len(a) and 1 <= len(b) and len(a) + len(b) <= L - 3
        toks = list(b) + list(a) if label else list(a) + list(b)
        assert toks == sorted(toks)  # in document order once un-swapped


def test_batches_are_well_formed(data):
    b = data.batch(0, 0, 16)
    ids, tt, am = b["input_ids"], b["token_type_ids"], b["attention_mask"]
    assert ids.shape[1] <= 64 and (ids[:, 0] == CLS).all()
    assert (ids[am == 0] == PAD).all() and (b["labels"][am == 0] == -100).all()
    for i in range(16):
        n = am[i].sum()
        assert ids[i, n - 1] == SEP and tt[i, 0] == 0 and tt[i, n - 1] == 1
        pos = b["mlm_positions"][i][b["mlm_labels"][i] != -100]
        assert (b["labels"][i, pos] == b["mlm_labels"][i, :len(pos)]).all()
        assert not np.isin(pos, np.flatnonzero(np.isin(ids[i], [CLS, SEP]))).any()
        assert 1 <= len(pos) <= data.max_predictions


def test_same_seed_same_batches_other_seed_other(data, corpus, tok):
    tc = data.tc
    again = PretrainingData(tc, tok, 64, seed=3)
    other = PretrainingData(tc, tok, 64, seed=4)
    a, b, c = data.batch(1, 2, 8), again.batch(1, 2, 8), other.batch(1, 2, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    assert not np.array_equal(a["labels"], data.batch(2, 2, 8)["labels"])  # fresh each epoch


def test_masking_statistics(data):
    stats = {}
    masked = kept = rand = total_mask = 0
    n_tokens = 0
    labels = []
    for i in range(30):
        b = data.batch(0, i, 16, stats)
        lab = b["labels"]
        sel = lab != -100
        masked += sel.sum()
        n_tokens += b["attention_mask"].sum()
        total_mask += (b["input_ids"][sel] == MASK).sum()
        kept += (b["input_ids"][sel] == lab[sel]).sum()
        labels += list(b["sentence_order_label"])
    # each token: 80% [MASK], 10% itself, 10% random (which is itself ~1/V of the time)
    p_mask, p_keep = total_mask / masked, kept / masked
    se = np.sqrt(0.25 / masked)
    assert abs(p_mask - 0.8) < 5 * se and abs(p_keep - 0.1) < 5 * se + 0.01
    assert 0.10 < masked / n_tokens < 0.16  # 15% of tokens, rounded, capped at 20 per row
    n = np.array(stats["n"])
    for k, p in zip((1, 2, 3), (6 / 11, 3 / 11, 2 / 11)):  # the *sampled* n
        assert abs((n == k).mean() - p) < 5 * np.sqrt(p * (1 - p) / n.size)
    labels = np.array(labels)
    assert abs(labels.mean() - 0.5) < 5 * np.sqrt(0.25 / labels.size)  # SOP balanced


@settings(max_examples=30)
@given(n=st.integers(3, 60), seed=st.integers(0, 10**6))
def test_mask_tokens_never_touches_specials(n, seed):
    rng = np.random.default_rng(seed)
    is_start = np.ones(100, bool)
    is_start[50:] = False  # continuation pieces
    toks = [CLS] + list(rng.integers(5, 100, n)) + [SEP]
    out, pos, lab = mask_tokens(toks, is_start, 100, rng)
    assert out[0] == CLS and out[-1] == SEP and 0 not in pos and len(toks) - 1 not in pos
    assert lab == [toks[p] for p in pos] and pos == sorted(set(pos))
    assert len(pos) <= max(1, round(len(toks) * 0.15))


def test_cli_tokenizer_train_and_data_show(tmp_path, capsys):
    from minialbert.cli import main as cli
    (tmp_path / "c.txt").write_text("".join(f"The value {i} is stored. It can be read back later.\n\n"
                                            for i in range(60)))
    assert cli(["tokenizer", "train", "--corpus", str(tmp_path / "c.txt"), "--vocab-size", "40",
                "--out", str(tmp_path / "tok")]) == 0
    assert (tmp_path / "tok" / "spiece.model").exists()
    assert cli(["data", "show", "--corpus", str(tmp_path / "c.txt"), "--tokenizer",
                str(tmp_path / "tok"), "-n", "2", "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert "SOP label" in out and "→" in out and "A: " in out and "B: " in out
    # bad input: a clear one-line error and exit code 2, no traceback
    assert cli(["tokenizer", "train", "--corpus", str(tmp_path / "missing.txt"), "--out",
                str(tmp_path / "t2")]) == 2
    assert "no such file" in capsys.readouterr().err


def _truncate_one_at_a_time(a, b, max_num_tokens, rng):
    """The original algorithm (google-research/albert's truncate_seq_pair), quadratic."""
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 80), st.integers(0, 2**31))
def test_truncate_seq_pair_equals_the_original(la, lb, budget, seed):
    from minialbert.data import truncate_seq_pair
    a, b = np.arange(la), np.arange(100, 100 + lb)
    a2, b2 = list(a), list(b)
    rng, rng2 = np.random.default_rng(seed), np.random.default_rng(seed)
    a, b = truncate_seq_pair(a, b, budget, rng)
    _truncate_one_at_a_time(a2, b2, budget, rng2)
    assert (list(a), list(b)) == (a2, b2)
    assert rng.random() == rng2.random()  # the same number of draws


def test_a_two_million_token_segment_is_truncated_in_linear_time():
    import time
    from minialbert.data import truncate_seq_pair
    a, b = np.arange(2_000_000), np.array([1, 2, 3])
    t0 = time.perf_counter()
    a, b = truncate_seq_pair(a, b, 61, np.random.default_rng(0))
    assert len(a) + len(b) == 61 and time.perf_counter() - t0 < 20


def test_lines_longer_than_sentencepiece_reads_are_cut_not_dropped():
    from minialbert.tokenizer import MAX_LINE_BYTES, _chunks, train_tokenizer
    words = [f"w{i % 500}x" for i in range(40000)]
    line = " ".join(words)  # ~240 KB, one line: SentencePiece alone would skip it
    chunks = _chunks(line, MAX_LINE_BYTES)
    assert len(chunks) > 1 and " ".join(chunks) == line
    assert all(len(c.encode()) <= MAX_LINE_BYTES for c in chunks)
    assert all(len(c.encode()) <= 100 for c in _chunks("é" * 1000, 100))
    tok = train_tokenizer([line], 60)  # before: SentencePiece's 'sentences_.empty()'
    assert tok.vocab_size == 60
