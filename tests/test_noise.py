"""Seeded noise: Philox4x32-10 against the Random123 known-answer vectors, the generator against
torch's published CUDA values for seed 0, per-image seeding (seed + k), draw order and statistics."""

import numpy as np
import pytest

import mlx.core as mx
from mlx_sd.noise import ImageNoise, PhiloxGenerator, box_muller, image_seeds, latents_from_request, philox4x32

# Random123's kat_vectors for philox4x32 with 10 rounds: counter (4 words), key (2 words) -> output.
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]

# torch.manual_seed(0); torch.randn((3, 4), device="cuda") -- the values A1111's NV generator
# imitates (quoted in its rng_philox.py); CUDA computes the transform in float32, so a few ulps apart.
CUDA_SEED0 = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]


def test_philox_known_answers():
    counters = np.array([c for c, _, _ in KAT], dtype=np.uint32).T  # (4, 3)
    keys = np.array([k for _, k, _ in KAT], dtype=np.uint32).T  # (2, 3): one key per counter
    np.testing.assert_array_equal(philox4x32(counters, keys), np.array([o for _, _, o in KAT], dtype=np.uint32).T)
    # one key broadcast over many counters gives the same words as one at a time
    counter = np.array([[0, 1, 2], [0, 0, 0], [5, 6, 7], [0, 0, 0]], dtype=np.uint32)
    key = np.array([123, 4], dtype=np.uint32)
    one_by_one = [philox4x32(counter[:, i:i + 1], key)[:, 0] for i in range(3)]
    np.testing.assert_array_equal(philox4x32(counter, key), np.stack(one_by_one, axis=1))


def test_box_muller_extremes():
    words = np.array([0, 0xFFFFFFFF], dtype=np.uint32)
    # u = (a + 1/2) 2^-32, v = (b + 1/2) 2^-32 2pi: finite at both ends of the range
    out = box_muller(words, np.array([0x40000000, 0x40000000], dtype=np.uint32))
    np.testing.assert_allclose(out, [np.sqrt(-2 * np.log(2.0**-33)), np.sqrt(-2 * np.log1p(-(2.0**-33)))], rtol=1e-6)
    assert out.dtype == np.float32


def test_generator_reproduces_the_cuda_values_for_seed_0():
    np.testing.assert_allclose(PhiloxGenerator(0).randn((3, 4)), CUDA_SEED0, atol=1e-6, rtol=0)


def test_same_seed_same_noise_and_draws_advance():
    a, b = PhiloxGenerator(1234), PhiloxGenerator(1234)
    first = a.randn((4, 8, 8))
    np.testing.assert_array_equal(first, b.randn((4, 8, 8)))
    second = a.randn((4, 8, 8))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(second, b.randn((4, 8, 8)))


def test_different_seeds_differ_including_above_32_bits():
    draws = [PhiloxGenerator(s).randn((256,)) for s in (0, 1, 2**32, 2**32 + 1)]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert np.abs(draws[i] - draws[j]).max() > 1.0
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 2\\*\\*64 - 1, got -1"):
        PhiloxGenerator(-1)


def test_standard_normal_statistics():
    x = PhiloxGenerator(42).randn((1_000_000,)).astype(np.float64)
    assert abs(x.mean()) < 0.005 and abs(x.std() - 1) < 0.005
    assert abs(np.mean(np.abs(x) < 1) - 0.682689) < 0.002
    assert abs(np.mean(np.abs(x) < 2) - 0.954500) < 0.001
    assert abs(np.mean(x**3)) < 0.02 and abs(np.mean(x**4) - 3) < 0.03


def test_image_seeds():
    assert image_seeds(100, 3) == [100, 101, 102]
    assert image_seeds(100, 2, start=4) == [104, 105]


def test_batch_item_k_equals_a_single_image_with_seed_plus_k():
    batch = ImageNoise(image_seeds(77, 3), (6, 5, 4))
    initial, step = np.array(batch.initial()), np.array(batch())
    assert initial.shape == (3, 6, 5, 4) and initial.dtype == np.float32
    for k in range(3):
        single = ImageNoise([77 + k], (6, 5, 4))
        np.testing.assert_array_equal(initial[k], np.array(single.initial())[0])
        np.testing.assert_array_equal(step[k], np.array(single())[0])


def test_image_noise_is_a1111_nchw_order_moved_channels_last():
    noise = ImageNoise([5], (6, 5, 4))
    generator = PhiloxGenerator(5)
    np.testing.assert_array_equal(np.array(noise.initial())[0], generator.randn((4, 6, 5)).transpose(1, 2, 0))
    np.testing.assert_array_equal(np.array(noise())[0], generator.randn((4, 6, 5)).transpose(1, 2, 0))


def test_eta_noise_seed_delta_seeds_the_sampler_draws():
    noise = ImageNoise([5, 6], (2, 2, 4), eta_noise_seed_delta=31337)
    np.testing.assert_array_equal(np.array(noise.initial())[1], PhiloxGenerator(6).randn((4, 2, 2)).transpose(1, 2, 0))
    np.testing.assert_array_equal(np.array(noise())[1], PhiloxGenerator(6 + 31337).randn((4, 2, 2)).transpose(1, 2, 0))


def test_latents_from_request():
    nchw = np.random.default_rng(0).standard_normal((2, 4, 8, 6))
    out = latents_from_request(nchw)
    assert isinstance(out, mx.array) and out.dtype == mx.float32 and out.shape == (2, 8, 6, 4)
    np.testing.assert_allclose(np.array(out), nchw.transpose(0, 2, 3, 1), rtol=1e-6)
    message = r"latents must be \(batch, 4, height/8, width/8\) in NCHW layout, got shape \(2, 8, 6, 4\)"
    with pytest.raises(ValueError, match=message):
        latents_from_request(nchw.transpose(0, 2, 3, 1))


def test_image_noise_boundaries():
    with pytest.raises(ValueError, match="seeds is empty"):
        ImageNoise([], (8, 8, 4))
    with pytest.raises(ValueError, match=r"latent_shape must be \(height, width, channels\), got \(8, 8\)"):
        ImageNoise([1], (8, 8))
