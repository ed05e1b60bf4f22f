"""Data parallelism over MPI (distributed.py): 2 ranks on loopback equal 1 process with the
same global batch — to 1e-6 by default, bit for bit with --deterministic; a killed rank
stops the whole job within a bounded time, leaving a checkpoint that 1 process resumes in
the same data order; errors are said once; without MPI nothing imports it.

These run `mpiexec` from the mpich wheel (pip install -e '.[mpi]'; the test extra has it).
Under CI a missing mpiexec or mpi4py is a failure (conftest turns the skip into one)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest

from minialbert.checkpoint import load_checkpoint
from minialbert.distributed import FlatGradients, Single, checksum, my_pieces
from minialbert.train import PretrainConfig, pretrain

MODEL = ["--preset", "tiny", "--hidden-size", "32", "--embedding-size", "16",
         "--num-attention-heads", "2", "--intermediate-size", "64", "--num-hidden-layers", "2"]
SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
             embedding_size=16)


def _mpiexec():
    exe = shutil.which("mpiexec") or os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[mpi]')")
    if not os.path.exists(exe):
        pytest.skip("no mpiexec (pip install -e '.[mpi]' installs the mpich wheel)")
    return exe


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small corpus file (the first documents of the embedded one) and a tokenizer for it,
    so that every process starts quickly and no rank trains its own."""
    from minialbert.corpus import load_corpus
    from minialbert.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("dp")
    docs = load_corpus(None, "auto").documents[:400]
    (d / "corpus.txt").write_text("\n\n".join("\n".join(s) for s in docs) + "\n",
                                  encoding="utf-8")
    train_tokenizer((s for doc in docs for s in doc), 600, out_dir=d / "tok")
    return d


def _args(setup, out, *extra):
    return (["pretrain", "--out", str(out), "--corpus", str(setup / "corpus.txt"),
             "--format", "lines", "--tokenizer", str(setup / "tok"), "--seq-len", "32",
             "--batch-size", "8", "--micro-batches", "2", "--eval-batches", "1",
             "--no-progress", "--threads", "1"] + MODEL + list(extra))


