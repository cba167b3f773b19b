"""Samplers: hand-computed steps from the formulas of docs/facts.md §4.4 on an analytic denoiser, convergence
to the exact probability-flow solution, progress and cancellation, the name registry, and
scheduler-level parity with diffusers (reference.schedulers) on a fake deterministic model."""

import math

import numpy as np
import pytest

import mlx.core as mx
from mlx_sd import samplers as K
from mlx_sd import schedules as S
from mlx_sd.denoiser import Conditioning, Denoiser

MU, STD = 0.3, 0.5  # the data distribution N(MU, STD^2) of the analytic denoiser
SIGMAS = np.array([8.0, 2.5, 0.9, 0.2, 0.0])
SHAPE = (2, 4, 5, 3)


def gaussian_denoiser_np(x: np.ndarray, sigma: float) -> np.ndarray:
    """The exact E[x0 | x] for x0 ~ N(MU, STD^2) and x = x0 + sigma * n."""
    return (STD**2 * x + sigma**2 * MU) / (STD**2 + sigma**2)


class GaussianDenoiser:
    """The same in MLX, counting calls."""

    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, x: mx.array, sigma: float) -> mx.array:
        self.calls.append(sigma)
        return (x * STD**2 + sigma**2 * MU) / (STD**2 + sigma**2)


class RecordedNoise:
    """A noise source returning fixed draws in order (and numpy copies for the hand computation)."""

    def __init__(self, count: int, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.draws = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(count)]
        self.used = 0

    def __call__(self) -> mx.array:
        self.used += 1
        return mx.array(self.draws[self.used - 1])


def start(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(SHAPE) * SIGMAS[0]).astype(np.float32)


def run(sampler, x0: np.ndarray, sigmas=SIGMAS, **kwargs) -> np.ndarray:
    return np.array(sampler(GaussianDenoiser(), mx.array(x0), sigmas, **kwargs))


def ancestral(sigma, sigma_next, eta=1.0):
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def assert_close(ours, expected, tol=2e-5):
    np.testing.assert_allclose(ours, expected, atol=tol * max(1.0, float(np.abs(expected).max())), rtol=0)


# ---------------------------------------------------------------------------------------------
# hand-computed steps (float64, docs/facts.md §4.4)


def test_euler_steps():
    x = start().astype(np.float64)
    for s, sn in zip(SIGMAS[:-1], SIGMAS[1:]):
        x = x + (x - gaussian_denoiser_np(x, s)) / s * (sn - s)
    assert_close(run(K.sample_euler, start()), x)


def test_euler_ancestral_steps():
    noise = RecordedNoise(3)
    x = start().astype(np.float64)
    draws = iter(noise.draws)
    for s, sn in zip(SIGMAS[:-1], SIGMAS[1:]):
        down, up = ancestral(s, sn)
        x = x + (x - gaussian_denoiser_np(x, s)) / s * (down - s)
        if sn > 0:
            x = x + next(draws) * up
    assert_close(run(K.sample_euler_ancestral, start(), noise=noise), x)
    assert noise.used == 3  # no draw on the step to sigma = 0


def test_euler_ancestral_eta_zero_is_euler():
    assert_close(run(K.sample_euler_ancestral, start(), noise=RecordedNoise(3), eta=0.0), run(K.sample_euler, start()))


def test_heun_steps_and_model_calls():
    x = start().astype(np.float64)
    for s, sn in zip(SIGMAS[:-1], SIGMAS[1:]):
        d = (x - gaussian_denoiser_np(x, s)) / s
        x2 = x + d * (sn - s)
        if sn == 0:
            x = x2
        else:
            d2 = (x2 - gaussian_denoiser_np(x2, sn)) / sn
            x = x + 0.5 * (d + d2) * (sn - s)
    denoiser = GaussianDenoiser()
    assert_close(np.array(K.sample_heun(denoiser, mx.array(start()), SIGMAS)), x)
    assert len(denoiser.calls) == 2 * 4 - 1  # the last step (to 0) is a single Euler call


