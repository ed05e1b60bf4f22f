"""Every inference command on Hugging Face folders and on our own, against transformers'
pipelines on the same folder: fill-mask (AlbertForMaskedLM — the class the released
albert-*-v2 configs name — and AlbertForPreTraining), text classification, feature
extraction; and the wrong kind of checkpoint is one clear line."""
import json

import numpy as np
import pytest

from minialbert.checkpoint import save_checkpoint
from minialbert.cli import main as cli
from minialbert.config import preset
from minialbert.corpus import default_corpus
from minialbert.heads import model_class
from minialbert.hf import _tokenizer_config
from minialbert.inference import Predictor, fill_mask, load_model
from minialbert.tokenizer import train_tokenizer
from reference import require

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
             embedding_size=16, max_position_embeddings=64)
TEXTS = ["Return a new [MASK] containing the items.", "The [MASK] statement defines a [MASK]."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(default_corpus().sentences(), 1000, tmp_path_factory.mktemp("tok"))


def _hf_folder(tok, head, folder, **over):
    """A folder transformers' own save_pretrained wrote (random weights), with our spiece
    model and the tokenizer_config.json our writer gives."""
    torch = require("torch")
    transformers = require("transformers")
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL, **over)
    torch.manual_seed(0)
    cls = getattr(transformers, model_class(head).__name__)
    hc = transformers.AlbertConfig(**cfg.to_dict(hf=True))
    m = cls(hc).eval()
    with torch.no_grad():  # larger weights than the init, so the predictions are not flat
        for p in m.parameters():
            p.mul_(8.0)
    m.save_pretrained(folder)
    tok.save(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tok)))
    return folder


@pytest.mark.parametrize("head", ["masked_lm", "pretraining"])
def test_fill_mask_matches_the_pipeline_on_a_transformers_folder(head, tok, tmp_path, capsys):
    transformers = require("transformers")
    folder = _hf_folder(tok, head, tmp_path / "hf")
    pipe = transformers.pipeline("fill-mask", model=str(folder), tokenizer=str(folder))
    p = Predictor.load(folder)
    for text in TEXTS:
        ours = p.fill_mask(text, top_k=5)
        theirs = pipe(text, top_k=5)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            assert [w for w, _ in o] == [d["token_str"] for d in t]
            np.testing.assert_allclose([s for _, s in o], [d["score"] for d in t], rtol=1e-4,
                                       atol=1e-6)
    assert cli(["fill-mask", "--checkpoint", str(folder), TEXTS[0]]) == 0
    assert "[MASK] #1" in capsys.readouterr().out


def test_classify_and_embed_match_the_pipelines(tok, tmp_path):
    transformers = require("transformers")
    folder = _hf_folder(tok, "sequence_classification", tmp_path / "hf", num_labels=3)
    texts = ["sorted() returns a new list.", "Open the file for reading."]
    pipe = transformers.pipeline("text-classification", model=str(folder), tokenizer=str(folder),
                                 top_k=None)
    ours = Predictor.load(folder).classify(texts)
    for o, t in zip(ours, pipe(texts)):
        assert [l for l, _ in o] == [d["label"] for d in t]
        np.testing.assert_allclose([s for _, s in o], [d["score"] for d in t], rtol=1e-4)
    fe = transformers.pipeline("feature-extraction", model=str(folder), tokenizer=str(folder))
    v = Predictor.load(folder, head="base").embed(texts, pooling="mean")
    for e, t in zip(v, fe(texts)):
        np.testing.assert_allclose(e, np.asarray(t[0]).mean(0), rtol=1e-4, atol=1e-5)


def test_fill_mask_on_our_masked_lm_checkpoint(tok, tmp_path):
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    m = model_class("masked_lm")(cfg, seed=1)
    save_checkpoint(tmp_path / "mlm", 1, m.params, cfg, {"head": "masked_lm"}, tokenizer=tok)
    model, t, _ = load_model(tmp_path / "mlm")
    res = fill_mask(model, t, TEXTS[1], top_k=2)
    assert len(res) == 2 and all(len(r) == 2 for r in res)
    assert cli(["fill-mask", "--checkpoint", str(tmp_path / "mlm"), TEXTS[0]]) == 0


