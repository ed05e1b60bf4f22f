"""How much of a batch is padding: the default pretraining data and a GLUE-style
fine-tuning batch (the default task), and what removing it saves in a training step.

    python benchmarks/bench_padding.py

The trainers run the encoder on real tokens only (model.unpad): every dense layer, the
attention and the MLM head skip the padding. Prints the padding fraction of each kind of
batch and the step time of the small preset on one of them, padded and unpadded.
"""
import time

import numpy as np

from minialbert.config import preset
from minialbert.corpus import default_corpus
from minialbert.data import PretrainingData, tokenize_corpus
from minialbert.demo import cpu_name
from minialbert.finetune import Batches, FinetuneConfig
from minialbert.heads import AlbertForPreTraining
from minialbert.params import zeros_like_params
from minialbert.tasks import default_task
from minialbert.tokenizer import train_tokenizer
from minialbert.train import PretrainConfig

KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")


def padding(masks):
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)


def step_ms(model, b, unpad, reps=5):
    model.unpad = unpad
    grads = zeros_like_params(model.params)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        out, cache = model.forward(**{k: b[k] for k in KEYS}, mlm_path="masked")
        model.backward(cache, grads)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])) * 1e3


def main(n_batches=20):
    print(f"CPU: {cpu_name()}")
    pc, fc = PretrainConfig(), FinetuneConfig()
    corpus = default_corpus()
    tok = train_tokenizer(corpus.sentences(), pc.vocab_size)
    data = PretrainingData(tokenize_corpus(corpus, tok), tok, pc.seq_len, seed=0)
    pre = [data.batch(0, i, pc.batch_size) for i in range(n_batches)]
    task = Batches(default_task(corpus), tok, fc, "train")
    fine = [task.batch(0, i, fc.batch_size)["attention_mask"]
            for i in range(min(n_batches, task.num_batches(fc.batch_size)))]
    print(f"default pretraining data (B {pc.batch_size} x T {pc.seq_len}, {n_batches} batches): "
          f"{padding([b['attention_mask'] for b in pre]):.0%} padding")
    print(f"default fine-tuning task (B {fc.batch_size}, T up to {fc.seq_len}, each batch "
          f"trimmed to its longest row): {padding(fine):.0%} padding")
    model = AlbertForPreTraining(preset(pc.preset, vocab_size=tok.vocab_size))
    padded, unpadded = step_ms(model, pre[0], False), step_ms(model, pre[0], True)
    print(f"small preset, one pretraining batch ({padding([pre[0]['attention_mask']]):.0%} "
          f"padding), forward + backward: padded {padded:.0f} ms, padding removed "
          f"{unpadded:.0f} ms ({padded / unpadded:.2f}x)")


if __name__ == "__main__":
    main()
