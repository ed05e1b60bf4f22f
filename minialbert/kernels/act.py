"""Activations, elementwise, forward and backward.

gelu_new (Hugging Face's name; the tanh approximation ALBERT v2 and BERT's TF code use):
    y  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2),  t = tanh(u)
The backward is computed through 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)):
    dy/dx = s + 2 x s (1 - s) u',  s = sigmoid(2u) = 1 / (1 + e),  e = exp(-2u),
    u' = sqrt(2/pi)(1 + 3*0.044715 x^2),  and 1 - s = e s  (no subtraction)
It keeps 1 - t^2 = 4 s (1 - s) = 4 e s^2 to relative accuracy, which the derivative needs
at large |x| (1 - s by subtraction loses it where s is near 1). In float32 the exp is
``exp_fast32``: float32 arithmetic, without the two compensation pairs that keep
exp_float32 (the softmax's and the loss's) within 0.69 ulp; here 2 ulp are plenty, and it
runs about 1.5x faster (measured on AVX2), with a float32 divide after it.
The float32 forward computes tanh as a rational function (an odd polynomial of degree 13
over an even one of degree 6 on [-7.9, 7.9], +-1 outside: the form Eigen uses), which LLVM
turns into vector multiplies and one divide: no libm call, ~7x faster than exp here. Its
largest error is 3.4e-7 absolute (float32's spacing near 1 is 6e-8); test_kernels checks
gelu_new over a dense grid. float64 (gradient checks) uses the exact math.tanh.
gelu (exact, Hugging Face's "gelu"):
    y = x Phi(x) = 0.5 x (1 + erf(x/sqrt 2));  dy/dx = Phi(x) + x phi(x)
"""
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._base import _EXP_C1, _EXP_C2, _EXP_LOG2E, _EXP_P, FASTMATH, cast_like, exp_float32

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


_TANH_CLAMP = 7.90531110763549805  # tanh(x) rounds to +-1 in float32 beyond this
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
           5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
           -2.76076847742355e-16)  # numerator: x * sum_i P[i] x^(2i)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
           1.19825839466702e-06)  # denominator: sum_i Q[i] x^(2i)


def tanh_float32(x):
    """tanh, vectorisable: exact math.tanh for float64, the rational form for float32."""
    return math.tanh(x)


@overload(tanh_float32, jit_options={"error_model": "numpy"})  # see _epilogue (matmul.py)
def _tanh_float32_overload(x):
    if x != types.float32:
        return lambda x: math.tanh(x)
    p0, p1, p2, p3, p4, p5, p6 = (np.float32(c) for c in _TANH_P)
    q0, q1, q2, q3 = (np.float32(c) for c in _TANH_Q)
    hi = np.float32(_TANH_CLAMP)

    def impl(x):
        x = min(max(x, -hi), hi)
        x2 = x * x
        num = x * (p0 + x2 * (p1 + x2 * (p2 + x2 * (p3 + x2 * (p4 + x2 * (p5 + x2 * p6))))))
        return num / (q0 + x2 * (q1 + x2 * (q2 + x2 * q3)))

    return impl


@njit(fastmath=FASTMATH, inline="always")
def gelu_new_at(x, v):
    # gelu_new of the value v (x: any array of v's type, for the constants). Inlined into
    # its callers: this kernel's loop and the GEMM's epilogue (matmul.py), the same bits.
    c = cast_like(x, _SQRT_2_OVER_PI)
    a = cast_like(x, 0.044715)
    half = cast_like(x, 0.5)
    one = cast_like(x, 1.0)
    return half * v * (one + tanh_float32(c * (v + a * v * v * v)))


# exp(x) in float32 arithmetic only (sigmoid_pair, below, is its one user):
# exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2
# (Cody & Waite's two-part ln 2, as _base.exp_float32), exp(r) by Cephes' expf polynomial,
# 2^k from its bits. x is clamped to [-87, 88] first, so 2^k stays a normal float32:
# exp_fast32(-1000) is exp(-87) ~ 1.6e-38, not 0, and exp_fast32(1000) is exp(88), not inf
# — what the sigmoid below wants (no inf, no NaN from inf * 0). At most 2 ulp from the
# exact value inside the clamp (tests/test_kernels.py measures it).
_X32_LO, _X32_HI = -87.0, 88.0


def exp_fast32(x):
    """exp; for float32 the float32-only form above (float64: math.exp)."""
    return math.exp(x)


@overload(exp_fast32, jit_options={"error_model": "numpy"})
def _exp_fast32_overload(x):
    if x != types.float32:
        return lambda x: math.exp(x)
    f = np.float32
    log2e, c1, c2 = f(_EXP_LOG2E), f(_EXP_C1), f(_EXP_C2)
    p0, p1, p2, p3, p4, p5 = (f(c) for c in _EXP_P)
    lo, hi, half, one = f(_X32_LO), f(_X32_HI), f(0.5), f(1.0)

    def impl(x):
        x = min(max(x, lo), hi)
        k = np.floor(x * log2e + half)
        r = (x - k * c1) - k * c2
        p = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
        return p * np.int32((np.int32(k) + 127) << 23).view(np.float32)  # p * 2^k

    return impl


