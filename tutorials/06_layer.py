# %% [markdown]
# # 06 — The transformer layer: FFN, gelu_new, residuals, post-LayerNorm
#
# One ALBERT layer (Hugging Face's `AlbertLayer`) is two blocks, each closed by a
# residual connection and a LayerNorm *after* the sum ("post-LN", as BERT):
#
#     a = LayerNorm(x + Dense(Attention(x)))                 attention block
#     y = LayerNorm(a + Dense_IH(gelu_new(Dense_HI(a))))     feed-forward block

# %%
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.config import AlbertConfig  # noqa: E402
from minialbert.demo import best_times, cpu_name  # noqa: E402
from minialbert.gradcheck import gradcheck  # noqa: E402
from minialbert.kernels import (PackedWeight, activation, bias_add, mask_bias,  # noqa: E402
                                matmul_nn, matmul_nt)
from minialbert.kernels.act import gelu_new_backward, gelu_new_forward  # noqa: E402
from minialbert.kernels.norm import layernorm_forward  # noqa: E402
from minialbert.memory import keep_freed_memory  # noqa: E402
from minialbert.layers import (Dropout, Sequences, attention_block_backward,  # noqa: E402
                               attention_block_forward, ffn_block_backward, ffn_block_forward)
from minialbert.heads import init_params  # noqa: E402
from minialbert.params import layer_prefixes, zeros_like_params  # noqa: E402

# %% [markdown]
# ## gelu_new against exact gelu
# ALBERT v2 uses the tanh approximation of GELU (Hugging Face's `gelu_new`). It differs
# from the exact `x·Φ(x)` by at most ~1e-3 — small, but it is a different function, and
# loading a v1 checkpoint (exact "gelu" in Hugging Face) with the wrong one shows.

# %%
x = np.linspace(-5, 5, 2001)
g_new = activation("gelu_new")[0](x)
g_exact = activation("gelu")[0](x)
gap = np.abs(g_new - g_exact).max()
print(f"max |gelu_new - gelu| on [-5, 5]: {gap:.2e} at x = {x[np.argmax(np.abs(g_new - g_exact))]:.2f}")
assert 1e-4 < gap < 1e-3
write_table("06_gelu_gap.md", ["quantity", "value"], [("max abs gap on [-5, 5]", f"{gap:.2e}")])

# %% [markdown]
# ## One layer, forward and backward, checked
# Tokens are flattened to rows `[n = B·T, H]`. Each block's backward takes the
# gradient of its output and returns the gradient of its input, *adding* the parameter
# gradients into `grads`.

# %%
cfg = AlbertConfig(vocab_size=20, embedding_size=4, hidden_size=12, num_hidden_layers=1,
                   num_attention_heads=3, intermediate_size=24, max_position_embeddings=8,
                   initializer_range=0.3)
params = init_params(cfg, seed=0, dtype=np.float64)
attn, ffn = layer_prefixes(cfg, 0)
rng = np.random.default_rng(0)
B, T = 2, 5
xin = rng.standard_normal((B * T, cfg.hidden_size))
bias = mask_bias(np.ones((B, T)), np.float64)
w = rng.standard_normal((B * T, cfg.hidden_size))


def layer(xin):
    a, ca = attention_block_forward(xin, params, attn, Sequences(B, T, bias), cfg, Dropout())
    y, cf = ffn_block_forward(a, params, ffn, cfg)
    return y, ca, cf


y, ca, cf = layer(xin)
grads = zeros_like_params(params)
da = ffn_block_backward(w, cf, params, grads, ffn, cfg)
dx = attention_block_backward(da, ca, params, grads, attn, cfg)
f = lambda: (layer(xin)[0] * w).sum()  # noqa: E731
rows = []
checks = [(xin, dx, "input x")] + [(params[attn + n], grads[attn + n], "attention." + n)
                                   for n in ("query.weight", "value.weight", "dense.weight",
                                             "LayerNorm.weight")]
checks += [(params[ffn + n], grads[ffn + n], n) for n in ("ffn.weight", "ffn_output.weight",
                                                          "full_layer_layer_norm.bias")]
for arr, g, name in checks:
    r = gradcheck(f, arr, g, name, max_entries=30)
    rows.append((name, f"{r.max_rel_error:.1e}"))
    assert r.max_rel_error < 1e-6, r
write_table("06_layer_gradcheck.md", ["gradient of", "max rel. error"], rows)

