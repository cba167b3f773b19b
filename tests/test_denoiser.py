"""The model denoiser: epsilon and v-prediction wrappers against the formulas of docs/facts.md §4.1, the
timestep modes, classifier-free guidance batching (one call of 2B, or of B at CFG <= 1), SDXL extra
inputs, inpainting c_concat and the compute dtype."""

import math

import numpy as np
import pytest

import mlx.core as mx
from mlx_sd import schedules as S
from mlx_sd.denoiser import Conditioning, Denoiser, lcm_boundary_scalings, scalings

B, H, W, C, L, D = 2, 4, 3, 4, 5, 8


@pytest.fixture(scope="module")
def ns():
    return S.NoiseSchedule.from_config()


class RecordingUNet:
    """A UNet stand-in: output depends on x, t, context and the SDXL extras; records every call."""

    def __init__(self, out_channels: int = C):
        self.calls: list[dict] = []
        self.out_channels = out_channels

    def __call__(self, x, t, context, text_embeds=None, time_ids=None):
        self.calls.append({"x": np.array(x), "t": np.array(t), "context": np.array(context), "dtype": x.dtype,
                           "text_embeds": None if text_embeds is None else np.array(text_embeds),
                           "time_ids": None if time_ids is None else np.array(time_ids)})
        ctx = mx.mean(context, axis=(1, 2)).reshape(-1, 1, 1, 1)
        out = mx.tanh(x[..., : self.out_channels]) * mx.cos(t.reshape(-1, 1, 1, 1) / 200.0) + ctx
        if text_embeds is not None:
            added = mx.mean(text_embeds, axis=1) + mx.mean(time_ids, axis=1)
            out = out + added.reshape(-1, 1, 1, 1)
        return out.astype(x.dtype)


def rand(*shape, seed=0):
    return mx.array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def cond(scale=7.0, **kwargs):
    negative = rand(B, L, D, seed=2)
    return Conditioning(context=rand(B, L, D, seed=1), negative_context=negative, cfg_scale=scale, **kwargs)


def test_scalings_formulas():
    sigma = 2.5
    assert scalings(sigma, "epsilon") == (1.0, -2.5, 1 / math.sqrt(7.25))
    c_skip, c_out, c_in = scalings(sigma, "v_prediction")
    assert c_skip == pytest.approx(1 / 7.25)
    assert c_out == pytest.approx(-2.5 / math.sqrt(7.25)) and c_in == pytest.approx(1 / math.sqrt(7.25))
    with pytest.raises(ValueError, match="'sample' is not one of epsilon, v_prediction"):
        scalings(1.0, "sample")


def test_epsilon_denoiser(ns):
    unet = RecordingUNet()
    denoiser = Denoiser(unet, ns, Conditioning(context=rand(B, L, D, seed=1), cfg_scale=1.0))
    x, sigma = rand(B, H, W, C) * 3.0, 3.0
    out = np.array(denoiser(x, sigma))
    (call,) = unet.calls
    np.testing.assert_allclose(call["x"], np.array(x) / math.sqrt(10.0), rtol=1e-6)  # c_in
    np.testing.assert_allclose(call["t"], [ns.sigma_to_t(3.0)] * B, rtol=1e-6)  # fractional t
    eps = np.array(unet(mx.array(call["x"]), mx.array(call["t"]), mx.array(call["context"])))
    np.testing.assert_allclose(out, np.array(x) - sigma * eps, atol=1e-5)


def test_v_prediction_denoiser_matches_the_ddpm_form(ns):
    """At an integer timestep, D = sqrt(a) x_t - sqrt(1 - a) v in the DDPM frame (docs/facts.md §4.1)."""
    unet = RecordingUNet()
    conditioning = Conditioning(context=rand(B, L, D, seed=1), cfg_scale=1.0)
    denoiser = Denoiser(unet, ns, conditioning, prediction_type="v_prediction")
    t = 600
    sigma, a = float(ns.sigmas[t]), float(ns.alphas_cumprod[t])
    x = rand(B, H, W, C) * sigma
    out = np.array(denoiser(x, sigma))
    call = unet.calls[0]
    np.testing.assert_allclose(call["t"], [t, t], atol=1e-6)
    x_t = np.array(x) * math.sqrt(a)  # DDPM frame = the UNet input
    np.testing.assert_allclose(call["x"], x_t, rtol=1e-5, atol=1e-6)
    v = np.array(unet(mx.array(call["x"]), mx.array(call["t"]), mx.array(call["context"])))
    np.testing.assert_allclose(out, math.sqrt(a) * x_t - math.sqrt(1 - a) * v, atol=2e-5)


