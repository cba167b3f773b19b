"""Hires fix through the A1111 API: the webuiapi client's `enable_hr` keys, the upscaler lists, and
an upscaler given as a path refused (clients name only what the library holds)."""

from __future__ import annotations

import mlx.core as mx
import pytest
import requests
import webuiapi
from mlx.utils import tree_flatten

from mlx_sd.hires import LATENT_UPSCALE_MODES
from mlx_sd.infotext import request_from_infotext
from mlx_sd.upscalers import CompactConfig, SRVGGNetCompact
from server.app import ServerConfig
from server.schema import Txt2ImgRequest
from server.translate import ServerOptions, a1111_request
from server_support import RunningServer

SMALL = dict(width=64, height=64, steps=3, cfg_scale=7.0, seed=11)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    library = tmp_path_factory.mktemp("hires_library")
    (library / "upscalers").mkdir()
    network = SRVGGNetCompact(CompactConfig(features=4, convs=1, scale=2))
    mx.eval(network.parameters())
    weights = {k: (v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in tree_flatten(network.parameters())}
    mx.save_safetensors(str(library / "upscalers" / "tiny-x2.safetensors"), weights)
    server = RunningServer(ServerConfig(library=library))
    yield server
    server.stop()


@pytest.fixture
def api(served) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=served.config.port, sampler="Euler a", steps=3)


def test_webuiapi_hires_fix(api) -> None:
    result = api.txt2img(
        prompt="a lighthouse", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (nearest-exact)",
        hr_second_pass_steps=4, denoising_strength=0.5, hr_prompt="a lighthouse, detailed", **SMALL,
    )
    assert result.image.size == (96, 96) and result.info["not_applied"] == []
    assert result.info["denoising_strength"] == 0.5
    back = request_from_infotext(result.info["infotexts"][0])
    assert (back.hires_scale, back.hires_upscaler, back.hires_steps, back.hires_denoise) == (1.5, "Latent (nearest-exact)", 4, 0.5)
    assert back.hires_prompt == "a lighthouse, detailed"


def test_a_library_upscaler_model_and_a_resize(api) -> None:
    result = api.txt2img(prompt="a lighthouse", enable_hr=True, hr_upscaler="tiny-x2", hr_resize_x=128, hr_resize_y=96,
                         denoising_strength=0.3, **SMALL)
    assert result.image.size == (128, 96) and "Hires resize: 128x96" in result.info["infotexts"][0]
    assert "Hires upscaler: tiny-x2" in result.info["infotexts"][0]


def test_upscaler_lists(served) -> None:
    url = f"{served.url}/sdapi/v1"
    modes = requests.get(f"{url}/latent-upscale-modes", timeout=10).json()
    assert [mode["name"] for mode in modes] == list(LATENT_UPSCALE_MODES)
    names = [upscaler["name"] for upscaler in requests.get(f"{url}/upscalers", timeout=10).json()]
    assert names == ["None", "Lanczos", "Nearest", "tiny-x2"]


@pytest.mark.parametrize("upscaler, words", [
    ("../upscalers/tiny-x2.safetensors", "a name from /sdapi/v1/latent-upscale-modes"),
    ("tiny-x4", "'tiny-x4' is no upscaler model of the library (it has: tiny-x2)"),
])
def test_bad_hires_requests_are_4xx_with_the_reason(served, upscaler: str, words: str) -> None:
    body = {"prompt": "x", "enable_hr": True, "hr_upscaler": upscaler, **SMALL}
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert 400 <= response.status_code < 500 and words in response.text
    too_large = requests.post(f"{served.url}/sdapi/v1/txt2img", json={**body, "hr_upscaler": "Latent", "hr_scale": 40}, timeout=60)
    assert 400 <= too_large.status_code < 500 and "hires size from 64 to 2048" in too_large.text


def test_translation_defaults_follow_a1111s_api() -> None:
    translated = a1111_request(Txt2ImgRequest(enable_hr=True), ServerOptions("demo")).request
    assert (translated.hires_scale, translated.hires_upscaler, translated.hires_denoise) == (2.0, "Latent", 0.75)
    off = a1111_request(Txt2ImgRequest(hr_scale=3, denoising_strength=0.2), ServerOptions("demo")).request
    assert (off.hires_scale, off.hires_denoise) == (0.0, 0.7)  # without enable_hr nothing is taken
