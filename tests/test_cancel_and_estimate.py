"""Cancel takes effect inside a step, and a request too large for the machine is refused before it runs."""

from __future__ import annotations

import threading
import time

import pytest

import mlx_sd.generation as generation
from cli.main import main
from mlx_sd import GenerationRequest, Pipeline
from mlx_sd.estimate import TooLargeError
from mlx_sd.resources import resource
from mlx_sd.samplers import Cancelled


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return Pipeline.load(resource("demo"))


def test_a_cancel_mid_step_takes_effect_before_the_step_ends(demo):
    """At 1024x1024 one step of the demo model takes tens of seconds (its 256x256 latents make 65536-token
    self-attention); a cancel one second in must stop it within about a second."""
    request = GenerationRequest(prompt="a cube", width=1024, height=1024, steps=1, seed=1)
    pressed = threading.Event()
    pressed_at: list[float] = []
    progress = []
    timer = threading.Timer(1.0, lambda: pressed_at.append(time.perf_counter()) or pressed.set())
    timer.start()
    try:
        with pytest.raises(Cancelled):
            demo.generate(request, on_progress=progress.append, cancel=pressed.is_set)
    finally:
        timer.cancel()
    latency = time.perf_counter() - pressed_at[0]
    print(f"\ncancel latency mid-step at 1024x1024: {latency:.3f} s (step estimate {demo.estimate(request).seconds:.0f} s)")
    assert progress == []  # still inside the first step
    assert latency < 1.0
    assert demo.boundary.cancel is None  # the callback does not outlive its run


def test_an_estimate_grows_with_the_size_and_tiling_bounds_the_vae(demo):
    small, large = (demo.estimate(GenerationRequest(prompt="x", width=s, height=s)) for s in (256, 1024))
    assert 0 < small.peak_bytes < large.peak_bytes and 0 < small.seconds < large.seconds
    untiled = demo.estimate(GenerationRequest(prompt="x", width=1024, height=1024, vae_tiling=False))
    assert untiled.vae_bytes > 10 * large.vae_bytes  # the demo's VAE tiles at 64 pixels by default


def test_a_request_beyond_the_machines_memory_is_refused_before_any_model_runs(demo, monkeypatch):
    monkeypatch.setattr(generation, "machine_memory", lambda: 1 << 30)
    ran = []
    monkeypatch.setattr(demo.unet, "__call__", lambda *a, **k: ran.append(1))
    with pytest.raises(TooLargeError, match=r"needs about .* GB .* this machine has 1\.0 GB: .*smaller size"):
        demo.generate(GenerationRequest(prompt="a cube", width=2048, height=2048, steps=1))
    assert ran == []


def test_the_cli_refuses_it_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(generation, "machine_memory", lambda: 1 << 30)
    code = main(["generate", "--model", "demo", "--width", "2048", "--height", "2048", "--steps", "1",
                 "--output", str(tmp_path / "out"), "a cube"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and "smaller size" in errors[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written
