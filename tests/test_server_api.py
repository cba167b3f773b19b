"""`mlx-sd serve` end to end: the real webuiapi client and raw HTTP against uvicorn on 127.0.0.1,
serving the bundled demo model at 64x64."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from app.history_store import HistoryQuery, HistoryStore
from cli.main import main as cli_main
from server.app import ServerConfig
from server_support import RunningServer, add_model_copy

SMALL = dict(width=64, height=64, steps=4, cfg_scale=7.0)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("library")
    add_model_copy(folder, "other", "other-model")
    return folder


@pytest.fixture(scope="module")
def served(library):
    server = RunningServer(ServerConfig(library=library))
    yield server
    server.stop()


@pytest.fixture
def api(served) -> webuiapi.WebUIApi:
    client = webuiapi.WebUIApi(host="127.0.0.1", port=served.config.port, sampler="Euler a", steps=4)
    client.set_options({"sd_model_checkpoint": "demo"})
    return client


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_txt2img_equals_the_cli_pixel_for_pixel(api, tmp_path) -> None:
    result = api.txt2img(prompt="a red square", negative_prompt="blue", seed=1234, sampler_name="DPM++ 2M Karras", **SMALL)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    info = result.info
    assert info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["sampler_name"] == "DPM++ 2M" and info["extra_generation_params"]["Schedule type"] == "Karras"
    assert result.images[0].text["parameters"] == info["infotexts"][0]  # the infotext is embedded in the PNG

    code = cli_main([
        "generate", "a red square", "--negative", "blue", "--model", "demo", "--seed", "1234", "--width", "64",
        "--height", "64", "--steps", "4", "--sampler", "DPM++ 2M", "--schedule", "Karras", "--output", str(tmp_path),
    ])
    assert code == 0
    (saved,) = tmp_path.glob("*.png")
    with Image.open(saved) as cli_image:
        assert np.array_equal(np.asarray(cli_image.convert("RGB")), np.asarray(result.images[0].convert("RGB")))
        assert cli_image.text["parameters"] == info["infotexts"][0]


def test_img2img_with_a_mask_keeps_the_unmasked_half(api) -> None:
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    init.paste((30, 30, 200), (0, 0, 32, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # repaint the right half only
    result = api.img2img(
        images=[init], mask_image=mask, mask_blur=0, denoising_strength=0.6, prompt="a cat", seed=7,
        inpainting_fill=1, inpaint_full_res=False, **SMALL,
    )
    out = np.asarray(result.images[0].convert("RGB")).astype(int)
    assert out.shape == (64, 64, 3)
    assert np.abs(out[:, :32] - np.asarray(init)[:, :32]).max() == 0  # the kept half is the input exactly
    assert np.abs(out[:, 32:] - np.asarray(init)[:, 32:]).max() > 0  # the masked half was repainted
    assert result.info["denoising_strength"] == 0.6 and result.info["not_applied"] == []


def test_options_switch_the_model(api, served) -> None:
    titles = [m["title"] for m in api.get_sd_models()]
    assert titles == ["other", "demo [e60ecf08a8]"]
    api.set_options({"sd_model_checkpoint": "other"})
    assert api.get_options()["sd_model_checkpoint"] == "other"
    result = api.txt2img(prompt="x", seed=1, **SMALL)
    assert "Model: other-model" in result.info["infotexts"][0]
    api.util_set_model("demo [e60ecf08a8]", find_closest=False)
    assert "Model: demo" in api.txt2img(prompt="x", seed=1, **SMALL).info["infotexts"][0]


def test_progress_has_a_live_preview_and_interrupt_stops_within_a_second(api) -> None:
    answer: dict[str, object] = {}
    worker = threading.Thread(target=lambda: answer.update(result=api.txt2img(prompt="slow", seed=3, width=64, height=64, steps=1000)))
    worker.start()
    deadline = time.monotonic() + 60
    progress = api.get_progress()
    while progress["state"]["sampling_step"] < 3 or not progress["current_image"]:
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
        progress = api.get_progress()
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 1000
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert decode(progress["current_image"]).size[0] > 0
    asked = time.monotonic()
    assert api.interrupt() == {}
    worker.join(30)
    assert time.monotonic() - asked < 1.0
    result = answer["result"]
    assert result.images == [] and result.info["interrupted"] is True
    assert api.get_progress()["state"]["job_count"] == 0


def test_a_client_that_goes_away_does_not_stop_the_server(served, api) -> None:
    body = {"prompt": "abandoned", "width": 64, "height": 64, "steps": 40}
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=0.3)
    assert api.txt2img(prompt="next", seed=2, **SMALL).info["all_seeds"] == [2]


def test_png_info_reads_the_parameters_back(api) -> None:
    image = api.txt2img(prompt="a house", negative_prompt="rain", seed=99, **SMALL).images[0]
    result = api.png_info(image)
    assert result.info == image.text["parameters"]
    params = result.json["parameters"]
    assert params["Prompt"] == "a house" and params["Negative prompt"] == "rain" and params["Seed"] == "99"


def test_sillytavern_request(served) -> None:
    """The exact field set SillyTavern's Stable Diffusion extension posts (through its server)."""
    body = {
        "url": served.url, "auth": "", "prompt": "a knight", "negative_prompt": "blurry", "sampler_name": "Euler a",
        "scheduler": "karras", "steps": 4, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False,
        "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2, "hr_additional_modules": [],
        "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 5,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": None, "forge_additional_modules": None},
        "override_settings_restore_afterwards": True, "clip_skip": 1, "save_images": True, "send_images": True,
        "do_not_save_grid": False, "do_not_save_samples": False,
    }
    for path in ("options", "sd-models", "samplers", "schedulers", "upscalers", "latent-upscale-modes", "sd-vae"):
        assert requests.get(f"{served.url}/sdapi/v1/{path}", timeout=10).status_code == 200
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert decode(response.json()["images"][0]).size == (64, 64)
    assert info["seed"] == 5 and "Schedule type: Karras" in info["infotexts"][0]
    assert info["not_applied"] == []  # nothing asked for that the engine does not do (nulls count as unset)


