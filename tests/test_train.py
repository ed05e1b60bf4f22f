"""Pretraining: it learns, it resumes exactly, its checkpoints survive crashes, and bad
input stops it with a clear message."""
import json

import numpy as np
import pytest

from minialbert.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minialbert.cli import main as cli
from minialbert.data import DataError
from minialbert.inference import fill_mask
from minialbert.optim import learning_rate
from minialbert.train import (PretrainConfig, TrainingError, load_pretrained, pretrain,
                              seconds_per_step, steps_in_budget)

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
             embedding_size=16)


def cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), vocab_size=1000, seq_len=32, batch_size=8, steps=6,
                eval_every=3, save_every=3, eval_batches=2, lr=5e-3, progress=False,
                extra=SMALL, preset="tiny")
    base.update(kw)
    return PretrainConfig(**base)


def losses(run):
    return [json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines()
            if "eval" not in json.loads(l)]


def test_a_short_run_lowers_the_heldout_loss(tmp_path):
    s = pretrain(cfg(tmp_path, steps=40, eval_every=40, save_every=0, lr=1e-2, seq_len=64,
                     batch_size=16))
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first = np.mean([r["mlm_loss"] for r in recs[:5] if not r.get("eval")])
    # from ~ln(V) = 6.9 (uniform guessing) at the start; 40 steps of 16 x 64 tokens
    assert s["heldout"]["mlm_loss"] < min(first, np.log(1000)) - 0.5, (first, s["heldout"])
    assert (tmp_path / "run" / "summary.json").exists()


def test_resume_continues_exactly(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    pretrain(cfg(tmp_path, out=str(a), micro_batches=2))
    r = pretrain(cfg(tmp_path, out=str(b), micro_batches=2, stop_after=3))
    assert r["interrupted"] and r["step"] == 3
    pretrain(PretrainConfig(out=str(b), progress=False), resume=True)
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 6
    assert la == lb  # bitwise: the same floats, step for step
    pa = load_checkpoint(a)[1]
    pb = load_checkpoint(b)[1]
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_crash_mid_save_leaves_the_previous_checkpoint(tmp_path):
    pretrain(cfg(tmp_path, steps=3, save_every=3))
    run = tmp_path / "run"
    cfg_, params, state, _, ck = load_checkpoint(run)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 99, {k: v * 0 for k, v in params.items()}, cfg_, state,
                        _crash_after="model")
    cfg2, params2, state2, _, ck2 = load_checkpoint(run)
    assert ck2 == ck and state2["step"] == 3
    assert all(np.array_equal(params[k], params2[k]) for k in params)


def test_corrupt_and_missing_checkpoints_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    pretrain(cfg(tmp_path, steps=3, save_every=3))
    ck = load_checkpoint(tmp_path / "run")[4]
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "run")
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "run")]) == 2


def test_tokenizer_that_does_not_match_is_refused(tmp_path):
    from minialbert.tokenizer import train_tokenizer
    from minialbert.corpus import default_corpus
    pretrain(cfg(tmp_path, steps=3, save_every=3))
    other = train_tokenizer(default_corpus().sentences(), 900, tmp_path / "tok900")
    ck = load_checkpoint(tmp_path / "run")[4]
    other.save(ck)  # swap the checkpoint's tokenizer for another one
    with pytest.raises(CheckpointError, match="900 pieces but the model's vocab_size is 1000"):
        load_pretrained(tmp_path / "run")


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    pretrain(cfg(tmp_path, steps=6, save_every=3, stop_after=3))
    run = tmp_path / "run"
    c, params, state, opt, ck = load_checkpoint(run)
    params["albert.pooler.weight"][:] = np.nan
    bad = tmp_path / "bad"
    save_checkpoint(bad, 3, params, c, state, None, None)
    import shutil
    shutil.copy(ck / "optimizer.safetensors", bad / "ckpt-00000003")
    shutil.copy(ck / "spiece.model", bad / "ckpt-00000003")
    st = json.loads((bad / "ckpt-00000003" / "state.json").read_text())
    st.update(optimizer=state["optimizer"], tokenizer_sha256=state["tokenizer_sha256"])
    st.pop("optimizer_sha256", None)
    (bad / "ckpt-00000003" / "state.json").write_text(json.dumps(st))
    with pytest.raises(TrainingError, match="the loss is nan at step 4"):
        pretrain(PretrainConfig(out=str(bad), progress=False), resume=True)
    assert load_checkpoint(bad)[2]["step"] == 3  # the last good checkpoint is still there


