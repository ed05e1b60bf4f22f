"""Optimizers against torch: torch.optim.AdamW itself, and LAMB / AdamWeightDecay written
in torch from ALBERT's lamb_optimizer.py / optimization.py. Several steps, same params and
gradients. float64: agreement to 1e-12 (the same arithmetic in another order)."""
import numpy as np
import pytest

from minialbert.optim import (AdamW, AdamWeightDecay, Lamb, clip_by_global_norm, global_norm,
                              learning_rate, no_decay)
from reference import assert_close, require


def problem(seed=0):
    r = np.random.default_rng(seed)
    params = {"enc.dense.weight": r.standard_normal((5, 4)), "enc.dense.bias": r.standard_normal(5),
              "enc.LayerNorm.weight": 1 + 0.1 * r.standard_normal(4),
              "zero.weight": np.zeros((3, 3))}
    grads = [{k: r.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    return params, grads


def torch_lamb_or_awd(params, grads, lr, trust, wd=0.01, eps=1e-6, b1=0.9, b2=0.999):
    torch = require("torch")
    P = {k: torch.tensor(v) for k, v in params.items()}
    M = {k: torch.zeros_like(v) for k, v in P.items()}
    V = {k: torch.zeros_like(v) for k, v in P.items()}
    for g in grads:
        for k in P:
            gk = torch.tensor(g[k])
            M[k] = b1 * M[k] + (1 - b1) * gk
            V[k] = b2 * V[k] + (1 - b2) * gk * gk
            u = M[k] / (V[k].sqrt() + eps)
            if not no_decay(k):
                u = u + wd * P[k]
            r = 1.0
            if trust and not no_decay(k):
                wn, un = torch.linalg.norm(P[k]), torch.linalg.norm(u)
                r = float(wn / un) if wn > 0 and un > 0 else 1.0
            P[k] = P[k] - lr * r * u
    return {k: v.numpy() for k, v in P.items()}


@pytest.mark.parametrize("cls,trust", [(Lamb, True), (AdamWeightDecay, False)])
def test_lamb_and_adam_weight_decay_match_torch_reference(cls, trust):
    params, grads = problem()
    ref = torch_lamb_or_awd(params, grads, 0.01, trust)
    opt = cls()
    ours = {k: v.copy() for k, v in params.items()}
    for g in grads:
        opt.step(ours, g, 0.01)
    for k in ours:
        assert_close(ours[k], ref[k], rtol=1e-12, atol=1e-14, what=k)
    assert (ours["zero.weight"] != 0).any()  # ||w|| = 0: ratio 1, the update still applies


@pytest.mark.parametrize("exclude", [None, no_decay])
def test_adamw_matches_torch_optim_adamw(exclude):
    torch = require("torch")
    params, grads = problem(1)
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    groups = [{"params": [tp[k] for k in tp if exclude is None or not exclude(k)],
               "weight_decay": 0.01}]
    if exclude is not None:
        groups.append({"params": [tp[k] for k in tp if exclude(k)], "weight_decay": 0.0})
    topt = torch.optim.AdamW(groups, lr=0.003, betas=(0.9, 0.999), eps=1e-8)
    opt = AdamW(exclude=exclude)
    ours = {k: v.copy() for k, v in params.items()}
    for g in grads:
        for k in tp:
            tp[k].grad = torch.tensor(g[k])
        topt.step()
        opt.step(ours, g, 0.003)
    for k in ours:
        assert_close(ours[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14, what=k)


def test_float32_stays_float32():
    params, grads = problem()
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    for cls in (Lamb, AdamW, AdamWeightDecay):
        opt = cls()
        q = {k: v.copy() for k, v in p32.items()}
        opt.step(q, {k: v.astype(np.float32) for k, v in grads[0].items()}, 0.01)
        assert all(v.dtype == np.float32 for v in q.values())
        assert all(v.dtype == np.float32 for v in opt.m.values())


@pytest.mark.parametrize("cls", [AdamW, AdamWeightDecay, Lamb])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("wd", [0.01, 0.0])
def test_fused_step_gives_the_bits_of_the_numpy_lines(cls, dt, wd):
    """Each optimizer's step as one kernel pass a tensor (optim_kernels.py) against its
    NumPy lines (fused = False): bitwise the same parameters, moments and trust ratios
    over several steps, with exclusions, a per-tensor learning-rate scale, a tensor of
    zeros, an odd size and a tensor that is not contiguous (it takes the NumPy lines)."""
    params, grads = problem(2)
    params = {k: v.astype(dt) for k, v in params.items()}
    params["big.weight"] = np.random.default_rng(3).standard_normal((301, 7)).astype(dt)
    base = np.random.default_rng(4).standard_normal((6, 8)).astype(dt)
    kw = dict(weight_decay=wd, **({"exclude": no_decay} if cls is AdamW else {}))
    fused, plain = cls(**kw), cls(**kw)
    plain.fused = False
    for opt in (fused, plain):
        opt.lr_scale["big.weight"] = 0.5
    ours = {k: v.copy() for k, v in params.items()}
    ref = {k: v.copy() for k, v in params.items()}
    ours["strided.weight"], ref["strided.weight"] = base.copy()[:, ::2], base.copy()[:, ::2]
    r = np.random.default_rng(5)
    for g in grads[:3]:
        g = {k: v.astype(dt) for k, v in g.items()}
        g["big.weight"] = r.standard_normal((301, 7)).astype(dt)
        g["strided.weight"] = r.standard_normal((6, 4)).astype(dt)
        assert fused.step(ours, g, 0.01) == plain.step(ref, g, 0.01)
    for k in ref:
        assert ours[k].dtype == dt
        assert np.array_equal(ours[k], ref[k]), k
        assert np.array_equal(fused.m[k], plain.m[k]) and np.array_equal(fused.v[k], plain.v[k])
    assert not np.array_equal(ours["big.weight"], params["big.weight"])  # it did step


def test_schedules():
    assert learning_rate(0, 1.0, 100, 10) == 0
    assert learning_rate(5, 1.0, 100, 10) == 0.5
    assert learning_rate(10, 1.0, 100, 10, "albert") == pytest.approx(0.9)  # decays from 0
    assert learning_rate(10, 1.0, 100, 10, "hf") == pytest.approx(1.0)  # peaks at lr
    assert learning_rate(55, 1.0, 100, 10, "hf") == pytest.approx(0.5)
    assert learning_rate(100, 1.0, 100, 10) == 0


def test_clip_matches_torch():
    torch = require("torch")
    _, grads = problem()
    g = grads[0]
    tp = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64)) for v in g.values()]
    for p, v in zip(tp, g.values()):
        p.grad = torch.tensor(v)
    tn = torch.nn.utils.clip_grad_norm_(tp, 1.0)
    ours = {k: v.copy() for k, v in g.items()}
    n = clip_by_global_norm(ours, 1.0)
    assert n == pytest.approx(float(tn), rel=1e-12)
    assert global_norm(ours) == pytest.approx(1.0, rel=1e-9)
    for p, v in zip(tp, ours.values()):
        assert_close(v, p.grad.numpy(), rtol=1e-6, atol=1e-12)  # torch adds 1e-6 to the norm


def test_state_round_trip():
    params, grads = problem()
    a = Lamb()
    pa = {k: v.copy() for k, v in params.items()}
    a.step(pa, grads[0], 0.01)
    arrays, meta = a.state_dict()
    b = Lamb()
    b.load_state_dict(arrays, meta)
    pb = {k: v.copy() for k, v in pa.items()}
    a.step(pa, grads[1], 0.01)
    b.step(pb, grads[1], 0.01)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