def test_discrete_timesteps_are_the_nearest_training_timestep(ns):
    unet = RecordingUNet()
    denoiser = Denoiser(unet, ns, Conditioning(context=rand(B, L, D), cfg_scale=1.0), timesteps="discrete")
    for sigma, t in [(7.0, 866), (1.0, 354), (0.1, 10), (float(ns.sigmas[951]), 951)]:
        assert denoiser.timestep(sigma) == t


def test_lcm_timesteps_and_boundary_scalings(ns):
    """LCM: t is the nearest of 19, 39, ..., 999; D = c_out * x0 + c_skip * x_t with diffusers'
    LCMScheduler scalings."""
    from diffusers import LCMScheduler

    unet = RecordingUNet()
    denoiser = Denoiser(unet, ns, Conditioning(context=rand(B, L, D, seed=1), cfg_scale=1.0), timesteps="lcm")
    assert denoiser.timestep(float(ns.sigmas[759])) == 759
    assert denoiser.timestep(float(ns.sigmas[765])) == 759  # nearest distilled timestep
    assert denoiser.timestep(7.0) in range(19, 1000, 20)
    reference = LCMScheduler()
    for t in (999, 259, 19):
        c_skip, c_out = reference.get_scalings_for_boundary_condition_discrete(t)
        np.testing.assert_allclose(lcm_boundary_scalings(t), (c_skip, c_out), rtol=1e-12)

    t = 19  # the largest c_skip: 0.25 / (190^2 + 0.25)
    sigma, a = float(ns.sigmas[t]), float(ns.alphas_cumprod[t])
    x = rand(B, H, W, C) * 2.0
    out = np.array(denoiser(x, sigma))
    call = unet.calls[-1]
    eps = np.array(unet(mx.array(call["x"]), mx.array(call["t"]), mx.array(call["context"])))
    x_t = np.array(x) * math.sqrt(a)
    x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    c_skip, c_out = lcm_boundary_scalings(t)
    np.testing.assert_allclose(out, c_out * x0 + c_skip * x_t, atol=2e-5)


def test_cfg_is_one_call_of_batch_2b_equal_to_two_separate_calls(ns):
    unet = RecordingUNet()
    conditioning = cond(7.5)
    denoiser = Denoiser(unet, ns, conditioning)
    x, sigma = rand(B, H, W, C, seed=3) * 4.0, 4.0
    guided = np.array(denoiser(x, sigma))
    assert len(unet.calls) == 1 and unet.calls[0]["x"].shape[0] == 2 * B
    # negative rows first
    np.testing.assert_array_equal(unet.calls[0]["context"][:B], np.array(conditioning.negative_context))
    np.testing.assert_array_equal(unet.calls[0]["context"][B:], np.array(conditioning.context))

    positive = Denoiser(RecordingUNet(), ns, Conditioning(context=conditioning.context, cfg_scale=1.0))
    negative = Denoiser(RecordingUNet(), ns, Conditioning(context=conditioning.negative_context, cfg_scale=1.0))
    d_pos, d_neg = np.array(positive(x, sigma)), np.array(negative(x, sigma))
    np.testing.assert_allclose(guided, d_neg + 7.5 * (d_pos - d_neg), atol=3e-5)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.0])
def test_cfg_at_most_one_skips_the_negative_branch(ns, scale):
    unet = RecordingUNet()
    conditioning = cond(scale)
    out = np.array(Denoiser(unet, ns, conditioning)(rand(B, H, W, C), 2.0))
    assert len(unet.calls) == 1 and unet.calls[0]["x"].shape[0] == B
    np.testing.assert_array_equal(unet.calls[0]["context"], np.array(conditioning.context))
    positive_only = Denoiser(RecordingUNet(), ns, Conditioning(context=conditioning.context, cfg_scale=1.0))
    single = np.array(positive_only(rand(B, H, W, C), 2.0))
    np.testing.assert_array_equal(out, single)


