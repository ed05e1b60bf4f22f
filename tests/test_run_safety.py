"""Nothing lost: a kill -9 at every stage of a save, Ctrl-C or SIGTERM at any moment (even
inside the optimizer update), a full disk, a torn log line, a used --out — each leaves a run
that loads and resumes bit-exactly, and says what happened in one line."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from minialbert import checkpoint as ckmod
from minialbert.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from minialbert.cli import main as cli
from minialbert.train import PretrainConfig, pretrain

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
             embedding_size=16)
BASE = dict(vocab_size=1000, seq_len=32, batch_size=8, steps=6, eval_every=3, save_every=3,
            eval_batches=1, lr=5e-3, progress=False, extra=SMALL, preset="tiny")


def train_records(run):
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l]
    return [r for r in recs if "mlm_loss" in r and not r.get("eval")]


def weights(run):
    return load_checkpoint(run)[1]


def same_weights(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run, and a copy of it stopped at step 3."""
    d = tmp_path_factory.mktemp("ref")
    pretrain(PretrainConfig(out=str(d / "full"), **BASE))
    pretrain(PretrainConfig(out=str(d / "half"), **BASE, stop_after=3))
    return d


def copy_run(reference, name, dst):
    shutil.copytree(reference / name, dst)
    return dst


def _child(code, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------ A, E: kill -9

@pytest.mark.parametrize("stage", ckmod.STAGES)
def test_kill_at_every_stage_of_a_save_resumes_exactly(stage, reference, tmp_path):
    run = copy_run(reference, "half", tmp_path / "run")
    # the child resumes at step 3 and is killed (-9) inside the save of step 6
    r = _child(f"""
        import minialbert.checkpoint as c
        c._KILL_AT = {stage!r}
        from minialbert.train import pretrain
        pretrain(out={str(run)!r}, resume=True, progress=False)
    """)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    state = load_checkpoint(run)[2]  # LATEST names a complete checkpoint, whatever the stage
    assert state["step"] in (3, 6)
    # steps 4-6 were computed by the child (it finished the save) or are computed here;
    # either way the same bits as the uninterrupted run in this process (the kernels the
    # child loaded from Numba's cache compute what this process's compiled ones do)
    ref = reference / "full"
    s = pretrain(out=str(run), resume=True, progress=False)
    assert s["step"] == 6
    assert not list(run.glob(".*tmp*")), "a killed save's temporary folder was left behind"
    assert same_weights(weights(run), weights(ref))
    assert [r["loss"] for r in train_records(run)] == [r["loss"] for r in train_records(ref)]


def test_saving_the_step_latest_names_again_never_removes_it(reference, tmp_path):
    run = copy_run(reference, "full", tmp_path / "run")
    cfg, params, state, _, ck = load_checkpoint(run)
    for stage in ckmod.STAGES:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(run, state["step"], params, cfg, state, _crash_after=stage)
        assert load_checkpoint(run)[2]["step"] == 6, stage
    assert (run / "ckpt-00000006").is_dir()


def test_a_full_disk_is_one_clear_line_and_keeps_the_previous_checkpoint(reference, tmp_path,
                                                                         monkeypatch, capsys):
    run = copy_run(reference, "half", tmp_path / "run")

    def full(path, arrays, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckmod, "_write_tensors", full)
    assert cli(["pretrain", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("minialbert: error: ") and "No space left" in err[-1]
    assert str(run) in err[-1] and "LATEST still names ckpt-00000003" in err[-1]
    assert not list(run.glob(".*tmp*"))
    monkeypatch.undo()
    assert load_checkpoint(run)[2]["step"] == 3
    pretrain(out=str(run), resume=True, progress=False)
    assert same_weights(weights(run), weights(reference / "full"))


def test_stale_temporaries_of_dead_processes_are_removed(reference, tmp_path):
    run = copy_run(reference, "half", tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run / f".ckpt-00000006.tmp{dead}").mkdir()
    (run / f".ckpt-00000006.tmp{dead}" / "model.safetensors").write_bytes(b"\0" * 1000)
    (run / f".LATEST.tmp{dead}").write_text("ckpt-00000006\n")
    pretrain(out=str(run), resume=True, progress=False, stop_after=4)
    assert not list(run.glob(f".*tmp{dead}"))


# ------------------------------------------------------------------------------ B: a used --out

def test_a_used_out_is_refused_and_overwrite_starts_over(reference, tmp_path, capsys):
    run = copy_run(reference, "full", tmp_path / "run")
    with pytest.raises(CheckpointError, match="holds a run already.*--resume.*--overwrite"):
        pretrain(PretrainConfig(out=str(run), **dict(BASE, steps=3)))
    assert load_checkpoint(run)[2]["step"] == 6  # untouched
    assert cli(["pretrain", "--out", str(run), "--steps", "2", "--no-progress"]) == 2
    assert "holds a run already" in capsys.readouterr().err
    (run / "notes.txt").write_text("mine")  # not a run's file: overwrite leaves it
    pretrain(PretrainConfig(out=str(run), **dict(BASE, steps=3, save_every=1)), overwrite=True)
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000003"]
    assert load_checkpoint(run)[2]["step"] == 3 and (run / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_is_clear(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert cli(["pretrain", "--out", str(tmp_path / "f"), "--steps", "1", "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_convert_into_a_run_is_refused(reference, tmp_path):
    from minialbert.hf import convert
    run = copy_run(reference, "full", tmp_path / "run")
    convert(run, tmp_path / "hf")
    with pytest.raises(CheckpointError, match="holds a run already"):
        convert(tmp_path / "hf", run)
    assert load_checkpoint(run)[2]["step"] == 6


# ------------------------------------------------------------------------------ C, 5: signals

def test_ctrl_c_inside_the_update_is_taken_at_the_step_boundary(reference, tmp_path, monkeypatch):
    """The signal arrives while the optimizer has updated some tensors and not others: the
    step is finished, saved as what it is, and the resumed run equals the uninterrupted."""
    from minialbert import optim
    calls = {"n": 0}
    original = optim._Moments._state  # every optimizer asks for a tensor's moments once a step

    def state(self, name, p):
        calls["n"] += 1
        if self.t == 3 and calls.get("sent") is None and calls["n"] > 5:
            calls["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, name, p)

    monkeypatch.setattr(optim._Moments, "_state", state)
    run = tmp_path / "run"
    r = pretrain(PretrainConfig(out=str(run), **BASE))
    monkeypatch.undo()
    assert r["interrupted"] and r["exit_code"] == 130 and r["step"] == 3
    assert load_checkpoint(run)[2]["step"] == 3
    pretrain(out=str(run), resume=True, progress=False)
    assert same_weights(weights(run), weights(reference / "full"))


def _start(run, ignore_sigint):
    cmd = [sys.executable, "-m", "minialbert.cli", "pretrain", "--out", str(run), "--steps",
           "500", "--seq-len", "32", "--batch-size", "8", "--vocab-size", "1000", "--preset",
           "tiny", "--save-every", "0", "--eval-every", "0", "--no-progress"]
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=pre)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    return p


@pytest.mark.parametrize("sig,code,ignored", [(signal.SIGINT, 130, True),
                                              (signal.SIGTERM, 143, False)])
def test_ctrl_c_and_sigterm_save_and_exit_nonzero(sig, code, ignored, tmp_path):
    """Also when the process starts with SIGINT ignored (a background job of a
    non-interactive shell): the handler is installed, not inherited."""
    run = tmp_path / "run"
    p = _start(run, ignored)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-2000:]
    assert "interrupted at step" in out and "Traceback" not in err
    state = load_checkpoint(run)[2]
    assert 1 <= state["step"] < 500
    assert len(train_records(run)) == state["step"]


# ------------------------------------------------------------------------------ D: the log

def test_a_torn_last_log_line_is_dropped_with_a_warning(reference, tmp_path, capsys):
    run = copy_run(reference, "half", tmp_path / "run")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 7.1, "mlm_l')  # the disk filled up mid-line
    pretrain(out=str(run), resume=True, progress=False)
    assert "torn" in capsys.readouterr().err
    assert [r["loss"] for r in train_records(run)] == \
        [r["loss"] for r in train_records(reference / "full")]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    f = tmp_path / "log.jsonl"
    f.write_text("old\n")

    def fail(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        atomic_write_text(f, "new\n")
    assert f.read_text() == "old\n" and not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------------------ F: options on resume

def test_resume_applies_the_options_it_may_change_and_refuses_the_rest(reference, tmp_path,
                                                                       capsys):
    run = copy_run(reference, "full", tmp_path / "run")
    evals = sum(1 for l in (run / "log.jsonl").read_text().splitlines() if '"eval"' in l)
    s = pretrain(out=str(run), resume=True, progress=False)  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out and s["step"] == 6
    assert sum(1 for l in (run / "log.jsonl").read_text().splitlines() if '"eval"' in l) == evals
    with pytest.raises(CheckpointError, match="--seq-len cannot change"):
        pretrain(out=str(run), resume=True, progress=False, seq_len=64)
    assert cli(["pretrain", "--out", str(run), "--resume", "--batch-size", "4",
                "--no-progress"]) == 2
    assert "--batch-size cannot change" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="already at step 6"):
        pretrain(out=str(run), resume=True, progress=False, steps=4)
    s = pretrain(out=str(run), resume=True, progress=False, steps=8, lr=1e-3)
    assert s["step"] == 8 and load_checkpoint(run)[2]["run"]["lr"] == 1e-3
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    resumed = [r for r in recs if r.get("resumed")]
    assert resumed == [dict(resumed=True, step=6, changed={"steps": [6, 8], "lr": [5e-3, 1e-3]})]
    assert [r["step"] for r in train_records(run)] == list(range(1, 9))


# ------------------------------------------------------------------------------ G: HF folders

def test_finetune_from_a_hugging_face_folder(tmp_path):
    from minialbert.config import preset
    from minialbert.finetune import finetune
    from minialbert.hf import from_pretrained, save_pretrained
    from minialbert.heads import AlbertForPreTraining
    from minialbert.corpus import default_corpus
    from minialbert.tokenizer import train_tokenizer
    tok = train_tokenizer(default_corpus().sentences(), 1000)
    m = AlbertForPreTraining(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=0)
    save_pretrained(m, tmp_path / "hf", tok)
    loaded = from_pretrained(tmp_path / "hf")
    assert all(v.flags.writeable for v in loaded.params.values())
    s = finetune(out=str(tmp_path / "ft"), init=str(tmp_path / "hf"), epochs=0.01,
                 batch_size=8, seq_len=32, progress=False, save_every=0)
    assert s["step"] >= 1
