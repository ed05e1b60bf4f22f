"""One training step, ours against Hugging Face's AlbertForPreTraining, side by side.

    python benchmarks/bench_train_step.py            # tiny and base configs
    python benchmarks/bench_train_step.py --quick    # tiny only, fewer steps
    python benchmarks/bench_train_step.py --models base   # base only
    python benchmarks/bench_train_step.py --head classification   # a fine-tuning step

Forward + backward + an AdamW step (ours and torch.optim.AdamW, the same arithmetic; pass
--no-optimizer to time forward + backward alone), on the same weights and the same batch,
dropout 0, float32. Ours runs with both MLM paths: logits at every position (what
Hugging Face computes) and only at the masked positions (the original TF code's way), with
the padding removed (model.unpad, as the trainers run it); on the masked path the last
layer runs only on the rows the heads read (model.skip_unread, as the trainers run it;
"masked/no-skip" runs it on every row, to show what that saves). Two batches per config:
a full one and one with --pad of it padding (default 0.5). Each side runs in its own
subprocess, pinned to the same number of threads, so that its peak memory (max RSS) is
its own; all of them stay alive, and the timed steps are taken in rounds (every side a
few steps in turn, each round), so that the host's slow moments fall on every side alike.
Prints tokens/s (padding included, as a batch's size) and the ratio against the fastest
HF row (> 1 means we are faster). HF runs with eager and with
sdpa attention, each also with "+keep": glibc told to keep freed memory for the next step,
as our trainers do (minialbert/memory.py), so that setting is not counted as our gain.
Beside each of our rows: the step's matrix products in GFLOP (counted by
profiler.KernelProfile in one more, untimed step) and its ceiling on this machine: the
faster HF's time over those products' time at our micro-kernel's measured peak, with
nothing else costing any time (_isa.ceiling). A target above it is out of reach here.
"""
import argparse
import os
import resource
import sys
import tempfile

import _isa
import _report

_isa.emulate_from_argv()  # --isa avx2: restarts under that ISA before anything loads

import numpy as np  # noqa: E402

from _sides import rounds, serve
from minialbert.config import preset, shape_of  # noqa: E402

# (the model's sizes, from config.preset; batch; sequence length)
CONFIGS = {
    "tiny": (shape_of(preset("tiny")), 32, 128),
    "base": (shape_of(preset("albert-base-v2", vocab_size=30000)), 8, 128),
}