def test_sdxl_extras_are_batched_with_the_context(ns):
    unet = RecordingUNet()
    extra = {"text_embeds": rand(B, 16, seed=4), "time_ids": rand(B, 6, seed=5)}
    negative_extra = {"text_embeds": rand(B, 16, seed=6), "time_ids": rand(B, 6, seed=7)}
    conditioning = cond(5.0, extra=extra, negative_extra=negative_extra)
    x, sigma = rand(B, H, W, C), 1.5
    guided = np.array(Denoiser(unet, ns, conditioning)(x, sigma))
    call = unet.calls[0]
    for key in extra:
        np.testing.assert_array_equal(call[key], np.concatenate([np.array(negative_extra[key]), np.array(extra[key])]))
    positive = Denoiser(RecordingUNet(), ns, Conditioning(context=conditioning.context, cfg_scale=1.0, extra=extra))
    negative_only = Conditioning(context=conditioning.negative_context, cfg_scale=1.0, extra=negative_extra)
    negative = Denoiser(RecordingUNet(), ns, negative_only)
    d_pos, d_neg = np.array(positive(x, sigma)), np.array(negative(x, sigma))
    np.testing.assert_allclose(guided, d_neg + 5.0 * (d_pos - d_neg), atol=3e-5)


def test_inpainting_c_concat_follows_the_scaled_latent(ns):
    unet = RecordingUNet(out_channels=C)
    c_concat = rand(B, H, W, 5, seed=8)
    x, sigma = rand(B, H, W, C) * 3.0, 3.0
    Denoiser(unet, ns, cond(4.0, c_concat=c_concat))(x, sigma)
    call = unet.calls[0]
    assert call["x"].shape == (2 * B, H, W, 9)
    for half in (slice(0, B), slice(B, 2 * B)):
        np.testing.assert_allclose(call["x"][half, ..., :C], np.array(x) / math.sqrt(10.0), rtol=1e-6)
        np.testing.assert_array_equal(call["x"][half, ..., C:], np.array(c_concat))  # not scaled


def test_half_precision_unet_keeps_float32_arithmetic(ns):
    unet = RecordingUNet()
    out = Denoiser(unet, ns, cond(3.0), dtype=mx.float16)(rand(B, H, W, C), 1.0)
    assert unet.calls[0]["dtype"] == mx.float16 and out.dtype == mx.float32


def test_boundary_errors(ns):
    with pytest.raises(ValueError, match="cfg_scale 7.0 > 1 needs a negative_context"):
        Denoiser(RecordingUNet(), ns, Conditioning(context=rand(B, L, D)))
    message = r"negative_context must be \(2, tokens, 8\) like context, got shape \(1, 5, 8\)"
    with pytest.raises(ValueError, match=message):
        Denoiser(RecordingUNet(), ns, Conditioning(context=rand(B, L, D), negative_context=rand(1, L, D)))
    with pytest.raises(ValueError, match="expected equal lengths"):
        Denoiser(RecordingUNet(), ns, Conditioning(context=rand(B, L, D), negative_context=rand(B, 2 * L, D)))
    message = r"negative_extra must have the same keys as extra \(\['time_ids'\]\), got \[\]"
    with pytest.raises(ValueError, match=message):
        Denoiser(RecordingUNet(), ns, cond(extra={"time_ids": rand(B, 6)}))
    with pytest.raises(ValueError, match=r"x must be \(batch 2, h, w, channels\).*got \(3, 4, 3, 4\)"):
        Denoiser(RecordingUNet(), ns, cond())(rand(3, H, W, C), 1.0)
    with pytest.raises(ValueError, match="timesteps 'rounded' is not one of fractional, discrete, lcm"):
        Denoiser(RecordingUNet(), ns, cond(), timesteps="rounded")
