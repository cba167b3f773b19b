"""Seeded noise, generated on the CPU so one seed gives one image on every machine and backend.

The generator reproduces A1111's platform-independent "NV" RNG (docs/facts.md §4.7): a NumPy version
of what torch draws on CUDA, Philox4x32-10 counter-based bits turned into normals by Box-Muller.
Draw number k of a generator (k = 0, 1, ...) uses the counter (k, 0, i, 0) for element i and the
64-bit seed as the key; the normal is sqrt(-2 ln u) * sin(2 pi v) from the counter's first two
output words. Image k of a run uses seed + k and has its own generator: the first draw is its
initial latent noise (in A1111's NCHW element order), later draws feed the stochastic samplers.

Variation seeds (A1111's subseeds) bend that first draw: the image's noise is the spherical
interpolation (`slerp`) from its seed's noise to its variation seed's by the variation strength;
`Resize seed from` makes both at another latent size and places them centred in the image's first
draw, so a picture found at one size keeps its composition at another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx
import numpy as np

PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))  # round multipliers
PHILOX_W = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))  # key schedule increments (Weyl)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# The uniforms' scale factors are float32 constants (as curand's and A1111's); the transform
# itself runs in float64 and rounds the result to float32, which is what A1111 computes.
_U_SCALE = float(np.float32(2.0**-32))
_V_SCALE = float(np.float32(2.0**-32 * 6.2831855))
NEARLY_PARALLEL = 0.9995  # A1111's slerp falls back to a straight line above this mean cosine


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32 (Salmon et al. 2011) on N counters at once: counter (4, N) and key (2,) or (2, N)
    uint32 -> (4, N) uint32 random words."""
    c0, c1, c2, c3 = (np.asarray(counter[i], dtype=np.uint64) for i in range(4))
    k0, k1 = (np.asarray(key[i], dtype=np.uint64) for i in range(2))
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W[0]) & _LOW32
            k1 = (k1 + PHILOX_W[1]) & _LOW32
        p0 = c0 * PHILOX_M[0]  # 32 x 32 -> 64-bit products: high and low words below
        p1 = c2 * PHILOX_M[1]
        c0, c1, c2, c3 = (p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _LOW32, (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _LOW32
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


def box_muller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One standard normal per pair of uint32 words: sqrt(-2 ln u) sin(v), u in (0, 1], v in (0, 2 pi]."""
    u = a.astype(np.float64) * _U_SCALE + _U_SCALE / 2
    v = b.astype(np.float64) * _V_SCALE + _V_SCALE / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A1111's "NV" generator for one seed: each `randn` call is the next draw."""

    def __init__(self, seed: int):
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed}")
        self.seed = seed
        self.key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = math.prod(shape)
        if n >= 2**32:
            raise ValueError(f"at most 2**32 values per draw, asked for {n}")
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        words = philox4x32(counter, self.key)
        return box_muller(words[0], words[1]).reshape(tuple(shape))


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` (0-based) of a run: seed + index, never wrapped (A1111's rule), so a
    recorded seed past 2**32 - 1 remakes its image as the first of a run."""
    return seed + index


def image_seeds(seed: int, count: int, start: int = 0) -> list[int]:
    """The seeds of images start .. start+count-1 of a run."""
    return [image_seed(seed, start + k) for k in range(count)]


def slerp(t: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A1111's variation-seed interpolation of two (channels, height, width) noises: great-circle
    steps of the vectors along the height axis, a straight line where they are nearly parallel.
    (A1111 weights that line the other way round; it is reached only when the two noises are all but
    identical, as for a variation seed equal to the seed, where both ways give the same noise.)"""
    low_unit = low / np.linalg.norm(low, axis=1, keepdims=True)
    high_unit = high / np.linalg.norm(high, axis=1, keepdims=True)
    cosine = (low_unit * high_unit).sum(axis=1)
    if cosine.mean() > NEARLY_PARALLEL:
        return low * (1.0 - t) + high * t
    omega = np.arccos(np.clip(cosine, -1.0, 1.0))
    sine = np.sin(omega)
    low_factor = (np.sin((1.0 - t) * omega) / sine)[:, None, :]
    high_factor = (np.sin(t * omega) / sine)[:, None, :]
    return (low * low_factor + high * high_factor).astype(np.float32)


def _centred_span(size: int, canvas: int) -> tuple[slice, slice]:
    """(on the canvas, of the noise) along one axis for `place_centred`. The offset is floored, so a
    larger noise with an odd excess is cut one short and leaves the canvas's last row (A1111's rule)."""
    offset = (canvas - size) // 2
    if offset >= 0:
        return slice(offset, offset + size), slice(0, size)
    kept = size + 2 * offset
    return slice(0, kept), slice(-offset, -offset + kept)


def place_centred(noise: np.ndarray, canvas: np.ndarray) -> np.ndarray:
    """`noise` (c, h, w) over the middle of `canvas` (c, H, W), cropped where it is larger: A1111's
    `Resize seed from`."""
    rows, noise_rows = _centred_span(noise.shape[1], canvas.shape[1])
    columns, noise_columns = _centred_span(noise.shape[2], canvas.shape[2])
    placed = canvas.copy()
    placed[:, rows, columns] = noise[:, noise_rows, noise_columns]
    return placed


@dataclass(frozen=True)
class SeedVariation:
    """How a batch's first draws are bent: `seeds` are the variation seeds, one per image; `strength`
    0 keeps the image seeds' noise, 1 is the variation seeds'; `seed_size` (latent height, width)
    the noise is made at, or None for the latent's own size."""

    seeds: tuple[int, ...] = ()
    strength: float = 0.0
    seed_size: tuple[int, int] | None = None


class ImageNoise:
    """Noise for a batch of images, one generator per image.

    `initial()` is each image's first draw, the initial latent noise (unit variance; the sampler's
    caller scales it by the first sigma). Calling the object gives the next draw for every image,
    the noise source of the stochastic samplers. A non-zero `eta_noise_seed_delta` (A1111's ENSD)
    seeds the sampler draws from seed + delta instead, as A1111 does. When a request brings its own
    initial latents, still call `initial()` once (and drop it) so the sampler draws stay the seeds'.
    Latents are NHWC float32: (batch, height, width, channels) with `latent_shape` = (h, w, c)."""

    def __init__(
        self, seeds: Sequence[int], latent_shape: tuple[int, int, int], eta_noise_seed_delta: int = 0,
        variation: SeedVariation = SeedVariation(),
    ):
        if not seeds:
            raise ValueError("seeds is empty: expected one seed per image")
        if len(latent_shape) != 3:
            raise ValueError(f"latent_shape must be (height, width, channels), got {latent_shape}")
        self.seeds = [int(s) for s in seeds]
        self.latent_shape = tuple(int(d) for d in latent_shape)
        if variation.strength and len(variation.seeds) != len(self.seeds):
            raise ValueError(f"{len(variation.seeds)} variation seeds for {len(self.seeds)} images")
        self.variation = variation
        self._initial = [PhiloxGenerator(s) for s in self.seeds]
        if eta_noise_seed_delta:
            self._steps = [PhiloxGenerator(s + eta_noise_seed_delta) for s in self.seeds]
        else:
            self._steps = self._initial  # sampler noise continues each image's stream

    def _draw(self, generators: list[PhiloxGenerator]) -> mx.array:
        h, w, c = self.latent_shape
        # A1111 draws each image in NCHW element order; move channels last afterwards
        images = [g.randn((c, h, w)).transpose(1, 2, 0) for g in generators]
        return mx.array(np.stack(images))

    def initial(self) -> mx.array:
        variation = self.variation
        if not variation.strength and variation.seed_size in (None, self.latent_shape[:2]):
            return self._draw(self._initial)
        h, w, c = self.latent_shape
        seed_shape = (c, *(variation.seed_size or (h, w)))
        images = []
        for index, (seed, generator) in enumerate(zip(self.seeds, self._initial)):
            resized = seed_shape[1:] != (h, w)
            # a resized seed's noise comes from a fresh generator (A1111), so that the image's own
            # stream still starts with a full-size draw, which the noise is then placed over
            noise = (PhiloxGenerator(seed) if resized else generator).randn(seed_shape)
            if variation.strength:
                noise = slerp(variation.strength, noise, PhiloxGenerator(variation.seeds[index]).randn(seed_shape))
            if resized:
                noise = place_centred(noise, generator.randn((c, h, w)))
            images.append(noise.transpose(1, 2, 0))
        return mx.array(np.stack(images))

    def __call__(self) -> mx.array:
        return self._draw(self._steps)


def latents_from_request(latents: np.ndarray, latent_channels: int = 4) -> mx.array:
    """A request's initial noise in diffusers' NCHW layout -> NHWC float32 for the engine."""
    array = np.asarray(latents)
    if array.ndim != 4 or array.shape[1] != latent_channels:
        raise ValueError(
            f"latents must be (batch, {latent_channels}, height/8, width/8) in NCHW layout, got shape {array.shape}"
        )
    return mx.array(np.ascontiguousarray(array.transpose(0, 2, 3, 1), dtype=np.float32))
