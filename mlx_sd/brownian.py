"""A1111's Brownian-tree noise for the SDE samplers, reproduced in NumPy.

A1111 gives DPM++ SDE, DPM++ 2M SDE (and Heun) and DPM++ 3M SDE k-diffusion's
BrownianTreeNoiseSampler: one torchsde BrownianTree per image, seeded with the image's seed, over
[sigma_min, sigma_max] of the schedule. The noise for a step sigma -> sigma_next is the tree's
increment W(sigma_next, sigma) / sqrt(sigma - sigma_next), negated (the tree runs upwards in sigma).

The tree (torchsde's BrownianInterval with `halfway_tree=True`, tol 1e-6, pool size 24): times are
rounded to 6 decimals; the root holds W over the whole interval, randn(seed_W) * sqrt(t1 - t0); a
node splits at its rounded midpoint, its left child's increment drawn from the Brownian bridge,
(m - s)/(e - s) * W + sqrt((m - s)(e - m)/(e - s)) * randn(seed), the right child's the rest. A
node's seeds are NumPy's SeedSequence(entropy=image seed, spawn_key=(path bits, depth), pool_size=24)
and every draw is a fresh `torch.randn` of one image's latent (C, H, W) from a generator seeded with
one of them: on the CPU that is mt19937 turned into normals by torch's Box-Muller (`torch_cpu_randn`).
A query [ta, tb] sums the increments of the dyadic nodes that tile it.

`torch_cpu_randn` matches torch.randn to 2 float32 ulps (torch's vectorised log/sin/cos are
approximations; ours are float64 rounded to float32), and the tree's arithmetic is float32 in
torch's order, so the noise matches A1111 on a CPU to float32 rounding. A1111 on an NVIDIA GPU
seeds CUDA generators instead: `philox_randn` (mlx_sd.noise, A1111's "NV" generator, which is
torch's CUDA randn) gives that variant.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import mlx.core as mx
import numpy as np

from .noise import PhiloxGenerator

SeededRandn = Callable[[int, tuple[int, ...]], np.ndarray]  # (seed, shape) -> float32 standard normals

TOLERANCE_DIGITS = 6  # torchsde BrownianTree's tol=1e-6: times rounded to 6 decimals
POOL_SIZE = 24  # BrownianTree's SeedSequence pool size
# Increments kept (an SDXL latent's is 256 KiB): a step's queries share the nodes near the root and
# revisit few others; evicted ones are recomputed identically, as torchsde's own LRU cache does.
CACHE_NODES = 64


def torch_cpu_randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """torch.randn(shape) from a CPU generator seeded with `seed`: mt19937 (seeded like
    std::mt19937 / torch's manual_seed) gives 24-bit uniforms, which Box-Muller turns into normals
    in blocks of 16 (the first 8 cosines, the next 8 sines); a size not divisible by 16 redraws the
    last 16 from fresh uniforms. Sizes under 16 take another path in torch and are refused."""
    n = math.prod(shape)
    if n < 16:
        raise ValueError(f"torch draws fewer than 16 normals another way; asked for {n}")
    bits = np.random.MT19937(0)
    bits._legacy_seeding(int(seed) & 0xFFFFFFFF)  # init_genrand, as std::mt19937(seed)

    def uniforms(count: int) -> np.ndarray:
        raw = bits.random_raw(count).astype(np.uint32) & np.uint32(0xFFFFFF)
        return raw.astype(np.float32) * np.float32(2.0**-24)

    def box_muller(blocks: np.ndarray) -> np.ndarray:  # (k, 16) uniforms -> (k, 16) normals
        u1 = (np.float32(1) - blocks[:, :8]).astype(np.float64)
        radius = np.sqrt(np.float32(-2) * np.log(u1).astype(np.float32))
        theta = (np.float32(2 * math.pi) * blocks[:, 8:]).astype(np.float64)
        cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
        return np.concatenate([radius * cos, radius * sin], axis=1)

    data = uniforms(n)
    whole = n - n % 16
    out = np.empty(n, dtype=np.float32)
    out[:whole] = box_muller(data[:whole].reshape(-1, 16)).reshape(-1)
    if n % 16:
        out[n - 16:] = box_muller(uniforms(16).reshape(1, 16)).reshape(-1)
    return out.reshape(shape)


def philox_randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """torch.randn(shape) from a fresh CUDA generator seeded with `seed` (A1111 on NVIDIA GPUs)."""
    return PhiloxGenerator(seed).randn(shape)


class BrownianTree:
    """torchsde's BrownianTree(t0, zeros(shape), t1, entropy) increments, computed in NumPy.

    Nodes are keyed by (path bits, depth); the most recently used keep their increments, so the
    queries of one sampling run share the walk down from the root."""

    def __init__(
        self, t0: float, t1: float, shape: tuple[int, ...], entropy: int, randn: SeededRandn = torch_cpu_randn
    ):
        if not t0 <= t1:  # equal for a one-step schedule, which draws nothing
            raise ValueError(f"a Brownian tree needs t0 <= t1, got {t0} and {t1}")
        self.t0, self.t1 = self._round(t0), self._round(t1)
        self.shape, self.entropy, self.randn = tuple(shape), int(entropy), randn
        root_w_seed = np.random.SeedSequence(entropy=self.entropy, pool_size=POOL_SIZE).generate_state(3)[0]
        # torchsde keeps the unrounded ends for the root's variance
        self.root = randn(int(root_w_seed), self.shape) * np.float32(math.sqrt(t1 - t0))
        self.increments: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # least recently used first

    @staticmethod
    def _round(t: float) -> float:
        return round(float(t), TOLERANCE_DIGITS)

    def __call__(self, ta: float, tb: float) -> np.ndarray:
        """W(tb) - W(ta) for t0 <= ta <= tb <= t1."""
        # clamped into the tree as torchsde does (it warns): float32 sigmas may overshoot the rounded ends
        ta, tb = (min(max(self._round(t), self.t0), self.t1) for t in (ta, tb))
        if ta > tb:
            raise ValueError(f"a Brownian increment needs ta <= tb, got {ta} and {tb}")
        if ta == tb:
            return np.zeros(self.shape, dtype=np.float32)
        total = None
        for part in self._tiling(ta, tb):
            total = part if total is None else total + part
        return total

    def _tiling(self, ta: float, tb: float) -> list[np.ndarray]:
        """The increments of the dyadic nodes that tile [ta, tb], left to right (an explicit stack:
        the depth is about log2((t1 - t0) / 1e-6), the tiling two nodes per level at most)."""
        parts = []
        stack = [((0, 0), self.t0, self.t1, ta, tb)]
        while stack:
            node, start, end, lo, hi = stack.pop()
            if lo == start and hi == end:
                parts.append(self._increment(node, start, end))
                continue
            middle = self._round(0.5 * (end + start))
            key, depth = node
            left, right = (2 * key, depth + 1), (2 * key + 1, depth + 1)
            if hi <= middle:
                stack.append((left, start, middle, lo, hi))
            elif lo >= middle:
                stack.append((right, middle, end, lo, hi))
            else:  # right pushed first: the left part is taken first
                stack.append((right, middle, end, middle, hi))
                stack.append((left, start, middle, lo, middle))
        return parts

    def _increment(self, node: tuple[int, int], start: float, end: float) -> np.ndarray:
        if node == (0, 0):
            return self.root
        if node in self.increments:
            self.increments.move_to_end(node)
            return self.increments[node]
        key, depth = node
        parent = (key // 2, depth - 1)
        is_left = key % 2 == 0
        p_start, p_end = self._span(parent)
        w = self._increment(parent, p_start, p_end)
        middle = start if not is_left else end
        left_diff, right_diff = middle - p_start, p_end - middle
        h_reciprocal = 1 / (p_end - p_start)
        seed = np.random.SeedSequence(
            entropy=self.entropy, spawn_key=parent, pool_size=POOL_SIZE
        ).generate_state(4)[0]
        noise = self.randn(int(seed), self.shape)
        mean = w * np.float32(left_diff) * np.float32(h_reciprocal)
        left_w = mean + np.float32(math.sqrt(left_diff * right_diff * h_reciprocal)) * noise
        increment = left_w if is_left else w - left_w
        self.increments[node] = increment
        if len(self.increments) > CACHE_NODES:
            self.increments.popitem(last=False)
        return increment

    def _span(self, node: tuple[int, int]) -> tuple[float, float]:
        """A node's (start, end), walked down from the root along its path bits: a rounded midpoint
        is not the exact centre, so a parent's span cannot be inferred from its child's."""
        key, depth = node
        lo, hi = self.t0, self.t1
        for level in range(depth - 1, -1, -1):
            middle = self._round(0.5 * (hi + lo))
            if (key >> level) & 1:
                lo = middle
            else:
                hi = middle
        return lo, hi


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler as A1111 sets it up for one batch: a tree per image
    seeded with the image's seed over [smallest positive sigma, largest sigma] of the schedule, in
    float32 as A1111 holds its sigmas. Returns NHWC noise for (sigma, sigma_next)."""

    def __init__(
        self,
        seeds: Sequence[int],
        sigmas: np.ndarray,
        latent_shape: tuple[int, int, int],
        randn: SeededRandn = torch_cpu_randn,
    ):
        sigmas32 = np.asarray(sigmas, dtype=np.float32)
        sigma_min, sigma_max = float(sigmas32[sigmas32 > 0].min()), float(sigmas32.max())
        height, width, channels = latent_shape
        self.trees = [BrownianTree(sigma_min, sigma_max, (channels, height, width), seed, randn) for seed in seeds]

    def __call__(self, sigma: float, sigma_next: float) -> mx.array:
        s, s_next = np.float32(sigma), np.float32(sigma_next)
        low, high = (s_next, s) if s_next < s else (s, s_next)
        sign = np.float32(-1.0 if s_next < s else 1.0)
        scale = np.sqrt(np.abs(s_next - s))
        draws = np.stack([tree(float(low), float(high)) for tree in self.trees]) * sign / scale
        return mx.array(draws.transpose(0, 2, 3, 1))  # NCHW trees -> our NHWC latents
