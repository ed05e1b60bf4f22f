# %% [markdown]
# # 08 — Pretraining objectives: MLM with a tied decoder, and SOP
#
# ALBERT pretrains on two losses, added: masked-language modelling (predict the masked
# tokens) and sentence-order prediction (were the two segments swapped?). This chapter's
# model half: the heads, their losses and backward, and the two ways to compute MLM
# logits. (The data half — how masks and segment pairs are made — comes with the data
# pipeline.)

# %%
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, write_table  # noqa: E402

from minialbert.config import AlbertConfig, preset  # noqa: E402
from minialbert.gradcheck import gradcheck  # noqa: E402
from minialbert.heads import AlbertForPreTraining  # noqa: E402
from minialbert.params import WORD  # noqa: E402

# %% [markdown]
# ## The heads
# MLM: `dense H→E`, `gelu_new`, `LayerNorm(E)`, then logits `e @ word_embeddings.T + bias`
# — the decoder *is* the input table (tied), so it costs no parameters.
# SOP: dropout, then a 2-way classifier on the pooled `[CLS]` vector.
# `loss = CE(MLM logits, labels ≠ −100) + CE(SOP logits, order label)`.

# %%
cfg = AlbertConfig(vocab_size=60, embedding_size=8, hidden_size=12, num_hidden_layers=2,
                   num_attention_heads=3, intermediate_size=24, max_position_embeddings=16,
                   initializer_range=0.3)
m = AlbertForPreTraining(cfg, seed=0, dtype=np.float64)
rng = np.random.default_rng(0)
ids = rng.integers(5, 60, (2, 10))
labels = np.full((2, 10), -100)
labels[0, [2, 5]] = ids[0, [2, 5]]
labels[1, 7] = ids[1, 7]
ids[labels != -100] = 4  # [MASK]
sop = np.array([0, 1])
out, cache = m.forward(ids, labels=labels, sentence_order_label=sop)
print(f"loss {out['loss']:.4f} = MLM {out['mlm_loss']:.4f} + SOP {out['sop_loss']:.4f}")
assert abs(out["loss"] - out["mlm_loss"] - out["sop_loss"]) < 1e-12
print("parameters of the MLM head beyond the word table:",
      sum(v.size for k, v in m.params.items() if k.startswith("predictions.")))

# %% [markdown]
# ## The backward through the heads, checked
# The word table receives two gradients (the decoder's and the lookup's), the decoder bias
# one, the SOP classifier one — all checked by finite differences.

# %%
g = m.backward(cache)
f = lambda: m.forward(ids, labels=labels, sentence_order_label=sop)[0]["loss"]  # noqa: E731
rows = []
for k in (WORD, "predictions.bias", "predictions.dense.weight", "predictions.LayerNorm.weight",
          "sop_classifier.classifier.weight", "albert.pooler.weight"):
    r = gradcheck(f, m.params[k], g[k], k, max_entries=40)
    rows.append((k, f"{r.max_rel_error:.1e}"))
    assert r.max_rel_error < 1e-6, r
write_table("08_heads_gradcheck.md", ["parameter", "max rel. error"], rows)

# %% [markdown]
# ## Two ways to compute MLM logits
# Hugging Face computes logits at every position, `[B·T, V]`, and the loss ignores all
# but the ~15% masked ones. The original TF code gathers the masked positions first and
# computes `[n_masked, V]`. Same loss, same gradients — and far less work.

# %%
out_m, cache_m = m.forward(ids, labels=labels, sentence_order_label=sop, mlm_path="masked")
g_m = m.backward(cache_m)
assert abs(out_m["loss"] - out["loss"]) < 1e-12
assert all(np.allclose(g_m[k], g[k], rtol=1e-9, atol=1e-13) for k in g)
print("masked path: same loss and gradients")

big = preset("tiny") if not QUICK else preset("tiny", num_hidden_layers=1, hidden_size=64,
                                               num_attention_heads=2, intermediate_size=128)
B, T = (8, 64) if QUICK else (32, 128)
mb = AlbertForPreTraining(big, seed=0)
ids = rng.integers(5, big.vocab_size, (B, T))
labels = np.where(rng.random((B, T)) < 0.15, ids, -100)
rows = []
for path in ("all", "masked"):
    mb.forward(ids, labels=labels, sentence_order_label=np.zeros(B, np.int64), mlm_path=path)
    t = time.perf_counter()
    o, c = mb.forward(ids, labels=labels, sentence_order_label=np.zeros(B, np.int64),
                      mlm_path=path)
    mb.backward(c)
    dt = time.perf_counter() - t
    rows.append((path, o["prediction_logits"].shape, f"{o['prediction_logits'].nbytes / 2**20:.1f}",
                 f"{dt * 1e3:.0f}"))
write_table("08_mlm_paths.md", ["MLM path", "logits shape", "logits MB", "fwd+bwd ms"], rows)

# %% [markdown]
# ## The data half: what the model sees
# Segment pairs come from consecutive sentences of one document: a chunk is filled up to
# a target length, split at a random sentence boundary into A and B, and swapped half the
# time (SOP label 1). Then n-gram masking: whole words, n ≤ 3 with p(n) ∝ 1/n, 15% of
# the tokens, each masked token 80% `[MASK]` / 10% random / 10% unchanged.

# %%
from minialbert.cli import show_instance  # noqa: E402
from minialbert.corpus import default_corpus  # noqa: E402
from minialbert.data import PretrainingData, tokenize_corpus  # noqa: E402
from minialbert.tokenizer import train_tokenizer  # noqa: E402

corpus = default_corpus()
tok = train_tokenizer(corpus.sentences(), 1000 if QUICK else 4000)
data = PretrainingData(tokenize_corpus(corpus, tok), tok, max_seq_length=64, seed=0)
batch = data.batch(0, 0, 4)
shown = [show_instance(tok, batch, i) for i in range(2)]
print("\n\n".join(shown))
(pathlib.Path(OUT) / "08_instances.txt").write_text("\n\n".join(shown) + "\n")

# %% [markdown]
# ## The sampled n and the n you get
# The draw follows 6/11, 3/11, 2/11 — but near the prediction budget the original falls
# back to shorter n-grams, so the spans actually masked are shorter than the draw says.

# %%
stats = {}
spans = []
for i in range(10 if QUICK else 60):
    b = data.batch(1, i, 16, stats)
    for row in b["labels"]:
        pos = np.flatnonzero(row != -100)
        if len(pos):
            runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
            spans += [len(r) for r in runs]
n = np.array(stats["n"])
spans = np.array(spans)
rows = [(k, f"{p:.3f}", f"{(n == k).mean():.3f}") for k, p in zip((1, 2, 3), (6 / 11, 3 / 11, 2 / 11))]
write_table("08_ngram.md", ["n", "p(n) = (1/n)/Σ", "sampled"], rows)
write_table("08_spans.md", ["masked run length (tokens)", "share"],
            [(k, f"{(spans == k).mean():.3f}") for k in range(1, 6)] +
            [("> 5", f"{(spans > 5).mean():.3f}")])
assert abs((n == 1).mean() - 6 / 11) < 0.05

# %% [markdown]
# ## How much is masked
# 15% of the tokens, rounded, but never more than `max_predictions_per_seq`: at the
# original's 512 tokens and 20 predictions that cap is 20/512 ≈ 3.9%.

# %%
rows = []
for T, P in ((64, 20), (128, 20), (512, 20), (512, 76)):
    rows.append((T, P, f"{min(P, max(1, round(T * 0.15))) / T:.1%}"))
write_table("08_rate.md", ["tokens", "max predictions", "share masked (full sequence)"], rows)
