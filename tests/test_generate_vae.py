"""The VAE stages of generation: tiled decode/encode against untiled, the float32 fallback for a half-precision
VAE that overflows, the latent-to-RGB preview factors and SDXL's time ids."""

from __future__ import annotations

import dataclasses
import time


import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlx_sd.config import VAE_SD, VAE_SDXL, VAEConfig
from mlx_sd.pipeline import Pipeline
from mlx_sd.preview import SD_FACTORS, SDXL_FACTORS, PreviewMap, calibration_pictures, fit, published
from mlx_sd.sdxl_conditioning import time_ids
from mlx_sd.vae import AutoencoderKL
from mlx_sd.vae_codec import VAECodec
from mlx_sd.vae_tiling import blend_horizontal, blend_vertical, tiled
from test_generate_models import CONFIGS, levels_apart, model_folders, pipes, request  # noqa: F401

TILE_PIXELS = 64  # a tiny VAE tile for the pipeline-level test


def smooth_latent(h: int, w: int, seed: int = 0) -> mx.array:
    """Low-frequency, unit-scale latent (scaled, as the sampler produces it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(2 * np.pi * (rng.uniform(0.3, 1) * x + rng.uniform(0.3, 1) * y) + rng.uniform(0, 6)) for _ in range(4)]
    return mx.array(np.stack(channels, -1)[None].astype(np.float32))


def stationary_latent(h: int, w: int, period: int, seed: int = 0) -> mx.array:
    """Smooth waves whose period divides the tile: every tile sees the statistics of the whole latent."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    channels = [0.8 * np.sin(2 * np.pi * (rng.integers(0, 2) * x + y) / period + rng.uniform(0, 6)) for _ in range(4)]
    return mx.array(np.stack(channels, -1)[None].astype(np.float32))


def seam_ratio(image: np.ndarray, boundaries: list[int]) -> float:
    """The largest column-to-column change at tile boundaries over the median change (about 1: no seam)."""
    steps = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    return float(max(steps[b - 1] for b in boundaries) / np.median(steps))


def vae_pair(config: VAEConfig) -> tuple[AutoencoderKL, object]:
    """The same random weights (diffusers' initialisation) in our VAE and in diffusers' AutoencoderKL."""
    from test_vae import to_mlx, torch_vae  # torch only for the tests that compare with diffusers

    reference = torch_vae(config)
    ours = AutoencoderKL(config)
    ours.update(tree_unflatten(list(to_mlx(reference).items())))
    return ours, reference