def make_batch(cfg, B, T, seed=0, pad=0.0):
    """Random ids, 15% masked; with pad > 0 row lengths are uniform on [T (1 - 2 pad), T]
    (at least 2), so about that fraction of the batch is padding (the default fine-tuning
    task's batches are 53% padding, the default pretraining data's 18%:
    benchmarks/bench_padding.py)."""
    r = np.random.default_rng(seed)
    ids = r.integers(5, cfg["vocab_size"], (B, T))
    lens = np.full(B, T)
    if pad > 0:
        lens = r.integers(max(2, int(T * (1 - 2 * pad))), T + 1, B)
    real = np.arange(T)[None] < lens[:, None]
    labels = np.full((B, T), -100)
    pick = (r.random((B, T)) < 0.15) & real
    pick[:, 0] = False
    labels[pick] = ids[pick]
    ids[pick] = 4
    ids[~real] = 0
    tt = np.zeros((B, T), np.int64)
    tt[:, T // 2:] = 1
    tt[~real] = 0
    return dict(input_ids=ids, token_type_ids=tt, attention_mask=real.astype(np.int64),
                labels=labels, sentence_order_label=r.integers(0, 2, B))


def build(side, name, path, threads, weights, optimizer=True, head="pretraining", pad=0.0):
    """One side's model, batch and optimizer, ready to step: returns (step, batch), where
    step() does forward + backward (+ optimizer) once and returns the loss."""
    cfg_kw, B, T = CONFIGS[name]
    batch = make_batch(cfg_kw, B, T, pad=pad)
    if head == "classification":  # a fine-tuning step: 7 classes on the pooled [CLS]
        cfg_kw = dict(cfg_kw, num_labels=7)
        batch = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        batch["input_ids"] = np.where(batch["input_ids"] == 4, 9, batch["input_ids"])
        batch["labels"] = np.random.default_rng(1).integers(0, 7, B)
    params = dict(np.load(weights))
    if side == "ours":
        from minialbert import kernels
        from minialbert.config import AlbertConfig
        from minialbert.heads import AlbertForPreTraining, AlbertForSequenceClassification
        from minialbert.memory import keep_freed_memory
        from minialbert.optim import AdamW
        from minialbert.params import zeros_like_params

        kernels.set_threads(threads)
        cls = AlbertForSequenceClassification if head == "classification" else AlbertForPreTraining
        m = cls(AlbertConfig(**cfg_kw), params=params)
        m.unpad = True  # as the trainers run it: no work on padding
        # ... and the last layer only on the rows the heads read (the masked positions and
        # [CLS]); "/no-skip" runs it on every row, to show what that saves
        m.skip_unread = not path.endswith("/no-skip")
        path = path.split("/")[0]
        keep_freed_memory()  # as the trainers run it: freed pages kept for the next step
        grads = zeros_like_params(m.params)
        opt = AdamW()

        def step():
            for g in grads.values():
                g.fill(0)
            out, cache = (m.forward(**batch) if head == "classification"
                          else m.forward(**batch, mlm_path=path))
            m.backward(cache, grads)
            if optimizer:
                opt.step(m.params, grads, 1e-5)
            return float(out["loss"])
        return step, batch

    import torch
    import transformers

    torch.set_num_threads(threads)
    if path.endswith("+keep"):  # HF with the allocator setting our trainers use
        from minialbert.memory import keep_freed_memory
        keep_freed_memory()
        path = path[:-len("+keep")]
    hcfg = transformers.AlbertConfig(**cfg_kw, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0,
                                     classifier_dropout_prob=0.0)
    hcfg._attn_implementation = "eager" if path == "eager" else "sdpa"
    hf = (transformers.AlbertForSequenceClassification if head == "classification"
          else transformers.AlbertForPreTraining)(hcfg).train()
    sd = {k: torch.from_numpy(v) for k, v in params.items()}
    if head != "classification":
        sd["predictions.decoder.weight"] = sd["albert.embeddings.word_embeddings.weight"]
        sd["predictions.decoder.bias"] = sd["predictions.bias"]
    hf.load_state_dict(sd, strict=False)
    tb = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    topt = torch.optim.AdamW(hf.parameters(), lr=1e-5, foreach=True)

    def step():
        hf.zero_grad(set_to_none=False)
        o = hf(**tb)
        o.loss.backward()
        if optimizer:
            topt.step()
        return float(o.loss.detach())
    return step, batch


def jobs(side, name, path, threads, weights, optimizer, head, pad):
    """A worker's one job, "step", and its summary: the loss, its peak memory (max RSS, its
    own process's) and what building and stepping added to it."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step, batch = build(side, name, path, threads, weights, optimizer, head, pad)
    last = {}

    def job():
        last["loss"] = step()

    def summary():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        B, T = batch["input_ids"].shape
        out = dict(side=side, path=path, loss=last["loss"], pad=pad, tokens=B * T,
                   real_tokens=int(batch["attention_mask"].sum()), peak_mb=rss / 1024,
                   step_mb=(rss - rss0) / 1024)
        if side == "ours":  # the step's matrix products, counted in one more step, untimed
            from minialbert.profiler import KernelProfile

            with KernelProfile() as prof:
                step()
            out["flops"] = prof.gemm_flops + prof.attention_flops
        return out
    return {"step": job}, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--worker", nargs=4, metavar=("SIDE", "CONFIG", "PATH", "WEIGHTS"))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds: every side takes its steps in turn, once a round")
    ap.add_argument("--no-optimizer", action="store_true")
    ap.add_argument("--head", default="pretraining", choices=["pretraining", "classification"])
    ap.add_argument("--pad", type=float, default=0.5,
                    help="padding fraction of the second batch (0: only a full batch)")
    ap.add_argument("--models", default=None,
                    help="comma-separated, of " + ", ".join(CONFIGS) + " (default: all; "
                    "--quick: tiny)")
    _isa.add_option(ap)
    _report.add_option(ap)
    a = ap.parse_args()
    _report.check(ap, a.json)
    names = a.models.split(",") if a.models else ["tiny"] if a.quick else list(CONFIGS)
    for name in names:
        if name not in CONFIGS:
            ap.error(f"--models: {name!r} is not one of {', '.join(CONFIGS)}")
    if a.worker:
        side, name, path, weights = a.worker
        serve(*jobs(side, name, path, a.threads, weights, not a.no_optimizer, a.head, a.pad))
        return

    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs torch and transformers: pip install -e '.[bench]'")
    print(_isa.header(a.threads))
    print("(threads per side: Numba's and torch.set_num_threads; NumPy's BLAS is not used "
          "by either model)")
    figures = []
    for name in names:
        cfg_kw, B, T = CONFIGS[name]
        steps = a.steps or (2 if a.quick or name == "base" else 3)
        n_rounds = a.rounds or (2 if a.quick else 3)
        for pad in [0.0] + ([a.pad] if a.pad > 0 else []):
            figures.append(run_config(a, name, cfg_kw, B, T, steps, n_rounds, pad))
            _report.write(a.json, figures)  # after each batch: a cut run keeps what it has


def run_config(a, name, cfg_kw, B, T, steps, n_rounds, pad):
    """Every side in its own process, all of them alive at once, the timed steps taken in
    rounds, the sides in turn (benchmarks/_sides.py): a side's time is its best round's
    median, so that a slow moment of a noisy host costs every side alike."""
    from minialbert.config import AlbertConfig
    from minialbert.heads import init_params

    with tempfile.TemporaryDirectory() as d:
        w = os.path.join(d, "w.npz")
        cls = a.head == "classification"
        np.savez(w, **init_params(AlbertConfig(**cfg_kw, num_labels=7 if cls else 2), seed=0,
                                  head="sequence_classification" if cls else "pretraining"))
        sides = [("hf", "eager"), ("hf", "sdpa"), ("hf", "eager+keep"), ("hf", "sdpa+keep")] + (
            [("ours", "classifier"), ("ours", "classifier/no-skip")] if cls else
            [("ours", "all"), ("ours", "masked"), ("ours", "masked/no-skip")])
        cmds = [[sys.executable, __file__, "--threads", str(a.threads), "--head", a.head,
                 "--pad", str(pad), "--worker", side, name, path, w]
                + (["--no-optimizer"] if a.no_optimizer else []) for side, path in sides]
        best, every, rows = rounds(cmds, ["step"], steps, n_rounds)
    peak = _isa.measured_peak(a.threads)
    for i, r in enumerate(rows):
        r.update(seconds=best[i]["step"], median_all=float(np.median(every[i]["step"])),
                 path=sides[i][1])
    best_hf = min(r["seconds"] for r in rows if r["side"] == "hf")
    real = rows[0]["real_tokens"] / rows[0]["tokens"]
    print(f"\n{name} ({a.head}): {cfg_kw}, B={B}, T={T}, "
          f"{'full batch' if pad == 0 else f'{1 - real:.0%} padding'}, {n_rounds} rounds x "
          f"{steps} timed steps, forward + backward{'' if a.no_optimizer else ' + AdamW step'}, "
          "float32")
    print(f"{'':<30}{'ms/step':>9}{'(all)':>7}{'tokens/s':>10}{'vs faster HF':>13}{'loss':>9}"
          f"{'peak MB':>9}{'step MB':>9}{'GFLOP':>7}{'ceiling':>9}")
    for r in rows:
        label = f"{'HF' if r['side'] == 'hf' else 'minialbert'} ({r['path']})"
        if "flops" in r:
            r["ceiling"] = _isa.ceiling(best_hf, r["flops"], peak)
        print(f"{label:<30}{r['seconds'] * 1e3:>9.0f}{r['median_all'] * 1e3:>7.0f}"
              f"{r['tokens'] / r['seconds']:>10.0f}{best_hf / r['seconds']:>12.2f}x"
              f"{r['loss']:>9.4f}{r['peak_mb']:>9.0f}{r['step_mb']:>9.0f}"
              + (f"{r['flops'] / 1e9:>7.1f}{r['ceiling']:>8.2f}x" if "flops" in r else ""))
    print("ms/step: the best round's median; (all): the median of every timed step")
    print("minialbert runs without work on padding and, on the masked path and the "
          "classifier, its last layer\nonly on the rows the heads read (the trainers' "
          "settings); /no-skip: that last layer on every row")
    print("GFLOP: the step's matrix products (dense layers, MLM decoder, attention's), as "
          "that path does them; ceiling: the\nfaster HF's time over their time at our "
          f"measured peak ({peak:.0f} GFLOP/s on {a.threads} threads), nothing else "
          "costing any time: the most any GEMM could reach here")
    ours = [r for r in rows if r["side"] != "hf"]
    return dict(config=name, head=a.head, padding=1 - real,
                ratio={r["path"]: best_hf / r["seconds"] for r in ours},
                ceiling={r["path"]: r["ceiling"] for r in ours},
                peak_gflops=peak,
                peak_mb={r["path"]: r["peak_mb"] for r in ours},
                hf_peak_mb=min(r["peak_mb"] for r in rows if r["side"] == "hf"))


if __name__ == "__main__":
    main()
