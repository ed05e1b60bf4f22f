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
