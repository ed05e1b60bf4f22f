"""Hugging Face checkpoint folders both ways (minialbert/hf.py).

The proof the issue asks for: a full-size albert-base-v2-shaped AlbertForPreTraining with
random weights, saved by transformers beside a spiece.model trained here with albert-v2's
settings, loads into minialbert with the same outputs and tokenization; our saved folder
loads into transformers with no missing weights and gives ours; the round trip is exact.
(The vocabulary is the tokenizer's — the embedded corpus supports ~6k pieces, not 30k;
every other dimension is albert-base-v2's.)
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from minialbert import hf
from minialbert.checkpoint import load_checkpoint, save_checkpoint
from minialbert.config import AlbertConfig, preset
from minialbert.corpus import default_corpus
from minialbert.heads import MODEL_CLASSES
from minialbert.heads import AlbertForPreTraining
from minialbert.params import WORD
from minialbert.tokenizer import TokenizerError, train_tokenizer
from reference import assert_close, n, require
from test_heads import CASES
from test_model import tiny

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Return a new list containing all items from the iterable in ascending order.",
         "Café déjà vu: 3.14 is not 1,000 — “quotes” and (parentheses)!"]
PAIR = ("What does sorted() return?", "A new sorted list from the items in iterable.")


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    d = tmp_path_factory.mktemp("spiece")
    return train_tokenizer(default_corpus().sentences(), 3000, d), d


def _hf_config(cfg, **kw):
    transformers = require("transformers")
    c = transformers.AlbertConfig(**cfg.to_dict(hf=True), **kw)
    c._attn_implementation = "eager"
    return c


def _load_hf(cls, folder):
    transformers = require("transformers")
    m, info = getattr(transformers, cls).from_pretrained(folder, output_loading_info=True,
                                                         attn_implementation="eager")
    return m.eval(), info


def _no_loading_problems(info):
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not bad and not info.get("error_msgs"), info


def same_weights(a, b):
    """Two torch models hold bitwise the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert (sa[k] == sb[k]).all(), k


