"""Time to quality: the same data, model config, optimizer, schedule and wall-clock budget
given to minialbert and to Hugging Face's AlbertForPreTraining (PyTorch, eager attention).
Each side trains from the same initial weights on the same batches until its budget runs
out, then both are evaluated on the same held-out batches.

    python benchmarks/bench_time_to_quality.py --budget 300

The optimizer is AdamW with ALBERT's exclusions (ours matches torch.optim.AdamW step for
step, tests/test_optim.py). The schedule is linear warm-up (5%) and decay over the *wall
clock*: the rate at a step is the schedule at (elapsed / budget), so both sides train for
exactly the budget and end their decay with it, whatever their speed. Ours runs as the
trainers run it (padding removed, glibc keeping freed memory — a process setting HF's side
gets too); HF runs eager attention.
"""
import argparse
import time

import _isa
import _report

_isa.emulate_from_argv()  # --isa avx2: restarts under that ISA before anything loads

import numpy as np  # noqa: E402

from minialbert import kernels  # noqa: E402
from minialbert.memory import keep_freed_memory
from minialbert.config import preset
from minialbert.corpus import default_corpus
from minialbert.data import PretrainingData, tokenize_corpus
from minialbert.heads import AlbertForPreTraining
from minialbert.params import zeros_like_params
from minialbert.optim import AdamW, clip_by_global_norm, learning_rate, no_decay
from minialbert.tokenizer import train_tokenizer
from minialbert.train import PretrainConfig, evaluate_batches, unigram_cross_entropy

K = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")


def batches_for(data, n, B):
    """The first n batches of the pretraining order, epoch after epoch, as the trainer
    walks them (train.py): each epoch has its own number of batches (its instances are
    drawn anew; an epoch 2 one batch shorter than epoch 0 stopped this benchmark once)."""
    epoch, s = 0, 0
    while s < n:
        per = data.num_batches(B, epoch)
        if per < 1:
            raise ValueError(f"epoch {epoch} has fewer than {B} instances: no batch")
        for index in range(min(per, n - s)):
            yield data.batch(epoch, index, B)
            s += 1
        epoch += 1


def run_ours(cfg, params, data, B, budget, lr, total):
    m = AlbertForPreTraining(cfg, params={k: v.copy() for k, v in params.items()})
    m.unpad = True  # as the trainers run it: no work on padding
    m.skip_unread = True  # ... and the last layer only on the rows the heads read
    opt = AdamW(exclude=no_decay)
    grads = zeros_like_params(m.params)
    t0 = time.time()
    step = 0
    times = []
    for b in batches_for(data, total, B):
        ts = time.perf_counter()
        for g in grads.values():
            g.fill(0)
        out, cache = m.forward(**{k: b[k] for k in K}, mlm_path="masked")
        m.backward(cache, grads)
        clip_by_global_norm(grads, 1.0)
        el = time.time() - t0
        opt.step(m.params, grads, learning_rate(el, lr, budget, budget / 20))
        step += 1
        times.append(time.perf_counter() - ts)
        if time.time() - t0 > budget:
            break
    return m, step, time.time() - t0, times


