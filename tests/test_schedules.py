"""Noise schedule, sigma <-> t and sigma schedules against the values in docs/facts.md
§1.7, §4.2, §4.3, §4.4 and §4.6."""

import numpy as np
import pytest

from mlx_sd import schedules as S
from mlx_sd.config import NoiseScheduleConfig


@pytest.fixture(scope="module")
def ns() -> S.NoiseSchedule:
    return S.NoiseSchedule.from_config(NoiseScheduleConfig())


def close4(actual, expected):
    """docs/facts.md lists 4 decimals."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, atol=6e-5, rtol=0)


def test_training_schedule_endpoints(ns):
    assert ns.num_timesteps == 1000
    np.testing.assert_allclose(ns.alphas_cumprod[0], 0.99915, rtol=1e-9)
    np.testing.assert_allclose(ns.alphas_cumprod[-1], 0.0046601, rtol=1e-4)
    np.testing.assert_allclose(ns.sigma_min, 0.029167, atol=1e-6)
    np.testing.assert_allclose(ns.sigma_max, 14.614641, atol=1e-6)
    assert np.all(np.diff(ns.sigmas) > 0)


def test_linear_beta_schedule_and_unknown_schedule():
    linear = S.NoiseSchedule.from_config(NoiseScheduleConfig(beta_start=1e-4, beta_end=0.02, beta_schedule="linear"))
    np.testing.assert_allclose(linear.alphas_cumprod[:2], [1 - 1e-4, (1 - 1e-4) * (1 - (1e-4 + 0.0199 / 999))])
    with pytest.raises(ValueError, match="squaredcos_cap_v2.*scaled_linear"):
        S.NoiseSchedule.from_config(NoiseScheduleConfig(beta_schedule="squaredcos_cap_v2"))


def test_sigma_to_t_test_values(ns):
    np.testing.assert_allclose(ns.sigma_to_t([14.614641, 7.0, 1.0, 0.1]), [999, 865.747, 353.890, 10.382], atol=1e-3)
    np.testing.assert_array_equal(ns.sigma_to_t([7.0, 1.0, 0.1], quantize=True), [866, 354, 10])


def test_sigma_to_t_clamps_outside_the_table(ns):
    assert float(ns.sigma_to_t(100.0)) == 999.0
    assert float(ns.sigma_to_t(0.001)) == 0.0


def test_t_to_sigma_interpolates_log_sigma_and_inverts_sigma_to_t(ns):
    np.testing.assert_allclose(ns.t_to_sigma(np.arange(1000)), ns.sigmas, rtol=1e-12)
    halfway = float(ns.t_to_sigma(500.5))
    np.testing.assert_allclose(halfway, np.sqrt(ns.sigmas[500] * ns.sigmas[501]), rtol=1e-12)
    t = np.array([0.0, 0.25, 10.382, 353.89, 865.747, 998.5, 999.0])
    np.testing.assert_allclose(ns.sigma_to_t(ns.t_to_sigma(t)), t, atol=1e-9)


def test_uniform_10(ns):
    close4(S.uniform(ns, 10), [14.6146, 7.8399, 4.6092, 2.9183, 1.9502, 1.3449, 0.9324, 0.6250, 0.3687, 0.0292, 0])


def test_normal_equals_uniform_for_a_training_schedule(ns):
    np.testing.assert_allclose(S.normal(ns, 13), S.uniform(ns, 13), rtol=1e-12)


def test_karras_10_and_20(ns):
    close4(S.karras(ns, 10), [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292, 0])
    close4(S.karras(ns, 20), [
        14.6146, 11.7254, 9.3402, 7.3836, 5.7894, 4.4998, 3.4647, 2.6408, 1.9909, 1.4832, 1.0908,
        0.7909, 0.5647, 0.3964, 0.2730, 0.1842, 0.1213, 0.0779, 0.0485, 0.0292, 0,
    ])


def test_exponential_10(ns):
    close4(S.exponential(ns, 10), [14.6146, 7.3249, 3.6712, 1.8400, 0.9222, 0.4622, 0.2317, 0.1161, 0.0582, 0.0292, 0])


def test_sgm_uniform_timesteps(ns):
    sigmas = S.sgm_uniform(ns, 10)
    assert len(sigmas) == 11 and sigmas[-1] == 0
    expected = [999, 899.1, 799.2, 699.3, 599.4, 499.5, 399.6, 299.7, 199.8, 99.9]
    np.testing.assert_allclose(ns.sigma_to_t(sigmas[:-1]), expected, atol=1e-9)
    # 4 steps (SDXL Turbo): within a timestep of diffusers' trailing spacing 999, 749, 499, 249
    t4 = ns.sigma_to_t(S.sgm_uniform(ns, 4)[:-1])
    np.testing.assert_allclose(t4, [999, 749.25, 499.5, 249.75], atol=1e-9)
    assert np.all(np.abs(t4 - S.trailing_timesteps(1000, 4)) < 1)


def test_simple(ns):
    sigmas = S.simple(ns, 10)
    timesteps = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    np.testing.assert_array_equal(ns.sigma_to_t(sigmas[:-1], quantize=True), timesteps)
    np.testing.assert_array_equal(sigmas[:-1], ns.sigmas[[999, 899, 799, 699, 599, 499, 399, 299, 199, 99]])
    # 3 steps: floor(i * 1000/3) -> t = 999, 666, 333
    np.testing.assert_array_equal(S.simple(ns, 3)[:-1], ns.sigmas[[999, 666, 333]])
    assert S.simple(ns, 3)[-1] == 0


def test_leading_and_trailing_timesteps():
    np.testing.assert_array_equal(S.leading_timesteps(1000, 10), [901, 801, 701, 601, 501, 401, 301, 201, 101, 1])
    np.testing.assert_array_equal(S.trailing_timesteps(1000, 10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
    np.testing.assert_array_equal(S.trailing_timesteps(1000, 1), [999])
    np.testing.assert_array_equal(S.trailing_timesteps(1000, 2), [999, 499])
    np.testing.assert_array_equal(S.trailing_timesteps(1000, 3), [999, 666, 332])
    np.testing.assert_array_equal(S.trailing_timesteps(1000, 4), [999, 749, 499, 249])


def test_ddim_timesteps_and_schedule(ns):
    t = S.ddim_timesteps(ns, 20)
    np.testing.assert_array_equal(t[::-1], np.arange(1, 1000, 50))  # 1, 51, ..., 951
    sigmas = S.ddim(ns, 20)
    assert len(sigmas) == 21
    np.testing.assert_array_equal(sigmas[:-1], ns.sigmas[t])
    assert sigmas[-1] == ns.sigma_min  # ends at alphas_cumprod[0], not at 0
    assert S.ddim_timesteps(ns, 1000).max() == 999  # clipped like A1111


def test_lcm_timesteps_and_schedule(ns):
    np.testing.assert_array_equal(S.lcm_timesteps(ns, 4), [999, 759, 499, 259])
    np.testing.assert_array_equal(S.lcm_timesteps(ns, 8), [999, 879, 759, 639, 499, 379, 259, 139])
    np.testing.assert_array_equal(S.lcm_original_timesteps(ns)[[0, 1, -1]], [19, 39, 999])
    sigmas = S.lcm(ns, 4)
    np.testing.assert_array_equal(sigmas, np.append(ns.sigmas[[999, 759, 499, 259]], 0))
    with pytest.raises(ValueError, match="at most 50"):
        S.lcm_timesteps(ns, 51)


@pytest.mark.parametrize("fn", [
    S.uniform, S.karras, S.exponential, S.sgm_uniform, S.simple, S.normal, S.lcm, S.polyexponential, S.beta,
])
def test_every_schedule_has_n_plus_one_descending_sigmas_ending_at_zero(ns, fn):
    for steps in (1, 2, 7, 30):
        sigmas = fn(ns, steps)
        assert sigmas.shape == (steps + 1,) and sigmas.dtype == np.float64
        assert sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0)
        np.testing.assert_allclose(sigmas[0], ns.sigma_max, rtol=1e-12)


def test_steps_must_be_positive(ns):
    with pytest.raises(ValueError, match="steps must be a whole number >= 1, got 0"):
        S.karras(ns, 0)


def test_img2img_start_as_a1111(ns):
    full = S.karras(ns, 20)
    tail = S.img2img_sigmas(full, 0.75)  # t_enc = 15 -> 16 steps from sigmas[4]
    assert len(tail) - 1 == 16
    np.testing.assert_array_equal(tail, full[4:])
    np.testing.assert_array_equal(S.img2img_sigmas(full, 1.0), full[0:])  # min(1, 0.999) * 20 -> 19 -> index 0
    np.testing.assert_array_equal(S.img2img_sigmas(full, 0.5), full[9:])  # t_enc 10 -> 11 steps
    np.testing.assert_array_equal(S.img2img_sigmas(full, 0.04), full[19:])  # t_enc 0 -> 1 step
    assert len(S.img2img_sigmas(full, 0.0)) == 1  # no steps at strength 0
    with pytest.raises(ValueError, match="strength must be from 0 to 1, got 1.5"):
        S.img2img_sigmas(full, 1.5)


def test_schedule_by_name():
    assert S.schedule_by_name("karras").function is S.karras
    assert S.schedule_by_name("SGM Uniform").function is S.sgm_uniform
    assert S.schedule_by_name("sgm_uniform").name == "SGM Uniform"
    assert S.schedule_by_name(" AUTOMATIC ").function is None
    assert S.schedule_by_name("kl_optimal").function is S.kl_optimal
    assert S.schedule_by_name("align_your_steps").name == "Align Your Steps"
    with pytest.raises(ValueError) as error:
        S.schedule_by_name("Karras Exponential")
    message = str(error.value)
    assert "'Karras Exponential'" in message
    names = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
    assert [s.name for s in S.SCHEDULES] == list(names)  # A1111's 12, in A1111's order
    for name in names:
        assert name in message


def test_polyexponential_with_rho_1_is_exponential(ns):
    np.testing.assert_allclose(S.polyexponential(ns, 9), S.exponential(ns, 9), rtol=1e-12)


def test_kl_optimal_is_even_in_arctan_and_ends_at_sigma_min(ns):
    sigmas = S.kl_optimal(ns, 8)
    assert sigmas.shape == (9,) and sigmas[-1] == pytest.approx(ns.sigma_min, rel=1e-12)
    np.testing.assert_allclose(np.diff(np.arctan(sigmas)), (np.arctan(ns.sigma_min) - np.arctan(ns.sigma_max)) / 8)


def test_align_your_steps_uses_the_published_sigmas(ns):
    np.testing.assert_allclose(S.align_your_steps(ns, 11), S.AYS_SD1 + (0.0,))  # 11 steps take them as they are
    sdxl = S.align_your_steps(ns, 11, sdxl=True)
    np.testing.assert_allclose(sdxl, S.AYS_SDXL + (0.0,))
    twenty = S.align_your_steps(ns, 20)
    assert twenty.shape == (21,) and twenty[0] == pytest.approx(14.615) and twenty[-2] == pytest.approx(0.029)
    # log-linear: every second of 21 log-interpolated levels is one of the published 11
    np.testing.assert_allclose(S.align_your_steps(ns, 21)[:-1][::2], S.AYS_SD1, rtol=1e-12)


def test_ddim_schedule_label_is_a1111s_leading_timesteps(ns):
    sigmas = S.ddim_uniform(ns, 20)
    np.testing.assert_array_equal(sigmas[:-1], ns.sigmas[np.arange(1, 1000, 50)][::-1])
    assert sigmas[-1] == 0
    assert len(S.ddim_uniform(ns, 30)) == 32  # 1000 // 30 = 33: t = 1, 34, ..., 991 is 31 steps, as A1111


def test_beta_schedule_against_scipy(ns):
    stats = pytest.importorskip("scipy.stats")
    sigmas = S.beta(ns, 7)
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, 7), 0.6, 0.6)
    np.testing.assert_allclose(sigmas[:-1], ns.sigma_min + quantiles * (ns.sigma_max - ns.sigma_min), rtol=1e-12)
    for p in (1e-9, 0.013, 0.5, 0.77, 1 - 1e-9):
        assert S.beta_quantile(p, 2.0, 5.0) == pytest.approx(stats.beta.ppf(p, 2.0, 5.0), rel=1e-9, abs=1e-15)


def test_unipc_time_uniform_interpolates_log_alpha(ns):
    sigmas = S.unipc_time_uniform(ns, 9)  # 999 / 9 = 111: whole timesteps, the training sigmas
    np.testing.assert_allclose(sigmas, ns.sigmas[np.arange(999, -1, -111)], rtol=1e-12)
    half = S.unipc_time_uniform(ns, 2)[1]  # t = 499.5
    alphas = ns.alphas_cumprod
    np.testing.assert_allclose(half, np.sqrt(1 / np.sqrt(alphas[499] * alphas[500]) - 1), rtol=1e-12)


def test_sigma_range_spans_the_model_without_a_final_zero(ns):
    sigmas = S.sigma_range(ns, 4)
    np.testing.assert_allclose(sigmas[[0, -1]], [ns.sigma_max, ns.sigma_min], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.log(sigmas)), np.log(ns.sigma_min / ns.sigma_max) / 4)
