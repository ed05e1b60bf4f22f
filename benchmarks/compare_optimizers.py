"""LAMB against AdamW on the default pretraining run, each with the same wall-clock budget.

    python benchmarks/compare_optimizers.py --budget 150

Used to choose `minialbert pretrain`'s default optimizer and learning rate: prints the
held-out MLM loss, MLM accuracy and SOP accuracy each setting reaches.
"""
import argparse
import json
import tempfile

from minialbert.train import PretrainConfig, pretrain

SETTINGS = [("lamb", 1e-3), ("lamb", 3e-3), ("lamb", 1e-2), ("adamw", 5e-4), ("adamw", 1e-3)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=150)
    ap.add_argument("--settings", default=None, help='JSON list of [optimizer, lr] pairs')
    ap.add_argument("--seq-len", type=int, default=PretrainConfig.seq_len)
    ap.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    a = ap.parse_args()
    settings = json.loads(a.settings) if a.settings else SETTINGS
    rows = []
    for opt, lr in settings:
        with tempfile.TemporaryDirectory() as d:
            s = pretrain(PretrainConfig(out=d, optimizer=opt, lr=lr, time_budget=a.budget,
                                        seq_len=a.seq_len, batch_size=a.batch_size,
                                        progress=False, save_every=0, eval_every=10**9))
        ev = s["heldout"]
        rows.append((opt, lr, s["step"], ev["mlm_loss"], s["unigram_cross_entropy"], ev["mlm_acc"],
                     ev["sop_acc"]))
        print(f"T {a.seq_len} B {a.batch_size} {opt:<7} lr {lr:<7g} {s['step']:>5} steps  held-out MLM loss {ev['mlm_loss']:.3f} "
              f"(unigram {s['unigram_cross_entropy']:.3f})  MLM acc {ev['mlm_acc']:.3f}  "
              f"SOP acc {ev['sop_acc']:.3f}", flush=True)


if __name__ == "__main__":
    main()
