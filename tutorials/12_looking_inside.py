# %% [markdown]
# # 12 — Looking inside
#
# Two models pretrained the same way on the same data for the same number of steps — one
# with ALBERT's all-shared layer, one with nothing shared — and what can be read off them:
# how smoothly the hidden states change from one layer application to the next (the
# paper's Figure 1), where the heads look, what the word table learned, what the model
# fills in, and when sentence order is easy.

# %%
import pathlib
import shutil
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.corpus import default_corpus  # noqa: E402
from minialbert.data import tokenize_corpus  # noqa: E402
from minialbert.inference import fill_mask  # noqa: E402
from minialbert.lookinside import (attention_entropy, attention_page,  # noqa: E402
                                   layer_transitions, nearest_neighbours)
from minialbert.train import PretrainConfig, eval_set, load_pretrained, pretrain  # noqa: E402

runs = (OUT / "12_runs") if QUICK else pathlib.Path(__file__).resolve().parents[1] / "runs" / "tutorial12"
STEPS = 12 if QUICK else 600
common = dict(steps=STEPS, eval_every=0, save_every=0, progress=False, seed=0)
if QUICK:
    common.update(batch_size=8, seq_len=64, vocab_size=1000, preset="tiny",
                  extra=dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128,
                             embedding_size=32, num_attention_heads=2))
models = {}
for name, sharing in (("all-shared", "all"), ("not-shared", "none")):
    out = runs / name
    if out.exists():
        shutil.rmtree(out)
    extra = dict(common.get("extra", {}), sharing=sharing)
    pretrain(PretrainConfig(out=str(out), **{**common, "extra": extra}))
    models[name] = load_pretrained(out)[:2]
model, tok = models["all-shared"]
cfg = model.config
print({k: (m.config.sharing, sum(v.size for v in m.params.values())) for k, (m, _) in models.items()})

# a held-out batch: the last documents of the corpus (the runs held out 10 %)
held = default_corpus().split(0.1)[1]
batch = eval_set(tokenize_corpus(held, tok), tok, 64, 16, 1, seed=1)[0]

# %% [markdown]
# ## The paper's Figure 1: how much each layer application changes the hidden states
#
# For every layer application l, the L2 distance and the cosine similarity between its
# input and its output, averaged over the real tokens of the held-out batch.

# %%
curves = {}
for name, (m, _) in models.items():
    o, _ = m.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                     output_hidden_states=True)  # every layer's output, as HF gives them
    real = batch["attention_mask"].astype(bool)
    hs = [h[real] for h in o["hidden_states"]]
    curves[name] = layer_transitions(hs)
L = cfg.num_hidden_layers
rows = []
for name, (l2, cos) in curves.items():
    rows.append([name, "L2"] + [f"{x:.2f}" for x in l2])
    rows.append([name, "cosine"] + [f"{x:.3f}" for x in cos])
write_table("12_smoothness.md", ["model", "input vs output"] + [f"layer {l + 1}" for l in range(L)],
            rows)


def spread(x):  # how much a curve varies from one layer to the next
    return float(np.abs(np.diff(x)).mean()) if len(x) > 1 else 0.0


smooth = {name: (spread(l2), spread(cos)) for name, (l2, cos) in curves.items()}
(OUT / "12_smoothness_summary.md").write_text(
    f"Mean change from one layer application to the next — L2: all-shared "
    f"{smooth['all-shared'][0]:.3f}, not-shared {smooth['not-shared'][0]:.3f}; cosine: "
    f"all-shared {smooth['all-shared'][1]:.4f}, not-shared {smooth['not-shared'][1]:.4f} "
    f"({STEPS} steps each{', quick mode' if QUICK else ''}).\n")
for l2, cos in curves.values():
    assert np.all(np.isfinite(l2)) and np.all(np.abs(cos) <= 1 + 1e-9)
p = plt()
if p is not None:
    fig, axes = p.subplots(1, 2, figsize=(9, 3.4))
    for name, (l2, cos) in curves.items():
        axes[0].plot(range(1, L + 1), l2, marker="o", label=name)
        axes[1].plot(range(1, L + 1), cos, marker="o", label=name)
    axes[0].set_title("L2 distance, input vs output")
    axes[1].set_title("cosine similarity, input vs output")
    for ax in axes:
        ax.set_xlabel("layer application")
    axes[0].legend()
    savefig(fig, "12_smoothness.png")