def run_hf(cfg, params, data, B, budget, lr, total, held):
    import torch
    import transformers

    hc = transformers.AlbertConfig(**cfg.to_dict(hf=True))
    hc._attn_implementation = "eager"
    hf = transformers.AlbertForPreTraining(hc).train()
    sd = {k: torch.from_numpy(v.copy()) for k, v in params.items()}
    sd["predictions.decoder.weight"] = sd["albert.embeddings.word_embeddings.weight"]
    sd["predictions.decoder.bias"] = sd["predictions.bias"]
    hf.load_state_dict(sd, strict=False)
    groups = [{"params": [p for n, p in hf.named_parameters() if not no_decay(n)],
               "weight_decay": 0.01},
              {"params": [p for n, p in hf.named_parameters() if no_decay(n)],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, eps=1e-8)
    t0 = time.time()
    step = 0
    times = []
    for b in batches_for(data, total, B):
        ts = time.perf_counter()
        o = hf(**{k: torch.from_numpy(b[k]) for k in K})
        opt.zero_grad()
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        el = time.time() - t0
        for g in opt.param_groups:
            g["lr"] = learning_rate(el, lr, budget, budget / 20)
        opt.step()
        step += 1
        times.append(time.perf_counter() - ts)
        if time.time() - t0 > budget:
            break
    secs = time.time() - t0
    hf.eval()
    nll = ok = n = sop_ok = sop_n = 0.0
    with torch.no_grad():
        for b in held:
            o = hf(**{k: torch.from_numpy(b[k]) for k in K[:3]})
            lab = torch.from_numpy(b["labels"]).reshape(-1)
            sel = lab != -100
            z = o.prediction_logits.reshape(-1, cfg.vocab_size)[sel]
            nll += float(torch.nn.functional.cross_entropy(z, lab[sel], reduction="sum"))
            ok += float((z.argmax(1) == lab[sel]).sum())
            n += int(sel.sum())
            sop_ok += float((o.sop_logits.argmax(1) == torch.from_numpy(
                b["sentence_order_label"])).sum())
            sop_n += len(b["sentence_order_label"])
    return dict(mlm_loss=nll / n, mlm_acc=ok / n, sop_acc=sop_ok / sop_n), step, secs, times


def main():
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    _isa.add_option(ap)
    _report.add_option(ap)
    a = ap.parse_args()
    _report.check(ap, a.json)
    pc = PretrainConfig()
    keep_freed_memory()  # as the trainers do; the same process setting for HF's side too
    threads = kernels.set_threads(None)
    torch.set_num_threads(threads)
    print(_isa.header(threads))
    corpus = default_corpus()
    tr, ho = corpus.split(pc.heldout_fraction)
    tok = train_tokenizer(tr.sentences(), pc.vocab_size)
    data = PretrainingData(tokenize_corpus(tr, tok), tok, pc.seq_len, seed=pc.seed)
    hdata = PretrainingData(tokenize_corpus(ho, tok), tok, pc.seq_len, seed=pc.seed + 1)
    held = [hdata.batch(0, i, pc.batch_size) for i in range(min(pc.eval_batches,
                                                                hdata.num_batches(pc.batch_size)))]
    cfg = preset(pc.preset, vocab_size=tok.vocab_size, **pc.extra)
    params = AlbertForPreTraining(cfg, seed=pc.seed).params
    uni = unigram_cross_entropy(tokenize_corpus(tr, tok).tokens, cfg.vocab_size, held)
    print(f"config {pc.preset} {pc.extra or ''}, batch {pc.batch_size} x {pc.seq_len}, AdamW lr "
          f"{a.lr}, budget {a.budget:.0f} s each, {threads} threads each; unigram baseline {uni:.3f}")
    rows = []
    for side in ("minialbert", "HF"):
        # estimate the steps that fit, so that the schedule ends with the budget
        total = 10 ** 9  # steps are bounded by the clock
        if side == "minialbert":
            m, steps, secs, times = run_ours(cfg, params, data, pc.batch_size, a.budget, a.lr,
                                             total)
            ev = evaluate_batches(m, held)
        else:
            ev, steps, secs, times = run_hf(cfg, params, data, pc.batch_size, a.budget, a.lr,
                                            total, held)
        rows.append((side, steps, secs, ev))
        print(f"{side:<11} {steps:>5} steps in {secs:5.0f} s ({steps / secs:.2f} steps/s): held-out "
              f"MLM loss {ev['mlm_loss']:.3f}, MLM acc {ev['mlm_acc']:.3f}, SOP acc "
              f"{ev['sop_acc']:.3f}; a step (model, loss, optimizer) {np.median(times) * 1e3:.0f} ms "
              f"median, the rest of the budget's time making batches", flush=True)
    print(f"steps in the same wall-clock budget: minialbert / HF = {rows[0][1] / rows[1][1]:.2f}")
    _report.write(a.json, dict(budget_s=a.budget, steps_ratio=rows[0][1] / rows[1][1],
                               unigram=uni, **{side.lower(): dict(steps=steps, **ev)
                                               for side, steps, _, ev in rows}))


if __name__ == "__main__":
    main()
