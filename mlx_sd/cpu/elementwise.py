"""Element-wise functions in float32 for mlx's CPU backend: SiLU, GELU, exp2 and a two-pass
GroupNorm(+SiLU), built from operations mx.compile vectorises.

mlx's CPU backend evaluates exp, erf and sigmoid with scalar libm calls (about 11 ns an element on
x86). mx.compile fuses multiply, add, compare and select-with-a-constant into JIT-compiled loops
the C++ compiler vectorises (about 0.25 ns an element), but only up to about 11 operations deep,
and maximum, minimum and clip (NaN checks) or a select between two arrays keep a loop scalar.
These formulations are built from the vectorised operations, each in kernels shallow enough to
fuse, and are as accurate in float32 as mlx's own (tests/test_performance_paths.py).
"""

from __future__ import annotations

import mlx.core as mx

from . import kernels

LOG2E = 1.4426950408889634
# Adding and subtracting 1.5 * 2**23 rounds a float32 of magnitude below 2**22 to an integer.
_ROUND = 12582912.0
# 2**f on [-1/2, 1/2]: degree-5 polynomial, a relative-error least-squares fit on Chebyshev nodes,
# reweighted towards minimax (2.6e-7 relative error evaluated in float32; mx.exp's is 1.8e-6).
_EXP2 = (
    1.0000000717034576, 0.693146968461803, 0.24022119565453876,
    0.055507109837855645, 0.009675547701276307, 0.001327721345430341,
)
# SiLU and GELU are relu(x) - f(|x|) with a bump f(a) = a * sigmoid(-a) (SiLU) or a * Phi(-a) (GELU,
# Phi the normal distribution): f(a) = P(a) / Q(a) below a limit past which f is under 1e-7 and
# taken as 0. Degree-7 rationals, least-squares fits on Chebyshev nodes reweighted towards minimax;
# evaluated in float32 the activations are within 1.4e-7 (SiLU) and 3.7e-7 (GELU) of the exact
# values (absolute, relative above 1).
_SILU_LIMIT = 20.0  # 20 * sigmoid(-20) = 4e-8
_SILU_P = (
    0.0, 0.5000006540682037, -0.15953073909697868, 0.0217273714473006,
    -0.0016125632864959518, 6.859042585620114e-05, -1.5807387049291324e-06, 1.537640203685009e-08,
)
_SILU_Q = (
    1.0, 0.18095316866751965, 0.13387602037428506, 0.022147423720267748,
    0.003567405298164041, 0.0004319319144405296, 2.5359160551416443e-05, 3.527769489898422e-06,
)
_GELU_LIMIT = 6.0  # 6 * Phi(-6) = 6e-9
_GELU_P = (
    0.0, 0.5000026431132705, -0.552163136700264, 0.2555833228211051,
    -0.06343162032497826, 0.008896829371233015, -0.0006682242422558394, 2.098396861042905e-05,
)
_GELU_Q = (
    1.0, -0.3063453333143824, 0.2661336000450241, -0.04564635879672433,
    0.018938161427214842, 0.001490922827767548, -0.0005396433995184205, 0.0003264304926677746,
)
_QUICK_GELU = 1.702  # OpenAI CLIP's x * sigmoid(1.702 x) = silu(1.702 x) / 1.702


def _estrin5(c: tuple[float, ...], x: mx.array) -> mx.array:
    """c[0] + c[1] x + ... + c[5] x^5 in Estrin's form: shallow enough to fuse into one kernel."""
    x2 = x * x
    return (c[0] + c[1] * x) + x2 * ((c[2] + c[3] * x) + x2 * (c[4] + c[5] * x))


def _estrin7(c: tuple[float, ...], x: mx.array) -> mx.array:
    """c[0] + c[1] x + ... + c[7] x^7 in Estrin's form (six operations deep)."""
    x2 = x * x
    x4 = x2 * x2
    return ((c[0] + c[1] * x) + x2 * (c[2] + c[3] * x)) + x4 * ((c[4] + c[5] * x) + x2 * (c[6] + c[7] * x))


def _exp2_in_range(t: mx.array) -> mx.array:
    """2**t in float32 for t within [-126, 128]: a polynomial for the fraction times 2**whole built
    in the exponent bits."""
    whole = (t + _ROUND) - _ROUND
    bits = mx.left_shift(whole.astype(mx.int32) + 127, 23)
    return _estrin5(_EXP2, t - whole) * mx.view(bits, mx.float32)