def test_dpmpp_2m_steps():
    x = start().astype(np.float64)
    lam = lambda s: -math.log(s)  # noqa: E731
    d_prev = None
    for i, (s, sn) in enumerate(zip(SIGMAS[:-1], SIGMAS[1:])):
        d = gaussian_denoiser_np(x, s)
        if d_prev is None or sn == 0:
            x = (sn / s) * x + (1 - sn / s) * d
        else:
            r = (lam(s) - lam(SIGMAS[i - 1])) / (lam(sn) - lam(s))
            d_prime = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
            x = (sn / s) * x + (1 - sn / s) * d_prime
        d_prev = d
    assert_close(run(K.sample_dpmpp_2m, start()), x)


@pytest.mark.parametrize("solver", ["midpoint", "heun"])
def test_dpmpp_2m_sde_steps(solver):
    noise = RecordedNoise(3)
    draws = iter(noise.draws)
    x = start().astype(np.float64)
    d_prev, h_prev = None, None
    for s, sn in zip(SIGMAS[:-1], SIGMAS[1:]):
        d = gaussian_denoiser_np(x, s)
        if sn == 0:
            x = d
        else:
            h = math.log(s / sn)
            a = 1 - math.exp(-2 * h)
            x = (sn / s) * math.exp(-h) * x + a * d
            if d_prev is not None:
                r = h_prev / h
                if solver == "midpoint":
                    x = x + 0.5 * a * (d - d_prev) / r
                else:
                    x = x + (1 - a / (2 * h)) * (d - d_prev) / r
            x = x + next(draws) * sn * math.sqrt(1 - math.exp(-2 * h))
            h_prev = h
        d_prev = d
    assert_close(run(K.sample_dpmpp_2m_sde, start(), noise=noise, solver_type=solver), x)
    assert noise.used == 3


def test_dpmpp_sde_steps():
    noise = RecordedNoise(6)
    draws = iter(noise.draws)
    x = start().astype(np.float64)
    for s, sn in zip(SIGMAS[:-1], SIGMAS[1:]):
        d = gaussian_denoiser_np(x, s)
        if sn == 0:
            x = x + (x - d) / s * (sn - s)
            continue
        s_mid = math.sqrt(s * sn)
        sd, su = ancestral(s, s_mid)
        x2 = (sd / s) * x + (1 - sd / s) * d + next(draws) * su
        d2 = gaussian_denoiser_np(x2, s_mid)
        sd, su = ancestral(s, sn)
        x = (sd / s) * x + (1 - sd / s) * d2 + next(draws) * su  # D' = D2 for r = 1/2
    denoiser = GaussianDenoiser()
    ours = np.array(K.sample_dpmpp_sde(denoiser, mx.array(start()), SIGMAS, noise=noise))
    assert_close(ours, x)
    assert noise.used == 6 and len(denoiser.calls) == 7


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_against_the_ddpm_frame_update(eta):
    """The DDPM-frame DDIM of docs/facts.md §4.4 (x0 from eps, sigma_eta, x_prev) on a schedule ending
    at sigma(t=0)."""
    sigmas = np.array([8.0, 2.5, 0.9, 0.2, 0.03])
    noise = RecordedNoise(4)
    draws = iter(noise.draws)
    x = start().astype(np.float64)  # k-frame
    alpha = lambda s: 1 / (1 + s**2)  # noqa: E731  alphas_cumprod of a sigma
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        a_t, a_prev = alpha(s), alpha(sn)
        eps = (x - gaussian_denoiser_np(x, s)) / s
        x_t = x * math.sqrt(a_t)
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        sigma_eta = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma_eta**2) * eps
        if eta:
            x_prev = x_prev + sigma_eta * next(draws)
        x = x_prev / math.sqrt(a_prev)
    expected = x * math.sqrt(alpha(sigmas[-1]))  # the result is the DDPM-frame latent
    assert_close(run(K.sample_ddim, start(), sigmas, noise=noise if eta else None, eta=eta), expected)


