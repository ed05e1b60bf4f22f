"""The references we check against: torch and transformers, test-only.

``require("torch")`` imports it; if it is missing, the test skips locally and, because
conftest turns skips into failures under CI, fails in CI.
"""
import importlib

import numpy as np
import pytest


def require(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def t(x, grad=False):
    """NumPy -> torch tensor (same dtype); ``grad=True`` makes it a leaf that keeps .grad."""
    torch = require("torch")
    v = torch.from_numpy(np.ascontiguousarray(x).copy())
    if grad:
        v.requires_grad_(True)
    return v


def n(x):
    return x.detach().cpu().numpy()


def assert_close(ours, ref, rtol, atol, what=""):
    """np.testing.assert_allclose, printing the first values side by side on failure."""
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    try:
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)
    except AssertionError as e:
        side = "\n".join(f"  ours {a:+.8e}   ref {b:+.8e}"
                         for a, b in zip(ours.reshape(-1)[:6], ref.reshape(-1)[:6]))
        raise AssertionError(f"{what}\n{side}\n{e}") from None


def hf_from_params(cfg, params, dtype, cls="AlbertForPreTraining", **config_kw):
    """A transformers AlbertFor* (eager attention) holding our parameters, copied by name;
    fails if any name does not match (the tied decoder is the word table)."""
    torch = require("torch")
    transformers = require("transformers")
    hcfg = transformers.AlbertConfig(**cfg.to_dict(hf=True), **config_kw)
    hcfg._attn_implementation = "eager"
    hf = getattr(transformers, cls)(hcfg).to(dtype)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
    if "predictions.bias" in sd:
        sd["predictions.decoder.weight"] = sd["albert.embeddings.word_embeddings.weight"]
        sd["predictions.decoder.bias"] = sd["predictions.bias"]
    if cls == "AlbertModel":
        sd = {k[len("albert."):]: v for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k], (missing, unexpected)
    return hf