def _bump_argument(x: mx.array, limit: float) -> mx.array:
    """|x| where the bump is not negligible, else 0 (every bump is 0 at 0). In a kernel of its own
    (or ending one), so that the rational that follows fuses into one."""
    return mx.where(mx.abs(x) < limit, mx.abs(x), 0.0)


def _relu_minus_bump(p: tuple[float, ...], q: tuple[float, ...]):
    """relu(x) - P(a) / Q(a) for the bump argument a of x."""
    return lambda x, a: (0.5 * x + 0.5 * mx.abs(x)) - _estrin7(p, a) / _estrin7(q, a)


_silu_argument = mx.compile(lambda x: _bump_argument(x, _SILU_LIMIT))
_gelu_argument = mx.compile(lambda x: _bump_argument(x, _GELU_LIMIT))
_gelu_finish = _relu_minus_bump(_GELU_P, _GELU_Q)
_silu_poly = mx.compile(_relu_minus_bump(_SILU_P, _SILU_Q))  # (x, _silu_argument(x))
_gelu_poly = mx.compile(_gelu_finish)
# (x, _silu_argument(1.702 x)): the SiLU bump of 1.702 x, divided by 1.702 through its numerator
_quick_gelu_poly = mx.compile(_relu_minus_bump(tuple(c / _QUICK_GELU for c in _SILU_P), _SILU_Q))
_geglu_poly = mx.compile(lambda value, gate, a: value * _gelu_finish(gate, a))
# exp2(scores - row max) of base-2 scores; the difference is never positive
_softmax_numerator = mx.compile(lambda s, peak: _exp2_in_range(mx.maximum(s - peak, -126.0)))


def silu(x: mx.array) -> mx.array:
    return _silu_poly(x, _silu_argument(x))


def quick_gelu(x: mx.array) -> mx.array:
    """OpenAI CLIP's x * sigmoid(1.702 x)."""
    return _quick_gelu_poly(x, _silu_argument(x * _QUICK_GELU))


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU."""
    return _gelu_poly(x, _gelu_argument(x))


def geglu(value: mx.array, gate: mx.array) -> mx.array:
    """value * gelu(gate) in one pass after the bump argument."""
    return _geglu_poly(value, gate, _gelu_argument(gate))


def geglu_on_threads(projected: mx.array, threads: int) -> mx.array:
    """geglu of the two halves of `projected` (..., 2 x channels) in one pass of the compiled kernel
    on `threads` threads (mlx's element-wise kernels take one)."""
    rows = projected.reshape(-1, projected.shape[-1])
    out = kernels.geglu(rows, _GELU_P, _GELU_Q, _GELU_LIMIT, threads)
    return out.reshape(*projected.shape[:-1], projected.shape[-1] // 2)


def softmax_numerator(scores: mx.array, peak: mx.array) -> mx.array:
    """exp2(scores - peak) of base-2 scores whose row maximum is `peak`."""
    return _softmax_numerator(scores, peak)


def group_norm(
    x: mx.array, weight: mx.array, bias: mx.array, groups: int, eps: float, silu: bool
) -> mx.array:
    """GroupNorm (then SiLU if `silu`) of a float32 (B, N, C) array with contiguous channel groups.

    Statistics per channel over the contiguous N axis first, then per group: reductions and
    broadcasts along whole rows run much faster on the CPU (docs/performance.md) than over the interleaved (N,
    channels-in-group) axes of the grouped view; the two passes stay exact (mean, then squared
    deviations from it).
    """
    batch, _, channels = x.shape
    per_group = (batch, groups, channels // groups)

    def by_channel(group_values: mx.array) -> mx.array:  # (B, G, 1) -> (B, 1, C)
        return mx.broadcast_to(group_values, per_group).reshape(batch, 1, channels)

    mean = by_channel(x.mean(axis=1).reshape(per_group).mean(axis=-1, keepdims=True))
    var = _squared_deviation(x, mean).mean(axis=1).reshape(per_group).mean(axis=-1, keepdims=True)
    scale = by_channel(mx.rsqrt(var + eps)) * weight
    if silu:
        return _silu_poly(*_group_affine_silu_argument(x, mean, scale, bias))
    return _group_affine(x, mean, scale, bias)


def _normalize(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    return (x - mean) * scale + bias


def _normalize_for_silu(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> tuple[mx.array, mx.array]:
    y = _normalize(x, mean, scale, bias)
    return y, _bump_argument(y, _SILU_LIMIT)


_squared_deviation = mx.compile(lambda x, mean: mx.square(x - mean))
_group_affine = mx.compile(_normalize)
_group_affine_silu_argument = mx.compile(_normalize_for_silu)
