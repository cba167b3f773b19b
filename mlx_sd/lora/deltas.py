"""The weight change of one layer, from its LoRA parts (the A1111 / LyCORIS / PEFT merge math).

Files store torch's layout (linear `[out, in]`, conv `[out, in, kH, kW]`); deltas come back in float32 in
ours (conv `[out, kH, kW, in]`), as a LayerDelta. A plain LoRA keeps its two factors (its small down
factor transposed to our layout), every other kind is one full-size array.

- LoRA / LoCon: up @ down (conv: k x k down, 1 x 1 up), Tucker `mid` chained between; scale alpha / rank,
  rank = down's first axis, no alpha: 1.
- LoHa: (w1_a @ w1_b) * (w2_a @ w2_b) element-wise (Tucker: t chained with both factors); alpha / rank,
  rank = w1_b's first axis.
- LoKr: kron(w1, w2), each side full or a product a @ b (w2 Tucker with t2); alpha / rank only when a
  side is decomposed (rank = that side's b first axis), else 1.
- full: `diff` (and `diff_b` for the bias), unscaled.
- DoRA (`dora_scale`): the merged weight W + dW is renormalised to dora_scale's magnitudes, per input
  channel (kohya / LyCORIS' default, dora_scale `[1, in, ...]`) or per output row (`[out, 1, ...]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mlx.core as mx

from .errors import LoraError

Parts = Mapping[str, mx.array]


@dataclass(frozen=True)
class LayerDelta:
    """A parameter's change in float32 and our layout: `dense`, plus the low-rank product `up @ down`
    kept as its factors (up (out, rank), down (rank, the rest flattened)), so that a merge can form it
    tile by tile instead of as a full-size array. Sums of LoRAs on one layer stack their factors."""

    shape: tuple[int, ...]
    dense: mx.array | None = None
    up: mx.array | None = None
    down: mx.array | None = None

    def __add__(self, other: "LayerDelta") -> "LayerDelta":
        dense = other.dense if self.dense is None else self.dense if other.dense is None else self.dense + other.dense
        if self.up is None or other.up is None:
            up, down = (self.up, self.down) if other.up is None else (other.up, other.down)
        else:
            up, down = mx.concatenate([self.up, other.up], axis=1), mx.concatenate([self.down, other.down], axis=0)
        return LayerDelta(self.shape, dense, up, down)

    def materialized(self) -> mx.array:
        """The change as one array of `shape`."""
        product = None if self.up is None else (self.up @ self.down).reshape(self.shape)
        if self.dense is None:
            return product
        return self.dense if product is None else self.dense + product

    def reshaped(self, shape: tuple[int, ...]) -> "LayerDelta":
        """The same change for a parameter of `shape` and as many elements (a 1x1 conv's for a linear
        layer, or the other way round); the factors stay as they are while the output axis matches."""
        if self.up is not None and self.up.shape[0] != shape[0]:
            return LayerDelta(shape, self.materialized().reshape(shape))
        dense = None if self.dense is None else self.dense.reshape(shape)
        return LayerDelta(shape, dense, self.up, self.down)


def _dense(delta: mx.array) -> LayerDelta:
    return LayerDelta(tuple(delta.shape), delta)


def _f32(parts: Parts, name: str) -> mx.array:
    return parts[name].astype(mx.float32)


def _scale(parts: Parts, rank: int | None, multiplier: float) -> float:
    """alpha / rank (no alpha: 1) times the user's weight: one scalar, applied once."""
    alpha = float(parts["alpha"].reshape(-1)[0].item()) if "alpha" in parts else 0.0
    return (alpha / rank if rank and alpha else 1.0) * multiplier


def _product(up: mx.array, down: mx.array) -> mx.array:
    """up [out, rank, ...1] @ down [rank, in, ...] -> [out, in, ...]."""
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(up.shape[0], *down.shape[1:])


def _tucker(core: mx.array, left: mx.array, right: mx.array) -> mx.array:
    """core [r, r, k, k] chained with left [r, out] and right [r, in] -> [out, in, k, k]."""
    return mx.einsum("ijkl,jr,ip->prkl", core, right.reshape(right.shape[0], -1), left.reshape(left.shape[0], -1))


def _kron(a: mx.array, b: mx.array) -> mx.array:
    a = a.reshape(*a.shape, *([1] * (b.ndim - a.ndim)))
    spatial = b.shape[2:]
    outer = a.reshape(a.shape[0], 1, a.shape[1], 1, *a.shape[2:]) * b.reshape(1, b.shape[0], 1, b.shape[1], *spatial)
    return outer.reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], *spatial)


