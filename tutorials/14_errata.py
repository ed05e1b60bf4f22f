# %% [markdown]
# # 14 — Errata: where the paper, the original code and Hugging Face differ
#
# Each difference below is computed, not asserted from memory. minialbert follows Hugging
# Face for the model and google-research/albert for data and LAMB, and says so here.

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import write_table  # noqa: E402

from minialbert.config import preset  # noqa: E402
from minialbert.kernels import mask_bias, softmax_forward  # noqa: E402
from minialbert.heads import count_parameters  # noqa: E402
from minialbert.optim import learning_rate  # noqa: E402

# %% [markdown]
# ## 1. Which group does layer l use?
# TF: `int(l / L * G)`; Hugging Face: `int(l / (L / G))`. Equal in exact arithmetic, but
# floating point rounds them differently for some (L, G).

# %%
diff = []
for L in range(1, 49):
    for G in range(1, L + 1):
        for l in range(L):
            tf, hf = int(l / L * G), int(l / (L / G))
            if tf != hf:
                diff.append((L, G, l, tf, hf))
write_table("14_groups.md", ["L", "G", "layer", "TF group", "HF group"], diff[:8])
print(f"{len(diff)} (L, G, layer) cases with L ≤ 48 differ")
assert diff  # they do differ somewhere

# %% [markdown]
# ## 2. The n-gram distribution
# The paper: p(n) = (1/n) / Σ 1/k, favouring short spans (6/11, 3/11, 2/11 for n ≤ 3). The
# code we read computes that, then `if FLAGS.favor_shorter_ngram: pvals = pvals[::-1]` —
# with that flag's default True, it *reverses* it. minialbert samples the paper's.

# %%
p = 1 / np.arange(1, 4)
p /= p.sum()
write_table("14_ngram.md", ["n", "paper / minialbert", "code with favor_shorter_ngram=True"],
            [(n, f"{a:.3f}", f"{b:.3f}") for n, a, b in zip((1, 2, 3), p, p[::-1])])

# %% [markdown]
# ## 3. The mask constant
# TF adds −10000 to masked scores; Hugging Face adds the most negative float. For a row with
# at least one real key the probabilities are the same in float32 (exp(−10000) is 0). For a
# *fully* masked row they are not: −10000 shifts every score equally, and softmax ignores a
# shift, so TF attends by the raw scores; finfo.min swallows the scores, and HF is uniform.

# %%
rng = np.random.default_rng(0)
s = rng.standard_normal((2, 8)).astype(np.float32) * 5
m = np.array([[1, 1, 1, 0, 0, 1, 0, 1], [0] * 8])
tf = softmax_forward(s, (-10000.0 * (1 - m)).astype(np.float32))
hf = softmax_forward(s, mask_bias(m, np.float32))
write_table("14_mask.md", ["row", "max abs difference TF vs HF", "HF row"],
            [("partly masked", f"{np.abs(tf[0] - hf[0]).max():.1e}", "softmax over real keys"),
             ("fully masked", f"{np.abs(tf[1] - hf[1]).max():.2f}", "uniform 1/8")])
assert np.abs(tf[0] - hf[0]).max() < 1e-6 and np.allclose(hf[1], 1 / 8)
assert np.abs(tf[1] - hf[1]).max() > 0.1

# %% [markdown]
# ## 4. The MLM loss denominator
# TF: Σ w·nll / (Σ w + 1e-5); Hugging Face: the mean over labels ≠ −100. With 20
# predictions the TF loss is smaller by a factor 1 − 5e-7: invisible.

# %%
nll = rng.random(20) * 5
print("relative difference:", 1 - (nll.sum() / (20 + 1e-5)) / nll.mean())

# %% [markdown]
# ## 5. The E→H projection when E = H, and the paper's counts
# TF builds `embedding_hidden_mapping_in` only when E ≠ H; Hugging Face always does. And
# the paper's Table 3 counts its two halves differently (chapter 07): the not-shared rows
# match Hugging Face's count without the pooler, the all-shared rows with it.

# %%
base = count_parameters(preset("albert-base-v2", embedding_size=768))["total"]
write_table("14_e_equals_h.md", ["", "parameters"],
            [("HF albert-base, E = H = 768", f"{base:,}"),
             ("TF (no E→H projection)", f"{base - 768 * 768 - 768:,}")])

# %% [markdown]
# ## 6. Learning-rate schedule
# ALBERT's linear decay counts from step 0; Hugging Face's from the end of warm-up.

# %%
T, W = 10000, 3125  # the paper's 125k steps scaled; warm-up share as ALBERT's 3125/125000 x 10
write_table("14_schedule.md", ["step", "ALBERT", "Hugging Face"],
            [(s_, f"{learning_rate(s_, 1, T, W, 'albert'):.3f}",
              f"{learning_rate(s_, 1, T, W, 'hf'):.3f}") for s_ in (W, 5000, 9000)])

# %% [markdown]
# ## 7. How much is masked
# 15% is the headline, but `max_predictions_per_seq` caps it: 20 predictions at 512
# tokens is 3.9% of the tokens.

# %%
print(f"{20 / 512:.1%} of a full 512-token sequence")