def _run(cmd, timeout=240, **kw):
    env = dict(os.environ, **kw.pop("env", {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _mpi(setup, n, out, *extra, timeout=240):
    return _run([_mpiexec(), "-n", str(n), sys.executable, "-m", "minialbert.cli"] +
                _args(setup, out, *extra), timeout=timeout)


def _one(setup, out, *extra):
    return _run([sys.executable, "-m", "minialbert.cli"] + _args(setup, out, *extra))


def _losses(run):
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l]
    return [r["loss"] for r in recs if "mlm_loss" in r and not r.get("eval")]


@pytest.mark.parametrize("deterministic", [False, True], ids=["allreduce", "deterministic"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(setup, tmp_path, deterministic):
    flags = ["--steps", "10", "--save-every", "5", "--eval-every", "5"] + \
        (["--deterministic"] if deterministic else [])
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _one(setup, one, *flags)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _mpi(setup, 2, two, *flags)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    assert "× 2 ranks" in r2.stdout and r2.stdout.count("done: 10 steps") == 1  # root only
    la, lb = _losses(one), _losses(two)
    assert len(la) == len(lb) == 10
    pa, pb = load_checkpoint(one)[1], load_checkpoint(two)[1]
    if deterministic:
        assert la == lb  # bit for bit, step for step
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)
        return
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    top = max(float(np.abs(v).max()) for v in pa.values())
    for k in pa:
        # key.bias has a true gradient of 0 (softmax ignores a shift of every score): its
        # values are rounding noise (~1e-9) and are compared against the largest weight
        scale = top if k.endswith("attention.key.bias") else float(np.abs(pa[k]).max())
        assert float(np.abs(pa[k] - pb[k]).max()) <= 1e-6 * scale, k
    # the allreduce's time is logged per step, on the root
    recs = [json.loads(l) for l in (two / "log.jsonl").read_text().splitlines()]
    assert all(r["comm_s"] >= 0 for r in recs if "mlm_loss" in r and not r.get("eval"))


def _rank_pid(tag, rank, timeout=60):
    """The pid of the process that is rank ``rank`` of the job whose environment has
    MINIALBERT_TEST_TAG=tag (mpiexec passes the environment to its ranks)."""
    want = {f"MINIALBERT_TEST_TAG={tag}".encode(), f"PMI_RANK={rank}".encode()}
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                env = set(open(f"/proc/{p}/environ", "rb").read().split(b"\0"))
                cmd = open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                continue
            if want <= env and b"minialbert.cli" in cmd and b"mpiexec" not in cmd:
                return int(p)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} found")


def test_a_killed_rank_stops_the_job_and_one_process_resumes_in_the_same_order(setup,
                                                                               tmp_path):
    run = tmp_path / "run"
    tag = str(tmp_path)
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "minialbert.cli"] + _args(
        setup, run, "--steps", "100000", "--save-every", "3", "--eval-every", "0",
        "--deterministic")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, MINIALBERT_TEST_TAG=tag))
    try:
        pid = _rank_pid(tag, 1)
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "LATEST").exists():
            time.sleep(0.05)
        assert (run / "LATEST").exists(), "no checkpoint was written"
        os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        out, err = p.communicate(timeout=60)
        waited = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and waited < 30, (p.returncode, waited, err[-2000:])
    state = load_checkpoint(run)[2]  # the last checkpoint loads
    assert state["step"] >= 3 and state["ranks"] == 2
    end = state["step"] + 5
    # resumed by one process: the same data order, the same bits as one process that ran
    # the same 100000-step schedule without a stop (deterministic mode in both)
    pretrain(PretrainConfig(out=str(run), progress=False, threads=1, deterministic=True,
                            stop_after=end), resume=True)
    ref = tmp_path / "ref"
    pretrain(PretrainConfig(out=str(ref), corpus=[str(setup / "corpus.txt")], format="lines",
                            tokenizer=str(setup / "tok"), seq_len=32, batch_size=8,
                            micro_batches=2, eval_batches=1, progress=False, threads=1,
                            preset="tiny", extra=SMALL, steps=100000, save_every=3,
                            eval_every=0, deterministic=True, stop_after=end))
    assert len(_losses(ref)) == end
    assert _losses(run) == _losses(ref)
    a, b = load_checkpoint(run)[1], load_checkpoint(ref)[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_errors_are_said_once_and_every_rank_exits(setup, tmp_path):
    # micro-batches that the ranks cannot share: found by every rank alike
    r = _mpi(setup, 2, tmp_path / "a", "--steps", "2", "--micro-batches", "1", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("must be a multiple of the number of ranks (2)") == 1
    # an --out that is a file: found by the root, handed to the other rank
    (tmp_path / "f").write_text("")
    r = _mpi(setup, 2, tmp_path / "f", "--steps", "2", timeout=120)
    assert r.returncode == 2 and r.stderr.count("is a file, not a folder") == 1, r.stderr


def test_single_process_never_imports_mpi(tmp_path):
    code = ("import sys; from minialbert.cli import build_parser; build_parser(); "
            "from minialbert.distributed import world; w = world(); "
            "print(w.size, 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.split() == ["1", "False"], r.stderr


def test_flat_gradients_are_views_into_one_buffer_and_pieces_cover_the_batch():
    params = {"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)}
    g = FlatGradients(params, rows=2)
    g.views["a"][1, 2] = 7
    g.views["b"][4] = 3
    assert g.flat[1 * 4 + 2] == 7 and g.flat[12 + 4] == 3 and g.nbytes == 17 * 4
    g.row_views[1]["b"][0] = 5
    assert g.rows[1, 12] == 5 and g.rows[0].sum() == 0
    assert list(my_pieces(Single(), 3)) == [0, 1, 2]

    class Two(Single):
        size = 2

    w = Two()
    w.rank = 1
    assert list(my_pieces(w, 4)) == [2, 3]
    with pytest.raises(Exception, match="multiple of the number of ranks"):
        my_pieces(w, 3)
    assert checksum(params) == checksum({k: v.copy() for k, v in params.items()})
    assert checksum(params) != checksum({**params, "b": params["b"] * 2})