def sigmoid_pair(z):
    """(s, r) = (1 / (1 + exp(z)), 1 - s), r computed as exp(z) s (no subtraction: exact
    to relative accuracy where s is near 1). Beyond the range where exp(z) is a finite
    normal number (float32 [-87, 88], float64 [-745, 709]) the exact limits (1, 0) or
    (0, 1): never inf * 0, and no tiny remainder that a huge factor could blow up.
    (This body runs under NUMBA_DISABLE_JIT; compiled, the overload below.)"""
    if z > 709.0:
        return 0.0, 1.0
    if z < -745.0:
        return 1.0, 0.0
    e = math.exp(z)
    s = 1.0 / (1.0 + e)
    return s, e * s


@overload(sigmoid_pair, inline="always")
def _sigmoid_pair_overload(z):
    lo, hi = ((np.float32(_X32_LO), np.float32(_X32_HI)) if z == types.float32
              else (-745.0, 709.0))
    one, zero = (np.float32(1), np.float32(0)) if z == types.float32 else (1.0, 0.0)

    def impl(z):
        e = exp_fast32(min(max(z, lo), hi))
        s = one / (one + e)
        r = e * s
        s = zero if z > hi else s  # selects, not branches: the loop stays a vector loop
        r = one if z > hi else r
        s = one if z < lo else s
        r = zero if z < lo else r
        return s, r

    return impl


@njit(fastmath=FASTMATH, inline="always")
def gelu_new_grad_at(x, d, v):
    # d * gelu_new'(v), through exp (see the module's docstring); x as in gelu_new_at
    c = cast_like(x, _SQRT_2_OVER_PI)
    c2 = cast_like(x, -2.0 * _SQRT_2_OVER_PI)
    a = cast_like(x, 0.044715)
    a3 = cast_like(x, 3 * 0.044715)
    one = cast_like(x, 1.0)
    two = cast_like(x, 2.0)
    s, r = sigmoid_pair(c2 * (v + a * v * v * v))  # sigmoid(2u) = (1 + tanh u)/2, 1 - it
    return d * (s + two * v * s * r * c * (one + a3 * v * v))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_new_forward(x):  # x: [n] (flat) -> y: [n]
    y = np.empty_like(x)
    for i in prange(x.shape[0]):
        y[i] = gelu_new_at(x, x[i])
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_new_backward(dy, x):  # dy, x: [n] -> dx: [n]
    # Through exp, not the rational tanh: for large |x| the derivative needs 1 - t^2 to
    # *relative* accuracy, and 1 - t^2 from a t with 3e-7 absolute error is off by 5e-5.
    dx = np.empty_like(x)
    for i in prange(x.shape[0]):
        dx[i] = gelu_new_grad_at(x, dy[i], x[i])
    return dx


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_forward(x):  # exact: x * Phi(x)
    y = np.empty_like(x)
    r = cast_like(x, _INV_SQRT_2)
    half = cast_like(x, 0.5)
    one = cast_like(x, 1.0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = half * v * (one + math.erf(v * r))
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_backward(dy, x):
    dx = np.empty_like(x)
    r = cast_like(x, _INV_SQRT_2)
    k = cast_like(x, _INV_SQRT_2PI)
    half = cast_like(x, 0.5)
    one = cast_like(x, 1.0)
    for i in prange(x.shape[0]):
        v = x[i]
        cdf = half * (one + math.erf(v * r))
        pdf = k * exp_float32(-half * v * v)
        dx[i] = dy[i] * (cdf + v * pdf)
    return dx


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def tanh_forward(x):
    y = np.empty_like(x)
    for i in prange(x.shape[0]):
        y[i] = math.tanh(x[i])
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def tanh_backward(dy, y):  # d tanh = 1 - y^2, from the output
    dx = np.empty_like(y)
    one = cast_like(y, 1.0)
    for i in prange(y.shape[0]):
        dx[i] = dy[i] * (one - y[i] * y[i])
    return dx


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def relu_forward(x):
    y = np.empty_like(x)
    z = cast_like(x, 0.0)
    for i in prange(x.shape[0]):
        y[i] = x[i] if x[i] > z else z
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def relu_backward(dy, x):
    dx = np.empty_like(x)
    z = cast_like(x, 0.0)
    for i in prange(x.shape[0]):
        dx[i] = dy[i] if x[i] > z else z
    return dx


ACTIVATIONS = {
    # name (as in a Hugging Face config) -> (forward(x), backward(dy, x))
    "gelu_new": (gelu_new_forward, gelu_new_backward),
    "gelu": (gelu_forward, gelu_backward),
    "relu": (relu_forward, relu_backward),
}


def activation(name):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of "
                         f"{sorted(ACTIVATIONS)}") from None
