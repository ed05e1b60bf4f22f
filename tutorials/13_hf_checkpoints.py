# %% [markdown]
# # 13 — Loading Hugging Face checkpoints and matching their numbers
#
# Our parameters carry Hugging Face's names and layouts, so a checkpoint folder moves
# both ways with a copy by name (hf.py) plus bookkeeping: buffers to skip, the tied
# decoder, missing and unexpected weights. This chapter builds an albert-base-v2-shaped
# model in `transformers` with random weights (nothing can be downloaded here), saves it
# with a SentencePiece model trained on the embedded corpus, loads it into minialbert,
# and compares every output; then the other way.

# %%
import pathlib
import shutil
import sys
import warnings

import numpy as np
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import OUT, QUICK, write_table  # noqa: E402

from minialbert import hf  # noqa: E402
from minialbert.config import preset  # noqa: E402
from minialbert.corpus import default_corpus  # noqa: E402
from minialbert.tokenizer import train_tokenizer  # noqa: E402

work = OUT / "13_work"
if work.exists():
    shutil.rmtree(work)
tok = train_tokenizer(default_corpus().sentences(), 1000 if QUICK else 5000, work / "spiece")
shape = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128) if QUICK else {}
cfg = preset("albert-base-v2", vocab_size=tok.vocab_size, **shape)
hcfg = transformers.AlbertConfig(**cfg.to_dict(hf=True))
hcfg._attn_implementation = "eager"
torch.manual_seed(0)
theirs = transformers.AlbertForPreTraining(hcfg).eval()
theirs.save_pretrained(work / "hf")
shutil.copy(work / "spiece" / "spiece.model", work / "hf" / "spiece.model")
print(sorted(p.name for p in (work / "hf").iterdir()))

# %% [markdown]
# ## Theirs into ours

# %%
model, report = hf.from_pretrained(work / "hf", output_loading_info=True)
print(report)
ours_tok = hf.load_folder_tokenizer(work / "hf")
their_tok = transformers.AlbertTokenizer.from_pretrained(work / "hf")
texts = ["ALBERT shares one layer's weights across all twelve layers.",
         "Return a new sorted list from the items in iterable (3.14 is not 1,000)."]
enc = ours_tok.batch_encode(texts)
same_ids = (enc["input_ids"] == their_tok(texts, padding=True, return_tensors="np")["input_ids"]).all()
out, _ = model.forward(**enc, output_attentions=True,
                       output_hidden_states=True)
with torch.no_grad():
    o = theirs(**{k: torch.from_numpy(v) for k, v in enc.items()}, output_hidden_states=True,
               output_attentions=True)
diff = lambda a, b: float(np.abs(np.asarray(a) - b.numpy().reshape(np.shape(a))).max())  # noqa: E731
rows = [("token ids", "identical" if same_ids else "DIFFERENT"),
        ("prediction logits", f"{diff(out['prediction_logits'], o.prediction_logits):.2e}"),
        ("SOP logits", f"{diff(out['sop_logits'], o.sop_logits):.2e}"),
        ("last hidden state", f"{diff(out['hidden_states'][-1], o.hidden_states[-1]):.2e}"),
        ("attention maps (all layers)",
         f"{max(diff(a, b) for a, b in zip(out['attentions'], o.attentions)):.2e}")]
write_table("13_parity.md", ["float32 output", "largest difference, ours vs transformers"], rows)
assert same_ids and diff(out["prediction_logits"], o.prediction_logits) < 1e-3

# %% [markdown]
# ## Ours into theirs, and the round trip

# %%
model.save_pretrained(work / "ours", ours_tok)
with warnings.catch_warnings():
    back, info = transformers.AlbertForPreTraining.from_pretrained(
        work / "ours", output_loading_info=True, attn_implementation="eager")
print({k: v for k, v in info.items() if k != "error_msgs"})
assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
again = hf.from_pretrained(work / "ours")
exact = all(np.array_equal(again.params[k], v) for k, v in model.params.items())
print("round trip bit-exact:", exact)
assert exact

# %% [markdown]
# ## A hub checkpoint into a fine-tuning head
# albert-base-v2 on the hub is an AlbertForMaskedLM: no SOP head, no classifier. Loading
# it into a classifier reports what is new and what is dropped, as `transformers` does.

# %%
mlm_dir = work / "mlm"
hf.from_pretrained(work / "hf", head="masked_lm", verbose=False).save_pretrained(mlm_dir)
_, rep = hf.from_pretrained(mlm_dir, head="sequence_classification", num_labels=3,
                            output_loading_info=True, verbose=False)
print(rep)
assert rep.missing == ["albert.pooler.weight", "albert.pooler.bias", "classifier.weight",
                       "classifier.bias"]
shutil.rmtree(work)  # the weights are not part of the book