def test_tiled_decode_and_encode_are_diffusers_tiling() -> None:
    """Same tiles, cross-fades and crops as diffusers' tiled_decode / _tiled_encode (docs/facts.md §7.1)."""
    import torch

    config = VAEConfig(block_out_channels=(32, 32, 64, 64), sample_size=64)
    ours, reference = vae_pair(config)
    reference.tile_sample_min_size, reference.tile_latent_min_size = 64, 8  # diffusers reads these at init
    codec = VAECodec(ours)
    latent = smooth_latent(14, 10)
    with torch.no_grad():
        expected = reference.tiled_decode(torch.from_numpy(np.array(latent).transpose(0, 3, 1, 2)) / 0.18215).sample
    expected = np.clip((expected.numpy().transpose(0, 2, 3, 1) + 1) / 2, 0, 1)
    decoded = np.array(codec.decode(latent, tiling=True))
    assert decoded.shape == expected.shape == (1, 112, 80, 3)
    decode_error = np.abs(decoded - expected).max()

    images = np.random.default_rng(0).uniform(0, 1, (1, 112, 80, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference._tiled_encode(torch.from_numpy(images.transpose(0, 3, 1, 2)) * 2 - 1).numpy()
    encoded = np.array(codec.encode(mx.array(images), tiling=True))
    assert encoded.shape == (1, 14, 10, 8)
    encode_error = np.abs(encoded - expected.transpose(0, 2, 3, 1)).max()
    print(f"\ntiled vs diffusers' tiling, 112x80 in 64-px tiles: decode max abs {decode_error:.2e}, encode {encode_error:.2e}")
    assert decode_error < 1e-4 and encode_error < 1e-4


def test_tiled_decode_agrees_with_untiled_and_shows_no_seams() -> None:
    # Tiles see their own GroupNorm statistics and a border where the whole image has neighbours; a
    # trained VAE shrugs that off on 512-px tiles, a random one does not (its output follows both
    # closely). So this VAE is shallow (2 levels) without the global mid-block attention, and the
    # latent is smooth and stationary at the tile scale: what is left to see is the tiling itself.
    config = VAEConfig(block_out_channels=(32, 32), layers_per_block=1, mid_block_add_attention=False, sample_size=64)
    codec = VAECodec(vae_pair(config)[0])  # 32-latent-pixel tiles, stride 24
    latent = stationary_latent(56, 56, period=8)
    start = time.perf_counter()
    whole = np.array(codec.decode(latent, tiling=False))[0]
    untiled_s = time.perf_counter() - start
    start = time.perf_counter()
    tiles = np.array(codec.decode(latent, tiling=True))[0]
    tiled_s = time.perf_counter() - start
    assert tiles.shape == whole.shape == (112, 112, 3)
    diff = np.abs(tiles - whole)
    boundaries = [b for s in (48, 96) for b in (s - 16, s)]  # where each cross-fade starts and ends
    ratio_tiled, ratio_whole = seam_ratio(tiles, boundaries), seam_ratio(whole, boundaries)
    print(f"\ntiled vs untiled decode, 112x112 in 64-px tiles: max abs {diff.max():.3f}, mean abs {diff.mean():.4f}, "
          f"99th percentile {np.percentile(diff, 99):.3f} (image std {whole.std():.3f}); seam ratio tiled "
          f"{ratio_tiled:.2f}, untiled {ratio_whole:.2f}; {untiled_s:.2f} s untiled, {tiled_s:.2f} s tiled")
    assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.1
    assert ratio_tiled < max(2.0, 1.5 * ratio_whole)


def test_tiling_of_an_identity_is_exact() -> None:
    """With a per-pixel function the blend weights sum to one: tiling changes nothing."""
    x = mx.array(np.random.default_rng(1).standard_normal((2, 30, 21, 3)).astype(np.float32))
    out = tiled(lambda t: t * 2.0 + 1.0, x, tile=8, scale=1)
    assert np.abs(np.array(out) - np.array(x * 2.0 + 1.0)).max() < 1e-5
    up = tiled(lambda t: mx.repeat(mx.repeat(t, 8, axis=1), 8, axis=2), x, tile=8, scale=8)
    expected = np.repeat(np.repeat(np.array(x), 8, axis=1), 8, axis=2)
    assert up.shape == (2, 240, 168, 3) and np.abs(np.array(up) - expected).max() < 1e-5
    down = tiled(lambda t: t[:, ::8, ::8], mx.repeat(mx.repeat(x, 8, axis=1), 8, axis=2), tile=64, scale=1 / 8)
    assert down.shape == x.shape and np.abs(np.array(down) - np.array(x)).max() < 1e-5


def test_blends_fade_linearly() -> None:
    a, b = mx.zeros((1, 4, 4, 1)), mx.ones((1, 4, 4, 1))
    assert np.array(blend_vertical(a, b, 4))[0, :, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert np.array(blend_horizontal(a, b, 2))[0, 0, :, 0].tolist() == [0.0, 0.5, 1.0, 1.0]


def test_generate_tiles_only_images_larger_than_the_tile(model_folders) -> None:
    pipe = Pipeline.load(model_folders["sd1"])
    pipe.vae.config = dataclasses.replace(pipe.vae.config, sample_size=TILE_PIXELS)
    codec = pipe.codec
    assert codec.use_tiling(72, 64, None) and not codec.use_tiling(64, 64, None)
    assert not codec.use_tiling(128, 128, False) and codec.use_tiling(64, 64, True)
    auto, forced, plain = (
        np.asarray(pipe.generate(request(width=128, height=96, steps=1, vae_tiling=tiling)).images[0])
        for tiling in (None, True, False)
    )
    assert np.array_equal(auto, forced) and not np.array_equal(auto, plain)


def overflowing_half_vae(pipes) -> tuple[AutoencoderKL, AutoencoderKL]:
    """The SD1 test VAE in float16 with a first decoder conv whose outputs exceed float16's range
    (65504) although every weight fits; and the same weights in float32."""
    weights = dict(tree_flatten(pipes["sd1"].vae.parameters()))
    weights["decoder.conv_in.weight"] = weights["decoder.conv_in.weight"] * 200.0
    weights["decoder.conv_in.bias"] = mx.full(weights["decoder.conv_in.bias"].shape, 60000.0)
    half, full = AutoencoderKL(pipes["sd1"].vae.config), AutoencoderKL(pipes["sd1"].vae.config)
    half.update(tree_unflatten([(k, v.astype(mx.float16)) for k, v in weights.items()]))
    full.update(tree_unflatten([(k, v.astype(mx.float16).astype(mx.float32)) for k, v in weights.items()]))
    return half, full


def test_half_precision_decode_falls_back_to_float32_on_overflow(pipes) -> None:
    half, full = overflowing_half_vae(pipes)
    latent = smooth_latent(8, 8)
    assert not np.isfinite(np.array(half.decode(latent / 0.18215).astype(mx.float32))).all()  # the overflow is real
    codec = VAECodec(half)
    out = np.array(codec.decode(latent))
    assert np.isfinite(out).all() and codec.float32_runs == 1
    expected = np.array(VAECodec(full).decode(latent))
    assert np.abs(out - expected).max() < 1e-5

    # a half-precision VAE that does not overflow stays in half precision
    normal = AutoencoderKL(pipes["sd1"].vae.config)
    normal.update(tree_unflatten([(k, v.astype(mx.float16)) for k, v in tree_flatten(pipes["sd1"].vae.parameters())]))
    codec = VAECodec(normal)
    half_out = np.array(codec.decode(latent))
    assert codec.float32_runs == 0 and np.abs(half_out - np.array(pipes["sd1"].codec.decode(latent))).max() < 0.01


def test_force_upcast_decodes_in_float32_from_the_start(pipes) -> None:
    config = dataclasses.replace(pipes["sd1"].vae.config, force_upcast=True)
    half = AutoencoderKL(config)
    half.update(tree_unflatten([(k, v.astype(mx.float16)) for k, v in tree_flatten(pipes["sd1"].vae.parameters())]))
    codec = VAECodec(half)
    codec.decode(smooth_latent(8, 8))
    assert codec.float32_runs == 1 and codec.float32_vae().dtype == mx.float32


def test_generate_with_a_float16_pipeline_survives_a_vae_overflow(model_folders, pipes) -> None:
    pipe = Pipeline.load(model_folders["sd1"], dtype=mx.float16)
    pipe.vae = overflowing_half_vae(pipes)[0]
    result = pipe.generate(request(steps=1))
    assert pipe.codec.float32_runs == 1
    assert np.asarray(result.images[0]).std() > 0  # not a black (NaN) image


def test_published_preview_factors_for_the_stable_diffusion_vae() -> None:
    assert published("sd1", VAE_SD).matrix is SD_FACTORS and published("sd2", VAE_SD).matrix is SD_FACTORS
    assert published("sdxl", VAE_SDXL).matrix is SDXL_FACTORS and published("sdxl-refiner", VAE_SDXL).matrix is SDXL_FACTORS
    assert published("sd1", VAEConfig(block_out_channels=(32, 32, 64, 64))) is None  # another latent space
    preview = published("sd1", VAE_SD)
    for c in range(4):
        unit = np.zeros((1, 1, 4), np.float32)
        unit[0, 0, c] = 1.0
        assert np.allclose(preview.rgb(unit)[0, 0], (SD_FACTORS[c] + 1) / 2)  # A1111: (x + 1) / 2, clipped
    assert np.array_equal(preview.rgb(np.full((2, 2, 4), 10.0, np.float32)), np.ones((2, 2, 3)))
    assert np.array_equal(preview.rgb(np.full((2, 2, 4), -10.0, np.float32)), np.zeros((2, 2, 3)))
    image = preview.image(mx.zeros((8, 12, 4)))
    assert image.size == (12, 8) and image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match=r"expected one latent of shape \(h, w, 4\), got \(1, 2, 2, 4\)"):
        preview.rgb(np.zeros((1, 2, 2, 4), np.float32))


class LinearDecoderCodec:
    """A stand-in VAE with a 4x latent factor whose decoder is exactly linear in the scaled latent:
    decoded RGB in [-1, 1] = latent @ MATRIX + BIAS on every pixel of the latent's cell."""

    MATRIX = np.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.1, 0.2, 0.3], [0.7, -0.5, 0.2]], np.float32)
    BIAS = np.array([0.05, -0.1, 0.2], np.float32)
    downscale = 4

    def encode(self, images: mx.array, tiling=None) -> mx.array:
        cells = np.array(images).reshape(images.shape[0], images.shape[1] // 4, 4, images.shape[2] // 4, 4, 3)
        mean = cells.mean(axis=(2, 4))
        spread = cells.std(axis=(2, 4)).mean(axis=-1, keepdims=True)  # a fourth, non-linear channel
        latent = np.concatenate([mean * 2 - 1, spread], axis=-1)
        return mx.array(np.concatenate([latent, np.zeros_like(latent)], axis=-1))

    def latents(self, moments: mx.array, noise=None) -> mx.array:
        return moments[..., :4] * 0.5

    def decode(self, latents: mx.array, tiling=None) -> mx.array:
        rgb = np.array(latents) @ self.MATRIX + self.BIAS
        return mx.array((np.repeat(np.repeat(rgb, 4, axis=1), 4, axis=2) + 1) / 2)


def test_fitted_preview_recovers_a_linear_decoder() -> None:
    preview = fit(LinearDecoderCodec())
    assert preview.source == "fitted"
    assert np.abs(preview.matrix - LinearDecoderCodec.MATRIX).max() < 1e-4
    assert np.abs(preview.bias - LinearDecoderCodec.BIAS).max() < 1e-4
    assert calibration_pictures().shape == (5, 64, 64, 3)


def test_models_without_the_sd_vae_get_a_fitted_preview(pipes) -> None:
    preview = pipes["sdxl"].preview
    assert isinstance(preview, PreviewMap) and preview is pipes["sdxl"].preview  # fitted once, then kept
    assert preview.source == "fitted" and preview.matrix.shape == (4, 3) and np.isfinite(preview.matrix).all()
    start = time.perf_counter()
    again = fit(pipes["sdxl"].codec)
    print(f"\npreview map fitted for the tiny SDXL-like VAE in {time.perf_counter() - start:.2f} s")
    assert np.array_equal(again.matrix, preview.matrix)


def test_sdxl_time_ids() -> None:
    base = time_ids(CONFIGS["sdxl"], 768, 1024, 6.0, batch=2)
    assert base.dtype == mx.float32 and np.array(base).tolist() == [[768, 1024, 0, 0, 768, 1024]] * 2
    refiner = time_ids(CONFIGS["sdxl-refiner"], 768, 1024, 2.5, batch=1)
    assert np.array(refiner).tolist() == [[768, 1024, 0, 0, 2.5]]