def test_open_webui_requests(served) -> None:
    """Open WebUI's automatic1111 engine: options and sd-models, then txt2img with its few fields; and its
    OpenAI engine against /v1/images/generations."""
    auth = {"authorization": "Basic " + base64.b64encode(b"user:pass").decode()}  # sent even when unused
    models = requests.get(f"{served.url}/sdapi/v1/sd-models", headers=auth, timeout=10).json()
    assert requests.post(f"{served.url}/sdapi/v1/options", json={"sd_model_checkpoint": models[-1]["title"]}, headers=auth, timeout=60).ok
    body = {"prompt": "a lighthouse", "batch_size": 2, "width": 64, "height": 64, "steps": 3, "negative_prompt": "fog"}
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2 and len(json.loads(response.json()["info"])["all_seeds"]) == 2

    body = {"model": "dall-e-2", "prompt": "a lighthouse", "n": 2, "size": "64x64", "response_format": "b64_json"}
    response = requests.post(f"{served.url}/v1/images/generations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2 and decode(data[0]["b64_json"]).size == (64, 64)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`x`height` (no pixel data worth decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("path", "data", "status", "reason"),
    [
        ("txt2img", b"{not json", 422, "JSON decode error"),
        ("txt2img", b'{"steps": "many"}', 422, "valid integer"),
        ("txt2img", b'{"seed": [1]}', 422, "seed"),
        ("txt2img", b'{"steps": 1e400}', 422, "finite number"),  # parses as inf, which JSON cannot echo back
        ("txt2img", b'{"width": 100000, "height": 64}', 400, "width = 100000"),
        ("txt2img", b'{"width": -64}', 400, "width"),
        ("txt2img", b'{"steps": 0, "width": 64, "height": 64}', 400, "steps = 0"),
        ("txt2img", b'{"sampler_name": "Warp Drive"}', 400, "Warp Drive"),
        ("img2img", b'{"init_images": ["not base64!"], "width": 64, "height": 64}', 400, "init_images[0]"),
        ("img2img", json.dumps({"init_images": [base64.b64encode(_png_header(100000, 100000)).decode()]}).encode(), 400, "too large"),
        ("img2img", json.dumps({"init_images": [base64.b64encode(_png_header(9000, 9000)).decode()]}).encode(), 400, "9000x9000 pixels is too large"),
        ("img2img", b'{"width": 64, "height": 64}', 400, "init_images"),
        ("options", b'{"sd_model_checkpoint": "../../etc/passwd"}', 400, "no model called"),
        ("options", b'{"CLIP_stop_at_last_layers": "two"}', 400, "CLIP_stop_at_last_layers"),
        ("png-info", b'{"image": "AAAA"}', 400, "cannot decode"),
    ],
)
def test_bad_requests_get_a_reason_and_the_server_stays_up(served, path, data, status, reason) -> None:
    response = requests.post(f"{served.url}/sdapi/v1/{path}", data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status and reason in response.text
    assert requests.get(f"{served.url}/sdapi/v1/progress", timeout=10).status_code == 200


def test_a_huge_body_is_refused_before_it_is_read(served) -> None:
    body = b'{"prompt": "' + b"x" * (served.config.max_body_bytes + 1) + b'"}'
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "larger than" in response.text

    def chunked():  # no Content-Length: refused as soon as it grows past the limit
        for _ in range(served.config.max_body_bytes // (1 << 20) + 2):
            yield b" " * (1 << 20)

    response = requests.post(f"{served.url}/sdapi/v1/txt2img", data=chunked(), headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert requests.get(f"{served.url}/sdapi/v1/progress", timeout=10).status_code == 200


def test_forty_requests_from_eight_threads_are_all_answered_and_recorded(library, served) -> None:
    prompts = [f"prompt {i}" for i in range(40)]

    def post(prompt: str) -> tuple[int, list[str]]:
        body = {"prompt": prompt, "width": 64, "height": 64, "steps": 2, "seed": 11}
        response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=300)
        return response.status_code, json.loads(response.json()["info"])["all_prompts"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, prompts))
    assert [status for status, _ in answers] == [200] * 40
    assert [prompts_back[0] for _, prompts_back in answers] == prompts
    store = HistoryStore(library)
    try:
        recorded = [entry.generation.prompt for entry in store.page(HistoryQuery(), 0, 10_000)]
    finally:
        store.close()
    assert sorted(p for p in recorded if p.startswith("prompt ")) == sorted(prompts)


def test_no_history_records_nothing(tmp_path) -> None:
    server = RunningServer(ServerConfig(library=tmp_path, record_history=False))
    try:
        body = {"prompt": "unrecorded", "width": 64, "height": 64, "steps": 2}
        assert requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60).status_code == 200
    finally:
        server.stop()
    assert not (tmp_path / "history.sqlite3").exists() and not (tmp_path / "images").exists()
