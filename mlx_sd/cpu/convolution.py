"""Convolutions as matrix products for mlx's CPU backend (mlx_sd.cpu.modules.CpuConv2d, CpuUpsample2D).

mlx's CPU convolution copies the zero-padded input, then gathers every 3x3 patch into a buffer
nine times the input's size before one GEMM (1.4 GB for a 128-channel 512x512 VAE layer). Here, in
float32, with stride 1 and "same" padding:
- 1x1: a plain matmul;
- 3x3 with many channels on a large enough map (winograd_wins): Winograd F(2x2, 3x3), 16 GEMMs with
  2.25x fewer multiplications than the direct form, in bands of rows to bound memory;
- other 3x3 (with mlx's matmul: on a wide enough image): nine matmuls of the shifted image,
  accumulated in the GEMM itself (no patch buffer); the compiled GEMM takes them in one call;
- nearest 2x upsampling then 3x3 on a large enough image: four 2x2 convolutions of the small
  image (upsample_conv3x3);
- 3x3 with stride 2 and padding 1 (the UNet's downsamplers), with the compiled GEMM: the shifted taps
  of the four phase images (conv3x3_stride2);
- everything else (other strides and paddings, odd sizes at stride 2): mx.conv2d.
Measured speeds are in docs/performance.md.
"""

from __future__ import annotations

import mlx.core as mx

from . import kernels
from .machine import cache_sizes
from .options import CpuOptions, product

SHIFTED_CONV_MIN_WIDTH = 64  # below this the extra two columns per row and nine small GEMMs lose
# (the compiled GEMM takes every width: one call for all taps, no padded copy, no patch buffer)
# Every choice of formulation below depends on one image's size, never on the batch's: summing in
# another order changes the last bits, and an image made in a batch must be the one its seed makes
# alone. Sizes in pixels are height x width.
# Below this input size combining the 3x3 weights into the four phases' 2x2 weights, at every
# call, costs more than the products it saves: SD's 4x4 and 8x8 levels.
UPSAMPLE_PHASES_MIN_PIXELS = 128
# Winograd F(2x2, 3x3) loses below these sizes: with few input or output channels the transforms
# (memory passes) outweigh the saved multiplications; on small maps (SD's 8x8 level) transforming
# the weights at every call does.
WINOGRAD_MIN_CHANNELS = 128  # input and output
WINOGRAD_MIN_PIXELS = 128
WINOGRAD_KERNEL_MIN_CHANNELS = 512  # input, against the compiled GEMM
WINOGRAD_KERNEL_MIN_PIXELS = 2048


def winograd_band_bytes() -> int:
    """Transformed input and products per band of rows (at least: a band also holds four times the
    transformed filters): half the last-level cache, so that a band's transforms stay in it."""
    return cache_sizes().l3 // 2


def shifted_min_width(options: CpuOptions) -> int:
    return 1 if options.kernels else SHIFTED_CONV_MIN_WIDTH


def winograd_wins(options: CpuOptions, pixels: int, channels: int, out_channels: int) -> bool:
    """Whether Winograd beats the shifted matmuls for a 3x3 convolution of images of `pixels`
    (height x width). Its transforms are single-threaded memory passes: against mlx's matmul it wins with
    many channels of both; against the compiled GEMM, which takes the nine taps in one call on
    every core, only with wide inputs on large maps (SD's 64x64 640-channel UNet and 128x128 VAE);
    against its bfloat16 products never."""
    if options.bf16:
        return False
    if options.kernels:
        return channels >= WINOGRAD_KERNEL_MIN_CHANNELS and pixels >= WINOGRAD_KERNEL_MIN_PIXELS
    return min(channels, out_channels) >= WINOGRAD_MIN_CHANNELS and pixels >= WINOGRAD_MIN_PIXELS


