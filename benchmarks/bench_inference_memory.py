"""Inference memory, ours against Hugging Face's AlbertModel: the peak resident memory of
one forward pass on a batch (B32 x T128), each side in a fresh process of its own.

    python benchmarks/bench_inference_memory.py            # tiny and base configs
    python benchmarks/bench_inference_memory.py --quick    # tiny only

Ours: a frozen model (as Predictor runs it: weights packed once, nothing kept for a
backward, freed memory kept for the next call); HF: eval() under torch.inference_mode.
Both get the same random weights and first make a one-sentence call (packing, torch's
first-call allocations), then the batch. Prints each side's peak RSS and its growth over
the one-sentence call (what the batch itself took), and HF / ours of the growth (> 1:
ours takes less).
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np
from minialbert.config import AlbertConfig, preset, shape_of
from minialbert.heads import init_params
side, name, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = shape_of(preset("tiny") if name == "tiny" else preset("albert-base-v2", vocab_size=30000))
ids = np.random.default_rng(0).integers(5, kw["vocab_size"], (32, 128))
params = init_params(AlbertConfig(**kw), seed=0, head="base")
if side == "ours":
    from minialbert import kernels
    from minialbert.memory import keep_freed_memory
    from minialbert.model import AlbertModel
    kernels.set_threads(threads)
    m = AlbertModel(AlbertConfig(**kw), params=params).freeze()
    keep_freed_memory()
    del params
    run = m.forward
else:
    import torch, transformers
    torch.set_num_threads(threads)
    hf = transformers.AlbertModel(transformers.AlbertConfig(**kw)).eval()
    hf.load_state_dict({k[len("albert."):]: torch.from_numpy(v) for k, v in params.items()
                        if k.startswith("albert.")}, strict=True)
    del params

    def run(x):
        with torch.inference_mode():
            return hf(input_ids=torch.from_numpy(x))
run(ids[:1, :32])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(ids)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak / 1024, "growth_mb": (peak - before) / 1024}))
"""


def measure(side, name, threads):
    r = subprocess.run([sys.executable, "-c", CHILD, side, name, str(threads)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny only")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import _isa
    print(_isa.header(a.threads))
    print(f"\n{'one forward pass, B32 x T128':<32}{'peak MB':>9}{'batch MB':>10}")
    for name in (["tiny"] if a.quick else ["tiny", "base"]):
        got = {side: measure(side, name, a.threads) for side in ("ours", "hf")}
        for side, label in (("hf", "HF (inference_mode)"), ("ours", "minialbert (frozen)")):
            print(f"{name + ', ' + label:<32}{got[side]['peak_mb']:>9.0f}"
                  f"{got[side]['growth_mb']:>10.0f}")
        ratio = got["hf"]["growth_mb"] / max(got["ours"]["growth_mb"], 1e-9)
        print(f"{name}: the batch's memory, HF / ours: {ratio:.2f}x")


if __name__ == "__main__":
    main()
