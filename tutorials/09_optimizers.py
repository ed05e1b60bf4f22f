# %% [markdown]
# # 09 — Optimizers: AdamW, LAMB, warm-up and decay
#
# ALBERT was pretrained with LAMB at batch 4096. LAMB is Adam's update rescaled per tensor
# so that every tensor moves by the same *relative* amount: ‖Δw‖/‖w‖ = learning rate.
# `book/09_optimizers.md` derives it; here we watch it happen.

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.config import AlbertConfig  # noqa: E402
from minialbert.corpus import default_corpus  # noqa: E402
from minialbert.data import PretrainingData, tokenize_corpus  # noqa: E402
from minialbert.heads import AlbertForPreTraining  # noqa: E402
from minialbert.params import zeros_like_params  # noqa: E402
from minialbert.optim import (AdamW, AdamWeightDecay, Lamb, clip_by_global_norm,  # noqa: E402
                              learning_rate, no_decay)
from minialbert.tokenizer import train_tokenizer  # noqa: E402

# %% [markdown]
# ## A tiny ALBERT and real batches

# %%
corpus = default_corpus()
tok = train_tokenizer(corpus.sentences(), 1000)
data = PretrainingData(tokenize_corpus(corpus, tok), tok, max_seq_length=64, seed=0)
cfg = AlbertConfig(vocab_size=tok.vocab_size, embedding_size=32, hidden_size=64,
                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                   max_position_embeddings=64)
KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")


def grads_of(model, batch):
    out, cache = model.forward(**{k: batch[k] for k in KEYS})
    return float(out["loss"]), model.backward(cache)


# %% [markdown]
# ## LAMB's relative step
# One step from the same weights and gradients. For every tensor LAMB treats (not
# LayerNorm, not biases), ‖Δw‖/‖w‖ equals the learning rate; Adam's relative steps
# differ by orders of magnitude between tensors.

# %%
model = AlbertForPreTraining(cfg, seed=0)
_, g = grads_of(model, data.batch(0, 0, 32))
lr = 1e-3
rows = []
names = ["albert.embeddings.word_embeddings.weight",
         "albert.encoder.embedding_hidden_mapping_in.weight",
         "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
         "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight",
         "albert.pooler.weight", "sop_classifier.classifier.weight"]
rel = {}
for label, opt in (("LAMB", Lamb()), ("AdamWeightDecay", AdamWeightDecay())):
    p = {k: v.copy() for k, v in model.params.items()}
    opt.step(p, g, lr)
    rel[label] = {k: np.linalg.norm(p[k] - model.params[k]) / np.linalg.norm(model.params[k])
                  for k in names}
for k in names:
    rows.append((k.replace("albert.encoder.albert_layer_groups.0.albert_layers.0.", "layer."),
                 f"{rel['LAMB'][k]:.2e}", f"{rel['AdamWeightDecay'][k]:.2e}"))
write_table("09_relative_step.md", ["tensor", "LAMB ‖Δw‖/‖w‖", "Adam ‖Δw‖/‖w‖"], rows)
assert all(abs(rel["LAMB"][k] / lr - 1) < 1e-3 for k in names if not no_decay(k))

# %% [markdown]
# ## Warm-up and decay
# ALBERT's (and BERT's) schedule decays linearly *from step 0*, so at the end of warm-up the
# rate is already below its peak; Hugging Face's decays from the end of warm-up.

# %%
T, W = 1000, 100
steps = np.arange(T + 1)
albert = [learning_rate(s, 1.0, T, W, "albert") for s in steps]
hf = [learning_rate(s, 1.0, T, W, "hf") for s in steps]
write_table("09_schedule.md", ["step", "ALBERT", "Hugging Face"],
            [(s, f"{albert[s]:.3f}", f"{hf[s]:.3f}") for s in (50, 100, 500, 900)])
assert albert[W] == 0.9 and hf[W] == 1.0

# %% [markdown]
# ## A short race
# The same batches, the same number of steps, three optimizers at a few learning rates.

