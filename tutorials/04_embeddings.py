# %% [markdown]
# # 04 — Factorized embeddings
#
# BERT maps each of V tokens straight to an H-wide vector: V·H parameters. ALBERT maps
# to a narrow E-wide vector and then projects E → H: V·E + E·H. With V = 30000, H = 768
# and E = 128 that is 3.9M instead of 23M. `book/04_embeddings.md` explains why the
# narrow table loses little. Here we count, look up, and differentiate.

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import QUICK, write_table  # noqa: E402

from minialbert.config import AlbertConfig  # noqa: E402
from minialbert.gradcheck import gradcheck  # noqa: E402
from minialbert.kernels import embedding_backward, embedding_forward  # noqa: E402
from minialbert.heads import AlbertForPreTraining  # noqa: E402
from minialbert.params import WORD  # noqa: E402

# %% [markdown]
# ## Counting
# The embedding part of the model for V = 30000, H = 768, per E.

# %%
V, H = 30000, 768
rows = []
for E in (64, 128, 256, 768):
    factorized = V * E + E * H + H  # table + projection E -> H (its bias has H entries)
    rows.append((E, f"{V * H:,}", f"{factorized:,}", f"{factorized / (V * H):.2f}"))
write_table("04_counts.md", ["E", "BERT-style V·H", "ALBERT V·E + E·H + H", "ratio"], rows)
assert rows[1][2] == f"{30000 * 128 + 128 * 768 + 768:,}"

# %% [markdown]
# ## The lookup is a gather; its backward is a scatter-add
# A batch of ids `[B, T]` selects rows of the `[V, E]` table. The gradient of the table
# is zero except at the rows that were looked up, and a row looked up twice gets both
# gradients *added*. Repeated ids are the rule (every `[CLS]`, every "the").

# %%
rng = np.random.default_rng(0)
table = rng.standard_normal((10, 4))
ids = np.array([3, 1, 3, 3, 0, 7])
out = embedding_forward(ids, table)  # [6, 4]
assert np.array_equal(out, table[ids])
dout = rng.standard_normal((6, 4))
dtable = np.zeros_like(table)
embedding_backward(ids, dout, dtable, -1)
expected = np.zeros_like(table)
np.add.at(expected, ids, dout)  # NumPy's unbuffered scatter-add, the reference
assert np.allclose(dtable, expected)
print("row 3 was looked up 3 times; its gradient is the sum of 3 rows of dout:",
      np.allclose(dtable[3], dout[[0, 2, 3]].sum(0)))
res = gradcheck(lambda: (embedding_forward(ids, table) * dout).sum(), table, dtable, "table")
print(res)
assert res.max_rel_error < 1e-7

# %% [markdown]
# ## The padding row, and the word table's two gradients
# Hugging Face builds the word table with `padding_idx=0`: row 0 gets *no* gradient
# from the lookup. But ALBERT's MLM decoder is the same `[V, E]` matrix, transposed
# (weights tied): the logits are `e @ word_embeddings.T`. So the word table's gradient
# has two parts — the scatter-add of the lookup, and the decoder's `dlogits.T @ e` —
# and row 0 still gets the second.

# %%
cfg = AlbertConfig(vocab_size=40, embedding_size=6, hidden_size=8, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=16, max_position_embeddings=12,
                   initializer_range=0.2)
m = AlbertForPreTraining(cfg, seed=0, dtype=np.float64)
ids = np.array([[2, 0, 5, 5, 9, 3]])  # a pad id 0 in the input
labels = np.array([[-100, -100, 5, -100, 9, -100]])
out, cache = m.forward(ids, labels=labels, sentence_order_label=np.array([0]))
g = m.backward(cache)
dlogits, e = cache.dlogits, cache.mlm.e  # heads.MLMCache: x, m, e, ln
decoder_part = dlogits.T @ e  # [V, E]
lookup_part = g[WORD] - decoder_part
print("lookup gradient of row 0 (the pad id):", np.abs(lookup_part[0]).max())
print("decoder gradient of row 0:", np.abs(decoder_part[0]).max())
assert np.abs(lookup_part[0]).max() < 1e-15 and np.abs(decoder_part[0]).max() > 0
assert np.abs(lookup_part[[2, 5, 9, 3]]).max() > 0  # looked-up rows get the lookup's part
