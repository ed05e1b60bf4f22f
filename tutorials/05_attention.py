# %% [markdown]
# # 05 — Self-attention, forward and backward, with masks
#
# One fused Numba kernel per direction (`minialbert/kernels/attention.py`), parallel over
# batch × heads. Here we check it against attention written out in plain NumPy, watch
# the mask work, and check the backward by finite differences.

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.gradcheck import gradcheck  # noqa: E402
from minialbert.kernels import mask_bias  # noqa: E402
from minialbert.kernels.attention import attention_backward, attention_forward  # noqa: E402


# %% [markdown]
# ## Attention written out
# Split H into N heads of D; per head `P = softmax(Q Kᵀ/√D + mask)`, `O = P V`.

# %%
def attention_numpy(q, k, v, mask, N):  # [B,T,H] x3, [B,T] -> [B,T,H], [B,N,T,T]
    B, T, H = q.shape
    D = H // N
    split = lambda x: x.reshape(B, T, N, D).transpose(0, 2, 1, 3)  # noqa: E731 [B,N,T,D]
    s = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(D)
    s = s + mask_bias(mask, q.dtype)[:, None, None, :]
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ split(v)).transpose(0, 2, 1, 3).reshape(B, T, H), p


rng = np.random.default_rng(0)
B, T, H, N = 2, 6, 12, 3
q, k, v = (rng.standard_normal((B, T, H)) for _ in range(3))
mask = np.ones((B, T), np.int64)
mask[1, 4:] = 0  # the second sequence has two padding positions
ctx, probs = attention_forward(q, k, v, mask_bias(mask, q.dtype), N, 0.0, np.uint64(0))
ref_ctx, ref_p = attention_numpy(q, k, v, mask, N)
print("max |ours - numpy|:", np.abs(ctx - ref_ctx).max(), np.abs(probs - ref_p).max())
assert np.allclose(ctx, ref_ctx, atol=1e-12) and np.allclose(probs, ref_p, atol=1e-12)

# %% [markdown]
# Padded keys receive exactly zero probability, and each row still sums to one:

# %%
print("probability on padded keys:", probs[1, :, :, 4:].max())
assert probs[1, :, :, 4:].max() == 0 and np.allclose(probs.sum(-1), 1)

# %% [markdown]
# ## The backward
# `dPd = dO Vᵀ`, `dV = Pdᵀ dO`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS K/√D`,
# `dK = dSᵀ Q/√D` — with attention dropout on, the same mask (recomputed from its key)
# scales `dP`. We check all three inputs by finite differences.

# %%
from minialbert.kernels import dropout_key  # noqa: E402

key = dropout_key(seed=1, step=0, site=0)
w = rng.standard_normal((B, T, H))
bias = mask_bias(mask, q.dtype)
for p_drop in (0.0, 0.2):
    ctx, probs = attention_forward(q, k, v, bias, N, p_drop, key)
    dq, dk, dv = attention_backward(w, q, k, v, probs, N, p_drop, key)
    f = lambda: (attention_forward(q, k, v, bias, N, p_drop, key)[0] * w).sum()  # noqa: E731
    rows = []
    for x, g, name in ((q, dq, "dQ"), (k, dk, "dK"), (v, dv, "dV")):
        r = gradcheck(f, x, g, name)
        rows.append((name, f"{r.max_rel_error:.1e}"))
        assert r.max_rel_error < 1e-6, r
    write_table(f"05_gradcheck_p{p_drop}.md", [f"input (dropout {p_drop})", "max rel. error"], rows)

# %% [markdown]
# ## A fully masked row
# If every key of a sequence is masked, Hugging Face's additive mask (the most negative
# float, not −∞) makes every score equal, and softmax gives a uniform row — not NaN.

# %%
mask0 = np.zeros((1, T), np.int64)
_, p0 = attention_forward(q[:1], k[:1], v[:1], mask_bias(mask0, q.dtype), N, 0.0, np.uint64(0))
assert np.allclose(p0, 1 / T)
print("fully masked: every probability is 1/T =", p0[0, 0, 0, 0])

# %% [markdown]
# ## Speed: the fused kernel against NumPy
# At the tiny config's shapes (B 32, T 128, H 256, 4 heads).

