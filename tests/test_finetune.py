"""Fine-tuning (finetune.py), tasks (tasks.py) and inference (inference.py), on tiny shapes."""
import json

import numpy as np
import pytest

from minialbert.checkpoint import load_checkpoint, save_checkpoint
from minialbert.cli import main
from minialbert.config import AlbertConfig
from minialbert.corpus import default_corpus
from minialbert.finetune import FinetuneConfig, finetune, layerwise_lr_scales
from minialbert.inference import Predictor, load_model
from minialbert.heads import AlbertForPreTraining
from minialbert.optim import AdamW
from minialbert.tasks import (AREAS, QAExample, TaskError, default_task, qa_decode, qa_features,
                              read_tsv, squad_scores, tsv_task)
from minialbert.tokenizer import train_tokenizer

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
             embedding_size=16, max_position_embeddings=64)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 'pretrained' checkpoint: random tiny weights and a tokenizer, saved as pretrain does."""
    d = tmp_path_factory.mktemp("pre")
    tok = train_tokenizer(default_corpus().sentences(), 1000)
    cfg = AlbertConfig(vocab_size=tok.vocab_size, **SMALL)
    m = AlbertForPreTraining(cfg, seed=0)
    save_checkpoint(d, 10, m.params, cfg, {"head": "pretraining"}, tokenizer=tok)
    return d, tok


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    """A learnable two-class task: is the passage about email or about threads?"""
    d = tmp_path_factory.mktemp("tsv")
    rng = np.random.default_rng(0)
    words = {"email": ["message", "header", "mime", "mail", "smtp"],
             "threads": ["lock", "thread", "queue", "wait", "join"]}
    for split, n in (("train", 48), ("dev", 16)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            lab = ["email", "threads"][i % 2]
            rows.append(" ".join(rng.choice(words[lab], 5)) + f"\t{lab}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return d


def run(pretrained, tsv, out, **kw):
    base = dict(out=str(out), task="tsv", train=str(tsv / "train.tsv"), dev=str(tsv / "dev.tsv"),
                init=str(pretrained[0]), seq_len=16, batch_size=8, epochs=2, lr=3e-3,
                progress=False, save_every=2)
    base.update(kw)
    return finetune(FinetuneConfig(**base))


def test_finetune_learns_a_tsv_task(pretrained, tsv, tmp_path):
    s = run(pretrained, tsv, tmp_path / "a", epochs=4, lr=1e-2)
    assert s["dev"]["accuracy"] >= 0.9, s
    assert s["majority_baseline"] == 0.5
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "eval" not in r]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    p = Predictor.load(tmp_path / "a")
    res = p.classify(["mime header mail message smtp", "lock wait join thread queue"])
    assert [r[0][0] for r in res] == ["email", "threads"]
    assert abs(sum(prob for _, prob in res[0]) - 1) < 1e-6
    s2 = run(pretrained, tsv, tmp_path / "b", from_scratch=True, epochs=1)
    assert "random weights" in s2["start"]
    # the run's pictures and per-class scores, and `minialbert plot` redraws them
    conf = json.loads((tmp_path / "a" / "confusion.json").read_text())
    m = np.array(conf["matrix"])
    assert m.sum() == s["dev_examples"] and np.trace(m) / m.sum() == s["dev"]["accuracy"]
    assert {c["label"] for c in conf["per_class"]} == {"email", "threads"}
    for name in ("curves.png", "confusion.png"):
        (tmp_path / "a" / name).unlink()
    from minialbert.cli import main as cli
    assert cli(["plot", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "curves.png").stat().st_size > 0
    assert (tmp_path / "a" / "confusion.png").stat().st_size > 0
    assert cli(["plot", str(tmp_path / "nothing")]) == 2


def test_finetune_resumes_exactly(pretrained, tsv, tmp_path):
    full = run(pretrained, tsv, tmp_path / "full", epochs=1, micro_batches=2)
    part = run(pretrained, tsv, tmp_path / "part", epochs=1, micro_batches=2, stop_after=3)
    assert part["interrupted"] and part["step"] == 3
    done = finetune(FinetuneConfig(out=str(tmp_path / "part"), progress=False), resume=True)
    assert done["step"] == full["step"] == 6
    a, b = load_checkpoint(tmp_path / "full")[1], load_checkpoint(tmp_path / "part")[1]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_layerwise_lr_decay_depths():
    cfg = AlbertConfig(vocab_size=30, **SMALL)
    m = AlbertForPreTraining(cfg)
    s = layerwise_lr_scales(m.params, cfg, 0.5)
    assert s["albert.embeddings.word_embeddings.weight"] == 0.25  # depth 0 of D = 2
    assert s["albert.encoder.embedding_hidden_mapping_in.weight"] == 0.25
    assert s["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"] == 0.5
    assert s["albert.pooler.weight"] == 1.0 and s["sop_classifier.classifier.weight"] == 1.0
    un = cfg.replace(sharing="none")  # per layer when nothing is shared
    s = layerwise_lr_scales(AlbertForPreTraining(un).params, un, 0.5)
    assert s["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"] == 0.25
    assert s["albert.encoder.albert_layer_groups.1.albert_layers.0.ffn.weight"] == 0.5
    assert s["albert.embeddings.LayerNorm.weight"] == 0.125
    # the optimizer applies them: a zero rate leaves the tensor where it was
    p = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    g = {k: np.ones(3, np.float32) for k in p}
    opt = AdamW(weight_decay=0.0)
    opt.lr_scale = {"a": 0.0, "b": 1.0}
    opt.step(p, g, 0.1)
    assert (p["a"] == 1).all() and (p["b"] < 1).all()


def test_finetune_with_layerwise_decay_runs(pretrained, tsv, tmp_path):
    s = run(pretrained, tsv, tmp_path, epochs=1, layerwise_lr_decay=0.8)
    assert s["layerwise_lr_decay"] == 0.8 and np.isfinite(s["dev"]["loss"])


def test_tsv_formats_and_errors(tmp_path):
    (tmp_path / "mrpc.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                       "1\t1\t2\tA cat.\tA feline.\n0\t3\t4\tRain.\tSun.\n")
    assert read_tsv(tmp_path / "mrpc.tsv") == [("A cat.", "A feline.", "1"),
                                               ("Rain.", "Sun.", "0")]
    (tmp_path / "qnli.tsv").write_text("index\tquestion\tsentence\tlabel\n"
                                       "0\tWhy?\tBecause.\tentailment\n")
    assert read_tsv(tmp_path / "qnli.tsv") == [("Why?", "Because.", "entailment")]
    (tmp_path / "plain.tsv").write_text("good film\tpos\nbad film\tneg\n")
    assert read_tsv(tmp_path / "plain.tsv")[1] == ("bad film", None, "neg")
    (tmp_path / "bad.tsv").write_bytes(b"caf\xe9\tpos\n")
    with pytest.raises(TaskError, match="not UTF-8"):
        read_tsv(tmp_path / "bad.tsv")
    (tmp_path / "empty.tsv").write_text("  \n")
    with pytest.raises(TaskError, match="empty"):
        read_tsv(tmp_path / "empty.tsv")
    (tmp_path / "dev.tsv").write_text("fine film\tmeh\n")
    with pytest.raises(TaskError, match="never occur"):
        tsv_task(tmp_path / "plain.tsv", tmp_path / "dev.tsv")
    (tmp_path / "sts.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t3.5\nc\td\t1\n")
    t = tsv_task(tmp_path / "sts.tsv", tmp_path / "sts.tsv", regression=True)
    assert t.kind == "regression" and t.num_labels == 1 and t.train[0].label == 3.5


def test_default_task_has_five_classes_and_a_clean_split():
    t = default_task()
    assert len(t.labels) >= 5 and t.labels == list(AREAS)
    assert len(t.train) > 1000 and len(t.dev) > 100
    assert len({e.label for e in t.dev}) == len(t.labels)
    assert 0 < t.majority_baseline() < 0.5
    assert not {e.text for e in t.train} & {e.text for e in t.dev}


CONTEXT = ("The sorted function returns a new sorted list from the items in iterable. "
           "It has two optional arguments which must be specified as keyword arguments.")


def test_squad_features_find_the_answer_in_every_window(pretrained):
    tok = pretrained[1]
    ans = "a new sorted list"
    ex = [QAExample("1", "What does sorted return?", CONTEXT, [(ans, CONTEXT.index(ans))])]
    feats, meta = qa_features(ex, tok, max_seq_length=24, doc_stride=6)
    assert len(meta) > 2  # the long context is cut into windows
    hit = feats["start_positions"] > 0
    assert hit.any() and (feats["start_positions"][~hit] == 0).all()
    # decoding logits that point at the gold positions gives the gold text back
    T = feats["input_ids"].shape[1]
    s, e = np.full((len(meta), T), -10.0), np.full((len(meta), T), -10.0)
    w = int(np.flatnonzero(hit)[0])
    s[w, feats["start_positions"][w]] = 10
    e[w, feats["end_positions"][w]] = 10
    pred = qa_decode(ex, meta, s, e)
    assert pred["1"] == ans
    assert squad_scores(ex, pred) == {"exact_match": 100.0, "f1": 100.0}
    assert squad_scores(ex, {"1": "new list"})["f1"] == pytest.approx(100 * 2 * (2 / 2 * 2 / 3) / (1 + 2 / 3))


def test_squad_finetune_and_answer(pretrained, tmp_path):
    data = {"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "1", "question": "What does sorted return?",
         "answers": [{"text": "a new sorted list", "answer_start": CONTEXT.index("a new")}]},
        {"id": "2", "question": "How must the optional arguments be specified?",
         "answers": [{"text": "as keyword arguments", "answer_start": CONTEXT.index("as key")}]}]}]}]}
    (tmp_path / "sq.json").write_text(json.dumps(data))
    s = finetune(FinetuneConfig(out=str(tmp_path / "qa"), task="squad", train=str(tmp_path / "sq.json"),
                                dev=str(tmp_path / "sq.json"), init=str(pretrained[0]), seq_len=32,
                                doc_stride=8, batch_size=4, epochs=2, progress=False))
    assert set(s["dev"]) >= {"exact_match", "f1"}
    p = Predictor.load(tmp_path / "qa")
    a = p.answer("What does sorted return?", CONTEXT)
    assert a["answer"] and a["answer"] in CONTEXT and 0 < a["score"] <= 1
    assert " ".join(CONTEXT[a["start"]:a["end"]].split()) == a["answer"]
    bad = dict(data)
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["finetune", "--task", "squad", "--train", str(tmp_path / "bad.json"), "--dev",
                 str(tmp_path / "bad.json"), "--init", str(pretrained[0]), "--out",
                 str(tmp_path / "x")]) == 2


def test_inference_embed_attentions_and_cli(pretrained, tmp_path, capsys):
    model, tok, rep = load_model(pretrained[0], head="base")
    assert rep.missing == [] and "predictions.bias" in rep.unexpected
    p = Predictor(model, tok)
    v = p.embed(["one text", "another, longer text here"], pooling="mean")
    assert v.shape == (2, 32) and np.isfinite(v).all()
    assert p.embed("one text", pooling="cls").shape == (1, 32)
    a, tokens = p.attentions("one text")
    assert a.shape == (2, 2, len(tokens), len(tokens))
    np.testing.assert_allclose(a.sum(-1), 1, rtol=1e-5)
    assert main(["embed", "--checkpoint", str(pretrained[0]), "--attentions",
                 str(tmp_path / "att.npz"), "a text", "another"]) == 0
    assert "cosine" in capsys.readouterr().out and (tmp_path / "att.npz").exists()
    assert main(["fill-mask", "--checkpoint", str(pretrained[0]), "the [MASK] function"]) == 0
    with pytest.raises(ValueError, match="AlbertForSequenceClassification"):
        p.classify(["x"])
    assert main(["classify", "--checkpoint", str(pretrained[0]), "x"]) == 2
    assert "AlbertForSequenceClassification" in capsys.readouterr().err


def test_finetune_without_a_checkpoint_is_clear(tmp_path):
    assert main(["finetune", "--init", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