def test_the_wrong_kind_of_checkpoint_is_one_line(tok, tmp_path, capsys):
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    m = model_class("sequence_classification")(cfg, seed=1)
    save_checkpoint(tmp_path / "ft", 1, m.params, cfg, {"head": "sequence_classification"},
                    tokenizer=tok)
    for argv in (["fill-mask", "--checkpoint", str(tmp_path / "ft"), "a [MASK] b"],
                 ["evaluate", "--checkpoint", str(tmp_path / "ft")]):
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minialbert: error:"), err
        assert "sequence_classification" in err[0] or "SequenceClassification" in err[0]


def test_fill_mask_names_the_text_without_mask_and_hints_at_case(tok, tmp_path, capsys):
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    m = model_class("masked_lm")(cfg, seed=1)
    save_checkpoint(tmp_path / "mlm", 1, m.params, cfg, {"head": "masked_lm"}, tokenizer=tok)
    assert cli(["fill-mask", "--checkpoint", str(tmp_path / "mlm"), "a [MASK] b",
                "lower [mask] here"]) == 2
    cap = capsys.readouterr()
    assert "a [MASK] b" in cap.out and "'lower [mask] here'" in cap.err
    assert "case-sensitive" in cap.err
    long = " ".join(["word"] * 100) + " [MASK]"
    assert cli(["fill-mask", "--checkpoint", str(tmp_path / "mlm"), long]) == 2
    assert "64 positions" in capsys.readouterr().err


def test_nan_weights_are_refused_on_load(tok, tmp_path, capsys):
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    m = model_class("masked_lm")(cfg, seed=1)
    m.params["albert.pooler.weight" if "albert.pooler.weight" in m.params
             else next(iter(m.params))][:] = np.nan
    save_checkpoint(tmp_path / "nan", 1, m.params, cfg, {"head": "masked_lm"}, tokenizer=tok)
    assert cli(["fill-mask", "--checkpoint", str(tmp_path / "nan"), "a [MASK] b"]) == 2
    assert "NaN" in capsys.readouterr().err


QA_CONTEXT = ("sorted() returns a new sorted list from the items in iterable. It has two optional "
              "arguments which must be specified as keyword arguments. key specifies a function "
              "of one argument that is used to extract a comparison key from each element. "
              "reverse is a boolean value; if set to True, the list elements are sorted as if "
              "each comparison were reversed.")


def _transformers_extractive_qa(folder, question, context, max_seq_len, doc_stride, top_k,
                                max_answer_len):
    """What transformers' extractive QA gives (its question-answering pipeline, gone in
    transformers 5; the same steps its document-QA pipeline runs for LayoutLM): the words
    through its own tokenizer with overflowing windows, its AlbertForQuestionAnswering, its
    select_starts_ends, the words of the best spans of every window."""
    torch = require("torch")
    transformers = require("transformers")
    from transformers.pipelines.document_question_answering import select_starts_ends
    model = transformers.AlbertForQuestionAnswering.from_pretrained(folder).eval()
    htok = transformers.AutoTokenizer.from_pretrained(folder)
    words = context.split()
    enc = htok(question.split(), words, is_split_into_words=True, max_length=max_seq_len,
               stride=doc_stride, truncation="only_second", return_overflowing_tokens=True,
               return_token_type_ids=True)
    answers = []
    for w in range(len(enc["input_ids"])):
        p_mask = [s != 1 for s in enc.sequence_ids(w)]
        p_mask[0] = False  # [CLS] stays in the softmax
        inputs = {k: torch.tensor([enc[k][w]]) for k in
                  ("input_ids", "token_type_ids", "attention_mask")}
        with torch.no_grad():
            out = model(**inputs)
        starts, ends, scores, _ = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask,
            inputs["attention_mask"].numpy(), top_k=top_k, max_answer_len=max_answer_len)
        word_ids = enc.word_ids(w)
        for s, e, sc in zip(starts, ends, scores):
            answers.append((float(sc), " ".join(words[word_ids[s]:word_ids[e] + 1])))
    return sorted(answers, key=lambda a: -a[0])[:top_k]


