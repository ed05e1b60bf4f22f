"""Optimizers, learning-rate schedules and gradient clipping.

All three optimizers share one moment update (no bias correction unless stated):

    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2

and then differ in the step:

  LAMB (ALBERT's lamb_optimizer.py):   u = m / (sqrt(v) + eps) + wd w
                                       r = ||w|| / ||u||  (one ratio per tensor; 1 if
                                           either norm is 0)
                                       w -= lr r u
  AdamWeightDecay (ALBERT's fine-tuning optimizer, BERT's): the same with r = 1.
  AdamW (torch.optim.AdamW):           w -= lr wd w;  w -= lr (m/bc1) / (sqrt(v/bc2) + eps),
                                       bc_i = 1 - b_i^t (bias correction)

Parameters named with LayerNorm/layer_norm/bias skip weight decay and (LAMB) the trust
ratio. A shared tensor is one tensor: it gets one trust ratio, computed from its summed
gradient. Chapter 09 derives LAMB and shows why large batches want it.
"""
import math

import numpy as np

from . import optim_kernels as adam


def no_decay(name):
    """ALBERT's exclusion list: LayerNorm weights and every bias."""
    return "LayerNorm" in name or "layer_norm" in name or name.endswith("bias")


class _Moments:
    def __init__(self, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, exclude=no_decay):
        self.b1, self.b2, self.eps, self.wd = b1, b2, eps, weight_decay
        self.exclude = exclude if exclude is not None else (lambda name: False)
        self.m, self.v, self.t = {}, {}, 0
        self.lr_scale = {}  # name -> multiplier of the learning rate (layer-wise decay)

    # fused: each step is one pass of optim_kernels.py over a tensor (the same bits); False
    # runs the NumPy lines below instead (the readable form; tests compare the two)
    fused = True

    def _state(self, name, p):
        if name not in self.m:
            self.m[name] = np.zeros_like(p)
            self.v[name] = np.zeros_like(p)
        return self.m[name], self.v[name]

    def _flat(self, *arrays):
        # flat views of the tensors for a kernel, or None: not fused, or not contiguous
        if self.fused and all(a.flags.c_contiguous for a in arrays):
            return [a.reshape(-1) for a in arrays]
        return None

    def _consts(self, p):  # b1, 1 - b1, b2, 1 - b2 as scalars of p's dtype (as NumPy casts)
        t = p.dtype.type
        return t(self.b1), t(1 - self.b1), t(self.b2), t(1 - self.b2)

    def _moments(self, name, p, g):
        m, v = self._state(name, p)
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        return m, v

    def _direction(self, name, p, g, decay):
        # u = m / (sqrt(v) + eps) (+ wd p when decay), after the moments' update
        m, v = self._state(name, p)
        t = p.dtype.type
        flat = self._flat(p, g, m, v)
        if flat is not None:
            u = np.empty_like(p)
            adam.adam_direction(*flat, *self._consts(p), t(self.eps), decay, t(self.wd),
                                u.reshape(-1))
            return u
        m, v = self._moments(name, p, g)
        u = m / (np.sqrt(v) + t(self.eps))
        if decay:
            u += t(self.wd) * p
        return u

    @staticmethod
    def _step_along(p, u, k):  # p -= k u, k a scalar of p's dtype
        if p.flags.c_contiguous and u.flags.c_contiguous:
            adam.step_along(p.reshape(-1), u.reshape(-1), k)
        else:
            p -= k * u

    def state_dict(self):
        out = {f"m/{k}": v for k, v in self.m.items()}
        out.update({f"v/{k}": v for k, v in self.v.items()})
        return out, {"t": self.t, "type": type(self).__name__}

    def load_state_dict(self, arrays, meta):
        if meta.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is {meta.get('type')}, not {type(self).__name__}")
        self.t = int(meta["t"])
        self.m = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("m/")}
        self.v = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("v/")}


