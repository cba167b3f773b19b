"""The server's parts without a model: the queue over a scripted executor, translation, security,
the library's names, and that nothing loads Qt."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mlx_sd.request import GenerationRequest, GenerationResult, Progress, RequestError
from mlx_sd.samplers import Cancelled
from server.app import ApiServer, ServerConfig, create_app
from server.exposure import check_exposure, parse_auth
from server.jobs import GenerationQueue, QueueFullError
from server.library import Library, ServedModel, UnknownModelError
from server.schema import Img2ImgRequest, Txt2ImgRequest
from server.translate import ServerOptions, a1111_request, multiple_of_8
from server_support import add_model_copy

MODEL = ServedModel("tiny", Path("/nowhere"), "")


class ScriptedExecutor:
    """Generates blank images; each call waits until `release` is set, reporting progress meanwhile
    and stopping (as the engine does) when `cancel()` says so."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.loaded: list[str] = []
        self.calls: list[GenerationRequest] = []

    def load(self, model: ServedModel) -> None:
        self.loaded.append(model.name)

    def generate(self, request, on_progress, cancel) -> GenerationResult:
        self.calls.append(request)
        self.started.release()
        on_progress(Progress(1, request.steps, 0, 1, Image.new("RGB", (8, 8))))
        while not self.release.wait(0.01):
            if cancel():
                raise Cancelled("cancelled")
        images = [Image.new("RGB", (request.width, request.height)) for _ in range(request.batch_size)]
        seeds = [request.seed + k for k in range(request.batch_size)]
        return GenerationResult(images, seeds, [f"seed {s}" for s in seeds])


@pytest.fixture
def executor():
    return ScriptedExecutor()


@pytest.fixture
def queue(executor):
    q = GenerationQueue(executor, max_queued=1)
    yield q
    executor.release.set()
    q.close(timeout=10)


def test_the_queue_is_fifo_and_bounded(queue, executor) -> None:
    first = queue.submit(MODEL, GenerationRequest(seed=1))
    assert executor.started.acquire(timeout=10)
    second = queue.submit(MODEL, GenerationRequest(seed=2))
    with pytest.raises(QueueFullError):
        queue.submit(MODEL, GenerationRequest(seed=3))
    assert queue.progress().job_count == 2
    executor.release.set()
    assert first.result(10).seeds == [1] and second.result(10).seeds == [2]
    assert [call.seed for call in executor.calls] == [1, 2]


def test_a_waiting_job_whose_client_left_is_dropped(executor) -> None:
    queue = GenerationQueue(executor, max_queued=4)
    try:
        first = queue.submit(MODEL, GenerationRequest(seed=1))
        assert executor.started.acquire(timeout=10)
        assert not first.cancel()  # a running job cannot be cancelled: its result still comes
        abandoned = queue.submit(MODEL, GenerationRequest(seed=2))
        assert abandoned.cancel()  # what asyncio.wrap_future does when the request is cancelled
        last = queue.submit(MODEL, GenerationRequest(seed=3))
        executor.release.set()
        assert first.result(10).seeds == [1] and last.result(10).seeds == [3]
        assert [call.seed for call in executor.calls] == [1, 3]
    finally:
        executor.release.set()
        queue.close(timeout=10)


def test_skip_drops_one_batch_and_interrupt_ends_the_job(queue, executor) -> None:
    job = queue.submit(MODEL, GenerationRequest(seed=10, batch_count=3))
    assert executor.started.acquire(timeout=10)
    queue.skip()  # batch 1 of 3 is dropped
    assert executor.started.acquire(timeout=10)
    executor.release.set()  # batch 2 finishes, then batch 3 runs to the end too
    outcome = job.result(10)
    assert outcome.seeds == [11, 12] and not outcome.interrupted  # image k uses seed + k
    assert executor.started.acquire(timeout=10)  # batch 3's start

    executor.release.clear()
    job = queue.submit(MODEL, GenerationRequest(seed=10, batch_count=3))
    assert executor.started.acquire(timeout=10)
    queue.interrupt()
    outcome = job.result(10)
    assert outcome.images == [] and outcome.interrupted and len(executor.calls) == 4  # no later batch ran


def test_a_full_queue_is_503_with_retry_after(tmp_path, queue, executor) -> None:
    add_model_copy(tmp_path, "tiny", "tiny")
    library = Library(tmp_path, )
    model = library.model("tiny")
    client = TestClient(create_app(ApiServer(ServerConfig(library=tmp_path), queue, model, library)))
    queue.submit(model, GenerationRequest())  # runs, holding the worker
    assert executor.started.acquire(timeout=10)
    queue.submit(model, GenerationRequest())  # waits: the queue is now full
    response = client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 2})
    assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
    assert "waiting" in response.json()["detail"]
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["state"]["job_count"] == 2 and progress["current_image"]  # the scripted preview
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    assert client.post("/sdapi/v1/skip").json() is None and client.post("/sdapi/v1/interrupt").json() == {}  # as A1111


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"prompt": "caf\xe9"}', 400, "not UTF-8 text (byte 0xe9 at offset 15)"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nests arrays or objects too deeply"),
        (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, 400, "nests arrays or objects too deeply"),
        # deep enough for json.loads to read but not for FastAPI to echo back: named, not echoed
        (b'{"seed": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}", 422, "nested more than 32 deep"),
    ],
)
def test_unreadable_bodies_get_one_line_in_a1111s_shape(tmp_path, queue, executor, body, status, reason) -> None:
    add_model_copy(tmp_path, "tiny", "tiny")
    library = Library(tmp_path)
    client = TestClient(create_app(ApiServer(ServerConfig(library=tmp_path), queue, library.model("tiny"), library)))
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status and reason in response.text and len(response.text) < 400
    if status == 400:
        assert response.json()["error"] == "BadRequestBody" and "\n" not in response.json()["detail"]
    assert executor.calls == []  # nothing reached the queue
    assert client.get("/sdapi/v1/progress").status_code == 200