# %%
B, T, H, N = (4, 64, 128, 4) if QUICK else (32, 128, 256, 4)
q, k, v = (rng.standard_normal((B, T, H)).astype(np.float32) for _ in range(3))
mask = np.ones((B, T), np.int64)
bias = mask_bias(mask, np.float32)


from minialbert import kernels  # noqa: E402
from minialbert.demo import best_times, cpu_name  # noqa: E402
from minialbert.kernels.attention import attention_forward_rows  # noqa: E402

# the best time of each, timed in turn (demo.best_times: a slow moment of a shared host
# is not charged to one of them only)
t_ours, t_rows, t_np = best_times([
    lambda: attention_forward(q, k, v, bias, N, 0.0, np.uint64(0)),
    lambda: attention_forward_rows(q, k, v, bias, N, 0.0, np.uint64(0)),
    lambda: attention_numpy(q, k, v, mask, N)])
where = (f"B {B}, T {T}, H {H}, {N} heads; CPU {cpu_name()}, "
         f"{kernels.get_threads()} threads")
print(where)
write_table("05_speed.md", ["forward (" + where + ")", "ms"],
            [("packed GEMM per head (attention_forward)", f"{t_ours * 1e3:.1f}"),
             ("row at a time (attention_forward_rows)", f"{t_rows * 1e3:.1f}"),
             ("NumPy (BLAS batched matmul)", f"{t_np * 1e3:.1f}")])

# %% [markdown]
# ## The softmax: one row at a time, or eight
# A row's softmax is a chain: its max waits for its scores, its exps for the max, its
# division for the sum of the exps. `_softmax_rows`, which the kernel runs, takes the
# rows eight at a time and runs each step for all eight before the next, so that eight
# independent chains overlap in the core; `_softmax_row` is one row's steps. Every value
# goes through the same operations either way: the same bits. Here both run on the
# scores of a layer (every head of every sequence, a key masked here and there), on one
# thread.

# %%
from numba import njit  # noqa: E402

from minialbert.kernels._base import FASTMATH  # noqa: E402
from minialbert.kernels.attention import _softmax_row, _softmax_rows  # noqa: E402


@njit(fastmath=FASTMATH)
def softmax_row_at_a_time(P, key_bias, scale):
    for i in range(P.shape[0]):
        inv = _softmax_row(P[i], key_bias, scale)
        for j in range(P.shape[1]):
            P[i, j] *= inv


@njit(fastmath=FASTMATH)
def softmax_in_groups(P, key_bias, scale):
    _softmax_rows(P, key_bias, scale)