class Lamb(_Moments):
    """LAMB as ALBERT's lamb_optimizer.py: no bias correction, eps 1e-6, wd 0.01."""

    def step(self, params, grads, lr):
        self.t += 1
        ratios = {}
        for name, p in params.items():
            excluded = self.exclude(name)
            u = self._direction(name, p, grads[name], bool(not excluded and self.wd))
            r = 1.0
            if not excluded:
                w_norm = float(np.linalg.norm(p))
                u_norm = float(np.linalg.norm(u))
                if w_norm > 0 and u_norm > 0:
                    r = w_norm / u_norm
            ratios[name] = r
            self._step_along(p, u, p.dtype.type(lr * self.lr_scale.get(name, 1.0) * r))
        return ratios


class AdamWeightDecay(_Moments):
    """ALBERT's (and BERT's) AdamWeightDecayOptimizer: LAMB without the trust ratio."""

    def step(self, params, grads, lr):
        self.t += 1
        for name, p in params.items():
            u = self._direction(name, p, grads[name], bool(not self.exclude(name) and self.wd))
            self._step_along(p, u, p.dtype.type(lr * self.lr_scale.get(name, 1.0)))


class AdamW(_Moments):
    """torch.optim.AdamW's arithmetic: bias-corrected, decoupled decay. Defaults as torch
    (eps 1e-8, wd 0.01, decay on every parameter: exclude=None); pass exclude=no_decay
    for ALBERT's exclusions."""

    def __init__(self, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, exclude=None):
        super().__init__(b1, b2, eps, weight_decay, exclude)

    def step(self, params, grads, lr):
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for name, p in params.items():
            lr_p = lr * self.lr_scale.get(name, 1.0)
            decay = bool(not self.exclude(name) and self.wd)
            t = p.dtype.type
            m, v = self._state(name, p)
            flat = self._flat(p, grads[name], m, v)
            if flat is not None:  # the lines below in one pass (optim_kernels.py)
                adam.adamw_update(*flat, *self._consts(p), decay, t(1 - lr_p * self.wd),
                                  t(lr_p / bc1), t(math.sqrt(bc2)), t(self.eps))
                continue
            if decay:
                p *= t(1 - lr_p * self.wd)
            m, v = self._moments(name, p, grads[name])
            denom = np.sqrt(v) / t(math.sqrt(bc2)) + t(self.eps)
            p -= t(lr_p / bc1) * (m / denom)


OPTIMIZERS = {"lamb": Lamb, "adamw": AdamW, "adam_weight_decay": AdamWeightDecay}


def make_optimizer(name, **kw):
    try:
        return OPTIMIZERS[name](**kw)
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}") from None


def learning_rate(step, lr, total_steps, warmup_steps, schedule="albert"):
    """Linear warm-up, then linear decay to 0 at total_steps.

    schedule="albert": the decay counts from step 0 (ALBERT's/BERT's optimization.py), so at
        the end of warm-up the rate is already lr (1 - warmup/total);
    schedule="hf": the decay counts from the end of warm-up (transformers'
        get_linear_schedule_with_warmup), peaking at lr.
    ``step`` is the number of updates done so far (0 for the first)."""
    if warmup_steps and step < warmup_steps:
        return lr * step / warmup_steps
    if schedule == "albert":
        return lr * max(0.0, 1.0 - step / total_steps)
    if schedule == "hf":
        return lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    raise ValueError(f"unknown schedule {schedule!r}: albert or hf")


def global_norm(grads):
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))


def clip_by_global_norm(grads, max_norm):
    """Scale every gradient by max_norm / global_norm when that is < 1 (in place). As
    tf.clip_by_global_norm / torch.nn.utils.clip_grad_norm_. Returns the norm before."""
    norm = global_norm(grads)
    if max_norm and norm > max_norm:
        s = max_norm / norm
        for g in grads.values():
            g *= g.dtype.type(s)
    return norm
