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


def assert_grads_match(grads, hf_grads, dtype, zero_bias=()):
    """Every gradient against transformers'. float64: 1e-8 relative; float32: 1e-3 relative
    + 1e-5 of the tensor's largest entry. A gradient that is truly zero (the attention key
    bias; the biases named in ``zero_bias`` by their weight — a softmax ignores a constant
    added to every logit it normalises over) is rounding noise on both sides, judged
    against the scale of its weight's gradient."""
    for k, g in grads.items():
        ref = hf_grads[k]
        scale = float(np.abs(ref).max()) or 1.0
        if k.endswith("attention.key.bias") or (k.endswith(".bias") and
                                                   k[:-4] + "weight" in zero_bias):
            scale = float(np.abs(hf_grads[k[:-4] + "weight"]).max())
        tol = dict(rtol=1e-8, atol=1e-10 * scale) if dtype == np.float64 else \
            dict(rtol=1e-3, atol=1e-5 * scale)
        assert g.dtype == dtype
        assert_close(g, ref, **tol, what=f"grad {k}")


def assert_runs_without_jit(code):
    """Run ``code`` (one line of Python that prints 'ok' when its checks pass) in a fresh
    interpreter under NUMBA_DISABLE_JIT=1, where every kernel is plain Python (book chapter
    01: how to step through one in a debugger)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