# %% [markdown]
# ## Where the heads look
#
# One sentence through the all-shared model, every layer application and head, as one
# offline page (`minialbert attention --html` writes the same). And how spread out the
# attention is: the mean entropy of a row, in nats (ln T if a query looked everywhere
# alike, 0 if at one key).

# %%
sentence = "Return a new list containing all items from the iterable in ascending order."
enc = tok(sentence)
o, _ = model.encode(np.array([enc["input_ids"]]), np.array([enc["token_type_ids"]]),
                    output_attentions=True)
maps = np.stack([a[0] for a in o["attentions"]])
tokens = [tok.id_to_piece(i) for i in enc["input_ids"]]
(OUT / "12_attention.html").write_text(attention_page(maps, tokens, sentence), encoding="utf-8")
assert np.allclose(maps.sum(-1), 1.0, atol=1e-4)
ent_rows = []
for name, (m, _) in models.items():
    o, _ = m.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                     output_attentions=True)
    per = []
    for a in o["attentions"]:  # [B, N, T, T]: only real query rows of each sequence
        vals = []
        for b in range(a.shape[0]):
            n = int(batch["attention_mask"][b].sum())
            vals.append(attention_entropy(a[b, :, :n, :n][None])[0])
        per.append(float(np.mean(vals)))
    ent_rows.append([name] + [f"{e:.2f}" for e in per])
write_table("12_entropy.md", ["model"] + [f"layer {l + 1}" for l in range(L)], ent_rows)

# %% [markdown]
# ## What the word table learned: nearest neighbours
#
# Cosine similarity in the E-dimensional word-embedding table of the all-shared model.

# %%
words = ["list", "file", "return", "string", "error", "thread"]
nn_ = nearest_neighbours(model.params["albert.embeddings.word_embeddings.weight"], tok, words)
write_table("12_neighbours.md", ["word", "nearest pieces (cosine)"],
            [[w, ", ".join(f"{p} ({c:.2f})" for p, c in v)] for w, v in nn_.items()])
assert len(nn_) >= 3

# %% [markdown]
# ## What it fills in
#
# Held-out sentences with one word masked; the top three answers of each model.

# %%
probes = ["Return a new [MASK] containing the items.", "The file is opened in binary [MASK].",
          "This function raises a [MASK] if the key is missing.",
          "The default value is [MASK]."]
rows = []
for s in probes:
    cells = [s]
    for name, (m, t) in models.items():
        got = fill_mask(m, t, s, top_k=3)[0]
        cells.append(", ".join(f"{w} {p_:.3f}" for w, p_ in got))
    rows.append(cells)
write_table("12_fill_mask.md", ["sentence", "all-shared", "not-shared"], rows)

# %% [markdown]
# ## When is sentence order easy?
#
# SOP accuracy of the all-shared model on held-out pairs, split by how many word pieces
# the two segments share (the fraction of B's distinct pieces that also occur in A).

# %%
sop_batches = eval_set(tokenize_corpus(held, tok), tok, 64, 32, 2 if QUICK else 12, seed=2)
overlap, right = [], []
for b in sop_batches:
    o, _ = model.forward(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    pred = o["sop_logits"].argmax(1)
    for i in range(len(pred)):
        ids, tt, am = b["input_ids"][i], b["token_type_ids"][i], b["attention_mask"][i]
        a = set(ids[(tt == 0) & (am == 1)][1:-1].tolist())
        bb = set(ids[(tt == 1) & (am == 1)][:-1].tolist())
        overlap.append(len(a & bb) / max(len(bb), 1))
        right.append(pred[i] == b["sentence_order_label"][i])
overlap, right = np.array(overlap), np.array(right)
cut = np.median(overlap)
groups = [("segments share fewer pieces (below the median)", overlap < cut),
          ("segments share more pieces (at or above the median)", overlap >= cut)]
write_table("12_sop_overlap.md", ["held-out pairs", "pairs", "SOP accuracy"],
            [[g, int(m.sum()), f"{right[m].mean():.3f}" if m.any() else "—"] for g, m in groups]
            + [["all", len(right), f"{right.mean():.3f}"]])
print("done")
