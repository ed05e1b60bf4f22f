# %% [markdown]
# # 10 — Pretraining on a CPU
#
# The job `minialbert pretrain` runs: the small preset (one shared layer applied 4 times,
# H 128, E 64, V 4000) on the embedded corpus for ten minutes. This chapter runs
# it (in quick mode: a few steps of a smaller model), then reads what it wrote: the log,
# the curves, the held-out numbers, and what the model fills in for `[MASK]`.
# (The full run takes the ten minutes of its time budget.)

# %%
import json
import pathlib
import shutil
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, write_table  # noqa: E402

from minialbert.inference import fill_mask  # noqa: E402
from minialbert.train import PretrainConfig, evaluate_checkpoint, load_pretrained, pretrain  # noqa: E402

# the run's own folder (checkpoints, token cache) stays out of the book: runs/ is ignored by git
run = (OUT / "10_run") if QUICK else pathlib.Path(__file__).resolve().parents[1] / "runs" / "tutorial10"
if run.exists():
    shutil.rmtree(run)
if QUICK:
    pc = PretrainConfig(out=str(run), steps=12, batch_size=8, seq_len=64, vocab_size=1000,
                        eval_every=6, save_every=6, preset="tiny", progress=False,
                        extra=dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                   embedding_size=32))
else:
    pc = PretrainConfig(out=str(run))  # the defaults: what the README's first command runs
summary = pretrain(pc)

# %% [markdown]
# ## What it reached

# %%
ev = summary["heldout"]
rows = [("wall time", f"{summary['wall_seconds'] / 60:.1f} min"),
        ("steps", summary["step"]),
        ("training throughput", f"{summary['tokens_per_s']:.0f} tokens/s "
                                f"({summary['threads']} threads)"),
        ("held-out MLM cross-entropy", f"{ev['mlm_loss']:.3f}"),
        ("unigram baseline (no context)", f"{summary['unigram_cross_entropy']:.3f}"),
        ("held-out MLM accuracy", f"{ev['mlm_acc']:.3f}"),
        ("held-out SOP accuracy (chance 0.5)", f"{ev['sop_acc']:.3f} over {ev['pairs']} pairs"),
        ("corpus", f"Python {summary['python']} docs, SHA-256 {summary['corpus_sha256'][:12]}…")]
write_table("10_summary.md", ["", "value"], rows)
# what holds on any machine, however many steps it fits in the budget: the model has
# learned something (how far below the unigram baseline it gets depends on the CPU's speed)
assert np.isfinite(ev["mlm_loss"]) and ev["mlm_loss"] < np.log(pc.vocab_size) + 0.1
recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
train = [r for r in recs if not r.get("eval")]
assert np.mean([r["mlm_loss"] for r in train[-3:]]) < np.mean([r["mlm_loss"] for r in train[:3]])

# %% [markdown]
# ## The curves
# Written by the run itself (`curves.png` in the run folder).

# %%
if (run / "curves.png").exists():
    shutil.copy(run / "curves.png", OUT / "10_curves.png")

# %% [markdown]
# ## What the model fills in

# %%
model, tok, _ = load_pretrained(run)
texts = ["Return a new [MASK] containing the items.",
         "The [MASK] statement is used to define a function.",
         "If the key is not found, a [MASK] is raised.",
         "Open the file and return a file [MASK]."]
rows = []
for t in texts:
    cands = fill_mask(model, tok, t, top_k=5)[0]
    rows.append((t, ", ".join(f"{w} ({p:.2f})" for w, p in cands)))
write_table("10_fill_mask.md", ["text", "top 5 for [MASK]"], rows)

# %% [markdown]
# ## Evaluating the checkpoint from disk gives the same numbers

# %%
ev2 = evaluate_checkpoint(run)  # by default on the run's own held-out set
print(ev2["set"])
print({k: round(v, 4) for k, v in ev2.items() if isinstance(v, float)})
assert abs(ev2["mlm_loss"] - ev["mlm_loss"]) < 1e-5

# %% [markdown]
# ## Where the time goes
# One training step of the run's model on one of its batches, with every kernel call
# timed by kind (`minialbert.profiler.KernelProfile`): first with the padding kept (the
# encoder on all B x T positions, as Hugging Face runs it), then with the padding removed
# (what the trainer does: `model.unpad = True`, every layer on the real tokens only).

# %%
from minialbert import kernels  # noqa: E402
from minialbert.corpus import default_corpus  # noqa: E402
from minialbert.data import PretrainingData, tokenize_corpus  # noqa: E402
from minialbert.demo import cpu_name  # noqa: E402
from minialbert.kernels.matmul import ISA  # noqa: E402
from minialbert.params import zeros_like_params  # noqa: E402
from minialbert.optim import make_optimizer  # noqa: E402
from minialbert.profiler import KernelProfile  # noqa: E402
import time  # noqa: E402

