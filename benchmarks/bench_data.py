"""The data pipeline against the training step it feeds: instances/s and tokens/s of
batch making (SOP pairs + n-gram masking + collation) next to the training step's tokens/s.

    python benchmarks/bench_data.py
"""
import time

import numpy as np

from minialbert.config import preset
from minialbert.corpus import default_corpus
from minialbert.data import PretrainingData, tokenize_corpus
from minialbert.heads import AlbertForPreTraining
from minialbert.params import zeros_like_params
from minialbert.tokenizer import train_tokenizer

KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")


def main(B=32, T=128):
    t0 = time.perf_counter()
    corpus = default_corpus()
    t_corpus = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok = train_tokenizer(corpus.sentences(), 4000)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    tc = tokenize_corpus(corpus, tok)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = PretrainingData(tc, tok, T, seed=0)
    t_inst = time.perf_counter() - t0
    n = 30
    t0 = time.perf_counter()
    toks = 0
    for i in range(n):
        b = data.batch(0, i, B)
        toks += int(b["attention_mask"].sum())
    dt = time.perf_counter() - t0
    print(f"corpus extraction {t_corpus:.1f} s ({corpus.info['characters']:,} chars); tokenizer "
          f"training {t_tok:.1f} s; tokenizing {tc.n_tokens:,} tokens {t_enc:.1f} s "
          f"({tc.n_tokens / t_enc:,.0f} tokens/s); one epoch of SOP instances "
          f"{len(data.instances(0))} in {t_inst:.2f} s")
    print(f"batches (masking + collation): {n * B / dt:,.0f} instances/s, {toks / dt:,.0f} tokens/s")
    model = AlbertForPreTraining(preset("small", vocab_size=tok.vocab_size))
    grads = zeros_like_params(model.params)
    b = data.batch(0, 0, B)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out, cache = model.forward(**{k: b[k] for k in KEYS}, mlm_path="masked")
        model.backward(cache, grads)
        times.append(time.perf_counter() - t0)
    step = min(times[1:])
    print(f"training step (small preset, B {B}, T {T}, forward + backward): "
          f"{b['attention_mask'].sum() / step:,.0f} tokens/s")
    print(f"the pipeline is {toks / dt / (b['attention_mask'].sum() / step):.0f}x faster than "
          "the step it feeds")


if __name__ == "__main__":
    main()
