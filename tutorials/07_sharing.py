# %% [markdown]
# # 07 — Cross-layer sharing and gradient accumulation
#
# ALBERT applies one layer L times. Its parameters are then those of one layer, and its
# backward pass has one new line: each application *adds* its gradient into the shared
# gradient. We compute the paper's parameter tables from the model's own shapes, and
# prove the `+=`: the shared gradient equals the sum of the gradients of an untied model
# whose layers hold equal copies.

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import write_table  # noqa: E402

from minialbert.config import AlbertConfig, preset  # noqa: E402
from minialbert.heads import AlbertForPreTraining, count_parameters  # noqa: E402
from minialbert.params import layer_prefixes  # noqa: E402

# %% [markdown]
# ## Table 3 of the paper: ALBERT-base, all-shared and not-shared, per E
# Counts of Hugging Face's `AlbertModel` (V = 30000; pooler included, MLM/SOP heads not),
# rounded, next to the same count without the pooler (and without the E→H projection at
# E = H, which the original TF code does not build; Hugging Face always does), and the
# paper's figures. Which column the paper matches is itself a finding (chapter 14).

# %%
POOLER = 768 * 768 + 768


def m(n):
    return f"{n / 1e6:.0f}M"


def paper_row(sharing, E, paper):
    n = count_parameters(preset("albert-base-v2", embedding_size=E, sharing=sharing))["total"]
    lean = n - POOLER - (E * 768 + 768 if E == 768 else 0)
    match = "rounded" if m(n) == paper else "w/o pooler" if m(lean) == paper else "neither"
    return (sharing, E, f"{n:,}", m(n), m(lean), paper, match)


paper3 = {("all", 64): "10M", ("all", 128): "12M", ("all", 256): "16M", ("all", 768): "31M",
          ("none", 64): "87M", ("none", 128): "89M", ("none", 256): "93M",
          ("none", 768): "108M"}
rows = [paper_row(s, E, paper3[(s, E)]) for s in ("none", "all") for E in (64, 128, 256, 768)]
write_table("07_table3.md", ["sharing", "E", "HF AlbertModel", "rounded", "w/o pooler (and E→H "
                             "at E=H)", "paper", "paper matches"], rows)
assert count_parameters(preset("albert-base-v2"))["total"] == 11_683_584
assert all(r[-1] != "neither" for r in rows)

# %% [markdown]
# ## Table 4: what is shared
# ALBERT-base, E = 128. Shared attention only, shared FFN only, all, none — computed from
# the model's parameter shapes (our names for the two partial modes).

# %%
paper4 = {"all": "12M", "attention": "64M", "ffn": "38M", "none": "89M"}
rows = []
for sharing in ("none", "attention", "ffn", "all"):
    parts = count_parameters(preset("albert-base-v2", sharing=sharing))
    r = paper_row(sharing, 128, paper4[sharing])
    rows.append((sharing, f"{parts['encoder attention']:,}", f"{parts['encoder FFN']:,}")
                + r[2:])
    assert r[-1] != "neither", r
write_table("07_table4.md", ["shared", "attention params", "FFN params", "HF AlbertModel",
                             "rounded", "w/o pooler", "paper", "paper matches"], rows)

# %% [markdown]
# ## The `+=`, proved
# A small all-shared model, and the same network untied: L layers, each holding a copy of
# the one shared layer. Same loss; and the shared gradient is the sum over the L copies.

# %%
cfg = AlbertConfig(vocab_size=30, embedding_size=6, hidden_size=8, num_hidden_layers=4,
                   num_attention_heads=2, intermediate_size=16, max_position_embeddings=10,
                   initializer_range=0.2)
m = AlbertForPreTraining(cfg, seed=0, dtype=np.float64)
ucfg = cfg.replace(sharing="none", num_hidden_groups=4)
up = {k: v.copy() for k, v in m.params.items() if "albert_layer_groups" not in k}
shared_attn, shared_ffn = layer_prefixes(cfg, 0)
for l in range(4):
    a, f = layer_prefixes(ucfg, l)
    for k, v in m.params.items():
        if k.startswith(shared_attn):
            up[a + k[len(shared_attn):]] = v.copy()
        elif k.startswith(shared_ffn):
            up[f + k[len(shared_ffn):]] = v.copy()
mu = AlbertForPreTraining(ucfg, params=up)
rng = np.random.default_rng(0)
batch = dict(input_ids=rng.integers(1, 30, (2, 7)), labels=np.where(rng.random((2, 7)) < 0.3,
             rng.integers(0, 30, (2, 7)), -100), sentence_order_label=np.array([0, 1]))
batch["labels"][0, 1] = 3
out, c = m.forward(**batch)
out_u, cu = mu.forward(**batch)
g, gu = m.backward(c), mu.backward(cu)
name = "ffn.weight"
per_layer = [gu[layer_prefixes(ucfg, l)[1] + name] for l in range(4)]
rows = [(f"‖gradient of layer {l}'s copy‖", f"{np.linalg.norm(x):.6f}")
        for l, x in enumerate(per_layer)]
rows += [("‖sum of the four copies' gradients‖ (the norm of the sum, not the sum of "
          "the norms above)", f"{np.linalg.norm(sum(per_layer)):.6f}"),
         ("‖shared gradient‖", f"{np.linalg.norm(g[shared_ffn + name]):.6f}"),
         ("largest difference, shared gradient vs the sum",
          f"{np.abs(g[shared_ffn + name] - sum(per_layer)).max():.1e}")]
write_table("07_accumulation.md", [f"∂L/∂ {name} (float64)", "value"], rows)
print("same loss:", out["loss"], out_u["loss"])
assert abs(out["loss"] - out_u["loss"]) < 1e-12
assert np.allclose(g[shared_ffn + name], sum(per_layer), rtol=1e-10, atol=1e-14)