# %% [markdown]
# ## What post-LN does to the scale
# Whatever the input's scale, each block's output rows have mean 0 and variance 1
# (times γ, plus β: 1 and 0 at initialisation).

# %%
y_big, _, _ = layer(xin * 100)
print("row std of the output, input x1 and x100:", y.std(1).mean().round(4),
      y_big.std(1).mean().round(4))
assert abs(y.std(1).mean() - 1) < 1e-3 and abs(y_big.std(1).mean() - 1) < 1e-3

# %% [markdown]
# ## One pass for a dense layer: the epilogue
# `Dense_HI` then gelu_new is a product and two more passes over its output (the bias,
# then the activation). The GEMM can do both itself, on each chunk of the output as soon
# as it is summed, while it is in cache: `matmul_nt(x, W, bias=b, gelu_out=g)`. It must
# give the same bits as the three steps. Whether it is faster depends on the machine
# (the passes it saves against the cache the GEMM then shares with them): the table
# says what it does on yours, at the tiny benchmark config's FFN (4096 rows x 1024).

# %%
keep_freed_memory()  # as the trainers run: the timings measure the kernels, not page faults
n_rows, H_, I_ = (512, 128, 512) if QUICK else (4096, 256, 1024)
xr = rng.standard_normal((n_rows, H_)).astype(np.float32)
Wp = PackedWeight((rng.standard_normal((I_, H_)) / np.sqrt(H_)).astype(np.float32))
b1 = rng.standard_normal(I_).astype(np.float32)


def three_steps():
    h = bias_add(matmul_nt(xr, Wp), b1)
    return h, gelu_new_forward(h.reshape(-1)).reshape(h.shape)


def one_pass():
    g = np.empty((n_rows, I_), np.float32)
    return matmul_nt(xr, Wp, bias=b1, gelu_out=g), g


(h3, g3), (h1, g1) = three_steps(), one_pass()
assert np.array_equal(h3, h1) and np.array_equal(g3, g1)  # the same bits
t3, t1 = best_times([three_steps, one_pass])
print(f"{n_rows} x {H_} -> {I_}, bias + gelu_new: three passes {t3 * 1e3:.2f} ms, "
      f"the epilogue {t1 * 1e3:.2f} ms ({t3 / t1:.2f}x) on {cpu_name()}")

# %% [markdown]
# The backward of the same layer (`layers.dense_act_backward`): dh = (dg @ W) * gelu_new'(h),
# the product then gelu's gradient as a pass of its own (what the layers use), or applied
# by the epilogue (`matmul_nn(dg, W, gelu_grad_of=h)`) — again the same bits.

# %%
W2p = PackedWeight((rng.standard_normal((H_, I_)) / np.sqrt(I_)).astype(np.float32))
dg = rng.standard_normal((n_rows, H_)).astype(np.float32)


def backward_two_passes():
    return gelu_new_backward(matmul_nn(dg, W2p).reshape(-1), h3.reshape(-1)).reshape(h3.shape)


def backward_one_pass():
    return matmul_nn(dg, W2p, gelu_grad_of=h3)


assert np.array_equal(backward_two_passes(), backward_one_pass())  # the same bits
tb2, tb1 = best_times([backward_two_passes, backward_one_pass])
print(f"backward: product + gelu_new' pass {tb2 * 1e3:.2f} ms, the epilogue {tb1 * 1e3:.2f} ms "
      f"({tb2 / tb1:.2f}x)")

# %% [markdown]
# A pass no backward follows (a frozen model's: inference) can take one step more: the FFN's
# output product, its bias and residual, and the block's LayerNorm — which needs whole
# rows, so each task normalises its block of rows once all its columns are summed
# (`matmul_nt(g, W, bias=b, residual=a, layernorm=(gamma, beta, eps))`). Training keeps
# LayerNorm's pass of its own: its backward needs the sum and the rows' mean and rstd.

# %%
res = rng.standard_normal((n_rows, H_)).astype(np.float32)
b2 = rng.standard_normal(H_).astype(np.float32)
ln = (rng.standard_normal(H_).astype(np.float32), rng.standard_normal(H_).astype(np.float32),
      1e-12)
g_in = g3  # the FFN's activation, [n_rows, I]


def norm_own_pass():
    return layernorm_forward(matmul_nt(g_in, W2p, bias=b2, residual=res), *ln)[0]


def norm_in_epilogue():
    return matmul_nt(g_in, W2p, bias=b2, residual=res, layernorm=ln)  # W2p: [H, I]