data = PretrainingData(tokenize_corpus(default_corpus(), tok, run / "cache"), tok, pc.seq_len,
                      seed=0)
b = data.batch(0, 0, pc.batch_size)
b = {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels",
                       "sentence_order_label")}
pad = 1 - b["attention_mask"].mean()
opt = make_optimizer(pc.optimizer)
grads = zeros_like_params(model.params)


def one_step():
    for g in grads.values():
        g.fill(0)
    o, c = model.forward(**b, train=True, mlm_path=pc.mlm_path)
    model.backward(c, grads)
    opt.step(model.params, grads, 1e-6)


profiles, reps = {}, 2 if QUICK else 10
for unpad in (False, True):
    model.unpad = unpad
    one_step()  # warm
    with KernelProfile() as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            one_step()
        total = time.perf_counter() - t0
    profiles[unpad] = (prof, total)
kinds = [k for k, _, _ in profiles[False][0].rows(profiles[False][1])]
rows = []
for k in kinds:
    cells = []
    for unpad in (False, True):
        prof, total = profiles[unpad]
        sec = dict((kk, s) for kk, s, _ in prof.rows(total)).get(k, 0.0)
        cells.append(f"{sec * 1e3 / reps:.1f} ({sec / total:.0%})")
    rows.append([k] + cells)
rows.append(["**step**"] + [f"**{profiles[u][1] * 1e3 / reps:.1f}**" for u in (False, True)])
rows.append(["the GEMMs' arithmetic rate (GFLOP/s)"] +  # counted by KernelProfile
            [f"{profiles[u][0].gemm_gflops():.0f}" for u in (False, True)])
write_table("10_profile.md", [f"ms per step (share): {pc.batch_size} x {pc.seq_len}, "
                              f"{pad:.0%} padding", "padding kept", "padding removed"], rows)
(OUT / "10_profile_machine.md").write_text(
    f"Measured on: {cpu_name()}, vector ISA {ISA}, {kernels.get_threads()} threads; "
    f"{'quick mode' if QUICK else 'the ten-minute run'}'s model, optimizer {pc.optimizer}.\n")
assert all(profiles[u][0].calls["GEMM (dense layers, MLM decoder)"] > 0 for u in (False, True))
# removing the padding removes arithmetic: fewer flops counted in the same number of steps
assert profiles[True][0].gemm_flops < profiles[False][0].gemm_flops or pad == 0

# %% [markdown]
# The profile counts attention's products too (QK^T and PV, and the backward's four):
# `prof.attention_flops`, each query against the keys of its own sequence. Its rate is
# the arithmetic over attention's whole time, the softmax's included, so it sits below the
# GEMMs'; and removing the padding removes attention's arithmetic as well.

# %%
att = "attention (QK^T, softmax, PV)"
for unpad in (False, True):
    prof, _ = profiles[unpad]
    print(f"padding {'removed' if unpad else 'kept   '}: attention "
          f"{prof.attention_flops / reps / 1e9:.2f} GFLOP a step at "
          f"{prof.attention_flops / max(prof.seconds[att], 1e-12) / 1e9:.0f} GFLOP/s, "
          f"the GEMMs {prof.gemm_gflops():.0f} GFLOP/s")
assert all(profiles[u][0].attention_flops > 0 for u in (False, True))
assert profiles[True][0].attention_flops < profiles[False][0].attention_flops or pad == 0

# %% [markdown]
# ## No work on rows no head reads
# The trainer also sets `model.skip_unread = True`: the last layer makes only the rows the
# heads read (the masked positions and [CLS]); its keys and values still come from every
# row. The same loss and gradients, in less time: the same step as above, both ways, on
# your machine (book chapter 10 gives a benchmark's figures).

# %%
model.unpad = True
skip_runs = {}
for skip in (False, True):  # the loss and gradients, on the same weights both ways
    model.skip_unread = skip
    g = zeros_like_params(model.params)
    o, c = model.forward(**b, mlm_path=pc.mlm_path)
    model.backward(c, g)
    skip_runs[skip] = [float(o["loss"]), g]
    assert (c.enc.encoder.layers[-1].attention.rows is not None) == (
        skip and pc.mlm_path == "masked")  # with the masked path, some rows are skipped
for skip in (False, True):  # then the time of a step (with its optimizer step) each way
    model.skip_unread = skip
    one_step()  # warm
    t0 = time.perf_counter()
    for _ in range(reps):
        one_step()
    skip_runs[skip].append((time.perf_counter() - t0) * 1e3 / reps)
