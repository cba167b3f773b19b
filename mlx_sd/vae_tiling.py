"""Tiled VAE decode and encode for images larger than the VAE's tile (docs/facts.md §7.1).

The input is cut into overlapping square tiles (stride = tile * (1 - overlap)); each tile goes through
the VAE on its own, so memory is bounded by the tile size. In the output, every tile is cross-faded
linearly with the tile above and the tile to its left over the overlap, then cropped to the stride and
the pieces concatenated. Blending uses the neighbours as already blended, so the fades chain across
the whole image. GroupNorm statistics are per tile, so tiles can differ slightly in tone; the linear
fades hide the edges.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

OVERLAP = 0.25  # fraction of a tile shared with each neighbour (diffusers' tile_overlap_factor)

TileFn = Callable[[mx.array], mx.array]  # NHWC tile in -> NHWC tile out, `scale` times larger


def _fade(size: int) -> mx.array:
    """Weights 0, 1/size, ..., (size-1)/size for the incoming tile."""
    return mx.arange(size, dtype=mx.float32) / size


def blend_vertical(above: mx.array, below: mx.array, extent: int) -> mx.array:
    """Fade from the bottom rows of `above` into the top rows of `below` over `extent` rows."""
    extent = min(above.shape[1], below.shape[1], extent)
    if extent == 0:
        return below
    w = _fade(extent)[None, :, None, None]
    top = above[:, -extent:] * (1 - w) + below[:, :extent] * w
    return mx.concatenate([top.astype(below.dtype), below[:, extent:]], axis=1)


def blend_horizontal(left: mx.array, right: mx.array, extent: int) -> mx.array:
    """Fade from the right columns of `left` into the left columns of `right` over `extent` columns."""
    extent = min(left.shape[2], right.shape[2], extent)
    if extent == 0:
        return right
    w = _fade(extent)[None, None, :, None]
    side = left[:, :, -extent:] * (1 - w) + right[:, :, :extent] * w
    return mx.concatenate([side.astype(right.dtype), right[:, :, extent:]], axis=2)


def tiled(fn: TileFn, x: mx.array, tile: int, scale: float, overlap: float = OVERLAP) -> mx.array:
    """Apply `fn` to overlapping `tile` x `tile` pieces of NHWC `x` and blend the results.

    `scale` is the output/input size ratio: 8 for a decoder, 1/8 for an encoder. Each output tile is
    evaluated before the next runs, so only one tile's activations are alive at a time."""
    if tile < 1:
        raise ValueError(f"tile must be at least 1, got {tile}")
    stride = max(1, int(tile * (1 - overlap)))
    out_tile = int(round(tile * scale))
    limit = int(round(stride * scale))  # what each tile contributes: its stride, in output pixels
    extent = out_tile - limit  # the overlap cross-faded with the previous tile
    height, width = x.shape[1], x.shape[2]

    rows: list[list[mx.array]] = []
    for top in range(0, height, stride):
        row = []
        for left in range(0, width, stride):
            out = fn(x[:, top : top + tile, left : left + tile])
            mx.eval(out)
            row.append(out)
        rows.append(row)

    pieces = []
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if i > 0:
                row[j] = blend_vertical(rows[i - 1][j], row[j], extent)
            if j > 0:
                row[j] = blend_horizontal(row[j - 1], row[j], extent)
            mx.eval(row[j])
        pieces.append(mx.concatenate([t[:, :limit, :limit] for t in row], axis=2))
    result = mx.concatenate(pieces, axis=1)
    return result[:, : int(round(height * scale)), : int(round(width * scale))]
