"""The SDXL refiner (mlx_sd.refiner, --refiner): a base + refiner run equals running the base model
over the first k sigmas and the refiner over the rest with the same noise stream; A1111's switch call;
infotext written and read back; low-memory mode releases the base's UNet before the refiner loads and
brings it back; a refiner of another family, or for a model that is not SDXL, is refused in one line."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from test_generate_models import levels_apart, model_folders, pipes, request  # noqa: F401

from mlx_sd import generation
from mlx_sd.image_prep import to_image
from mlx_sd.infotext import parse_infotext, request_from_infotext
from mlx_sd.noise import ImageNoise
from mlx_sd.pipeline import Pipeline
from mlx_sd.refiner import switch_call
from mlx_sd.request import RequestError
from mlx_sd.samplers import sampler_by_name


@pytest.fixture
def base(model_folders) -> Pipeline:
    """A fresh SDXL base pipeline: these tests load refiners into it and release its UNet."""
    return Pipeline.load(model_folders["sdxl"])


def refined(model_folders, **changes):
    return request(refiner=str(model_folders["sdxl-refiner"]), **changes)


def test_switch_call_is_a1111s() -> None:
    assert [switch_call(20, 0.8), switch_call(3, 0.5), switch_call(10, 0.01), switch_call(4, 0.99)] == [16, 2, 1, 4]


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_base_then_refiner_equals_the_two_halves_run_by_hand(base, model_folders, sampler: str) -> None:
    req = refined(model_folders, sampler=sampler, steps=4, refiner_switch=0.5, cfg_scale=5.0)
    result = base.generate(req)

    p = generation.plan(base.config, req)
    refiner = base.refiner
    assert refiner is not None and refiner.config.family == "sdxl-refiner"
    k = switch_call(4, 0.5)
    timesteps = p.sampler.timesteps
    base_denoiser = generation._denoisers(base, generation._conditionings(base, p.request, None), timesteps)[0][1]
    refiner_denoiser = generation._denoisers(refiner, generation._conditionings(refiner, p.request, None), timesteps)[0][1]
    noise = ImageNoise([7], (8, 8, 4))
    function = sampler_by_name(sampler).function
    x = noise.initial() * float(p.sigmas[0])
    x = function(base_denoiser, x, p.sigmas[: k + 1], noise=noise)
    x = function(refiner_denoiser, x, p.sigmas[k:], noise=noise)
    by_hand = to_image(np.array(base.codec.decode(x))[0])
    assert levels_apart(result.images[0], by_hand) == 0
    # and the refiner changed the picture
    assert levels_apart(result.images[0], base.generate(dataclasses.replace(req, refiner="")).images[0]) > 0


def test_infotext_names_the_refiner_and_reads_it_back(base, model_folders) -> None:
    req = refined(model_folders, refiner_switch=0.6)
    text = base.generate(req).infotexts[0]
    params = parse_infotext(text).params
    assert params["Refiner"] == "sdxl-refiner" and params["Refiner switch at"] == "0.6"
    back = request_from_infotext(text)
    assert (back.refiner, back.refiner_switch) == ("sdxl-refiner", 0.6)
    a1111 = "a\nSteps: 20, Seed: 1, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8"
    assert request_from_infotext(a1111).refiner == "sd_xl_refiner_1.0"
    assert request_from_infotext("a\nSteps: 20, Seed: 1, Size: 64x64", req).refiner == ""


def test_low_memory_releases_the_base_unet_before_the_refiner_loads_and_restores_it(base, model_folders) -> None:
    req = refined(model_folders, batch_count=2, refiner_switch=0.5)
    normal = base.generate(req)
    base.refiner = None
    loads = []
    real = Pipeline.load.__func__

    def load(cls, *args, **kwargs):
        loads.append(base.unet_released)  # was the base's UNet already released?
        return real(cls, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pipeline, "load", classmethod(load))
        low = base.generate(dataclasses.replace(req, low_memory=True))
    assert loads == [True, True]  # once per batch: the base comes back between them
    assert base.unet_released and base.refiner is not None
    assert [levels_apart(a, b) for a, b in zip(normal.images, low.images)] == [0, 0]
    plain = base.generate(dataclasses.replace(req, refiner="", batch_count=1))  # restores the UNet first
    assert not base.unet_released and base.refiner is None
    assert all(mx.all(mx.isfinite(p)).item() for p in [base.unet.conv_in.weight]) and plain.images


@pytest.mark.parametrize(
    ("model", "refiner", "message"),
    [
        ("sdxl", "sd1", "a model of the sdxl-refiner family; this one is sd1"),
        ("sdxl", "sdxl", "this one is sdxl"),
        ("sd1", "sdxl-refiner", "a refiner for an sdxl model; this model is sd1"),
        ("sdxl", "missing", "an sdxl-refiner model folder"),
    ],
)
def test_a_refiner_that_cannot_refine_this_model_is_refused(pipes, model_folders, model, refiner, message) -> None:
    folder = model_folders.get(refiner, model_folders["sd1"].parent / refiner)
    with pytest.raises(RequestError) as caught:
        generation.plan(pipes[model].config, request(refiner=str(folder)))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_cli_refiner_flag_runs_and_a_wrong_family_exits_2(capsys, model_folders, tmp_path) -> None:
    from cli.main import main
    from mlx_sd.image_metadata import read_infotext

    base = ["generate", "--model", str(model_folders["sdxl"]), "a cube", "--steps", "3", "--width", "64",
            "--height", "64", "--output", str(tmp_path)]
    assert main(base + ["--refiner", str(model_folders["sdxl-refiner"]), "--refiner-switch", "0.5"]) == 0
    (saved,) = capsys.readouterr().out.split()
    assert "Refiner switch at: 0.5" in read_infotext(saved)
    assert main(base + ["--refiner", str(model_folders["sd1"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlx-sd generate: error: refiner = ") and "sdxl-refiner family" in err[-1]
    assert len(list(tmp_path.iterdir())) == 1


def test_a_refiner_is_found_by_name_in_the_pipelines_library(base, model_folders, tmp_path) -> None:
    from mlx_sd.library import Library

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "my-refiner").symlink_to(model_folders["sdxl-refiner"], target_is_directory=True)
    base.library = Library(tmp_path)
    result = base.generate(request(refiner="my-refiner", refiner_switch=0.5))
    assert base.refiner.folder == tmp_path / "models" / "my-refiner"
    assert "Refiner: my-refiner" in result.infotexts[0]  # a model converted without a source name: its folder's
    with pytest.raises(RequestError) as caught:
        base.generate(request(refiner="my-refinr"))
    assert "closest: my-refiner" in str(caught.value)


def test_api_keys_become_the_refiner_fields() -> None:
    from server.schema import Txt2ImgRequest
    from server.translate import ServerOptions, a1111_request

    payload = Txt2ImgRequest(refiner_checkpoint="sd_xl_refiner_1.0", refiner_switch_at=0.7)
    req = a1111_request(payload, ServerOptions("demo")).request
    assert (req.refiner, req.refiner_switch) == ("sd_xl_refiner_1.0", 0.7)
    assert a1111_request(Txt2ImgRequest(refiner_checkpoint="None"), ServerOptions("demo")).request.refiner == ""


def test_the_memory_estimate_counts_the_refiners_weights(base, model_folders) -> None:
    """A refiner loads beside the base, so its files count; in low-memory mode it replaces the base's UNet."""
    from mlx_sd.model_library import folder_size

    size = folder_size(model_folders["sdxl-refiner"])
    plain, with_refiner = base.estimate(request()), base.estimate(refined(model_folders))
    assert with_refiner.weights_bytes - plain.weights_bytes == size
    low = dict(low_memory=True)
    low_plain, low_refined = base.estimate(request(**low)), base.estimate(refined(model_folders, **low))
    assert low_refined.weights_bytes - low_plain.weights_bytes == max(0, size - base.sizes[0]["unet"])