def test_full_size_albert_base_both_ways(spiece, tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    tok, tok_dir = spiece
    torch.manual_seed(0)
    cfg = preset("albert-base-v2", vocab_size=tok.vocab_size)
    theirs = transformers.AlbertForPreTraining(_hf_config(cfg)).eval()
    src = tmp_path / "hf"
    theirs.save_pretrained(src)
    shutil.copy(tok_dir / "spiece.model", src / "spiece.model")

    # theirs -> ours: the same tokenization and the same outputs
    model, report = hf.from_pretrained(src, output_loading_info=True)
    assert isinstance(model, AlbertForPreTraining) and report.clean, str(report)
    ours_tok = hf.load_folder_tokenizer(src)
    their_tok = transformers.AlbertTokenizer.from_pretrained(src)
    enc = ours_tok.batch_encode(TEXTS)
    ref = their_tok(TEXTS, padding=True, return_tensors="np", return_token_type_ids=True)
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(enc[k], ref[k])
    pair = ours_tok(*PAIR)
    assert pair["input_ids"] == their_tok(*PAIR)["input_ids"]
    assert pair["token_type_ids"] == their_tok(*PAIR, return_token_type_ids=True)["token_type_ids"]
    out, _ = model.forward(**enc, output_hidden_states=True)
    with torch.no_grad():
        o = theirs(**{k: torch.from_numpy(v) for k, v in enc.items()}, output_hidden_states=True)
    tol = dict(rtol=1e-4, atol=2e-4)
    assert_close(out["prediction_logits"].reshape(n(o.prediction_logits).shape),
                 n(o.prediction_logits), **tol, what="prediction logits")
    assert_close(out["sop_logits"], n(o.sop_logits), **tol, what="sop logits")
    assert_close(out["hidden_states"][-1], n(o.hidden_states[-1]), **tol, what="last hidden")

    # ours -> theirs: transformers loads our folder with nothing missing, and gives ours
    dst = tmp_path / "ours"
    model.save_pretrained(dst, ours_tok)
    back, info = _load_hf("AlbertForPreTraining", dst)
    _no_loading_problems(info)
    with torch.no_grad():
        o2 = back(**{k: torch.from_numpy(v) for k, v in enc.items()})
    same_weights(back, theirs)
    assert_close(n(o2.prediction_logits), n(o.prediction_logits), 1e-5, 1e-5, "logits")
    tok2 = transformers.AutoTokenizer.from_pretrained(dst)
    assert tok2(TEXTS[2])["input_ids"] == ours_tok(TEXTS[2])["input_ids"]

    # the round trip is exact
    again = hf.from_pretrained(dst)
    assert set(again.params) == set(model.params)
    for k, v in model.params.items():
        np.testing.assert_array_equal(again.params[k], v, err_msg=k)
    assert again.config == model.config


@pytest.mark.parametrize("case", ["masked_lm", "sequence_classification", "regression",
                                  "token_classification", "question_answering",
                                  "multiple_choice"])
def test_every_head_loads_from_and_saves_to_transformers(case, tmp_path, rng):
    torch = require("torch")
    transformers = require("transformers")
    from test_heads import inputs

    head, hf_cls, kw, shape = CASES[case]
    cfg = tiny(**kw)
    torch.manual_seed(1)
    theirs = getattr(transformers, hf_cls)(_hf_config(cfg)).eval()
    theirs.save_pretrained(tmp_path / "hf")
    model = hf.from_pretrained(tmp_path / "hf", verbose=False)
    assert model.head == head
    b = inputs(rng, case, cfg, shape)
    b = {k: v for k, v in b.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
    out, _ = model.forward(**b)
    with torch.no_grad():
        o = theirs(**{k: torch.from_numpy(v) for k, v in b.items()})
    names = ("start_logits", "end_logits") if head == "question_answering" else ("logits",)
    for k in names:
        assert_close(out[k].reshape(n(o[k]).shape), n(o[k]), 1e-4, 1e-5, k)
    model.save_pretrained(tmp_path / "ours")
    back, info = _load_hf(hf_cls, tmp_path / "ours")
    _no_loading_problems(info)
    with torch.no_grad():
        o2 = back(**{k: torch.from_numpy(v) for k, v in b.items()})
    same_weights(back, theirs)
    for k in names:  # (torch itself is not bitwise repeatable across model objects)
        assert_close(n(o2[k]), n(o[k]), 1e-5, 1e-6, k)


def test_label_names_and_count_travel(tmp_path):
    require("torch")
    transformers = require("transformers")
    cfg = tiny(num_labels=3, extra={"id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    m = MODEL_CLASSES["sequence_classification"](cfg)
    m.save_pretrained(tmp_path)
    back = transformers.AlbertForSequenceClassification.from_pretrained(tmp_path)
    assert back.config.num_labels == 3 and back.config.id2label[2] == "pos"
    again = hf.from_pretrained(tmp_path)
    assert again.config.num_labels == 3 and again.config.extra["id2label"]["2"] == "pos"


def _write(path, tensors, fmt="pt"):
    from safetensors.numpy import save_file
    save_file(tensors, str(path), metadata={"format": fmt})


def test_tied_decoder_stored_twice_and_buffers_are_handled(tmp_path, rng):
    cfg = tiny()
    m = AlbertForPreTraining(cfg, seed=2)
    sd = dict(m.params)
    sd["predictions.decoder.weight"] = sd[WORD].copy()
    sd["predictions.decoder.bias"] = sd["predictions.bias"].copy()
    sd["albert.embeddings.position_ids"] = np.arange(16)[None]
    cfg.save(tmp_path / "config.json")
    _write(tmp_path / "model.safetensors", sd)
    back, rep = hf.from_pretrained(tmp_path, output_loading_info=True)
    assert rep.clean, str(rep)
    assert rep.tied == ["predictions.decoder.weight", "predictions.decoder.bias"]
    assert rep.ignored == ["albert.embeddings.position_ids"]
    for k in m.params:
        np.testing.assert_array_equal(back.params[k], m.params[k])
    sd["predictions.decoder.weight"] = sd[WORD] + 1  # a decoder that is not the word table
    _write(tmp_path / "model.safetensors", sd)
    with pytest.warns(hf.LoadReportWarning, match="differs from the tied"):
        hf.from_pretrained(tmp_path)


def test_missing_and_unexpected_are_reported(tmp_path):
    cfg = tiny()
    AlbertForPreTraining(cfg).save_pretrained(tmp_path)
    with pytest.warns(hf.LoadReportWarning) as w:
        m, rep = hf.from_pretrained(tmp_path, head="sequence_classification", num_labels=5,
                                    output_loading_info=True)
    assert rep.missing == ["classifier.weight", "classifier.bias"]
    assert "sop_classifier.classifier.weight" in rep.unexpected
    assert "predictions.dense.weight" in rep.unexpected
    assert "newly initialized" in str(w[0].message)
    assert m.params["classifier.weight"].shape == (5, 12)
    # a masked-LM checkpoint (as on the hub) has no SOP head and no pooler
    MODEL_CLASSES["masked_lm"](cfg).save_pretrained(tmp_path / "mlm")
    with pytest.warns(hf.LoadReportWarning, match="sop_classifier"):
        hf.from_pretrained(tmp_path / "mlm", head="pretraining")


def test_shape_mismatch_is_an_error_unless_asked(tmp_path):
    MODEL_CLASSES["sequence_classification"](tiny(num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(hf.HFCheckpointError, match="ignore_mismatched_sizes"):
        hf.from_pretrained(tmp_path, num_labels=4)
    with pytest.warns(hf.LoadReportWarning, match="newly initialized"):
        m = hf.from_pretrained(tmp_path, num_labels=4, ignore_mismatched_sizes=True)
    assert m.params["classifier.weight"].shape[0] == 4


def test_bare_albert_model_keys_get_their_prefix(tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    cfg = tiny()
    torch.manual_seed(0)
    base = transformers.AlbertModel(_hf_config(cfg)).eval()
    base.save_pretrained(tmp_path)
    m = hf.from_pretrained(tmp_path, verbose=False)
    assert m.head == "base"
    ids = np.array([[2, 7, 9, 3]])
    with torch.no_grad():
        o = base(torch.from_numpy(ids))
    assert_close(m.forward(ids)[0]["pooler_output"], n(o.pooler_output), 1e-5, 1e-6)


def test_bfloat16_weights_are_widened(tmp_path):
    torch = require("torch")
    from safetensors.torch import save_file
    cfg = tiny()
    m = AlbertForPreTraining(cfg, seed=0)
    cfg.save(tmp_path / "config.json")
    save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in m.params.items()},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    back = hf.from_pretrained(tmp_path)
    ref = torch.from_numpy(m.params[WORD]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(back.params[WORD], ref)


def test_pytorch_bin_needs_consent_not_torch(tmp_path, monkeypatch):
    torch = require("torch")
    cfg = tiny()
    m = AlbertForPreTraining(cfg, seed=0)
    cfg.save(tmp_path / "config.json")
    torch.save({k: torch.from_numpy(v) for k, v in m.params.items()},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(hf.HFCheckpointError, match="allow_pickle=True"):
        hf.from_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    back = hf.from_pretrained(tmp_path, allow_pickle=True)
    for k, v in m.params.items():
        np.testing.assert_array_equal(back.params[k], v)


def test_pytorch_bin_reader_dtypes_views_and_refusals(tmp_path):
    """Our own reader of torch.save's zip (no torch): every dtype HF checkpoints hold,
    tensors that are views (a transpose, a slice at an offset, shared storage), and a
    pickle that names anything but tensors is refused, not run."""
    import pickle
    import zipfile
    torch = require("torch")
    r = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=r)
    sd = {"f32": torch.randn(3, 4, generator=r), "bf16": torch.randn(7, generator=r).bfloat16(),
          "f16": torch.randn(2, 3, generator=r).half(),
          "f64": torch.randn(4, generator=r).double(), "i64": torch.arange(5),
          "scalar": torch.tensor(2.5), "T": base.t(), "slice": base[2:4, 1:],
          "param": torch.nn.Parameter(torch.ones(2, 2))}
    f = tmp_path / "x.bin"
    torch.save(sd, f)
    got = hf._read_bin(f, True)
    assert set(got) == set(sd)
    for k, v in sd.items():
        want = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)
    bad = tmp_path / "bad.bin"  # a zip whose pickle calls os.system
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(hf.HFCheckpointError, match="os.system"):
        hf._read_bin(bad, True)
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    with pytest.raises(hf.HFCheckpointError, match="not a state dict of tensors"):
        hf._read_bin(bad, True)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(f.read_bytes()[:200])
    with pytest.raises(hf.HFCheckpointError, match="cut.bin"):
        hf._read_bin(cut, True)


def test_corrupt_or_missing_files_are_clear(tmp_path):
    cfg = tiny()
    AlbertForPreTraining(cfg).save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(hf.HFCheckpointError, match="truncated|not a readable"):
        hf.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(hf.HFCheckpointError, match="not a readable"):
        hf.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(hf.HFCheckpointError, match="no model.safetensors"):
        hf.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(hf.HFCheckpointError, match="not 'albert'"):
        hf.from_pretrained(tmp_path)


def test_tokenizer_json_only_folder(spiece, tmp_path, monkeypatch):
    """transformers 5 writes tokenizer.json, not spiece.model: read it through `tokenizers`
    when installed, else say what is missing."""
    transformers = require("transformers")
    tok, tok_dir = spiece
    transformers.AlbertTokenizer.from_pretrained(tok_dir).save_pretrained(tmp_path)
    assert not (tmp_path / "spiece.model").exists()
    jt = hf.load_folder_tokenizer(tmp_path)
    for t in TEXTS:
        assert jt(t)["input_ids"] == tok(t)["input_ids"], t
    assert jt.decode(jt.encode(TEXTS[0])) == tok.decode(tok.encode(TEXTS[0]))
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(TokenizerError, match="spiece.model"):
        hf.load_folder_tokenizer(tmp_path)


def test_convert_both_ways_with_the_cli(spiece, tmp_path):
    require("torch")
    transformers = require("transformers")
    from minialbert.cli import main
    tok, _ = spiece
    cfg = tiny(vocab_size=tok.vocab_size)
    m = AlbertForPreTraining(cfg, seed=4)
    run = tmp_path / "run"
    save_checkpoint(run, 7, m.params, cfg, {"head": "pretraining"}, tokenizer=tok)
    assert main(["convert", str(run), str(tmp_path / "hf")]) == 0
    back, info = _load_hf("AlbertForPreTraining", tmp_path / "hf")
    _no_loading_problems(info)
    assert (tmp_path / "hf" / "spiece.model").exists()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "again")]) == 0
    cfg2, params2, state, _, ck = load_checkpoint(tmp_path / "again")
    assert cfg2 == cfg and state["head"] == "pretraining"
    for k, v in m.params.items():
        np.testing.assert_array_equal(params2[k], v)
    assert (ck / "spiece.model").read_bytes() == tok.model_proto
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


def test_partial_sharing_cannot_be_saved_as_hugging_face(tmp_path):
    m = AlbertForPreTraining(tiny(sharing="ffn"))
    with pytest.raises(ValueError, match="cannot be written as a Hugging Face"):
        m.save_pretrained(tmp_path)


@pytest.mark.opt_in
def test_real_albert_base_v2_matches_transformers():
    """Opt-in: MINIALBERT_ALBERT_BASE_V2=/path/to/albert-base-v2 (a downloaded folder)."""
    path = os.environ.get("MINIALBERT_ALBERT_BASE_V2")
    if not path:
        pytest.skip("set MINIALBERT_ALBERT_BASE_V2 to a downloaded albert-base-v2 folder")
    torch = require("torch")
    transformers = require("transformers")
    model, rep = hf.from_pretrained(path, head="masked_lm", output_loading_info=True,
                                    allow_pickle=not os.path.exists(
                                        os.path.join(path, "model.safetensors")))
    assert not rep.missing, str(rep)
    tok = hf.load_folder_tokenizer(path)
    theirs = transformers.AlbertForMaskedLM.from_pretrained(path, attn_implementation="eager")
    enc = tok.batch_encode(TEXTS)
    out, _ = model.forward(**enc)
    with torch.no_grad():
        o = theirs.eval()(**{k: torch.from_numpy(v) for k, v in enc.items()})
    assert_close(out["logits"].reshape(n(o.logits).shape), n(o.logits), 1e-3, 1e-3, "logits")
    assert isinstance(AlbertConfig.from_dict(json.load(open(os.path.join(path, "config.json")))),
                      AlbertConfig)
