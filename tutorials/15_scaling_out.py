# %% [markdown]
# # 15 — Scaling out: data parallelism over MPI
#
# Several processes ("ranks"), each with a copy of the model, share every global batch:
# each computes the gradient of its micro-batches, one allreduce sums the gradients, and
# every rank takes the same optimizer step. This chapter checks the arithmetic that makes
# it exact, measures both layouts on this machine over loopback, and models what several
# machines would give for ALBERT-base and BERT-base.

# %%
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, plt, savefig, write_table  # noqa: E402

from minialbert.config import preset  # noqa: E402
from minialbert.demo import blas_info, cpu_name, data_parallel_runs, mpiexec_path  # noqa: E402
from minialbert.kernels.matmul import ISA  # noqa: E402
from minialbert.heads import AlbertForPreTraining, count_parameters  # noqa: E402

machine = f"{cpu_name()}, {ISA}, BLAS {blas_info()}"
print("machine:", machine)

# %% [markdown]
# ## Why the sum of the ranks' gradients is the global batch's gradient
#
# A step over k micro-batches minimises L = (1/k) Σ_j L_j, the mean of the micro-batch
# losses. Its gradient is (1/k) Σ_j ∇L_j: each rank computes the terms of its own j's,
# each already scaled by 1/k, and the allreduce adds the ranks' partial sums. Here in
# float64, two micro-batches "on two ranks" against the gradient of L directly.

# %%
cfg = preset("tiny", vocab_size=300, hidden_size=32, embedding_size=16, num_hidden_layers=2,
             num_attention_heads=2, intermediate_size=64)
m = AlbertForPreTraining(cfg, seed=0, dtype=np.float64)
r = np.random.default_rng(0)
B, T, k = 8, 16, 2
ids = r.integers(5, 300, (B, T))
labels = np.where(r.random((B, T)) < 0.3, ids, -100)
labels[:, 0] = -100
labels[0, 1:5] = ids[0, 1:5]  # the first half masks more tokens than the second
batch = dict(input_ids=ids, token_type_ids=np.zeros((B, T), np.int64),
             attention_mask=np.ones((B, T), np.int64), labels=labels,
             sentence_order_label=r.integers(0, 2, B))


def grads_of(rows, scale):
    mb = {key: v[rows] for key, v in batch.items()}
    o, c = m.forward(**mb, mlm_path="masked")
    g = m.backward(c, scale=scale)
    return float(o["loss"]), np.concatenate([g[n].ravel() for n in sorted(g)])