def test_sequence_longer_than_positions_is_clear(tmp_path):
    with pytest.raises(DataError, match="max_position_embeddings"):
        pretrain(cfg(tmp_path, seq_len=600))


def test_changed_corpus_warns_with_both_checksums(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("".join(f"Sentence number {i} is here. And another {i} too.\n\n"
                                            for i in range(300)))
    pretrain(cfg(tmp_path, corpus=[str(tmp_path / "c.txt")], steps=3, save_every=3, stop_after=2,
                 vocab_size=60, eval_batches=1))
    (tmp_path / "c.txt").write_text("".join(f"Other sentence {i} now. Then more {i} here.\n\n"
                                            for i in range(300)))
    pretrain(PretrainConfig(out=str(tmp_path / "run"), progress=False), resume=True)
    err = capsys.readouterr().err
    assert "the corpus changed" in err and err.count("…") >= 2


def test_a_changed_split_of_the_same_corpus_warns(tmp_path, capsys, monkeypatch):
    """A checkpoint records which documents it trained on (the training split's SHA-256):
    resumed under a split rule that changed (as a9a4263 changed the files' rule), the same
    corpus gives other training documents, and the run says so."""
    import zlib

    from minialbert.corpus import Corpus
    (tmp_path / "c.txt").write_text("".join(f"Sentence number {i} is here. And another {i} too.\n\n"
                                            for i in range(300)))
    pretrain(cfg(tmp_path, corpus=[str(tmp_path / "c.txt")], steps=3, save_every=2, stop_after=2,
                 vocab_size=60, eval_batches=1))
    assert "train_split_sha256" in load_checkpoint(tmp_path / "run")[2]
    pretrain(PretrainConfig(out=str(tmp_path / "run"), steps=4, progress=False), resume=True)
    assert "split" not in capsys.readouterr().err  # the same rule: no warning
    real = Corpus.split

    def other_rule(self, heldout_fraction=0.05):  # another hash of the same keys
        keys, self.keys = self.keys, [str(zlib.crc32(k.encode())) for k in self.keys]
        try:
            return real(self, heldout_fraction)
        finally:
            self.keys = keys
    monkeypatch.setattr(Corpus, "split", other_rule)
    pretrain(PretrainConfig(out=str(tmp_path / "run"), steps=5, progress=False), resume=True)
    err = capsys.readouterr().err
    assert "split into training and held-out documents differently" in err, err
    assert "the corpus changed" not in err


def test_fill_mask_and_cli(tmp_path, capsys):
    pretrain(cfg(tmp_path, steps=3, save_every=3))
    model, tok, _ = load_pretrained(tmp_path / "run")
    res = fill_mask(model, tok, "the [MASK] of a function", top_k=3)
    assert len(res) == 1 and len(res[0]) == 3
    assert abs(sum(p for _, p in res[0])) <= 1.0 + 1e-6
    assert cli(["fill-mask", "--checkpoint", str(tmp_path / "run"), "a [MASK] b"]) == 0
    assert cli(["fill-mask", "--checkpoint", str(tmp_path / "run"), "no mask"]) == 2
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "run"), "--batches", "1"]) == 0
    assert "SOP accuracy" in capsys.readouterr().out


def test_evaluate_uses_the_runs_own_set_and_agrees_with_it(tmp_path, capsys):
    from minialbert.train import evaluate_checkpoint
    s = pretrain(cfg(tmp_path, steps=3, save_every=3, eval_every=3))
    ev = evaluate_checkpoint(tmp_path / "run")
    for k in ("mlm_loss", "mlm_acc", "sop_acc", "predictions", "pairs"):
        assert ev[k] == pytest.approx(s["heldout"][k], rel=1e-6), k
    assert ev["unigram_cross_entropy"] == pytest.approx(s["unigram_cross_entropy"], rel=1e-9)
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "run")]) == 0
    assert "evaluated on 2 batches of 8 × 32" in capsys.readouterr().out