def test_auth_and_cors(tmp_path, queue) -> None:
    add_model_copy(tmp_path, "tiny", "tiny")
    library = Library(tmp_path)
    model = library.model("tiny")
    open_app = TestClient(create_app(ApiServer(ServerConfig(library=tmp_path), queue, model, library)))
    response = open_app.get("/sdapi/v1/options", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers  # CORS off

    config = ServerConfig(library=tmp_path, api_auth=("ann", "s3cret"), cors_allow_origins=("http://ui.example",))
    client = TestClient(create_app(ApiServer(config, queue, model, library)))
    assert client.get("/sdapi/v1/options").status_code == 401
    assert client.get("/sdapi/v1/options", auth=("ann", "wrong")).status_code == 401
    response = client.get("/sdapi/v1/options", auth=("ann", "s3cret"), headers={"Origin": "http://ui.example"})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "http://ui.example"
    assert response.json()["sd_model_checkpoint"] == "tiny"


def test_sampler_names_and_what_is_not_applied() -> None:
    options = ServerOptions("demo", CLIP_stop_at_last_layers=2)
    combined = a1111_request(Txt2ImgRequest(sampler_name="DPM++ 2M Karras"), options)
    assert (combined.request.sampler, combined.request.schedule, combined.request.clip_skip) == ("DPM++ 2M", "Karras", 2)
    index = a1111_request(Txt2ImgRequest(sampler_index="Euler a", scheduler="exponential"), options)
    assert (index.request.sampler, index.request.schedule) == ("Euler a", "exponential")
    assert a1111_request(Txt2ImgRequest(), options).request.sampler == "Euler"  # A1111's default
    asked = Txt2ImgRequest(enable_hr=True, restore_faces=True, styles=["s"], override_settings={"sd_vae": "x.pt", "eta_noise_seed_delta": 31337})
    assert a1111_request(asked, options).not_applied == (
        "restore_faces", "styles", "override_settings.eta_noise_seed_delta"
    )
    overridden = a1111_request(Txt2ImgRequest(override_settings={"sd_model_checkpoint": "other", "CLIP_stop_at_last_layers": 3}), options)
    assert overridden.model == "other" and overridden.request.clip_skip == 3
    assert Txt2ImgRequest.model_validate({"prompt": None, "script_args": [1], "alwayson_scripts": {}}).prompt == ""
    assert multiple_of_8(513) == 512 and multiple_of_8(-3) == -3


def test_img2img_translation() -> None:
    init = Image.new("RGB", (64, 64))
    mask = Image.new("L", (64, 64), 255)
    translated = a1111_request(
        Img2ImgRequest(denoising_strength=0.4, inpainting_mask_invert=1, inpainting_fill=1, inpaint_full_res=False),
        ServerOptions("demo"), init, mask,
    )
    assert translated.request.strength == 0.4 and translated.request.mask.getextrema() == (0, 0)  # inverted
    assert translated.not_applied == ()
    two = Img2ImgRequest(init_images=["a", "b"], resize_mode=1)
    assert a1111_request(two, ServerOptions("demo"), init).not_applied == ("init_images[1:]", "resize_mode")
    with pytest.raises(RequestError, match="init_images"):
        a1111_request(Img2ImgRequest(), ServerOptions("demo"))


def test_names_never_leave_the_library(tmp_path) -> None:
    add_model_copy(tmp_path, "mine", "mine-source")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"")
    (tmp_path / "loras" / ".hidden.safetensors").write_bytes(b"")
    library = Library(tmp_path)
    assert library.model("mine").folder == tmp_path / "models" / "mine"
    for name in ("../mine", "models/mine", "/etc", ".", "..", str(tmp_path / "models" / "mine")):
        with pytest.raises(UnknownModelError):
            library.model(name)
    assert [p.name for p in library.files("loras")] == ["style.safetensors"]


def test_exposure_rules() -> None:
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", ("a", "b"), False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(ValueError, match="--api-auth"):
        check_exposure("0.0.0.0", None, False)
    assert parse_auth("ann:pa:ss") == ("ann", "pa:ss")
    with pytest.raises(ValueError, match="USER:PASS"):
        parse_auth("ann")


def test_serve_refuses_a_public_host_without_auth_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--host", "0.0.0.0", "--model", "demo"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "--api-auth" in result.stderr


def test_the_server_never_imports_qt() -> None:
    code = (
        "import sys, server.app, server.jobs, server.history, server.library, cli.serve, app.library_folder; "
        "assert not any(m.startswith('PySide6') for m in sys.modules), 'PySide6 was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_default_library_is_the_apps(qapp, monkeypatch) -> None:
    from PySide6.QtCore import QStandardPaths

    from app.library_folder import APP_NAME, default_library_folder

    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    name = qapp.applicationName()
    qapp.setApplicationName(APP_NAME)
    try:
        expected = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    finally:
        qapp.setApplicationName(name)
    assert default_library_folder() == Path(expected)