halves = [slice(0, B // 2), slice(B // 2, B)]
counts = [int((labels[h] != -100).sum()) for h in halves]
assert counts[0] != counts[1], counts
(l0, g0), (l1, g1) = (grads_of(h, 1.0 / k) for h in halves)
summed = g0 + g1  # what the allreduce computes from the two ranks' buffers


def mean_of_halves(flat_params):
    """L = (l0 + l1) / 2 as a function of one parameter vector (for a finite difference)."""
    return (grads_of(halves[0], 1.0)[0] + grads_of(halves[1], 1.0)[0]) / 2


# the gradient of L along a random direction, by central differences, against summed · v
names = sorted(m.params)
v = r.standard_normal(summed.size)
v /= np.linalg.norm(v)
eps = 1e-4


def shifted(sign):
    o = 0
    saved = {n: m.params[n].copy() for n in names}
    for n in names:
        s = m.params[n].size
        m.params[n] = saved[n] + sign * eps * v[o:o + s].reshape(saved[n].shape)
        o += s
    L = mean_of_halves(None)
    m.params.update(saved)
    return L


fd = (shifted(+1) - shifted(-1)) / (2 * eps)
analytic = float(summed @ v)
rel = abs(fd - analytic) / abs(fd)
_, g_full = grads_of(slice(0, B), 1.0)
tok_diff = np.linalg.norm(g_full - summed) / np.linalg.norm(summed)
write_table("15_sum.md", ["quantity", "value"], [
    ["d/dv of (L₀ + L₁)/2, central difference (float64)", f"{fd:.10f}"],
    ["(g₀ + g₁) · v, the allreduce's sum", f"{analytic:.10f}"],
    ["relative difference", f"{rel:.1e}"],
    [f"‖∇(one batch of 8) − (g₀ + g₁)‖ / ‖g₀ + g₁‖ ({counts[0]} and {counts[1]} masked "
     "tokens in the halves)", f"{tok_diff:.1e}"]])
assert rel < 1e-6, rel
# The last row is not zero, and should not be: one batch of 8 averages its MLM loss over all
# of its masked tokens, the two halves each over their own — a different weighting whenever
# the halves mask different numbers of tokens. Data parallel training with k micro-batches
# computes exactly what one process with the same k micro-batches computes (and the tests
# check that to 1e-6, and bit for bit with --deterministic).
assert tok_diff > 1e-8

# %% [markdown]
# ## Measured on this machine: 1 process × 2 threads against 2 ranks × 1 thread
#
# The same run twice (the same global batch in two micro-batches, the same tokenizer),
# as `benchmarks/bench_data_parallel.py` does. On one machine both layouts share the same
# two cores, so this is the cost of the MPI path, not a speed-up.

# %%
if mpiexec_path() is None:
    raise SystemExit("no mpiexec: pip install -e '.[mpi]' (the mpich wheel)")
from minialbert.corpus import load_corpus  # noqa: E402
from minialbert.tokenizer import train_tokenizer  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    d = pathlib.Path(d)
    corpus = load_corpus(None, "auto")
    if QUICK:  # a few hundred documents of it, so that each process starts fast
        (d / "corpus.txt").write_text("\n\n".join("\n".join(s) for s in corpus.documents[:300]),
                                      encoding="utf-8")
        corpus = load_corpus([str(d / "corpus.txt")], "lines")
    train_c, _ = corpus.split(0.1)
    train_tokenizer(train_c.sentences(), 600 if QUICK else 4000, out_dir=d / "tok")
    model_args = (["--preset", "tiny", "--hidden-size", "32", "--embedding-size", "16",
                   "--num-attention-heads", "2", "--intermediate-size", "64",
                   "--batch-size", "8", "--seq-len", "32", "--corpus", str(d / "corpus.txt"),
                   "--format", "lines"] if QUICK else
                  ["--preset", "small", "--batch-size", "64", "--seq-len", "64"])
    runs = data_parallel_runs(d, model_args + ["--micro-batches", "2", "--tokenizer",
                                               str(d / "tok")], 6 if QUICK else 40)
one, two = runs
loss_rel = float(np.max(np.abs(np.subtract(one["losses"], two["losses"])) /
                        np.abs(one["losses"])))
write_table("15_loopback.md", ["layout", "tokens/s", "step (ms)", "allreduce (ms)",
                               "allreduce bytes"],
            [[x["layout"], f"{x['tokens_per_s']:,.0f}", f"{x['step_s'] * 1e3:.1f}",
              f"{x['comm_s'] * 1e3:.2f}" if x is two else "—",
              f"{x['grad_bytes']:,}" if x is two else "—"] for x in runs])
(OUT / "15_loopback_machine.md").write_text(
    f"Measured on: {machine}; {'quick mode (a tiny model)' if QUICK else 'the small preset, batch 64 × 64'}; "
    f"2 ranks / 1 process = {two['tokens_per_s'] / one['tokens_per_s']:.2f}× the tokens/s; "
    f"the two runs' losses agree to {loss_rel:.1e} relative.\n")
assert loss_rel < 1e-5, loss_rel

# %% [markdown]
# ## A model of several machines
#
# Weak scaling: every machine keeps the per-machine batch (8 × 128, ALBERT-base), so a
# step's compute time t_c is the one measured here, and R machines process R times the
# tokens per step, minus the allreduce. A ring allreduce of S bytes over R machines
# sends 2(R−1) messages of S/R bytes per machine: t_ar = 2(R−1)(α + S/(R·β)), with β the
# link's bandwidth and α a per-message latency (50 µs assumed — a guess for TCP over
# Ethernet, not a measurement). Without overlap of compute and communication, the
# speed-up is R · t_c / (t_c + t_ar). ALBERT-base and BERT-base do nearly the same
# arithmetic per token (the same L, H and I; ALBERT adds the E→H projection), so both get
# the t_c measured here — what differs is S: ALBERT-base's gradient is 9× smaller.

# %%
import time  # noqa: E402

base = preset("albert-base-v2", vocab_size=30000)
n_albert = count_parameters(base)["total"]
n_bert = count_parameters(preset("albert-base-v2", vocab_size=30000, embedding_size=768,
                                 sharing="none"))["total"]
if QUICK:  # a small stand-in for the step time; the table says so
    timed_cfg, Bt, Tt = preset("tiny", vocab_size=1000), 4, 32
else:
    timed_cfg, Bt, Tt = base, 8, 128
tm = AlbertForPreTraining(timed_cfg, seed=0)
tm.unpad = True
tb = dict(input_ids=r.integers(5, timed_cfg.vocab_size, (Bt, Tt)),
          token_type_ids=np.zeros((Bt, Tt), np.int64), attention_mask=np.ones((Bt, Tt), np.int64),
          labels=np.where(r.random((Bt, Tt)) < 0.15, 7, -100),
          sentence_order_label=r.integers(0, 2, Bt))
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    o, c = tm.forward(**tb, train=True, mlm_path="masked")
    tm.backward(c)
    best = min(best, time.perf_counter() - t0)
t_c = best
ALPHA = 50e-6
machines = [1, 2, 4, 8, 16, 32, 64]
links = {"10 Gb/s": 10e9 / 8, "100 Gb/s": 100e9 / 8}
models = {"ALBERT-base": 4 * n_albert, "BERT-base": 4 * n_bert}


def t_allreduce(S, R, beta):
    return 0.0 if R == 1 else 2 * (R - 1) * (ALPHA + S / (R * beta))


# two machines: this one (the measured t_c) and one 100 times faster (an accelerator, say),
# for which the same bytes weigh 100 times more
speeds = {"this CPU": t_c, "100× faster": t_c / 100}
rows, curves = [], {}
for sname, tc in speeds.items():
    for mname, S in models.items():
        for lname, beta in links.items():
            sp = [R * tc / (tc + t_allreduce(S, R, beta)) for R in machines]
            curves[(sname, mname, lname)] = sp
            rows.append([f"{sname} ({tc * 1e3:.0f} ms)", mname, f"{S / 1e6:.0f} MB", lname] +
                        [f"{x:.1f}" for x in sp[1:]])
write_table("15_scaling.md", ["step compute t_c", "model", "gradient", "link"] +
            [f"R={R}" for R in machines[1:]], rows)
(OUT / "15_scaling_machine.md").write_text(
    f"Step compute time t_c = {t_c * 1e3:.0f} ms: forward + backward of "
    f"{'a tiny stand-in model (quick mode), batch ' if QUICK else 'ALBERT-base, batch '}"
    f"{Bt} × {Tt}, measured on {machine}, {__import__('numba').get_num_threads()} threads. "
    f"Parameters: ALBERT-base {n_albert:,}, BERT-base {n_bert:,} "
    f"({n_bert / n_albert:.1f}×); latency α = {ALPHA * 1e6:.0f} µs per message (assumed).\n")
assert n_bert / n_albert > 8
# ALBERT's smaller gradient always scales at least as well, and a faster machine (the same
# bytes, less compute to hide them behind) always scales worse
for key, sp in curves.items():
    if key[1] == "ALBERT-base":
        assert all(a >= b for a, b in zip(sp, curves[(key[0], "BERT-base", key[2])]))
    if key[0] == "this CPU":
        assert all(a >= b for a, b in zip(sp, curves[("100× faster",) + key[1:]]))

p = plt()
if p is not None:
    fig, axes = p.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (sname, tc) in zip(axes, speeds.items()):
        for (sn, mname, lname), sp in curves.items():
            if sn == sname:
                ax.plot(machines, sp, marker="o", ls="-" if mname == "ALBERT-base" else "--",
                        label=f"{mname}, {lname}")
        ax.plot(machines, machines, color="gray", lw=0.8, label="ideal")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("machines R")
        ax.set_title(f"{sname}: t_c = {tc * 1e3:.0f} ms per step")
    axes[0].set_ylabel("speed-up over one machine (ring allreduce model)")
    axes[0].legend(fontsize=8)
    savefig(fig, "15_scaling.png")
print("done")