def test_no_progress_still_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["pretrain", "--out", str(out), "--steps", "2", "--seq-len", "32", "--batch-size",
                "8", "--vocab-size", "1000", "--preset", "tiny", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1 shared layer × 4 applications" in text
    assert f"checkpoint: {out}" in text and "done: 2 steps" in text


def test_a_corpus_folder_says_which_files_it_skipped(tmp_path, capsys):
    from minialbert.corpus import read_corpus
    (tmp_path / "a.txt").write_text("One sentence here. Another one there.\n")
    (tmp_path / "b.md").write_text("# not read\n")
    read_corpus(tmp_path)
    assert "skipped 1 others (b.md)" in capsys.readouterr().err


def test_any_model_setting_from_the_command_line(tmp_path, capsys):
    """--set FIELD=VALUE reaches the model for any AlbertConfig field (converted to the
    field's type); a field that does not exist or a value of the wrong type is one line,
    exit status 2, before anything is written."""
    from minialbert.config import AlbertConfig
    base = ["pretrain", "--steps", "1", "--seq-len", "32", "--batch-size", "4",
            "--vocab-size", "600", "--preset", "tiny", "--eval-every", "0", "--save-every", "0",
            "--no-progress", "--hidden-size", "32", "--num-attention-heads", "2",
            "--intermediate-size", "64"]
    out = tmp_path / "run"
    assert cli(base + ["--out", str(out), "--set", "embedding_size=16", "--set", "sharing=none",
                       "--set", "num_hidden_layers=2", "--set", "layer_norm_eps=1e-6"]) == 0
    cfg = AlbertConfig.load(load_checkpoint(out)[4] / "config.json")
    assert (cfg.embedding_size, cfg.sharing, cfg.num_hidden_layers, cfg.num_hidden_groups,
            cfg.layer_norm_eps) == (16, "none", 2, 2, 1e-6)
    capsys.readouterr()
    for bad, said in (("nope=1", "not an AlbertConfig field"),
                      ("embedding_size=big", "embedding_size takes an integer"),
                      ("embedding_size", "write field=value")):
        assert cli(base + ["--out", str(tmp_path / "bad"), "--set", bad]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def few_batches(tmp_path, **kw):
    """A config on a corpus of 4 batches of 8 (fast to prepare: no tokenizer of the
    standard library's documentation to train)."""
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    (tmp_path / "c.txt").write_text("".join(
        f"The {words[i % 11]} saw {words[(i * 3) % 11]} {i}. It met {words[(i * 7) % 11]}.\n\n"
        for i in range(40)))
    return cfg(tmp_path, corpus=[str(tmp_path / "c.txt")], vocab_size=50, eval_batches=1,
               eval_every=0, save_every=0, **kw)


def test_a_time_budget_becomes_a_step_count_that_the_run_keeps(tmp_path, capsys):
    # --time-budget without --steps: the steps are counted once, at the start (timed steps
    # of the run's own model and batches, and its optimizer on copies), then fixed: saved
    # in every checkpoint, the learning-rate schedule ends with them, and the counting
    # changes nothing: the run is the run that --steps with its count makes. On a corpus of
    # fewer batches than the count times (4; it times 7), the epoch is gone round again (it
    # was an IndexError: "epoch 0 has 4 batches of 8; asked for batch 4").
    s = pretrain(few_batches(tmp_path, steps=None, time_budget=3.0))
    said = capsys.readouterr().out
    total = int(said.split("time budget 3 s at ")[1].split(": ")[1].split(" steps")[0])
    assert s["step"] == total >= 1
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if not r.get("eval")]
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    pc = cfg(tmp_path)
    assert [r["lr"] for r in steps] == [  # the schedule runs to the counted end
        learning_rate(i, pc.lr, total, int(pc.warmup * total), pc.schedule)
        for i in range(total)]
    state = load_checkpoint(tmp_path / "run")[2]
    assert state["total_steps"] == state["step"] == total
    pretrain(few_batches(tmp_path, out=str(tmp_path / "b"), steps=total))
    assert losses(tmp_path / "b") == losses(tmp_path / "run")  # bitwise


def test_the_time_per_step_skips_the_first_steps_and_takes_the_median():
    # a clock that each step moves on by that step's duration: the first two (kernels
    # loaded from Numba's cache, first uses) are not timed, the median of the next five is
    durations = [1.9, 0.31, 0.2, 0.16, 0.26, 0.18, 0.22, 99.0]
    now, calls = [0.0], []

    def run_step(i):
        calls.append(i)
        now[0] += durations[i]

    assert seconds_per_step(run_step, clock=lambda: now[0]) == pytest.approx(0.2)
    assert calls == [0, 1, 2, 3, 4, 5, 6]  # two not timed, five timed, no more
    assert seconds_per_step(lambda i: None, warm=0, timed=4,
                            clock=iter([0, 1, 0, 3, 0, 2, 0, 10]).__next__) == 2.5  # even


@pytest.mark.parametrize("budget, spent, per_step, every, cost", [
    (600, 11, 0.21, 50, 0.4), (120, 11, 0.28, 50, 0.6), (40, 5, 0.2, 0, 0.3),
    (1000, 30, 4.0, 10, 7.0), (10, 9.99, 1.0, 50, 0.5)])
def test_the_steps_and_evaluations_fit_the_budget(budget, spent, per_step, every, cost):
    def seconds(n):  # n steps, an evaluation every `every` steps and one at the end
        return n * per_step + ((n // every if every else 0) + 1) * cost

    n = steps_in_budget(budget, spent, per_step, every, cost)
    assert n >= 1
    if n > 1 or spent + seconds(1) <= budget:
        assert spent + seconds(n) <= budget + 1e-9
    # and not far short of it: less than a step and two evaluations left over (the count
    # is floored, and n / every evaluations are allowed for where n // every run)
    assert n == 1 or budget - spent - seconds(n) < per_step + 2 * cost



def test_evaluation_freezes_the_model_for_its_duration(monkeypatch):
    """evaluate_batches runs a frozen pass (weights packed once, nothing kept for a
    backward) and gives the numbers of the plain forward passes, bit for bit; a model it
    found unfrozen it leaves unfrozen (training goes on), a frozen one frozen."""
    from minialbert.config import AlbertConfig
    from minialbert.evaluation import evaluate_batches
    from minialbert.heads import AlbertForPreTraining
    cfg = AlbertConfig(vocab_size=60, embedding_size=8, hidden_size=24, num_hidden_layers=2,
                       num_attention_heads=3, intermediate_size=40, max_position_embeddings=32)
    m = AlbertForPreTraining(cfg, seed=3)
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(2):
        ids = rng.integers(5, 60, (4, 16))
        am = np.ones((4, 16), np.int64)
        am[2, 11:] = 0
        lab = np.where(rng.random((4, 16)) < 0.2, ids, -100)
        batches.append(dict(input_ids=ids, token_type_ids=np.zeros((4, 16), np.int64),
                            attention_mask=am, labels=lab,
                            sentence_order_label=rng.integers(0, 2, 4)))
    seen = []
    forward = type(m).forward

    def spy(self, *a, **kw):
        seen.append(self.frozen)
        return forward(self, *a, **kw)
    monkeypatch.setattr(type(m), "forward", spy)
    got = evaluate_batches(m, batches)
    assert seen == [True, True] and not m.frozen
    monkeypatch.setattr(type(m), "forward", forward)
    nll = n = 0.0
    for b in batches:  # the plain (training-mode) passes
        out, _ = m.forward(**b, mlm_path="masked")
        k = int((b["labels"] != -100).sum())
        nll += float(out["mlm_loss"]) * k
        n += k
    assert got["mlm_loss"] == nll / n
    m.freeze()
    assert evaluate_batches(m, batches) == got and m.frozen