# %%
n_steps = 8 if QUICK else 60
rows = []
results = {}
for name, make, lrs in (("LAMB", Lamb, (3e-3, 1e-2)), ("AdamW", AdamW, (1e-3, 3e-3)),
                        ("AdamWeightDecay", AdamWeightDecay, (1e-3, 3e-3))):
    for lr in lrs:
        m = AlbertForPreTraining(cfg, seed=0)
        opt = make() if make is not AdamW else AdamW(exclude=no_decay)
        curve = []
        for s in range(n_steps):
            loss, g = grads_of(m, data.batch(0, s, 32))
            clip_by_global_norm(g, 1.0)
            opt.step(m.params, g, learning_rate(s, lr, n_steps, n_steps // 10))
            curve.append(loss)
        results[(name, lr)] = curve
        rows.append((name, lr, f"{curve[0]:.3f}", f"{np.mean(curve[-5:]):.3f}"))
write_table("09_race.md", ["optimizer", "lr", "first loss", f"mean of last 5 (of {n_steps})"], rows)
assert all(np.mean(c[-3:]) < c[0] for c in results.values())

# %% [markdown]
# ## One pass a tensor
# Written as NumPy lines (`m *= b1`, `m += (1 - b1) * g`, `np.sqrt(v)`, ...), an AdamW step
# makes ten passes over every tensor, each a trip through memory for a tensor the size of
# the model. `optim_kernels.py` does the same arithmetic in one loop a tensor: it reads p, g,
# m and v once and writes p, m and v once. The same operations in the same order, each
# rounded as NumPy rounds it: the same bits (checked below, and in tests/test_optim.py).
# `fused = False` runs the NumPy lines. Timed here on albert-base-v2's parameters (quick
# mode: this chapter's small model).

# %%
from minialbert.config import preset, shape_of  # noqa: E402
from minialbert.demo import best_times, cpu_name  # noqa: E402
from minialbert.heads import init_params  # noqa: E402

big = model.params if QUICK else init_params(
    AlbertConfig(**shape_of(preset("albert-base-v2", vocab_size=30000))), seed=0)
n_params = sum(v.size for v in big.values())
g_big = {k: np.random.default_rng(1).standard_normal(v.shape).astype(v.dtype) * 1e-3
         for k, v in big.items()}
rows = []
for name, make in (("AdamW", AdamW), ("LAMB", Lamb), ("AdamWeightDecay", AdamWeightDecay)):
    fused, plain = make(), make()
    plain.fused = False
    a, b = ({k: v.copy() for k, v in big.items()} for _ in range(2))
    for _ in range(2):  # two steps, so the moments are not zero
        fused.step(a, g_big, 1e-3)
        plain.step(b, g_big, 1e-3)
    assert all(np.array_equal(a[k], b[k]) for k in big), name  # the same bits
    t_fused, t_plain = best_times([lambda: fused.step(a, g_big, 1e-5),
                                   lambda: plain.step(b, g_big, 1e-5)])
    rows.append((name, f"{t_plain * 1e3:.1f}", f"{t_fused * 1e3:.1f}",
                 f"{t_plain / t_fused:.1f}x"))
print(f"{n_params / 1e6:.1f}M parameters, on {cpu_name()}")
write_table("09_fused_step.md", ["optimizer", "NumPy lines, ms a step",
                                 "one pass a tensor, ms", "faster by"], rows)

# %%
p = plt()
if p is not None:
    fig, ax = p.subplots(1, 2, figsize=(10, 3.2))
    ax[0].plot(steps, albert, label="ALBERT (decay from step 0)")
    ax[0].plot(steps, hf, "--", label="Hugging Face (decay after warm-up)")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("lr / peak")
    ax[0].legend()
    for (name, lr), c in results.items():
        ax[1].plot(c, label=f"{name} {lr:g}")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("training loss")
    ax[1].legend(fontsize=7)
    savefig(fig, "09_optimizers.png")