assert np.array_equal(norm_own_pass(), norm_in_epilogue())  # the same bits
tn2, tn1 = best_times([norm_own_pass, norm_in_epilogue])
print(f"{n_rows} x {I_} -> {H_} + residual, LayerNorm: its own pass {tn2 * 1e3:.2f} ms, "
      f"in the epilogue {tn1 * 1e3:.2f} ms ({tn2 / tn1:.2f}x)")
write_table("06_epilogue.md", [f"{n_rows} x {H_} -> {I_} (and back), float32, {cpu_name()}",
                               "ms"],
            [("product, bias_add, gelu_new_forward", f"{t3 * 1e3:.2f}"),
             ("product with the epilogue (same bits)", f"{t1 * 1e3:.2f}"),
             ("backward: product, then gelu_new_backward", f"{tb2 * 1e3:.2f}"),
             ("backward: product with gelu's gradient in the epilogue (same bits)",
              f"{tb1 * 1e3:.2f}"),
             ("back to H: product with bias and residual, then layernorm_forward",
              f"{tn2 * 1e3:.2f}"),
             ("back to H: LayerNorm in the epilogue too (same bits; inference)",
              f"{tn1 * 1e3:.2f}")])

# %% [markdown]
# ## A frozen batch, one sequence at a time
# Layer by layer, each kernel runs over every row of the batch with both threads: on tiny's
# batch of 32 x 128 tokens, q|k|v is 12 MB and the FFN's activation 16 MB, written out to
# L3 and memory by one kernel and read back by the next. A pass no backward follows can go
# the other way round: each thread takes whole sequences and runs one sequence through
# every layer before the next, so its activations (q|k|v 384 KB, the FFN's 512 KB) stay in
# the core's own L2 (`kernels/encoder.py`; the model does it by itself for a frozen batch
# where the threads can share the sequences evenly: `model._by_sequence`). The same kernels
# on the same values, each sum in the same order: the same bits.

# %%
from minialbert.config import preset, shape_of  # noqa: E402
from minialbert.layers import Weights  # noqa: E402
from minialbert.model import AlbertModel, encoder_forward  # noqa: E402

tcfg = AlbertConfig(**shape_of(preset("tiny")))
tparams = AlbertModel(tcfg, seed=0).params
tB, tT = (8, 64) if QUICK else (32, 128)
th = rng.standard_normal((tB * tT, tcfg.hidden_size)).astype(np.float32)
tseqs = Sequences(tB, tT, bias=np.zeros((tB, tT), np.float32))
tweights = Weights(tparams)  # packed once, as a frozen model keeps them


def encoder(by_sequence):
    return encoder_forward(th, tparams, tcfg, tseqs, Dropout(), weights=tweights, keep=False,
                           hidden=False, by_sequence=by_sequence)[0]


assert np.array_equal(encoder(False), encoder(True))  # the same bits
tl, ts = best_times([lambda: encoder(False), lambda: encoder(True)])
print(f"tiny's encoder on {tB} x {tT}: layer by layer {tl * 1e3:.2f} ms, by sequence "
      f"{ts * 1e3:.2f} ms ({tl / ts:.2f}x)")
write_table("06_by_sequence.md",
            [f"tiny's encoder ({tcfg.num_hidden_layers} layers, H {tcfg.hidden_size}), "
             f"{tB} x {tT} tokens, float32, {cpu_name()}", "ms"],
            [("layer by layer, each kernel over every row", f"{tl * 1e3:.2f}"),
             ("by sequence, each thread's sequences through every layer (same bits)",
              f"{ts * 1e3:.2f}")])

# %% [markdown]
# One sentence cannot be dealt out: its products need both threads at once, so it runs
# layer by layer. The loop over the layers is Python, though: between two kernels it checks
# arguments, looks up each product's plan and allocates the next array, about 0.3 ms a
# pass, which on a short sentence is a tenth of the time. `kernels.encoder.encoder_layered`
# is the same loop compiled as one call: it calls the same kernels (`_gemm_fused` with the
# plan `gemm` would work out, `_attention_forward`), so every kernel still runs on all
# threads and gives the same bits. A frozen model takes it by itself for whatever does not
# run by sequence, when its layers share one set of weights (`model._layered`).

