"""Bad input, tried wholesale: every command with what users actually pass it. Each must
exit 2 with one line that names the file or option, print no traceback, and change no
existing checkpoint or output. Runs in one process through cli.main (fast)."""
import hashlib
import json

import numpy as np
import pytest

from minialbert.checkpoint import save_checkpoint
from minialbert.cli import main
from minialbert.config import preset
from minialbert.corpus import default_corpus
from minialbert.heads import AlbertForPreTraining
from minialbert.tokenizer import train_tokenizer

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
             embedding_size=16, max_position_embeddings=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    tok = train_tokenizer(default_corpus().sentences(), 1000, d / "tok")
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    m = AlbertForPreTraining(cfg, seed=0)
    save_checkpoint(d / "run", 5, m.params, cfg, {"head": "pretraining"}, tokenizer=tok)
    other = train_tokenizer(default_corpus().sentences(), 900, d / "tok900")
    (d / "empty.txt").write_text("")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.txt").write_bytes("Caf\xe9 au lait. Cr\xe8me br\xfbl\xe9e.\n".encode("latin-1"))
    (d / "emptydir").mkdir()
    (d / "nothing_readable").mkdir()
    (d / "nothing_readable" / "a.md").write_text("# x\n")
    m.save_pretrained(d / "hf", tok)
    for name, edit in (("hf_truncated", "truncate"), ("hf_noconfig", "noconfig"),
                       ("hf_badjson", "badjson"), ("hf_nosizes", "nosizes"),
                       ("hf_wrongshape", "wrongshape")):
        import shutil
        shutil.copytree(d / "hf", d / name)
        f = d / name
        if edit == "truncate":
            b = (f / "model.safetensors").read_bytes()
            (f / "model.safetensors").write_bytes(b[:len(b) // 2])
        elif edit == "noconfig":
            (f / "config.json").unlink()
        elif edit == "badjson":
            (f / "config.json").write_text("{not json")
        elif edit == "nosizes":
            c = json.loads((f / "config.json").read_text())
            del c["hidden_size"]
            (f / "config.json").write_text(json.dumps(c))
        elif edit == "wrongshape":
            c = json.loads((f / "config.json").read_text())
            c["intermediate_size"] = 96
            (f / "config.json").write_text(json.dumps(c))
    (d / "hf_othertok").mkdir()
    shutil.copytree(d / "hf", d / "hf_othertok", dirs_exist_ok=True)
    other.save(d / "hf_othertok")
    return d, tok, other


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


CASES = [
    # (argv with {d} for the fixture folder, what the message must contain)
    (["pretrain", "--out", "{d}/o1", "--corpus", "{d}/empty.txt", "--steps", "1"], "empty.txt"),
    (["pretrain", "--out", "{d}/o2", "--corpus", "{d}/binary.txt", "--steps", "1"], "binary.txt"),
    (["pretrain", "--out", "{d}/o3", "--corpus", "{d}/latin1.txt", "--steps", "1"], "UTF-8"),
    (["pretrain", "--out", "{d}/o4", "--corpus", "{d}/missing.txt", "--steps", "1"], "missing.txt"),
    (["pretrain", "--out", "{d}/o5", "--corpus", "{d}/emptydir", "--steps", "1"], "emptydir"),
    (["pretrain", "--out", "{d}/o6", "--corpus", "{d}/nothing_readable", "--steps", "1"], "a.md"),
    (["pretrain", "--out", "{d}/o7", "--steps", "-5"], "--steps"),
    (["pretrain", "--out", "{d}/o7", "--steps", "nan"], "--steps"),
    (["pretrain", "--out", "{d}/o7", "--batch-size", "0"], "--batch-size"),
    (["pretrain", "--out", "{d}/o7", "--batch-size", "-4"], "--batch-size"),
    (["pretrain", "--out", "{d}/o7", "--clip", "-1"], "--clip"),
    (["pretrain", "--out", "{d}/o7", "--lr", "-1"], "--lr"),
    (["pretrain", "--out", "{d}/o7", "--lr", "nan"], "--lr"),
    (["pretrain", "--out", "{d}/o7", "--threads", "0"], "--threads"),
    (["pretrain", "--out", "{d}/o7", "--threads", "999", "--steps", "1"], "--threads 999"),
    (["pretrain", "--out", "{d}/o7", "--batch-size", "6", "--micro-batches", "4"], "--micro-batches"),
    (["pretrain", "--out", "{d}/o7", "--preset", "huge"], "--preset"),
    (["pretrain", "--out", "{d}/o7", "--warmup", "1.5"], "--warmup"),
    (["pretrain", "--out", "{d}/o7", "--config", "{d}/nope.json", "--steps", "1"], "nope.json"),
    (["pretrain", "--out", "{d}/o8", "--seq-len", "100000", "--steps", "1", "--vocab-size",
      "1000", "--preset", "tiny"], "max_position_embeddings"),
    (["pretrain", "--out", "{d}/run", "--steps", "1"], "holds a run already"),
    (["pretrain", "--out", "{d}/empty.txt", "--steps", "1"], "is a file"),
    (["pretrain", "--out", "{d}/o9", "--resume"], "o9"),
    (["pretrain", "--out", "{d}/run", "--resume", "--seq-len", "16"], "cannot be resumed"),
    (["finetune", "--out", "{d}/f1", "--epochs", "-1"], "--epochs"),
    (["finetune", "--out", "{d}/f1", "--init", "{d}/nowhere"], "nowhere"),
    (["finetune", "--out", "{d}/f1", "--task", "tsv"], "--train"),
    (["finetune", "--out", "{d}/f1", "--task", "tsv", "--train", "{d}/binary.txt", "--dev",
      "{d}/binary.txt", "--init", "{d}/run"], "binary.txt"),
    (["fill-mask", "--checkpoint", "{d}/run", "--top-k", "0", "a [MASK]"], "--top-k"),
    (["fill-mask", "--checkpoint", "{d}/run", "--top-k", "-1", "a [MASK]"], "--top-k"),
    (["fill-mask", "--checkpoint", "{d}/run", "no mask here"], "no [MASK]"),
    (["fill-mask", "--checkpoint", "{d}/nowhere", "a [MASK]"], "nowhere"),
    (["fill-mask", "--checkpoint", "{d}/hf_truncated", "a [MASK]"], "truncated"),
    (["fill-mask", "--checkpoint", "{d}/hf_noconfig", "a [MASK]"], "hf_noconfig"),
    (["fill-mask", "--checkpoint", "{d}/hf_badjson", "a [MASK]"], "not valid JSON"),
    (["fill-mask", "--checkpoint", "{d}/hf_nosizes", "a [MASK]"], "hidden_size"),
    (["fill-mask", "--checkpoint", "{d}/hf_wrongshape", "a [MASK]"], "shape"),
    (["fill-mask", "--checkpoint", "{d}/hf_othertok", "a [MASK]"], "900 pieces"),
    (["fill-mask", "--checkpoint", "{d}/run", " ".join(["w"] * 200) + " [MASK]"], "positions"),
    (["classify", "--checkpoint", "{d}/run", "text"], "AlbertForSequenceClassification"),
    (["answer", "--checkpoint", "{d}/run", "--question", "q", "--context", "c"],
     "AlbertForQuestionAnswering"),
    (["answer", "--checkpoint", "{d}/run", "--question", "q"], "--context"),
    (["embed", "--checkpoint", "{d}/run", "--pooling", "max", "t"], "--pooling"),
    (["evaluate", "--checkpoint", "{d}/empty.txt"], "empty.txt"),
    (["evaluate", "--checkpoint", "{d}/run", "--batches", "0"], "--batches"),
    (["data", "show", "-n", "0"], "-n"),
    (["data", "show", "--corpus", "{d}/latin1.txt"], "UTF-8"),
    (["tokenizer", "train", "--corpus", "{d}/empty.txt", "--out", "{d}/t1"], "empty"),
    (["tokenizer", "train", "--vocab-size", "0", "--out", "{d}/t1"], "--vocab-size"),
    (["convert", "{d}/nowhere", "{d}/c1"], "nowhere"),
    (["convert", "{d}/hf", "{d}/run"], "holds a run already"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=lambda c: " ".join(c)[:60]
                         if isinstance(c, list) else None)
def test_bad_input_is_one_clear_line(argv, needle, world, capsys):
    d, _, _ = world
    before = _digest(d / "run")
    argv = [a.replace("{d}", str(d)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    cap = capsys.readouterr()
    assert code == 2, (code, cap.err[-2000:])
    assert "Traceback" not in cap.err
    errors = [l for l in cap.err.splitlines() if "error:" in l]
    assert len(errors) == 1, cap.err
    assert needle in errors[0], errors[0]
    assert _digest(d / "run") == before