scores = rng.standard_normal((B * N * T, T)).astype(np.float32)
key_bias = mask_bias((rng.random((1, T)) > 0.1).astype(np.int64), np.float32)[0]
scale = np.float32(1 / np.sqrt(H // N))
one, grouped = scores.copy(), scores.copy()
softmax_row_at_a_time(one, key_bias, scale)
softmax_in_groups(grouped, key_bias, scale)
assert np.array_equal(one, grouped)  # the same bits
work_one, work_grouped = scores.copy(), scores.copy()  # timed in place, again and again
t_one, t_grouped = best_times([lambda: softmax_row_at_a_time(work_one, key_bias, scale),
                               lambda: softmax_in_groups(work_grouped, key_bias, scale)])
rows = f"{B * N * T:,} rows of {T} keys; CPU {cpu_name()}, 1 thread"
print(rows, f"\none row at a time {t_one * 1e3:.3f} ms, in groups of eight "
      f"{t_grouped * 1e3:.3f} ms")
write_table("05_softmax_groups.md", ["softmax (" + rows + ")", "ms"],
            [("one row at a time (_softmax_row)", f"{t_one * 1e3:.2f}"),
             ("eight rows a step (_softmax_rows)", f"{t_grouped * 1e3:.2f}")])

# %% [markdown]
# ## How wide the vectors are
# The softmax is a plain loop that LLVM turns into vector code itself, as wide as it
# chooses. On Intel's AVX-512 cores it chooses 256 bits (8 floats) unless told otherwise,
# and `minialbert.kernels` tells it otherwise before anything compiles: "-prefer-256-bit"
# after the host's features in Numba's `config.CPU_FEATURES`, on a CPU with AVX-512 only
# (`kernels._wide_vectors`). Below, the same grouped softmax on the same scores in a child
# process where `NUMBA_CPU_FEATURES` is the host's own features — LLVM's choice, which
# minialbert leaves alone when the user sets it — against this process's: the same bits,
# and each one's time.

# %%
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numba  # noqa: E402
from numba.core import codegen  # noqa: E402

CHILD = """
import sys, time, numpy as np
from numba import njit
from minialbert.kernels._base import FASTMATH
from minialbert.kernels.attention import _softmax_rows
from minialbert.demo import best_times
@njit(fastmath=FASTMATH)
def softmax_in_groups(P, key_bias, scale):
    _softmax_rows(P, key_bias, scale)
d = np.load(sys.argv[1])
key_bias, scale = d["key_bias"], np.float32(d["scale"])  # a scalar, as in the parent
P = d["scores"].copy()
softmax_in_groups(P, key_bias, scale)
np.save(sys.argv[2], P)
work = d["scores"].copy()
print(best_times([lambda: softmax_in_groups(work, key_bias, scale)])[0])
"""
host = codegen.get_host_cpu_features()
ours = numba.config.CPU_FEATURES or host  # what this process compiled with
with tempfile.TemporaryDirectory() as tmp:
    np.savez(f"{tmp}/in.npz", scores=scores, key_bias=key_bias, scale=scale)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_NAME"}
    r = subprocess.run([sys.executable, "-c", CHILD, f"{tmp}/in.npz", f"{tmp}/out.npy"],
                       env=dict(env, NUMBA_CPU_FEATURES=host), capture_output=True,
                       text=True, check=True)
    t_llvm = float(r.stdout.split()[-1])
    assert np.array_equal(np.load(f"{tmp}/out.npy"), grouped)  # the same bits
wide = ours.endswith(",-prefer-256-bit")
print(f"this process ({'512-bit vectors' if wide else 'no AVX-512: the same width'}) "
      f"{t_grouped * 1e3:.3f} ms; LLVM's own choice {t_llvm * 1e3:.3f} ms")
write_table("05_vector_width.md", ["softmax in groups (" + rows + ")", "ms"],
            [("LLVM's choice of vector width (NUMBA_CPU_FEATURES: the host's)",
              f"{t_llvm * 1e3:.2f}"),
             ("minialbert's (" + ("-prefer-256-bit: 512-bit vectors" if wide else
                                  "the same: no AVX-512 here") + ")",
              f"{t_grouped * 1e3:.2f}")])

# %% [markdown]
# ## A trained head on a real sentence
# The maps above come from random weights. Here a small ALBERT is pretrained on the
# embedded Python docs (the `small` preset, a few hundred steps: about two minutes on two
# cores; quick mode: a few steps of a tiny one), and one sentence goes through it. The
# figure shows, for the last layer application, the head whose rows are most peaked
# (lowest mean entropy): row i is where query token i looks.

# %%
import tempfile  # noqa: E402

from minialbert.inference import Predictor  # noqa: E402
from minialbert.train import PretrainConfig, load_pretrained, pretrain  # noqa: E402

run = pathlib.Path(tempfile.mkdtemp(prefix="minialbert-05-"))
if QUICK:
    pc = PretrainConfig(out=str(run), steps=6, batch_size=8, seq_len=32, vocab_size=600,
                        eval_every=0, save_every=0, progress=False,
                        extra=dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   embedding_size=16, num_attention_heads=2))
else:
    pc = PretrainConfig(out=str(run), steps=400, eval_every=0, save_every=0, progress=False)
summary = pretrain(pc)
model, tok, _ = load_pretrained(run)
sentence = "Return a new list containing the items of the dictionary."
maps, tokens = Predictor(model, tok).attentions(sentence)  # [applications, heads, T, T]
last = maps[-1].astype(np.float64)
entropy = -(last * np.log(np.maximum(last, 1e-12))).sum(-1).mean(-1)  # per head
h = int(entropy.argmin())
print(f"trained {summary['step']} steps in {summary['wall_seconds']:.0f} s; {len(tokens)} "
      f"tokens; last application, head {h}: mean row entropy {entropy[h]:.2f} nats "
      f"(uniform over the tokens: {np.log(len(tokens)):.2f})")
assert np.allclose(last.sum(-1), 1, atol=1e-5) and entropy[h] <= np.log(len(tokens)) + 1e-6

p = plt()
if p is not None:
    fig, ax = p.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(last[h], cmap="viridis", vmin=0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(f"last layer application, head {h}, after {summary['step']} steps",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention probability")
    savefig(fig, "05_attention_map.png")