model.skip_unread = False
(loss0, g0, ms0), (loss1, g1, ms1) = skip_runs[False], skip_runs[True]
print(f"the last layer on every row: {ms0:.1f} ms a step; on the read rows: {ms1:.1f} ms "
      f"({ms0 / ms1:.2f}x); loss {loss0:.6f} and {loss1:.6f}")
assert abs(loss0 - loss1) <= 1e-5 * abs(loss0)
assert all(np.allclose(g1[k], g0[k], rtol=1e-3, atol=1e-6) for k in g0)

# %% [markdown]
# ## A longer run: when the predictions start to use context
# The ten-minute model fills nearly every `[MASK]` with "the": it sits close to the
# unigram plateau, where the best a model can do is to predict each masked piece from its
# frequency alone, and "the" is the most frequent piece of this corpus. A run several
# times as long, with the same settings otherwise, shows when that changes. It is a new
# run (its learning rate schedule spans its own length), not the ten-minute one resumed.
# Its length: `MINIALBERT_LONG_MINUTES` (default 40: four times the first).

# %%
import dataclasses  # noqa: E402
import os  # noqa: E402

from minialbert.corpus import load_corpus  # noqa: E402
from minialbert.train import eval_set  # noqa: E402

long_min = float(os.environ.get("MINIALBERT_LONG_MINUTES", "40"))
long_run = (OUT / "10_long_run") if QUICK else run.parent / "tutorial10_long"
if long_run.exists():
    shutil.rmtree(long_run)
if QUICK:
    pc_long = dataclasses.replace(pc, out=str(long_run), steps=3 * pc.steps)
else:
    pc_long = PretrainConfig(out=str(long_run), time_budget=long_min * 60)
summary_long = pretrain(pc_long)
long_model, long_tok, _ = load_pretrained(long_run)
short_model, _, _ = load_pretrained(run)
held_text = load_corpus(pc.corpus, pc.format).split(pc.heldout_fraction)[1]


def prediction_stats(m, t):
    """On the run's held-out set (the batches its evaluations used): accuracy, how often
    the top prediction is the most frequent masked piece, how many distinct pieces are
    predicted."""
    held = eval_set(tokenize_corpus(held_text, t), t, pc.seq_len, pc.batch_size,
                    pc.eval_batches, pc.seed + 1)
    preds, labels = [], []
    for hb in held:
        out, _ = m.forward(**{k: hb[k] for k in ("input_ids", "token_type_ids",
                                                  "attention_mask", "labels",
                                                  "sentence_order_label")},
                           mlm_path="masked")
        lab = hb["labels"].reshape(-1)
        preds.append(out["prediction_logits"].argmax(1))
        labels.append(lab[out["mlm_rows"]])
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    top = np.bincount(labels).argmax()  # the most frequent masked piece
    return dict(acc=float((preds == labels).mean()), top=float((preds == top).mean()),
                distinct=len(np.unique(preds)), n=len(labels), piece=t.id_to_piece(top))


s_short, s_long = prediction_stats(short_model, tok), prediction_stats(long_model, long_tok)
ev_long = summary_long["heldout"]
rows = [("wall time", f"{summary['wall_seconds'] / 60:.1f} min",
         f"{summary_long['wall_seconds'] / 60:.1f} min"),
        ("steps", summary["step"], summary_long["step"]),
        ("held-out MLM cross-entropy (unigram "
         f"{summary['unigram_cross_entropy']:.3f})", f"{ev['mlm_loss']:.3f}",
         f"{ev_long['mlm_loss']:.3f}"),
        ("held-out MLM accuracy", f"{s_short['acc']:.3f}", f"{s_long['acc']:.3f}"),
        (f"top prediction = the most frequent piece ({s_short['piece']!r})",
         f"{s_short['top']:.0%}", f"{s_long['top']:.0%}"),
        ("distinct pieces predicted", f"{s_short['distinct']} of {s_short['n']}",
         f"{s_long['distinct']} of {s_long['n']}"),
        ("held-out SOP accuracy", f"{ev['sop_acc']:.3f}", f"{ev_long['sop_acc']:.3f}")]
write_table("10_long_run.md", ["", "the ten-minute run", f"the {long_min:g}-minute run"
                               if not QUICK else "the longer run"], rows)
rows = []
for t in texts:
    a = fill_mask(short_model, tok, t, top_k=3)[0]
    b = fill_mask(long_model, long_tok, t, top_k=3)[0]
    rows.append((t, ", ".join(f"{w} ({p:.2f})" for w, p in a),
                 ", ".join(f"{w} ({p:.2f})" for w, p in b)))
write_table("10_long_fill_mask.md", ["text", "ten minutes: top 3", "longer: top 3"], rows)
# what holds on any machine: both runs are finite and the longer one did more steps
assert np.isfinite(ev_long["mlm_loss"]) and summary_long["step"] > summary["step"]
