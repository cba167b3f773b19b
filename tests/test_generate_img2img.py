"""Pipeline.generate with an init image: img2img strength, and inpainting with an ordinary model (latent
blending) and a 9-channel inpainting model (mask and masked-image latent as UNet input)."""

from __future__ import annotations

import math


import mlx.core as mx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mlx_sd import schedules
from mlx_sd.image_prep import prepare_init_image, prepare_mask
from mlx_sd.inpaint import BlendedDenoiser
from mlx_sd.samplers import sample_dpmpp_2m, sample_euler
from test_generate_models import SIZE, model_folders, pipes, pixels, request  # noqa: F401


def picture(size=(SIZE, SIZE), mode="RGB") -> Image.Image:
    """A structured init image: a gradient with a disc."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    array = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    ImageDraw.Draw(image).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(240, 240, 30))
    return image.convert(mode)


def right_half_mask(size=(SIZE, SIZE)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 2, 0, size[0], size[1]))
    return mask


def test_strength_zero_returns_the_input(pipes) -> None:
    init = picture()
    result = pipes["sd1"].generate(request(init_image=init, strength=0.0, batch_size=2), on_progress=pytest.fail)
    assert [np.array_equal(np.asarray(image), np.asarray(init)) for image in result.images] == [True, True]
    assert result.seeds == [7, 8] and "Denoising strength: 0" in result.infotexts[0]
    # any mode and size: the input converted to RGB and resized to the request
    odd = picture((40, 90), "RGBA")
    result = pipes["sd1"].generate(request(init_image=odd, strength=0.0, width=64, height=72))
    expected = np.round(prepare_init_image(odd, 64, 72) * 255)
    assert result.images[0].size == (64, 72) and np.array_equal(np.asarray(result.images[0]), expected)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sdxl-refiner"])
def test_lower_strength_stays_closer_to_the_input(pipes, family: str, monkeypatch) -> None:
    # Measured in latent space: a random tiny VAE is no autoencoder (decode(encode(x)) is far from x),
    # so pixel distances to the input mostly measure the VAE. The latent the sampler hands to the
    # decoder is compared with the init image's latent (the posterior mean).
    pipe, init = pipes[family], picture()
    codec = pipe.codec
    decoded: list[np.ndarray] = []
    real_decode = codec.decode
    monkeypatch.setattr(codec, "decode", lambda latents, tiling=None: (decoded.append(np.array(latents)), real_decode(latents, tiling))[1])
    init_latent = np.array(codec.latents(codec.encode(mx.array(prepare_init_image(init, SIZE, SIZE))[None])))
    progress: list = []
    distances = {}
    for strength in (0.2, 0.8):
        progress.clear()
        pipe.generate(request(init_image=init, strength=strength, steps=10), on_progress=progress.append)
        distances[strength] = np.abs(decoded[-1] - init_latent).mean()
        assert len(progress) == int(strength * 10) + 1  # A1111: t_enc + 1 steps
    print(f"\n{family}: mean abs latent distance to the input, strength 0.2: {distances[0.2]:.3f}, "
          f"0.8: {distances[0.8]:.3f} (input latent mean abs {np.abs(init_latent).mean():.3f})")
    assert distances[0.2] * 5 < distances[0.8]


def test_img2img_accepts_any_mode_and_size(pipes) -> None:
    for image in (picture((50, 70), "RGBA"), picture((100, 30), "P"), picture((64, 64), "L"),
                  Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))):
        result = pipes["sd1"].generate(request(init_image=image, strength=0.5, steps=2, width=64, height=80))
        assert result.images[0].size == (64, 80) and result.images[0].mode == "RGB"


def test_img2img_is_seeded(pipes) -> None:
    init = picture()
    a = pipes["sd1"].generate(request(init_image=init, strength=0.6)).images[0]
    b = pipes["sd1"].generate(request(init_image=init, strength=0.6)).images[0]
    c = pipes["sd1"].generate(request(init_image=init, strength=0.6, seed=8)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("family", ["sd1", "sd1-inpaint"])
def test_inpainting_keeps_unmasked_pixels(pipes, family: str) -> None:
    init, mask = picture(), right_half_mask()
    result = pipes[family].generate(
        request(init_image=init, mask=mask, mask_blur=4, strength=1.0, batch_size=2)
    )
    blurred = prepare_mask(mask, SIZE, SIZE, 4)
    keep = blurred == 0
    assert keep[:, :20].all() and keep.sum() > SIZE * 20
    for image in result.images:
        out, original = pixels(image), pixels(init)
        assert np.array_equal(out[keep], original[keep])
        assert np.abs(out[:, 40:] - original[:, 40:]).mean() > 0.02  # the masked half was repainted
    assert "Mask blur: 4" in result.infotexts[0]


def test_inpainting_model_sees_mask_and_masked_image_latent(pipes, monkeypatch) -> None:
    pipe = pipes["sd1-inpaint"]
    seen = []
    real = pipe.unet

    def spy(sample, *args, **kwargs):
        seen.append(np.array(sample))
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(pipe, "unet", spy)
    init, mask = picture(), right_half_mask()
    pipe.generate(request(init_image=init, mask=mask, mask_blur=0, steps=1, batch_size=2))
    sample = seen[0]
    assert sample.shape == (4, 8, 8, 9)  # CFG: negative and positive rows of 2 images
    expected_mask = np.zeros((8, 8), np.float32)
    expected_mask[:, 4:] = 1
    assert all(np.array_equal(sample[i, :, :, 4], expected_mask) for i in range(4))
    masked = prepare_init_image(init, SIZE, SIZE)
    masked[:, 32:] = 0.5  # the repainted half is grey (0 in [-1, 1])
    codec = pipe.codec
    expected_latent = np.array(codec.latents(codec.encode(mx.array(masked)[None])))[0]
    assert np.abs(sample[:, :, :, 5:] - expected_latent).max() < 1e-5

    # txt2img with an inpainting model: everything is repainted, the image is all grey
    seen.clear()
    pipe.generate(request(steps=1))
    grey = np.array(codec.latents(codec.encode(mx.full((1, SIZE, SIZE, 3), 0.5))))[0]
    assert (seen[0][..., 4] == 1).all() and np.abs(seen[0][..., 5:] - grey).max() < 1e-5


@pytest.mark.parametrize("sampler", [sample_euler, sample_dpmpp_2m])
def test_blended_latent_is_the_noised_original_outside_the_mask_at_every_step(sampler) -> None:
    rng = np.random.default_rng(0)
    original = mx.array(rng.standard_normal((1, 6, 6, 4)).astype(np.float32))
    noise = mx.array(rng.standard_normal((1, 6, 6, 4)).astype(np.float32))
    repaint = np.zeros((1, 6, 6, 1), np.float32)
    repaint[:, :, 3:] = 1
    repaint = mx.array(repaint)

    def model(x, sigma):  # any prediction: it must not leak outside the mask
        return mx.tanh(x) * 0.5 + math.cos(sigma)

    sigmas = schedules.karras(schedules.NoiseSchedule.from_config(), 6)
    steps = []
    x = original + noise * float(sigmas[0])
    out = sampler(BlendedDenoiser(model, original, repaint), x, sigmas, callback=steps.append)
    keep = np.array(repaint)[0, ..., 0] == 0
    for step in steps:
        expected = np.array(original + noise * step.sigma)[0][keep]
        assert np.abs(np.array(step.x)[0][keep] - expected).max() < 1e-4, step.step
    assert np.abs(np.array(out)[0][keep] - np.array(original)[0][keep]).max() < 1e-5
    assert np.abs(np.array(out)[0][~keep] - np.array(original)[0][~keep]).mean() > 0.1
