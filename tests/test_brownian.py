"""A1111's Brownian-tree noise reproduced in NumPy (mlx_sd.brownian): torch's CPU randn, torchsde's
BrownianTree, and the SDE samplers driven by k-diffusion's BrownianTreeNoiseSampler against ours."""

import numpy as np
import pytest

import mlx.core as mx
from mlx_sd import samplers as K
from mlx_sd import schedules as S
from mlx_sd.brownian import BrownianNoise, BrownianTree, philox_randn, torch_cpu_randn
from mlx_sd.noise import PhiloxGenerator

torch = pytest.importorskip("torch")
torchsde = pytest.importorskip("torchsde")
NS = S.NoiseSchedule.from_config()
ULPS = 3e-7  # a few float32 ulps of unit-scale normals: torch's vectorised log/sin/cos approximate


@pytest.mark.parametrize("seed,shape", [(0, (64,)), (12345, (4, 8, 8)), (2**32 - 1, (1000,)), (7, (4, 16, 20))])
def test_torch_cpu_randn(seed, shape):
    theirs = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
    np.testing.assert_allclose(torch_cpu_randn(seed, shape), theirs, atol=2 * ULPS * 4, rtol=0)


def test_torch_cpu_randn_refuses_what_torch_draws_another_way():
    with pytest.raises(ValueError, match="fewer than 16"):
        torch_cpu_randn(1, (3, 5))


def test_philox_randn_is_the_nv_generators_first_draw():
    np.testing.assert_array_equal(philox_randn(5, (2, 8)), PhiloxGenerator(5).randn((2, 8)))


@pytest.mark.parametrize("seed", [1234, 2**40 + 3])
def test_tree_matches_torchsde(seed):
    sigmas = S.exponential(NS, 12).astype(np.float32)
    low, high = float(sigmas[-2]), float(sigmas[0])
    shape = (4, 6, 5)
    theirs = torchsde.BrownianTree(torch.tensor(low), torch.zeros(shape), torch.tensor(high), entropy=seed, tol=1e-6,
                                   pool_size=24)
    ours = BrownianTree(low, high, shape, seed)
    queries = [(float(a), float(b)) for a, b in zip(sigmas[1:-1], sigmas[:-2])]
    queries += [(low, high), (0.5, 0.7), (1.0, 1.0), (float(np.sqrt(sigmas[3] * sigmas[4])), float(sigmas[3]))]
    for a, b in queries:
        np.testing.assert_allclose(ours(a, b), theirs(a, b).numpy(), atol=8 * ULPS, rtol=0)


def k_sampling():
    from test_samplers_kdiffusion import k_sampling as load

    return load()


@pytest.mark.parametrize("name,function,extra", [
    ("DPM++ SDE", "sample_dpmpp_sde", {}),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", {}),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", {}),
])
@pytest.mark.parametrize("schedule,steps", [("Automatic", 10), ("Karras", 8)])
def test_sde_samplers_with_a1111s_brownian_noise(name, function, extra, schedule, steps):
    """k-diffusion's sampler with A1111's noise sampler (BrownianTreeNoiseSampler over the batch's
    seeds, on the CPU) against ours with BrownianNoise, on the toy denoiser of test_samplers_kdiffusion."""
    from test_samplers_kdiffusion import ERRORS, toy_mx, toy_torch

    ks = k_sampling()
    seeds = [1234, 1235]
    sigmas = K.sigmas_for(name, schedule, steps, NS)
    sigmas32 = torch.from_numpy(sigmas.astype(np.float32))
    z = np.random.default_rng(0).standard_normal((2, 4, 6, 5)).astype(np.float32)  # NCHW, as A1111
    x = torch.from_numpy(z) * sigmas32[0]
    sampler = ks.BrownianTreeNoiseSampler(x, sigmas32[sigmas32 > 0].min(), sigmas32.max(), seed=seeds)
    theirs = getattr(ks, function)(toy_torch, x, sigmas32, disable=True, noise_sampler=sampler, **extra).numpy()

    noise = BrownianNoise(seeds, sigmas, (6, 5, 4))
    x_ours = mx.array(z.transpose(0, 2, 3, 1)) * float(sigmas[0])
    ours = np.array(K.sampler_by_name(name).function(toy_mx, x_ours, sigmas, noise_sampler=noise))
    error = float(np.abs(ours.transpose(0, 3, 1, 2) - theirs).max())
    ERRORS[f"{name} (Brownian)"] = max(error, ERRORS.get(f"{name} (Brownian)", 0.0))
    assert error < 1e-4, f"max abs error {error:.2e}"


def test_one_step_schedules_build_a_tree_that_is_never_queried():
    noise = BrownianNoise([3], K.sigmas_for("DPM++ 2M SDE", "Automatic", 1, NS), (4, 4, 4))
    x = mx.ones((1, 4, 4, 4))
    out = K.sample_dpmpp_2m_sde(lambda x, s: x * 0.5, x, K.sigmas_for("DPM++ 2M SDE", "Automatic", 1, NS),
                                noise_sampler=noise)
    np.testing.assert_allclose(np.array(out), 0.5)