# %%
one_rows = []
for sT in (32, 128):
    sh = rng.standard_normal((sT, tcfg.hidden_size)).astype(np.float32)
    sseqs = Sequences(1, sT, bias=np.zeros((1, sT), np.float32))

    def sentence(how, sh=sh, sseqs=sseqs):  # how: False, the loop in Python; None, compiled
        return encoder_forward(sh, tparams, tcfg, sseqs, Dropout(), weights=tweights,
                               keep=False, hidden=False, by_sequence=how)[0]

    assert np.array_equal(sentence(False), sentence(None))  # the same bits
    sl, sc = best_times([lambda: sentence(False), lambda: sentence(None)])
    print(f"tiny's encoder on one sentence of {sT} tokens: the loop in Python "
          f"{sl * 1e3:.3f} ms, compiled {sc * 1e3:.3f} ms ({sl / sc:.2f}x)")
    one_rows.append((f"one sentence of {sT} tokens", f"{sl * 1e3:.3f}", f"{sc * 1e3:.3f}",
                     f"{sl / sc:.2f}x"))
write_table("06_one_call.md",
            [f"tiny's encoder ({tcfg.num_hidden_layers} layers, H {tcfg.hidden_size}), "
             f"float32, {cpu_name()}", "layer loop in Python, ms", "compiled as one call, ms",
             "ratio"], one_rows)

# %% [markdown]
# ## What sharing does not save: the weights' trip from memory
#
# ALBERT stores one layer and applies it L times, so its weights take 1/L of BERT's
# memory. A forward pass still *reads* them L times, and whether that read is cheap depends
# on where they are: tiny's layer (3 MB packed) stays in the L3 (32 MB on the Zen 4 EPYC
# the book ran on) from one application to the next, base's (28 MB: q|k|v 7 MB, the FFN's
# two matrices 9.4 MB each) does not once the activations and the rest are counted, and
# comes back from memory each time. Here one
# product of a sentence of 128 tokens, with one weight called again and again (warm), and
# with as many different weights, in turn, as fill twice the L3 (so each call's weight was
# pushed out by the others, as in a pass over base): the same arithmetic, the same tiles.

# %%
import os  # noqa: E402


def l3_bytes():
    try:
        return max(os.sysconf("SC_LEVEL3_CACHE_SIZE"), 1 << 20)
    except (ValueError, OSError, AttributeError):
        return 32 << 20


cold_rows = []
for what, (cN, cK) in ([("FFN (H -> I)", (512, 128)), ("FFN output (I -> H)", (128, 512))]
                       if QUICK else
                       [("FFN (H -> I)", (3072, 768)), ("FFN output (I -> H)", (768, 3072))]):
    cx = rng.standard_normal((128, cK)).astype(np.float32)
    n_w = 2 if QUICK else 2 * l3_bytes() // (cN * cK * 4) + 1
    cW = [PackedWeight(rng.standard_normal((cN, cK)).astype(np.float32) * 0.02)
          for _ in range(n_w)]
    cout = np.empty((128, cN), np.float32)
    turn = [0]

    def cold():
        turn[0] = (turn[0] + 1) % n_w
        matmul_nt(cx, cW[turn[0]], out=cout)

    for W_ in cW:  # each weight packed once, before the clock
        matmul_nt(cx, W_, out=cout)
    t_warm, t_cold = best_times([lambda: matmul_nt(cx, cW[0], out=cout), cold], rounds=3)
    gf = 2 * 128 * cN * cK / 1e9
    cold_rows.append((f"{what}: 128 x {cK} -> {cN}, weight {cN * cK * 4 / 2**20:.1f} MiB",
                      f"{t_warm * 1e3:.3f} ({gf / t_warm:.0f})",
                      f"{t_cold * 1e3:.3f} ({gf / t_cold:.0f}), {n_w} weights in turn",
                      f"{t_cold / t_warm:.2f}"))
    print(cold_rows[-1])
write_table("06_cold_weights.md",
            [f"one product, float32, {cpu_name()}", "warm weight: ms (GFLOP/s)",
             "a cold weight each call: ms (GFLOP/s)", "cold / warm"], cold_rows)

# %%
p = plt()
if p is not None:
    fig, ax = p.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(x, g_new, label="gelu_new")
    ax[0].plot(x, np.maximum(x, 0), ":", label="relu")
    ax[0].legend()
    ax[0].set_title("activation")
    ax[1].plot(x, g_new - g_exact)
    ax[1].set_title("gelu_new − gelu (exact)")
    savefig(fig, "06_gelu.png")