def test_lcm_steps():
    noise = RecordedNoise(3)
    draws = iter(noise.draws)
    x = start().astype(np.float64)
    for s, sn in zip(SIGMAS[:-1], SIGMAS[1:]):
        x = gaussian_denoiser_np(x, s)
        if sn > 0:
            x = x + sn * next(draws)
    assert_close(run(K.sample_lcm, start(), noise=noise), x)


def test_stochastic_samplers_need_noise():
    for sampler in (K.sample_euler_ancestral, K.sample_dpmpp_sde, K.sample_dpmpp_2m_sde, K.sample_lcm):
        with pytest.raises(ValueError, match="pass noise="):
            run(sampler, start())
    with pytest.raises(ValueError, match="pass noise="):
        run(K.sample_ddim, start(), eta=1.0)


def test_bad_sigmas_are_rejected():
    with pytest.raises(ValueError, match="non-increasing"):
        run(K.sample_euler, start(), np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="positive but for a final 0"):
        run(K.sample_euler, start(), np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="sigmas is empty"):
        run(K.sample_euler, start(), np.array([]))


def test_no_steps_returns_the_input():
    x = start()
    np.testing.assert_array_equal(run(K.sample_euler, x, np.array([0.0])), x)


# ---------------------------------------------------------------------------------------------
# convergence to the exact probability-flow ODE solution for Gaussian data


def exact_ode_solution(x_start: np.ndarray, sigma_start: float) -> np.ndarray:
    return MU + (x_start - MU) * STD / math.sqrt(STD**2 + sigma_start**2)


@pytest.fixture(scope="module")
def ns():
    return S.NoiseSchedule.from_config()


def test_deterministic_samplers_converge_with_their_order(ns):
    x = start(3)
    exact = exact_ode_solution(x.astype(np.float64), SIGMAS[0])

    def error(fn, steps):
        sigmas = S.karras(ns, steps) * (SIGMAS[0] / ns.sigma_max)
        return np.abs(run(fn, x, sigmas) - exact).max()

    euler_50, euler_200 = error(K.sample_euler, 50), error(K.sample_euler, 200)
    assert 3 < euler_50 / euler_200 < 5  # first order: 4x the steps, ~1/4 the error
    for fn in (K.sample_heun, K.sample_dpmpp_2m):  # second order: far closer at the same step count
        assert error(fn, 50) < euler_50 / 10
        assert error(fn, 200) < 1e-3