def _channels_last(delta: mx.array) -> mx.array:
    return delta.transpose(0, 2, 3, 1) if delta.ndim == 4 else delta


def _lora(parts: Parts, multiplier: float) -> LayerDelta:
    # the scale goes into the small up factor: a full-size pass saved
    up, down = _f32(parts, "up") * _scale(parts, parts["down"].shape[0], multiplier), _f32(parts, "down")
    if "mid" in parts:
        return _dense(_channels_last(_tucker(_f32(parts, "mid"), up.reshape(up.shape[0], -1).T, down)))
    down = _channels_last(down)
    shape = (up.shape[0], *down.shape[1:])
    return LayerDelta(shape, up=up.reshape(up.shape[0], -1), down=down.reshape(down.shape[0], -1))


def _loha(parts: Parts, multiplier: float) -> LayerDelta:
    if "hada_t1" in parts:
        w1 = _tucker(_f32(parts, "hada_t1"), _f32(parts, "hada_w1_a"), _f32(parts, "hada_w1_b"))
        w2 = _tucker(_f32(parts, "hada_t2"), _f32(parts, "hada_w2_a"), _f32(parts, "hada_w2_b"))
    else:
        w1 = _product(_f32(parts, "hada_w1_a"), _f32(parts, "hada_w1_b"))
        w2 = _product(_f32(parts, "hada_w2_a"), _f32(parts, "hada_w2_b"))
    return _dense(_channels_last(w1 * w2) * _scale(parts, parts["hada_w1_b"].shape[0], multiplier))


def _lokr(parts: Parts, multiplier: float) -> LayerDelta:
    rank = None
    if "lokr_w1" in parts:
        w1 = _f32(parts, "lokr_w1")
    else:
        w1, rank = _product(_f32(parts, "lokr_w1_a"), _f32(parts, "lokr_w1_b")), parts["lokr_w1_b"].shape[0]
    if "lokr_w2" in parts:
        w2 = _f32(parts, "lokr_w2")
    else:
        rank = rank or parts["lokr_w2_b"].shape[0]
        if "lokr_t2" in parts:
            w2 = _tucker(_f32(parts, "lokr_t2"), _f32(parts, "lokr_w2_a"), _f32(parts, "lokr_w2_b"))
        else:
            w2 = _product(_f32(parts, "lokr_w2_a"), _f32(parts, "lokr_w2_b"))
    return _dense(_channels_last(_kron(w1, w2)) * _scale(parts, rank, multiplier))


# A kind's marker part -> (the parts it needs, its delta).
_KINDS = {
    "up": (("up", "down"), _lora),
    "hada_w1_a": (("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), _loha),
    "lokr_w1": ((), _lokr),
    "lokr_w1_a": (("lokr_w1_b",), _lokr),
    "diff": (("diff",), lambda parts, multiplier: _dense(_channels_last(_f32(parts, "diff")) * multiplier)),
}


def weight_delta(module: str, parts: Parts, multiplier: float = 1.0) -> LayerDelta | None:
    """The weight change of `module` at the user's weight `multiplier` (our layout, float32), None for a bias-only
    `diff_b`; a LoraError names the module when its parts are incomplete or of no kind we know."""
    for marker, (needed, delta) in _KINDS.items():
        if marker in parts:
            missing = [name for name in needed if name not in parts]
            if marker.startswith("lokr") and "lokr_w2" not in parts and "lokr_w2_a" not in parts:
                missing.append("lokr_w2")
            if missing:
                raise LoraError(f"{module} has {marker} but no {', '.join(missing)}")
            return delta(parts, multiplier)
    if "diff_b" in parts:
        return None
    raise LoraError(f"{module} has parts {', '.join(sorted(parts))}, which no LoRA kind we know uses")


def dora(delta: mx.array, weight: mx.array, dora_scale: mx.array) -> mx.array:
    """DoRA: the change that takes `weight` (our layout, float32) to (weight + delta) with its per-channel
    norms replaced by dora_scale (stored in torch's layout: `[out, 1, ...]` or `[1, in, ...]`)."""
    merged = weight + delta
    per_output = dora_scale.shape[0] == merged.shape[0] and dora_scale.size == merged.shape[0]
    kept = 0 if per_output else merged.ndim - 1  # the input channels are the last axis in our layout
    axes = tuple(a for a in range(merged.ndim) if a != kept)
    norm = mx.sqrt(mx.sum(merged * merged, axis=axes, keepdims=True))
    return merged * (dora_scale.astype(mx.float32).reshape(norm.shape) / norm) - weight
