"""Building blocks shared by the CLIP, UNet and VAE models.

Activations are channels-last (NHWC); weights are in MLX layout (conv `[out, kH, kW, in]`,
linear `[out, in]`). Parameter names follow diffusers / transformers so that our weight files use the
names users already know.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .cpu import kernels as cpu_kernels
from .device import CPU_STREAMS, policy, worker_streams

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


# ---------------------------------------------------------------------------------------------
# Element-wise functions, per device
#
# mlx's CPU backend evaluates exp, erf and sigmoid with scalar libm calls (about 11 ns an element on
# x86). mx.compile fuses multiply, add, compare and select-with-a-constant into JIT-compiled loops
# the C++ compiler vectorises (about 0.25 ns an element), but only up to about 11 operations deep,
# and maximum, minimum and clip (NaN checks) or a select between two arrays keep a loop scalar.
# The "polynomial" formulations are built from the vectorised operations, each in kernels shallow
# enough to fuse, and are as accurate in float32 as mlx's own; other dtypes and the GPU use mlx's ops.


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


def _polynomial(x: mx.array) -> bool:
    return x.dtype == mx.float32 and policy().elementwise == "polynomial"


def silu(x: mx.array) -> mx.array:
    return _silu_poly(x, _silu_argument(x)) if _polynomial(x) else nn.silu(x)


def quick_gelu(x: mx.array) -> mx.array:
    """OpenAI CLIP's x * sigmoid(1.702 x)."""
    if _polynomial(x):
        return _quick_gelu_poly(x, _silu_argument(x * _QUICK_GELU))
    return x * mx.sigmoid(_QUICK_GELU * x)


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU."""
    return _gelu_poly(x, _gelu_argument(x)) if _polynomial(x) else nn.gelu(x)


def geglu(value: mx.array, gate: mx.array) -> mx.array:
    """value * gelu(gate), fused on the CPU."""
    return _geglu_poly(value, gate, _gelu_argument(gate)) if _polynomial(value) else value * nn.gelu(gate)


class GroupNorm(nn.Module):
    """GroupNorm over the channel axis of NHWC input with PyTorch's channel grouping.

    Groups are contiguous channel ranges (as in NCHW PyTorch); statistics are computed in float32.
    `silu=True` applies SiLU to the result, as every resnet does next: on the CPU (float32) the
    normalisation, affine and SiLU are one fused pass after the statistics.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels cannot be split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = mx.ones((num_channels,))
        self.bias = mx.zeros((num_channels,))

    def __call__(self, x: mx.array, silu: bool = False) -> mx.array:
        shape = x.shape
        channels = shape[-1]
        if x.dtype == mx.float32 and policy().group_norm == "kernel":
            flat = x.reshape(shape[0], -1, channels)
            return cpu_kernels.group_norm(flat, self.weight, self.bias, self.num_groups, self.eps, silu).reshape(shape)
        if _polynomial(x):
            return self._fused(x.reshape(shape[0], -1, channels), silu).reshape(shape)
        grouped = x.reshape(shape[0], -1, self.num_groups, channels // self.num_groups).astype(mx.float32)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = grouped.var(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * mx.rsqrt(var + self.eps)).reshape(shape).astype(x.dtype)
        out = normed * self.weight + self.bias
        return nn.silu(out) if silu else out

    def _fused(self, x: mx.array, silu: bool) -> mx.array:
        """(B, N, C) float32. Statistics per channel over the contiguous N axis first, then per group:
        reductions and broadcasts along whole rows run 10-20x faster on the CPU than over the
        interleaved (N, channels-in-group) axes of the grouped view; the two passes stay exact
        (mean, then squared deviations from it)."""
        batch, _, channels = x.shape
        per_group = (batch, self.num_groups, channels // self.num_groups)

        def by_channel(group_values: mx.array) -> mx.array:  # (B, G, 1) -> (B, 1, C)
            return mx.broadcast_to(group_values, per_group).reshape(batch, 1, channels)

        mean = by_channel(x.mean(axis=1).reshape(per_group).mean(axis=-1, keepdims=True))
        var = _squared_deviation(x, mean).mean(axis=1).reshape(per_group).mean(axis=-1, keepdims=True)
        scale = by_channel(mx.rsqrt(var + self.eps)) * self.weight
        return (_group_affine_silu if silu else _group_affine)(x, mean, scale, self.bias)


def _normalize(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    return (x - mean) * scale + bias


def _normalize_for_silu(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> tuple[mx.array, mx.array]:
    y = _normalize(x, mean, scale, bias)
    return y, _bump_argument(y, _SILU_LIMIT)


_squared_deviation = mx.compile(lambda x, mean: mx.square(x - mean))
_group_affine = mx.compile(_normalize)
_group_affine_silu_argument = mx.compile(_normalize_for_silu)


def _group_affine_silu(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    return _silu_poly(*_group_affine_silu_argument(x, mean, scale, bias))


def _kernel_threads() -> int:
    """Threads for a compiled CPU kernel: one on a worker stream (work on the other streams keeps
    the other core busy), every core otherwise."""
    return 1 if mx.default_stream(mx.cpu) in worker_streams("cpu") else CPU_STREAMS


def product(x: mx.array, weight_t: mx.array, bias: mx.array | None = None) -> mx.array:
    """bias + x @ weight_t for x (..., in) and weight_t (in, out), which may be a transposed view.

    On the CPU in float32 the compiled GEMM of mlx_sd.cpu_kernels ("kernel", DevicePolicy.matmul)
    runs it at the CPU's full vector width where the system BLAS may be pinned to a narrower one,
    in bfloat16 products where DevicePolicy.products says so.
    """
    choice = policy()
    if x.dtype == mx.float32 and choice.matmul == "kernel":
        rows = x.reshape(1, -1, x.shape[-1])
        out = cpu_kernels.gemm(rows, weight_t, bias, _kernel_threads(), choice.products == "bfloat16")
        return out.reshape(*x.shape[:-1], weight_t.shape[-1])
    return mx.addmm(bias, x, weight_t) if bias is not None else x @ weight_t


class Linear(nn.Linear):
    """nn.Linear (same parameters) whose product goes through `product`."""

    def __call__(self, x: mx.array) -> mx.array:
        return product(x, self.weight.T, self.get("bias"))


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and layout) with the CPU's matmul formulations.

    mlx's CPU convolution copies the zero-padded input, then gathers every 3x3 patch into a buffer
    nine times the input's size before one GEMM (1.4 GB for a 128-channel 512x512 VAE layer). On the
    CPU (float32), with stride 1 and "same" padding:
    - 1x1: a plain matmul;
    - 3x3 with many channels on a large enough map (_winograd_wins): Winograd F(2x2, 3x3), 16 GEMMs
      with 2.25x fewer multiplications than the direct form (1.3-1.9x faster than mx.conv2d here), in
      bands of rows to bound memory;
    - other 3x3 on a wide enough image: nine matmuls of the shifted image, accumulated in the GEMM
      itself (no patch buffer); the compiled GEMM takes them in one call (2-3x mx.conv2d's speed);
    - everything else (narrow maps, strides, other paddings): mx.conv2d.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and policy().conv == "matmul":
            kernel = self.weight.shape[1]
            plain = _pair(self.stride) == (1, 1) and _pair(self.dilation) == (1, 1) and self.groups == 1
            if plain and kernel == 1 and _pair(self.padding) == (0, 0):
                return _conv1x1(x, self.weight, self.get("bias"))
            if plain and kernel == 3 and _pair(self.padding) == (1, 1):
                batch, height, width, channels = x.shape
                even = height % 2 == 0 and width % 2 == 0
                if even and _winograd_wins(batch * height * width, channels, self.weight.shape[0]):
                    return _conv3x3_winograd(x, self.weight, self.get("bias"))
                if width >= (SHIFTED_KERNEL_MIN_WIDTH if policy().matmul == "kernel" else SHIFTED_CONV_MIN_WIDTH):
                    return _conv3x3_shifted(x, self.weight, self.get("bias"))
        return super().__call__(x)


SHIFTED_CONV_MIN_WIDTH = 64  # below this the extra two columns per row and nine small GEMMs lose
SHIFTED_KERNEL_MIN_WIDTH = 8  # with the compiled GEMM (one call for all taps, no padded copy)


def _winograd_wins(pixels: int, channels: int, out_channels: int) -> bool:
    """Whether Winograd beats the shifted matmuls for a 3x3 convolution of `pixels` (batch x height
    x width). Its transforms are single-threaded memory passes: against mlx's matmul it wins with
    many channels of both; against the compiled GEMM, which takes the nine taps in one call on
    every core, only with wide inputs on large maps (SD's 64x64 640-channel UNet and 128x128 VAE);
    against its bfloat16 products never (64x64 640 channels, batch 2: 89 ms taps, 91 ms Winograd;
    128x128 512 channels: 119 against 118 ms; 64x64 512 channels: 26 against 39 ms)."""
    choice = policy()
    if choice.matmul == "kernel" and choice.products == "bfloat16":
        return False
    if choice.matmul == "kernel":
        return channels >= WINOGRAD_KERNEL_MIN_CHANNELS and pixels >= WINOGRAD_KERNEL_MIN_PIXELS
    return min(channels, out_channels) >= WINOGRAD_MIN_CHANNELS and pixels >= WINOGRAD_MIN_PIXELS


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv1x1(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    return product(x, weight.reshape(weight.shape[0], -1).T, bias)


def _conv3x3_shifted(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3, stride 1, padding 1 as nine accumulated matmuls of shifted images."""
    nine = [(i, j) for i in range(3) for j in range(3)]
    stacked = weight.reshape(weight.shape[0], -1).T  # (9 in, out): tap (i, j)'s rows at (3i + j) in
    return _shifted_matmuls(x, [(nine, stacked)], bias)[0]


Taps = list[tuple[int, int]]


def _shifted_matmuls(x: mx.array, convolutions: list[tuple[Taps, mx.array]], bias: mx.array | None) -> list[mx.array]:
    """For each convolution (taps, stacked) of x (batch, height, width, in): bias + the sum over its
    taps t = (i, j) of x, zero-padded by one pixel and shifted by i rows and j columns, @ its weight
    stacked[t in : (t + 1) in] (in, out).

    The compiled GEMM ("kernel") reads the taps' pixels from x itself, zeros outside it. Otherwise,
    with the image padded (once for all the convolutions) to width W+2 and flattened to rows, output
    position p (in padded-width coordinates) reads input row p + i*(W+2) + j for tap (i, j): each
    tap is one matmul of a contiguous row range, accumulated in the GEMM itself (no patch buffer),
    and two junk columns per row are computed and dropped.
    """
    choice = policy()
    if choice.matmul == "kernel":
        bf16 = choice.products == "bfloat16"
        return [
            cpu_kernels.conv_taps(x, stacked, bias, [(i - 1, j - 1) for i, j in taps], _kernel_threads(), bf16)
            for taps, stacked in convolutions
        ]
    batch, height, width, channels = x.shape
    flat = _padded_rows(x)
    padded_width = width + 2
    rows = height * padded_width
    outputs = []
    for taps, stacked in convolutions:
        stacked = mx.contiguous(stacked)
        out = bias
        for t, (i, j) in enumerate(taps):
            offset = i * padded_width + j
            window, tap = flat[:, offset : offset + rows], stacked[t * channels : (t + 1) * channels]
            out = window @ tap if out is None else mx.addmm(out, window, tap)
        outputs.append(out.reshape(batch, height, padded_width, -1)[:, :, :width])
    return outputs


def _padded_rows(x: mx.array) -> mx.array:
    """x zero-padded by a column each side, a row above and two below (the last taps of the last row
    reach one row past the image), flattened to (batch, rows, channels) for _shifted_matmuls."""
    return mx.pad(x, [(0, 0), (1, 2), (1, 1), (0, 0)]).reshape(x.shape[0], -1, x.shape[-1])


# Winograd F(2x2, 3x3) loses below these sizes (measured): with few input or output channels the
# transforms (memory passes) outweigh the saved multiplications; on small maps (SD's 8x8 level)
# transforming the weights at every call does.
WINOGRAD_MIN_CHANNELS = 128  # input and output
WINOGRAD_MIN_PIXELS = 512  # batch * height * width
WINOGRAD_KERNEL_MIN_CHANNELS = 512  # input, against the compiled GEMM
WINOGRAD_KERNEL_MIN_PIXELS = 4096
# Transformed input and products per band of rows: at least this, and at least four times the
# transformed filters (each band reads all of them). On SD's VAE at 512x512 (128-256 channels)
# 16 MB bands run 1.4x faster than 256 MB ones (the band's transforms stay in cache); with 1280
# channels the filters are 105 MB and larger bands win.
WINOGRAD_BAND_BYTES = 16 << 20


def _winograd_input(d0: mx.array, d1: mx.array, d2: mx.array, d3: mx.array) -> tuple[mx.array, ...]:
    """B^T d along one axis: four rows (or columns) of 4x4 input tiles -> four transformed."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _winograd_output(m0: mx.array, m1: mx.array, m2: mx.array, m3: mx.array) -> tuple[mx.array, mx.array]:
    """A^T m along one axis: four transformed rows (or columns) -> the two of a 2x2 output tile."""
    return m0 + m1 + m2, m1 - m2 - m3


def _winograd_filter(g0: mx.array, g1: mx.array, g2: mx.array) -> tuple[mx.array, ...]:
    """G g along one axis: three filter rows (or columns) -> four transformed."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


_winograd_input_c = mx.compile(_winograd_input)
_winograd_output_c = mx.compile(_winograd_output)
_winograd_output_bias = mx.compile(lambda m0, m1, m2, m3, bias: tuple(y + bias for y in _winograd_output(m0, m1, m2, m3)))
_winograd_filter_c = mx.compile(_winograd_filter)


def _conv3x3_winograd(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3, stride 1, padding 1 by Winograd F(2x2, 3x3) (Lavin and Gray, 2016), H and W even.

    Each 2x2 output tile comes from a 4x4 input tile d and the filter g as A^T [(G g G^T) * (B^T d B)] A;
    over all tiles and channels the element-wise product is 16 GEMMs (tiles x in) @ (in x out).
    """
    batch, height, width, channels = x.shape
    out_channels = weight.shape[0]
    # filter transform, (out, in) per tap pair: each product below takes its transpose as-is
    weight = weight.astype(x.dtype)  # half-precision weights (DevicePolicy.unet_in_storage_dtype): transform exactly
    rows = [_winograd_filter_c(*(weight[:, i, j] for i in range(3))) for j in range(3)]
    filters = [_winograd_filter_c(*(rows[j][a] for j in range(3))) for a in range(4)]  # [a][b]
    finish = _winograd_output_c if bias is None else (lambda *m: _winograd_output_bias(*m, bias))
    padded = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    per_tile_row = 4 * batch * width * (12 * channels + 8 * out_channels)
    band_bytes = max(WINOGRAD_BAND_BYTES, 4 * 16 * 4 * channels * out_channels)
    band = max(1, min(height // 2, band_bytes // per_tile_row))
    bands = []
    for first in range(0, height // 2, band):
        tile_rows = min(band, height // 2 - first)
        window = padded[:, 2 * first : 2 * (first + tile_rows) + 2]
        vertical = _winograd_input_c(*(window[:, r : r + 2 * tile_rows : 2] for r in range(4)))
        products = []  # [a][b]: (batch * tile_rows * width / 2, out)
        for a in range(4):
            tiles = _winograd_input_c(*(vertical[a][:, :, c : c + width : 2] for c in range(4)))
            products.append([product(t.reshape(-1, channels), filters[a][b].T) for b, t in enumerate(tiles)])
        columns = [_winograd_output_c(*(products[a][b] for a in range(4))) for b in range(4)]  # [b][i]
        y = [finish(*(columns[b][i] for b in range(4))) for i in range(2)]  # [i][j]
        tile = mx.stack([mx.stack(y[0], axis=1), mx.stack(y[1], axis=1)], axis=1)  # (tiles, i, j, out)
        tile = tile.reshape(batch, tile_rows, width // 2, 2, 2, out_channels).transpose(0, 1, 3, 2, 4, 5)
        bands.append(tile.reshape(batch, 2 * tile_rows, width, out_channels))
    return bands[0] if len(bands) == 1 else mx.concatenate(bands, axis=1)


def upsample_conv(conv: Conv2d, x: mx.array, size: tuple[int, int] | None = None) -> mx.array:
    """`conv` (3x3, stride 1, padding 1) of x upsampled 2x by nearest neighbours and cropped to
    `size` (default: twice x's height and width), as diffusers' F.interpolate then conv.

    On the CPU (float32), uncropped, without the upsampled image: each of the four output phases
    (even/odd row, even/odd column) is a 2x2 convolution of x whose taps sum the 3x3 taps that read
    the same input pixel, so 16 multiplications per input pixel replace 36 (as Winograd on the
    upsampled image, without its transforms or the 4x larger input).
    """
    batch, height, width, channels = x.shape
    size = tuple(size) if size is not None else (2 * height, 2 * width)
    cropped = size != (2 * height, 2 * width)  # a crop changes what the zero padding borders
    if x.dtype == mx.float32 and policy().conv == "matmul" and conv.weight.shape[1:3] == (3, 3) and not cropped:
        return _upsample_conv3x3_phases(x, conv.weight, conv.get("bias"))
    up = mx.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
    up = up.reshape(batch, 2 * height, 2 * width, channels)
    return conv(up[:, : size[0], : size[1]] if cropped else up)


# Input rows (or columns) of 3x3 taps 0, 1, 2 for an even (0) and odd (1) output row after nearest
# 2x upsampling, in the padded input: even rows read i-1, i, i; odd rows read i, i, i+1.
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def _upsample_conv3x3_phases(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """The four output phases as 2x2 convolutions by shifted matmuls, interleaved."""
    batch, height, width, _ = x.shape
    weight = weight.astype(x.dtype)  # half-precision weights (DevicePolicy.unet_in_storage_dtype): sum exactly
    convolutions = []  # phase (a, b) at 2a + b
    for a, row_taps in enumerate(_PHASE_TAPS):
        for b, column_taps in enumerate(_PHASE_TAPS):
            taps = [(a + r, b + c) for r in range(len(row_taps)) for c in range(len(column_taps))]
            summed = [  # per tap, (in, out)
                sum(weight[:, i, j] for i in kernel_rows for j in kernel_columns).T
                for kernel_rows in row_taps for kernel_columns in column_taps
            ]
            convolutions.append((taps, mx.concatenate(summed, axis=0)))
    out = _shifted_matmuls(x, convolutions, bias)
    phases = [mx.stack(out[2 * a : 2 * a + 2], axis=3) for a in range(2)]  # (batch, height, width, 2 columns, out)
    return mx.stack(phases, axis=2).reshape(batch, 2 * height, 2 * width, -1)


def in_batch_halves(fn: Callable[..., mx.array], *batched: mx.array | None) -> mx.array:
    """fn(*batched), where every array argument has the batch on its first axis.

    With the device's `batch_streams` above 1 and a batch of two or more, the batch is cut into
    that many parts, each computed on its own stream and concatenated: on the CPU mlx runs each
    stream's element-wise work on a thread of its own, so both cores share it, and each part's
    activations are a fraction of the whole batch's (SD1.5's UNet step at 512 with CFG: MLX peak
    4.8 -> 4.0 GB). None arguments pass through.
    """
    choice = policy()
    rows = next(a.shape[0] for a in batched if a is not None)
    parts = min(choice.batch_streams, rows)
    if parts < 2:
        return fn(*batched)
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    outputs = []
    for stream, start, stop in zip(worker_streams(choice.device), bounds, bounds[1:]):
        with mx.stream(stream):
            outputs.append(fn(*(None if a is None else a[start:stop] for a in batched)))
    return mx.concatenate(outputs, axis=0)


def between_blocks(x: mx.array) -> mx.array:
    """x, evaluated now where the device evaluates the VAE decoder in pieces (DevicePolicy.eval_blocks)."""
    if policy().eval_blocks:
        mx.eval(x)
    return x


def split_heads(x: mx.array, heads: int) -> mx.array:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, heads, channels // heads).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, tokens, heads * dim)


def causal_mask(tokens: int, dtype: mx.Dtype = mx.float32) -> mx.array:
    """Additive mask with -inf above the diagonal (CLIP text towers)."""
    idx = mx.arange(tokens)
    return mx.where(idx[None, :] > idx[:, None], mx.array(-mx.inf, dtype=dtype), mx.array(0, dtype=dtype))


def attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    heads: int,
    mask: mx.array | None = None,
    upcast: bool = False,
    impl: str | None = None,
) -> mx.array:
    """Multi-head scaled dot-product attention on projected (B, N, C) tensors.

    `impl` picks the formulation ("fused", "matmul", "chunked" or "kernel"); None uses the current
    device's choice from `device.policy`. `upcast` computes scores and softmax in float32 (SD2.1-768
    in half precision); "chunked" and "kernel" always do.
    """
    choice = policy()
    impl = impl or choice.attention
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    scale = q.shape[-1] ** -0.5
    if impl == "fused":
        dtype = q.dtype
        if upcast:
            q, k, v = q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return merge_heads(out.astype(dtype))
    if impl == "kernel" and mask is None:
        return merge_heads(_kernel_attention(q, k, v, scale))
    if impl in ("chunked", "kernel"):  # the kernel takes no mask (CLIP's causal one is small)
        return merge_heads(_chunked_attention(q, k, v, mask, choice.attention_chunk_bytes))
    if impl != "matmul":
        raise ValueError(f"unknown attention implementation {impl!r}")
    dtype = q.dtype
    if upcast:
        q, k = q.astype(mx.float32), k.astype(mx.float32)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    weights = mx.softmax(scores, axis=-1, precise=True).astype(dtype)
    return merge_heads(weights @ v)


def _kernel_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """(B, heads, N, d) attention by the compiled CPU kernel, in float32: one thread on a worker
    stream (the other CFG half keeps the other core busy), all cores otherwise."""
    batch, heads, queries, dim = q.shape

    def pairs(x: mx.array) -> mx.array:  # the kernel casts to float32 itself
        return x.reshape(batch * heads, x.shape[2], dim)

    out = cpu_kernels.fused_attention(pairs(q), pairs(k), pairs(v), scale, _kernel_threads())
    return out.reshape(batch, heads, queries, dim).astype(q.dtype)


def _chunked_attention(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, chunk_bytes: int
) -> mx.array:
    """Exact attention on (B, heads, N, d) in blocks of heads and queries of about `chunk_bytes` of scores.

    The CPU formulation, in float32: scores in base 2 (log2(e) folded into the query scale) for the
    polynomial exp2; the softmax normalised after the product with v, whose extra column of ones
    yields the row sums of the weights in the same product (no separate pass over them). Bounded
    memory: SD1.5's 64x64 self-attention would hold 1 GiB of scores at once.
    """
    dtype = q.dtype
    batch, heads, queries, dim = q.shape
    keys = k.shape[2]
    pairs = batch * heads
    q = mx.contiguous(q.astype(mx.float32) * (dim**-0.5 * LOG2E)).reshape(pairs, queries, dim)
    k_t = mx.contiguous(k.astype(mx.float32).swapaxes(-1, -2)).reshape(pairs, dim, keys)
    ones = mx.ones((batch, heads, keys, 1), mx.float32)
    v = mx.concatenate([v.astype(mx.float32), ones], axis=-1).reshape(pairs, keys, dim + 1)
    if mask is not None:
        mask = mx.broadcast_to(mask.astype(mx.float32) * LOG2E, (batch, heads, queries, keys))
        mask = mask.reshape(pairs, queries, keys)
    rows = min(queries, max(1, chunk_bytes // (4 * keys)))
    group = max(1, chunk_bytes // (4 * keys * rows))
    blocks = []
    for first in range(0, pairs, group):
        heads_slice = slice(first, first + group)
        chunks = []
        for start in range(0, queries, rows):
            scores = q[heads_slice, start : start + rows] @ k_t[heads_slice]
            if mask is not None:
                scores = scores + mask[heads_slice, start : start + rows]
            weighted = _softmax_numerator(scores, scores.max(axis=-1, keepdims=True)) @ v[heads_slice]
            chunks.append(weighted[..., :dim] / weighted[..., dim:])
        blocks.append(mx.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0])
    out = mx.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    return out.reshape(batch, heads, queries, dim).astype(dtype)
