"""Our samplers against the code A1111 calls, k-diffusion's sampling.py (PyPI k-diffusion, installed
with --no-deps: see the README's test command), both driving the same deterministic toy denoiser from
the same start with the same noise draws, step by step at float32 tolerance; UniPC, which A1111 takes
from UniPC's authors rather than k-diffusion, against diffusers' UniPCMultistepScheduler set up as
A1111 runs it (bh1, order 3, lower order at the end). Run with -s to print the table of max abs errors
that the README quotes."""

import importlib
import inspect
import math
import sys
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from mlx_sd import samplers as K  # noqa: E402
from mlx_sd import schedules as S  # noqa: E402

# diffusers' schedulers build numpy arrays from torch tensors the numpy-2 way it deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
MU, STD = 0.3, 0.5
SHAPE = (2, 4, 5, 3)  # NHWC for ours; k-diffusion gets the same array (layout does not matter here)
NS = S.NoiseSchedule.from_config()
ERRORS: dict[str, float] = {}


def k_sampling():
    """k_diffusion.sampling without the package's __init__, which imports training-only dependencies
    (torchvision, skimage, ...): a stand-in package holding only the one helper sampling.py uses."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion torchsde torchdiffeq trampoline)")
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(Path(spec.origin).parent)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, ndim: x[(...,) + (None,) * (ndim - x.ndim)]
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    return importlib.import_module("k_diffusion.sampling")


def toy_mx(x, sigma: float):
    """The exact denoiser of N(MU, STD^2) data plus a smooth nonlinear term, so errors do not cancel."""
    return (x * STD**2 + sigma**2 * MU) / (STD**2 + sigma**2) + 0.1 * mx.tanh(x) * (sigma / (1 + sigma))


def toy_torch(x, sigma):
    sigma = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
    return (x * STD**2 + sigma**2 * MU) / (STD**2 + sigma**2) + 0.1 * torch.tanh(x) * (sigma / (1 + sigma))


class Draws:
    """The same standard-normal draws, in call order, to both samplers."""

    def __init__(self, seed: int = 3):
        self.rng = np.random.default_rng(seed)
        self.draws: list[np.ndarray] = []
        self.used = 0

    def next(self) -> np.ndarray:
        if self.used == len(self.draws):
            self.draws.append(self.rng.standard_normal(SHAPE).astype(np.float32))
        self.used += 1
        return self.draws[self.used - 1]

    def ours(self, sigma, sigma_next):
        return mx.array(self.next())

    def theirs(self, sigma, sigma_next):
        return torch.from_numpy(self.next())


def compare(name: str, ours_fn, theirs_fn, sigmas: np.ndarray, **kwargs) -> float:
    x = (np.random.default_rng(0).standard_normal(SHAPE) * sigmas[0]).astype(np.float32)
    ours_draws, their_draws = Draws(), Draws()
    ours = np.array(ours_fn(toy_mx, mx.array(x), sigmas, noise_sampler=ours_draws.ours, **kwargs))
    theirs = theirs_fn(toy_torch, torch.from_numpy(x), their_draws)
    assert ours_draws.used in (0, their_draws.used), "the two draw a different amount of noise"
    error = float(np.abs(ours - theirs.numpy()).max())
    ERRORS[name] = max(error, ERRORS.get(name, 0.0))
    return error


# (our label, k-diffusion function name, extra k-diffusion arguments)
SIGMA_SAMPLERS = [
    ("Euler", "sample_euler", {}),
    ("Euler a", "sample_euler_ancestral", {}),
    ("Heun", "sample_heun", {}),
    ("LMS", "sample_lms", {}),
    ("DPM2", "sample_dpm_2", {}),
    ("DPM2 a", "sample_dpm_2_ancestral", {}),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", {}),
    ("DPM++ 2M", "sample_dpmpp_2m", {}),
    ("DPM++ SDE", "sample_dpmpp_sde", {}),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", {}),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", {}),
]
SCHEDULE_CASES = [("Automatic", 12), ("Karras", 7), ("Exponential", 9), ("Beta", 5), ("Align Your Steps", 10)]


@pytest.mark.parametrize("schedule,steps", SCHEDULE_CASES)
@pytest.mark.parametrize("name,function,extra", SIGMA_SAMPLERS, ids=[c[0] for c in SIGMA_SAMPLERS])
def test_sampler_matches_k_diffusion(name, function, extra, schedule, steps):
    ks = k_sampling()
    info = K.sampler_by_name(name)
    sigmas = K.sigmas_for(name, schedule, steps, NS)

    def theirs(model, x, draws):
        kwargs = dict(extra)
        if "noise_sampler" in inspect.signature(getattr(ks, function)).parameters:
            kwargs["noise_sampler"] = draws.theirs
        return getattr(ks, function)(model, x, torch.from_numpy(sigmas.astype(np.float32)), disable=True, **kwargs)

    error = compare(name, info.function, theirs, sigmas)
    assert error < 5e-5 * max(1.0, float(sigmas[0])), f"{name} / {schedule}: max abs error {error:.2e}"


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 12])
def test_dpm_fast_matches_k_diffusion(steps):
    ks = k_sampling()
    sigmas = K.sigmas_for("DPM fast", "Automatic", steps, NS)

    def theirs(model, x, draws):
        return ks.sample_dpm_fast(
            model, x, float(sigmas[-1]), float(sigmas[0]), steps, disable=True, eta=1.0, noise_sampler=draws.theirs
        )

    error = compare("DPM fast", K.sample_dpm_fast, theirs, sigmas)
    assert error < 5e-4, f"max abs error {error:.2e}"


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_adaptive_matches_k_diffusion(eta):
    ks = k_sampling()
    sigmas = K.sigmas_for("DPM adaptive", "Automatic", 20, NS)

    def theirs(model, x, draws):
        return ks.sample_dpm_adaptive(
            model, x, float(sigmas[-1]), float(sigmas[0]), disable=True, eta=eta, noise_sampler=draws.theirs
        )

    error = compare("DPM adaptive", K.sample_dpm_adaptive, theirs, sigmas, eta=eta)
    assert error < 5e-4, f"max abs error {error:.2e}"


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_unipc_matches_diffusers(steps):
    from diffusers import UniPCMultistepScheduler

    sigmas = K.sigmas_for("UniPC", "Automatic", steps, NS)
    x = (np.random.default_rng(0).standard_normal(SHAPE) * sigmas[0]).astype(np.float32)
    ours = np.array(K.sample_unipc(toy_mx, mx.array(x), sigmas))

    scheduler = UniPCMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=3, solver_type="bh1",
        lower_order_final=True, final_sigmas_type="sigma_min",
    )
    scheduler.set_timesteps(steps)
    # pinned to our schedule (A1111's time-uniform one); diffusers takes no custom sigmas for UniPC
    scheduler.sigmas = torch.from_numpy(sigmas.astype(np.float32))
    scheduler.timesteps = torch.from_numpy(NS.sigma_to_t(sigmas[:-1]))
    latent = torch.from_numpy(x / math.sqrt(1 + sigmas[0] ** 2))  # diffusers works in the DDPM frame
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(sigmas[i])
        x_k = latent * math.sqrt(1 + sigma**2)
        eps = (x_k - toy_torch(x_k, sigma)) / sigma
        latent = scheduler.step(eps, t, latent).prev_sample
    error = float(np.abs(ours - latent.numpy()).max())
    ERRORS["UniPC"] = max(error, ERRORS.get("UniPC", 0.0))
    assert error < 5e-5, f"max abs error {error:.2e}"


@pytest.mark.parametrize("name,rho", [("Karras", 7.0), ("Exponential", None), ("Polyexponential", 1.0)])
def test_schedules_match_k_diffusion(name, rho):
    ks = k_sampling()
    theirs_fn = {"Karras": ks.get_sigmas_karras, "Exponential": ks.get_sigmas_exponential,
                 "Polyexponential": ks.get_sigmas_polyexponential}[name]
    for steps in (1, 4, 10, 50):
        args = (steps, NS.sigma_min, NS.sigma_max) + ((rho,) if rho else ())
        ours = S.schedule_by_name(name).sigmas(NS, steps)
        np.testing.assert_allclose(ours, theirs_fn(*args).double().numpy(), atol=1e-6 * NS.sigma_max, rtol=0)


def test_print_error_table():
    """Prints the errors measured above (run the file with -s); passes once they were measured."""
    if not ERRORS:
        pytest.skip("run with the comparisons above")
    for name, error in sorted(ERRORS.items()):
        print(f"{name:20s} {error:.1e}")
    assert all(math.isfinite(e) for e in ERRORS.values())
