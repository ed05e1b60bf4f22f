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