@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE", "DDIM"])
def test_stochastic_samplers_sample_the_data_distribution(ns, name):
    """Started from the noised marginal N(MU, STD^2 + sigma_max^2), ancestral/SDE samplers with the
    exact denoiser approach the data distribution N(MU, STD^2) as the step count grows."""
    shape = (4, 32, 32, 4)
    kwargs = {"eta": 1.0} if name == "DDIM" else {}
    stds = []
    for steps in (10, 100):
        sigmas = S.karras(ns, steps)
        rng = np.random.default_rng(5)
        x = (MU + rng.standard_normal(shape) * math.sqrt(STD**2 + sigmas[0] ** 2)).astype(np.float32)
        noise = lambda: mx.array(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
        out = np.array(K.sampler_by_name(name).function(GaussianDenoiser(), mx.array(x), sigmas, noise=noise, **kwargs))
        assert abs(out.mean() - MU) < 0.02
        stds.append(out.std())
    assert abs(stds[1] - STD) < 0.025
    assert abs(stds[1] - STD) < abs(stds[0] - STD)


# ---------------------------------------------------------------------------------------------
# progress and cancellation


def test_callback_reports_every_step():
    steps = []
    out = K.sample_heun(GaussianDenoiser(), mx.array(start()), SIGMAS, callback=steps.append)
    assert [(s.step, s.total) for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [s.sigma for s in steps] == list(SIGMAS[1:])
    np.testing.assert_array_equal(np.array(steps[-1].x), np.array(out))
    # the first report carries the model's x0 prediction at the starting sigma
    assert_close(np.array(steps[0].denoised), gaussian_denoiser_np(start().astype(np.float64), SIGMAS[0]))


def test_cancel_stops_within_one_step():
    denoiser = GaussianDenoiser()
    done = []
    with pytest.raises(K.Cancelled):
        K.sample_dpmpp_2m(denoiser, mx.array(start()), SIGMAS, callback=done.append, cancel=lambda: len(done) >= 2)
    assert len(done) == 2 and len(denoiser.calls) == 2


def test_cancel_before_the_first_step():
    denoiser = GaussianDenoiser()
    with pytest.raises(K.Cancelled, match="before step 1 of 4"):
        K.sample_euler_ancestral(denoiser, mx.array(start()), SIGMAS, noise=RecordedNoise(3), cancel=lambda: True)
    assert denoiser.calls == []


# ---------------------------------------------------------------------------------------------
# registry


def test_sampler_by_name():
    assert K.sampler_by_name("euler a").function is K.sample_euler_ancestral
    assert K.sampler_by_name("DPM++ 2M").default_schedule is S.karras
    assert K.sampler_by_name("k_dpmpp_2m").name == "DPM++ 2M"
    assert K.sampler_by_name("DPM++ SDE").model_calls_per_step == 2
    assert K.sampler_by_name("DPM++ 2M SDE").default_schedule is S.exponential
    assert K.sampler_by_name("Euler").default_schedule is S.uniform
    assert K.sampler_by_name("DDIM").timesteps == "discrete"
    assert K.sampler_by_name("LCM").timesteps == "lcm"
    assert K.sampler_by_name("unipc").name == "UniPC" and K.sampler_by_name("k_dpm_ad").name == "DPM adaptive"
    with pytest.raises(ValueError) as error:
        K.sampler_by_name("Euler b")
    assert "'Euler b'" in str(error.value)
    for info in K.SAMPLERS:
        assert info.name in str(error.value)


def test_default_schedule_name_is_the_a1111_label_or_none():
    names = {info.name: info.default_schedule_name for info in K.SAMPLERS}
    assert names["DPM++ 2M"] == "Karras" and names["DPM++ 2M SDE"] == "Exponential" and names["Euler a"] == "Uniform"
    assert names["DDIM"] is None and names["LCM"] is None  # their own timesteps, no A1111 schedule label


def test_split_combined_names():
    assert K.split_sampler_name("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert K.split_sampler_name("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert K.split_sampler_name("DPM++ 2M SDE Heun Karras") == ("DPM++ 2M SDE Heun", "Karras")
    assert K.split_sampler_name("dpm++ sde karras") == ("DPM++ SDE", "Karras")
    assert K.split_sampler_name("Euler a") == ("Euler a", "Automatic")
    assert K.split_sampler_name("DPM++ 2M SDE Heun") == ("DPM++ 2M SDE Heun", "Automatic")
    assert K.split_sampler_name("Euler SGM Uniform") == ("Euler", "SGM Uniform")
    assert K.split_sampler_name("DPM2 a Karras") == ("DPM2 a", "Karras")
    assert K.split_sampler_name("DPM++ 3M SDE Exponential") == ("DPM++ 3M SDE", "Exponential")
    assert K.split_sampler_name("Euler b Karras") == ("Euler b", "Karras")  # not ours: split, returned as written
    assert K.split_sampler_name("UniPC") == ("UniPC", "Automatic")


def test_sigmas_for_resolves_automatic(ns):
    np.testing.assert_array_equal(K.sigmas_for("DPM++ 2M", "Automatic", 20, ns), S.karras(ns, 20))
    np.testing.assert_array_equal(K.sigmas_for("Euler a", "automatic", 20, ns), S.uniform(ns, 20))
    np.testing.assert_array_equal(K.sigmas_for("DDIM", "Automatic", 20, ns), S.ddim(ns, 20))
    np.testing.assert_array_equal(K.sigmas_for("LCM", "Automatic", 4, ns), S.lcm(ns, 4))
    np.testing.assert_array_equal(K.sigmas_for("Euler", "Karras", 7, ns), S.karras(ns, 7))


# ---------------------------------------------------------------------------------------------
# scheduler-level parity with diffusers on a fake deterministic model


NS = S.NoiseSchedule.from_config()


def fake_model_np(x, t):
    """A stand-in UNet: the optimal epsilon for Gaussian data (so samples stay at unit scale) plus a
    smooth nonlinear term in the scaled input and t. x is the UNet input x_t (DDPM frame)."""
    a = 1.0 / (1.0 + float(NS.t_to_sigma(t)) ** 2)  # alphas_cumprod at (fractional) t
    optimal = math.sqrt(1 - a) * (x - math.sqrt(a) * MU) / (a * STD**2 + 1 - a)
    return optimal + 0.1 * np.tanh(1.3 * x + 0.2) * np.cos(t / 310.0) + 0.05 * np.sin(t / 170.0 + x)


def fake_unet_mx(x_in, t, context):
    t = float(t[0])  # one timestep per call
    a = 1.0 / (1.0 + float(NS.t_to_sigma(t)) ** 2)
    optimal = (x_in - math.sqrt(a) * MU) * (math.sqrt(1 - a) / (a * STD**2 + 1 - a))
    return optimal + 0.1 * mx.tanh(1.3 * x_in + 0.2) * math.cos(t / 310.0) + 0.05 * mx.sin(t / 170.0 + x_in)


PARITY_CASES = [
    ("Euler", "Automatic", 12, "epsilon"),
    ("Euler", "Karras", 9, "epsilon"),
    ("Euler", "SGM Uniform", 4, "epsilon"),
    ("Euler", "Simple", 8, "v_prediction"),
    ("Euler", "Exponential", 7, "v_prediction"),
    ("Heun", "Automatic", 8, "epsilon"),
    ("Heun", "Karras", 6, "v_prediction"),
    ("Euler a", "Automatic", 10, "epsilon"),
    ("Euler a", "SGM Uniform", 4, "epsilon"),
    ("DPM++ 2M", "Automatic", 10, "epsilon"),
    ("DPM++ 2M", "Automatic", 16, "v_prediction"),
    ("DPM++ 2M", "Exponential", 9, "epsilon"),
    ("DPM++ 2M", "Uniform", 9, "epsilon"),
    ("DPM++ 2M SDE", "Automatic", 10, "epsilon"),
    ("DPM++ 2M SDE Heun", "Karras", 10, "epsilon"),
    ("DDIM", "Automatic", 10, "epsilon"),
    ("DDIM", "Automatic", 10, "v_prediction"),
    ("DDIM", "Karras", 6, "epsilon"),
    ("LCM", "Automatic", 4, "epsilon"),
]


def run_diffusers(match, z_nchw, draws, eta):
    import torch
    from diffusers import DDIMScheduler

    from reference.schedulers import scheduler_noise

    scheduler = match.make()
    scheduler.set_timesteps(match.steps)
    pending = list(draws)

    def draw(shape):
        return torch.from_numpy(pending.pop(0)) if pending else torch.zeros(shape)

    latents = torch.from_numpy(z_nchw) * scheduler.init_noise_sigma
    kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    with scheduler_noise(draw):
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            output = fake_model_np(model_input.numpy().astype(np.float64), float(t))
            output = torch.from_numpy(output.astype(np.float32))
            latents = scheduler.step(output, t, latents, **kwargs).prev_sample
    return latents.numpy(), [float(t) for t in scheduler.timesteps]


@pytest.mark.parametrize("sampler,schedule,steps,prediction", PARITY_CASES)
def test_parity_with_diffusers_schedulers(sampler, schedule, steps, prediction):
    from reference.schedulers import diffusers_scheduler

    match = diffusers_scheduler(sampler, schedule, steps, prediction_type=prediction)
    info = K.sampler_by_name(sampler)
    ns = S.NoiseSchedule.from_config()
    z = np.random.default_rng(11).standard_normal((2, 6, 5, 4)).astype(np.float32)  # NHWC
    eta = 1.0 if (sampler, schedule, prediction) == ("DDIM", "Automatic", "epsilon") else 0.0

    rng = np.random.default_rng(12)
    draws_nhwc: list[np.ndarray] = []

    def noise():
        draws_nhwc.append(rng.standard_normal(z.shape).astype(np.float32))
        return mx.array(draws_nhwc[-1])

    timesteps_seen: list[float] = []

    def unet(x_in, t, context):
        timesteps_seen.append(float(t[0]))
        return fake_unet_mx(x_in, t, context)

    cond = Conditioning(context=mx.zeros((2, 1, 1)), cfg_scale=1.0)
    denoiser = Denoiser(unet, ns, cond, prediction_type=prediction, timesteps=match.timesteps)
    x = mx.array(z) * match.initial_noise_scale
    kwargs = {"eta": eta} if sampler == "DDIM" else {}
    ours = np.array(info.function(denoiser, x, match.sigmas, noise=noise, **kwargs))

    draws_nchw = [d.transpose(0, 3, 1, 2) for d in draws_nhwc]
    theirs, their_timesteps = run_diffusers(match, z.transpose(0, 3, 1, 2), draws_nchw, eta)
    np.testing.assert_allclose(timesteps_seen, their_timesteps, atol=2e-3)
    err = np.abs(ours - theirs.transpose(0, 2, 3, 1)).max()
    assert np.abs(theirs).max() < 5  # unit-scale latents
    assert err < 2e-5, f"max abs error {err:.2e}"


KDIFFUSION_ONLY = {
    "DPM++ 2S a", "DPM++ 3M SDE", "LMS", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "PLMS", "UniPC",
    "DDIM CFG++",
}


def native_schedule(match):
    """Sigmas and timesteps of the native (unpinned) diffusers scheduler of a match."""
    import torch

    scheduler = match.scheduler_class(**match.config)
    scheduler.set_timesteps(match.steps)
    timesteps = torch.unique_consecutive(scheduler.timesteps).double().numpy()  # Heun repeats them
    if not hasattr(scheduler, "sigmas"):  # DDIM, LCM: sigmas of their integer timesteps
        sigmas = NS.sigmas[timesteps.astype(int)]
        return np.append(sigmas, match.sigmas[-1]), timesteps
    return torch.unique_consecutive(scheduler.sigmas).double().numpy(), timesteps


@pytest.mark.parametrize("steps", [4, 10])
def test_reference_mapping_says_truly_where_diffusers_matches(steps):
    """`exact` must hold exactly when the native diffusers scheduler gives our sigmas and timesteps."""
    from reference.schedulers import diffusers_scheduler

    checked = 0
    for info in K.SAMPLERS:
        for schedule in S.SCHEDULES:
            match = diffusers_scheduler(info.name, schedule.name, steps)
            if match.scheduler_class is None or info.name == "DPM++ SDE":  # no equivalent / Brownian noise
                # samplers added after the reference mapping: checked against k-diffusion instead
                assert not match.exact and (match.notes or info.name in KDIFFUSION_ONLY)
                continue
            sigmas, timesteps = native_schedule(match)
            same = (
                sigmas.shape == match.sigmas.shape and np.allclose(sigmas, match.sigmas, rtol=2e-5, atol=0)
                and np.allclose(timesteps, match.unet_timesteps, atol=2e-3)
            )
            assert same == match.exact, (info.name, schedule.name, match.notes, sigmas, timesteps)
            assert match.exact or match.notes
            checked += 1
    assert checked >= 50


# ---------------------------------------------------------------------------------------------
# the samplers with no k-diffusion function: PLMS, Restart (A1111's own code), and coverage


def test_plms_against_ldms_ddpm_frame_update():
    """A1111's PLMS (LDM's): pseudo improved Euler, then Adams-Bashforth of orders 2, 3, 4 on eps."""
    sigmas = np.array([8.0, 4.0, 2.5, 1.4, 0.9, 0.5, 0.2, 0.03])
    alpha = lambda s: 1 / (1 + s**2)  # noqa: E731
    x = start().astype(np.float64) / math.sqrt(1 + sigmas[0] ** 2)  # DDPM frame
    eps_of = lambda x_t, s: (x_t * math.sqrt(1 + s**2) - gaussian_denoiser_np(x_t * math.sqrt(1 + s**2), s)) / s  # noqa: E731

    def x_prev(x_t, e, s, sn):
        a, a_prev = alpha(s), alpha(sn)
        x0 = (x_t - math.sqrt(1 - a) * e) / math.sqrt(a)
        return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e

    old = []
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        e = eps_of(x, s)
        if not old:
            e_prime = (e + eps_of(x_prev(x, e, s, sn), sn)) / 2
        elif len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = x_prev(x, e_prime, s, sn)
        old = (old + [e])[-3:]
    denoiser = GaussianDenoiser()
    ours = np.array(K.sample_plms(denoiser, mx.array(start()), sigmas))
    assert_close(ours, x)
    assert len(denoiser.calls) == len(sigmas)  # one extra call on the first step


def test_restart_below_20_steps_is_heun():
    sigmas = S.karras(S.NoiseSchedule.from_config(), 12)
    assert_close(run(K.sample_restart, start(), sigmas), run(K.sample_heun, start(), sigmas))


@pytest.mark.parametrize("steps,main_steps,restart_steps,times", [(20, 11, 9, 1), (36, 18, 9, 2), (40, 20, 10, 2)])
def test_restart_plan_as_a1111(ns, steps, main_steps, restart_steps, times):
    sigmas = S.karras(ns, steps)
    main, pairs = K.restart_segments([float(s) for s in sigmas])
    np.testing.assert_allclose(main, S.karras_between(main_steps, sigmas[-2], sigmas[0]))
    assert len(pairs) == main_steps + restart_steps * times
    low = int(np.abs(np.array(main) - 0.1).argmin())
    high = int(np.abs(np.array(main) - 2.0).argmin())
    jumps = [(a, b) for (_, a), (b, _) in zip(pairs, pairs[1:]) if b > a]
    assert jumps == [(main[low], main[high])] * times  # back up from the step nearest 0.1 to the one nearest 2
    noise = RecordedNoise(times)
    run(K.sample_restart, start(), sigmas, noise=noise)
    assert noise.used == times


def test_dpm_fast_and_adaptive_need_two_positive_sigmas(ns):
    with pytest.raises(ValueError, match="DPM fast needs two positive sigmas"):
        K.sigmas_for("DPM fast", "Karras", 1, ns)
    assert len(K.sigmas_for("DPM fast", "Automatic", 1, ns)) == 2  # its own span: sigma_max -> sigma_min


def test_discarded_penultimate_sigma(ns):
    sigmas = K.sigmas_for("DPM2", "Karras", 10, ns)
    full = S.karras(ns, 11)
    np.testing.assert_array_equal(sigmas, np.append(full[:-2], 0.0))


FAMILIES = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon", "sdxl-refiner": "epsilon"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_sampler_with_every_schedule_runs_on_every_family(family):
    """All 20 samplers x 12 schedules through the real Denoiser (the family's prediction type, CFG) on
    a stand-in UNet, 3 steps: finite, unit-scale latents out, and the step reports add up."""
    z = np.random.default_rng(2).standard_normal((1, 4, 4, 4)).astype(np.float32)
    cond = Conditioning(context=mx.zeros((1, 1, 1)), negative_context=mx.ones((1, 1, 1)), cfg_scale=3.0)
    for info in K.SAMPLERS:
        denoiser = Denoiser(fake_unet_mx, NS, cond, prediction_type=FAMILIES[family], timesteps=info.timesteps)
        for schedule in S.SCHEDULES:
            sigmas = K.sigmas_for(info.name, schedule.name, 3, NS, sdxl=family.startswith("sdxl"))
            rng = np.random.default_rng(4)
            steps = []
            out = np.array(info.function(
                denoiser, mx.array(z * sigmas[0]), sigmas, callback=steps.append,
                noise=lambda: mx.array(rng.standard_normal(z.shape).astype(np.float32)),
            ))
            assert np.isfinite(out).all() and np.abs(out).max() < 20, (info.name, schedule.name)
            assert steps and steps[-1].step == len(steps), (info.name, schedule.name)


class TwoPredictions:
    """A guided denoiser: the Gaussian denoiser for the positive prompt, a shifted one for the negative."""

    cfg_scale = 7.0

    def predictions(self, x, sigma):
        positive = GaussianDenoiser()(x, sigma)
        return positive - 0.2 * sigma / (1 + sigma), positive


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_cfgpp_against_a1111s_ddpm_frame_update(eta):
    """A1111's ddim_cfgpp: pred_x0 from the CFG noise at scale/12.5, direction from the unconditional noise."""
    sigmas = np.array([8.0, 2.5, 0.9, 0.2, 0.03])
    noise = RecordedNoise(4)
    draws = iter(noise.draws)
    alpha = lambda s: 1 / (1 + s**2)  # noqa: E731
    x = start().astype(np.float64) * math.sqrt(alpha(sigmas[0]))  # DDPM frame
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        a_t, a_prev = alpha(s), alpha(sn)
        x_k = x / math.sqrt(a_t)
        positive = gaussian_denoiser_np(x_k, s)
        negative = positive - 0.2 * s / (1 + s)
        eps_pos, eps_neg = (x_k - positive) / s, (x_k - negative) / s
        e_t = eps_neg + (eps_pos - eps_neg) * (7.0 / 12.5)
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma_t**2) * eps_neg
        if eta:
            x = x + sigma_t * next(draws)
    ours = np.array(K.sample_ddim_cfgpp(TwoPredictions(), mx.array(start()), sigmas, noise=noise, eta=eta))
    assert_close(ours, x)


def test_infotext_writes_and_reads_back_every_a1111_name():
    from mlx_sd.infotext import format_infotext, request_from_infotext
    from mlx_sd.request import GenerationRequest

    for info in K.SAMPLERS:
        for schedule in S.SCHEDULES:
            text = format_infotext(GenerationRequest(prompt="a", sampler=info.name, schedule=schedule.name), 1)
            assert f"Sampler: {info.name}, Schedule type: {schedule.name}," in text
            back = request_from_infotext(text)
            assert (back.sampler, back.schedule) == (info.name, schedule.name)
    for alias in ("k_dpm_2_a", "k_dpmpp_3m_sde", "ddim_cfgpp", "unipc", "plms", "restart", "k_lms"):
        assert K.sampler_by_name(alias).name in {info.name for info in K.SAMPLERS}
    # pre-1.9 combined names of the new samplers
    assert K.split_sampler_name("DPM2 a Karras") == ("DPM2 a", "Karras")
    assert K.split_sampler_name("LMS Karras") == ("LMS", "Karras")
    assert K.split_sampler_name("DPM++ 2S a Karras") == ("DPM++ 2S a", "Karras")
    assert K.split_sampler_name("DDIM CFG++") == ("DDIM CFG++", "Automatic")


def test_a_schedule_given_apart_wins_over_the_one_in_a_combined_name():
    assert K.sampler_and_schedule("DPM++ 2M Karras", "Automatic") == ("DPM++ 2M", "Karras")
    assert K.sampler_and_schedule("DPM++ 2M Karras", "automatic ") == ("DPM++ 2M", "Karras")
    assert K.sampler_and_schedule("DPM++ 2M Karras", "Exponential") == ("DPM++ 2M", "Exponential")
    assert K.sampler_and_schedule("euler a", "") == ("Euler a", "Automatic")
