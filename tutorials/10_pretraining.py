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

from minialbert.train import (PretrainConfig, evaluate_checkpoint, fill_mask,  # noqa: E402
                              load_pretrained, pretrain)

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
if not QUICK:
    assert ev["mlm_loss"] < summary["unigram_cross_entropy"] - 0.5
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
ev2 = evaluate_checkpoint(run, batches=pc.eval_batches, batch_size=pc.batch_size)
print({k: round(v, 4) for k, v in ev2.items() if isinstance(v, float)})
assert abs(ev2["mlm_loss"] - ev["mlm_loss"]) < 1e-5
