# %% [markdown]
# # 11 — Fine-tuning and inference
#
# A pretrained ALBERT is a starting point: `minialbert finetune` adds a head
# (heads.py: sequence / token classification, span QA, multiple choice), trains the whole
# network on a labelled task, and `minialbert classify / answer / embed` use the result.
# This chapter fine-tunes on the embedded default task — *which area of the standard
# library does this passage document?* (7 classes) — twice: from the chapter-10
# pretrained checkpoint, and from random weights of the same shape and tokenizer. The gap
# is what pretraining bought. Then: inference, attention maps, layer-wise LR decay.

# %%
import json
import pathlib
import shutil
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.finetune import FinetuneConfig, finetune, layerwise_lr_scales  # noqa: E402
from minialbert.inference import Predictor  # noqa: E402
from minialbert.tasks import default_task  # noqa: E402
from minialbert.train import PretrainConfig, pretrain  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
runs = (OUT / "11_runs") if QUICK else ROOT / "runs" / "tutorial11"
if runs.exists():
    shutil.rmtree(runs)
pre = ROOT / "runs" / "tutorial10"
if QUICK or not (pre / "LATEST").exists():  # quick: a tiny model pretrained for a few steps
    pre = runs / "pretrain"
    pretrain(PretrainConfig(out=str(pre), steps=6 if QUICK else None, batch_size=8,
                            vocab_size=1000 if QUICK else 4000, progress=False,
                            extra=dict(num_hidden_layers=2, hidden_size=64,
                                       intermediate_size=128, embedding_size=32)
                            if QUICK else {}))

# %% [markdown]
# ## The task
# Passages (up to three sentences of one docstring) labelled with the area of the module
# they document. Train and dev are split by document with pretraining's own held-out
# hash, so the dev passages come from documents the pretrained model never read.

# %%
task = default_task()
counts = np.bincount([e.label for e in task.train], minlength=len(task.labels))
write_table("11_task.md", ["area", "train passages", "dev passages"],
            [(name, int(counts[i]), sum(e.label == i for e in task.dev))
             for i, name in enumerate(task.labels)])
print("majority-class baseline on dev:", round(task.majority_baseline(), 3))

# %% [markdown]
# ## Pretrained start against a from-scratch start

# %%
common = dict(init=str(pre), progress=False, save_every=0, epochs=0.03 if QUICK else 3,
              lr=1e-3, batch_size=32, seq_len=128)
res = {}
for name, kw in (("pretrained", {}), ("from scratch", {"from_scratch": True})):
    res[name] = finetune(FinetuneConfig(out=str(runs / name.replace(" ", "_")), **common, **kw))
rows = [(name, s["step"], f"{s['dev']['accuracy']:.3f}", f"{s['dev']['macro_f1']:.3f}",
         f"{s['wall_seconds']:.0f} s") for name, s in res.items()]
rows.append(("majority class", "-", f"{task.majority_baseline():.3f}", "-", "-"))
write_table("11_results.md", ["start", "steps", "dev accuracy", "dev macro-F1", "time"], rows)
assert all(0 <= s["dev"]["accuracy"] <= 1 for s in res.values())
if not QUICK:  # what the chapter claims, checked on every full run
    assert res["pretrained"]["dev"]["accuracy"] > task.majority_baseline()

# %%
p = plt()
if p is not None:
    fig, ax = p.subplots(figsize=(6, 3.5))
    for name in res:
        log = [json.loads(x) for x in (runs / name.replace(" ", "_") / "log.jsonl").open()]
        ev = [r for r in log if r.get("eval")]
        ax.plot([r["step"] for r in ev], [r["accuracy"] for r in ev], "o-", label=name)
    ax.axhline(task.majority_baseline(), color="gray", ls=":", label="majority class")
    ax.set_xlabel("step")
    ax.set_ylabel("dev accuracy")
    ax.legend()
    savefig(fig, "11_finetune.png")

# %% [markdown]
# ## Inference
# `Predictor.load` takes a run/checkpoint folder (or a Hugging Face folder) and serves
# the head it was saved with.

# %%
clf = Predictor.load(runs / "pretrained")
texts = ["Send the message to the SMTP server and wait for the reply.",
         "Acquire the lock before the worker thread reads the queue."]
for t, r in zip(texts, clf.classify(texts, top_k=3)):
    print(t, "->", ", ".join(f"{lab} {prob:.2f}" for lab, prob in r))
emb = clf.embed(texts, pooling="mean")
print("embedding shape", emb.shape)
att, tokens = clf.attentions(texts[0])
print("attention maps", att.shape, "rows sum to 1:", np.allclose(att.sum(-1), 1, atol=1e-5))
# A predictor's model is frozen: its forward pass keeps nothing for a backward (each
# layer's activations are freed as the next one runs), and a backward says so.
enc = clf.tok.batch_encode(texts, max_length=clf.max_length)
out, cache = clf.model.encode(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
assert cache.encoder.layers == []
try:
    clf.model.encode_backward(None, np.ones_like(out["pooler_output"]), cache, {})
except RuntimeError as e:
    print("a backward through a frozen pass:", e)
else:
    raise AssertionError("a backward through a frozen pass ran")
# As in Hugging Face, the hidden states of every layer come only when asked for (without
# them, a layer's output is freed once the next layer has read it).
assert out["hidden_states"] is None
asked, _ = clf.model.encode(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"],
                            output_hidden_states=True)
print("hidden states on request:", len(asked["hidden_states"]), "arrays of",
      asked["hidden_states"][0].shape)
assert np.array_equal(asked["hidden_states"][-1], out["last_hidden_state"])

# %% [markdown]
# ## Layer-wise learning-rate decay
# With all-shared weights the encoder is one group, so the depths are: embeddings (0),
# the shared group (1), pooler and head (2); the rate is lr × decay^(2 − depth).

# %%
scales = layerwise_lr_scales(clf.model.params, clf.model.config, 0.8)
write_table("11_llrd.md", ["parameter", "LR multiplier (decay 0.8)"],
            [(k, f"{scales[k]:.2f}") for k in ("albert.embeddings.word_embeddings.weight",
             "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight",
             "albert.pooler.weight", "classifier.weight")])