def conv1x1(options: CpuOptions, x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    return product(options, x, weight.reshape(weight.shape[0], -1).T, bias)


def conv3x3_shifted(options: CpuOptions, x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3, stride 1, padding 1 as nine accumulated matmuls of shifted images."""
    nine = [(i, j) for i in range(3) for j in range(3)]
    stacked = weight.reshape(weight.shape[0], -1).T  # (9 in, out): tap (i, j)'s rows at (3i + j) in
    return shifted_matmuls(options, x, [(nine, stacked)], bias)[0]


Taps = list[tuple[int, int]]


def shifted_matmuls(
    options: CpuOptions, x: mx.array, convolutions: list[tuple[Taps, mx.array]], bias: mx.array | None
) -> list[mx.array]:
    """For each convolution (taps, stacked) of x (batch, height, width, in): bias + the sum over its
    taps t = (i, j) of x, zero-padded by one pixel and shifted by i rows and j columns, @ its weight
    stacked[t in : (t + 1) in] (in, out).

    The compiled GEMM reads the taps' pixels from x itself, zeros outside it. Otherwise, with the
    image padded (once for all the convolutions) to width W+2 and flattened to rows, output
    position p (in padded-width coordinates) reads input row p + i*(W+2) + j for tap (i, j): each
    tap is one matmul of a contiguous row range, accumulated in the GEMM itself (no patch buffer),
    and two junk columns per row are computed and dropped.
    """
    if options.kernels:
        return [
            kernels.conv_taps(x, stacked, bias, [(i - 1, j - 1) for i, j in taps], options.kernel_threads(), options.bf16)
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
    reach one row past the image), flattened to (batch, rows, channels) for shifted_matmuls."""
    return mx.pad(x, [(0, 0), (1, 2), (1, 1), (0, 0)]).reshape(x.shape[0], -1, x.shape[-1])


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


def conv3x3_winograd(options: CpuOptions, x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3, stride 1, padding 1 by Winograd F(2x2, 3x3) (Lavin and Gray, 2016), H and W even.

    Each 2x2 output tile comes from a 4x4 input tile d and the filter g as A^T [(G g G^T) * (B^T d B)] A;
    over all tiles and channels the element-wise product is 16 GEMMs (tiles x in) @ (in x out).
    """
    batch, height, width, channels = x.shape
    out_channels = weight.shape[0]
    # filter transform, (out, in) per tap pair: each product below takes its transpose as-is
    weight = weight.astype(x.dtype)  # half-precision weights (mlx_sd.cpu.accelerate.weight_dtype): transform exactly
    rows = [_winograd_filter_c(*(weight[:, i, j] for i in range(3))) for j in range(3)]
    filters = [_winograd_filter_c(*(rows[j][a] for j in range(3))) for a in range(4)]  # [a][b]
    finish = _winograd_output_c if bias is None else (lambda *m: _winograd_output_bias(*m, bias))
    padded = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    per_tile_row = 4 * batch * width * (12 * channels + 8 * out_channels)
    band_bytes = max(winograd_band_bytes(), 4 * 16 * 4 * channels * out_channels)
    band = max(1, min(height // 2, band_bytes // per_tile_row))
    bands = []
    for first in range(0, height // 2, band):
        tile_rows = min(band, height // 2 - first)
        window = padded[:, 2 * first : 2 * (first + tile_rows) + 2]
        vertical = _winograd_input_c(*(window[:, r : r + 2 * tile_rows : 2] for r in range(4)))
        products = []  # [a][b]: (batch * tile_rows * width / 2, out)
        for a in range(4):
            tiles = _winograd_input_c(*(vertical[a][:, :, c : c + width : 2] for c in range(4)))
            products.append([product(options, t.reshape(-1, channels), filters[a][b].T) for b, t in enumerate(tiles)])
        columns = [_winograd_output_c(*(products[a][b] for a in range(4))) for b in range(4)]  # [b][i]
        y = [finish(*(columns[b][i] for b in range(4))) for i in range(2)]  # [i][j]
        tile = mx.stack([mx.stack(y[0], axis=1), mx.stack(y[1], axis=1)], axis=1)  # (tiles, i, j, out)
        tile = tile.reshape(batch, tile_rows, width // 2, 2, 2, out_channels).transpose(0, 1, 3, 2, 4, 5)
        bands.append(tile.reshape(batch, 2 * tile_rows, width, out_channels))
    return bands[0] if len(bands) == 1 else mx.concatenate(bands, axis=1)


# Input rows (or columns) of 3x3 taps 0, 1, 2 for an even (0) and odd (1) output row after nearest
# 2x upsampling, in the padded input: even rows read i-1, i, i; odd rows read i, i, i+1.
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def upsample_conv3x3(options: CpuOptions, x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3 convolution (stride 1, padding 1) of x upsampled 2x by nearest neighbours, without the
    upsampled image: each of the four output phases (even/odd row, even/odd column) is a 2x2
    convolution of x whose taps sum the 3x3 taps that read the same input pixel, so 16
    multiplications per input pixel replace 36. The phases are shifted matmuls, interleaved."""
    batch, height, width, _ = x.shape
    weight = weight.astype(x.dtype)  # half-precision weights (mlx_sd.cpu.accelerate.weight_dtype): sum exactly
    convolutions = []  # phase (a, b) at 2a + b
    for a, row_taps in enumerate(_PHASE_TAPS):
        for b, column_taps in enumerate(_PHASE_TAPS):
            taps = [(a + r, b + c) for r in range(len(row_taps)) for c in range(len(column_taps))]
            summed = [  # per tap, (in, out)
                sum(weight[:, i, j] for i in kernel_rows for j in kernel_columns).T
                for kernel_rows in row_taps for kernel_columns in column_taps
            ]
            convolutions.append((taps, mx.concatenate(summed, axis=0)))
    out = shifted_matmuls(options, x, convolutions, bias)
    phases = [mx.stack(out[2 * a : 2 * a + 2], axis=3) for a in range(2)]  # (batch, height, width, 2 columns, out)
    return mx.stack(phases, axis=2).reshape(batch, 2 * height, 2 * width, -1)


# Stride 2, padding 1: output row y reads input rows 2y - 1, 2y, 2y + 1, i.e. the odd rows' image at
# y - 1 (kernel row 0), the even rows' at y (kernel row 1) and the odd rows' at y (kernel row 2).
# Phase (0 even, 1 odd) -> its (kernel row, offset in the phase image); the same for columns.
_STRIDE2_TAPS = {0: ((1, 0),), 1: ((0, -1), (2, 0))}


def conv3x3_stride2(options: CpuOptions, x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3, stride 2, padding 1 of x (batch, height, width, in) with even height and width, by the
    compiled GEMM: the sum over the four phase images (even/odd rows x even/odd columns, each a
    quarter of x) of their taps, zeros outside (mx.conv2d gathers a patch buffer and multiplies on one
    thread). A phase's taps run in one call on its weights stacked, or, where the stacked copy of
    the weights would outweigh adding the partial outputs (more weights than an image's output
    pixels), one call per tap on the weights in place."""
    height, width, channels = x.shape[1:]
    stack = (height // 2) * (width // 2) > channels
    threads = options.kernel_threads()
    out = None
    for row_phase, row_taps in _STRIDE2_TAPS.items():
        for column_phase, column_taps in _STRIDE2_TAPS.items():
            phase = mx.contiguous(x[:, row_phase::2, column_phase::2])  # once for all its taps' calls
            taps = [(i, j, (dy, dx)) for i, dy in row_taps for j, dx in column_taps]
            groups = [taps] if stack else [[tap] for tap in taps]
            for group in groups:
                per_tap = [weight[:, i, j, :].T for i, j, _ in group]  # (in, out) views
                stacked = per_tap[0] if len(per_tap) == 1 else mx.concatenate(per_tap, axis=0)
                first_bias = bias if out is None else None
                y = kernels.conv_taps(phase, stacked, first_bias, [offset for _, _, offset in group], threads, options.bf16)
                out = y if out is None else out + y
    return out