@pytest.mark.parametrize("max_seq_len,doc_stride", [(64, 16), (24, 6)])
def test_answer_matches_transformers_extractive_qa(tok, tmp_path, capsys, max_seq_len,
                                                   doc_stride):
    folder = _hf_folder(tok, "question_answering", tmp_path / "hf")
    p = Predictor.load(folder)
    for q in ("What does sorted return?", "How must the optional arguments be specified?"):
        theirs = _transformers_extractive_qa(folder, q, QA_CONTEXT, max_seq_len, doc_stride,
                                             top_k=3, max_answer_len=15)
        ours = p.answer(q, QA_CONTEXT, top_k=3, max_seq_len=max_seq_len, doc_stride=doc_stride)
        assert [a["answer"] for a in ours] == [t for _, t in theirs]
        np.testing.assert_allclose([a["score"] for a in ours], [s for s, _ in theirs],
                                   rtol=2e-4)
        for a in ours:  # the offsets point at the answer in the context
            assert " ".join(QA_CONTEXT[a["start"]:a["end"]].split()) == a["answer"]
        best = p.answer(q, QA_CONTEXT, max_seq_len=max_seq_len, doc_stride=doc_stride)
        assert best == ours[0]
    assert cli(["answer", "--checkpoint", str(folder), "--question", "What is reverse?",
                "--context", QA_CONTEXT]) == 0
    assert "score" in capsys.readouterr().out


@pytest.mark.parametrize("head", ["masked_lm", "pretraining"])
def test_evaluate_on_a_transformers_folder_agrees_with_transformers(head, tok, tmp_path, capsys):
    """evaluate on a folder transformers wrote: the MLM loss and accuracy (and SOP accuracy)
    that transformers' own model gives on the very batches evaluate used."""
    torch = require("torch")
    transformers = require("transformers")
    from minialbert.data import tokenize_corpus
    from minialbert.train import eval_set, evaluate_checkpoint
    folder = _hf_folder(tok, head, tmp_path / "hf")
    text = tmp_path / "held.txt"
    text.write_text("\n".join(list(default_corpus().sentences())[:400]))
    ev = evaluate_checkpoint(folder, [str(text)], batches=3, batch_size=4, seq_len=32)
    from minialbert.corpus import load_corpus
    from minialbert.hf import load_folder_tokenizer
    batches = eval_set(tokenize_corpus(load_corpus([str(text)]), load_folder_tokenizer(folder)),
                       load_folder_tokenizer(folder), 32, 4, 3, seed=1)
    assert ev["set"].startswith("3 batches of 4 × 32 from all of")
    ref = getattr(transformers, model_class(head).__name__).from_pretrained(folder).eval()
    nll = ok = n = sop_ok = pairs = 0.0
    for b in batches:
        with torch.no_grad():
            o = ref(input_ids=torch.tensor(b["input_ids"]),
                    token_type_ids=torch.tensor(b["token_type_ids"]),
                    attention_mask=torch.tensor(b["attention_mask"]))
        logits = (o.prediction_logits if head == "pretraining" else o.logits).reshape(
            -1, tok.vocab_size)
        lab = torch.tensor(b["labels"]).reshape(-1)
        keep = lab != -100
        nll += float(torch.nn.functional.cross_entropy(logits[keep], lab[keep],
                                                       reduction="sum"))
        ok += float((logits[keep].argmax(1) == lab[keep]).sum())
        n += int(keep.sum())
        if head == "pretraining":
            sop_ok += float((o.sop_logits.argmax(1).numpy() == b["sentence_order_label"]).sum())
            pairs += len(b["sentence_order_label"])
    np.testing.assert_allclose(ev["mlm_loss"], nll / n, rtol=1e-4)
    assert ev["predictions"] == n and ev["mlm_acc"] == pytest.approx(ok / n)
    if head == "pretraining":
        assert ev["pairs"] == pairs and ev["sop_acc"] == pytest.approx(sop_ok / pairs)
    else:
        assert ev["pairs"] == 0 and ev["sop_acc"] is None
    assert cli(["evaluate", "--checkpoint", str(folder), "--corpus", str(text), "--batches",
                "2", "--batch-size", "4", "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert "MLM loss" in out and ("SOP accuracy" in out) == (head == "pretraining")
    assert cli(["evaluate", "--checkpoint", str(folder)]) == 2  # no run, no corpus
    assert "--corpus" in capsys.readouterr().err
    other = _hf_folder(tok, "sequence_classification", tmp_path / "cls", num_labels=2)
    capsys.readouterr()
    assert cli(["evaluate", "--checkpoint", str(other), "--corpus", str(text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AlbertForSequenceClassification" in err[0], err
