"""The app serving the A1111 API on localhost: the API's jobs run on the window's generation worker with
its one loaded model, show in the window's progress and go into its history; the setting starts and
stops the server; a taken port is a message in the window, not a crash."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image
from app_support import QT_MARKS, ScriptedPipeline, fake_model_folder, open_window, scripted_loader

from app.generation_worker import GenerationController, load_pipeline
from app.history_browser import install_history_browser
from app.history_store import HistoryQuery, HistoryStore
from app.main_window import API_PREFIX, MainWindow
from app.settings import AppSettings, load_settings
from app.settings_dialog import SERVE_API_TEXT, install_settings_dialog
from mlx_sd.model_paths import DEMO_FOLDER

pytestmark = QT_MARKS

TIMEOUT_MS = 120_000  # the demo model at 64x64 takes seconds; generous for a shared machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_thread(call):
    """Run `call` off the UI thread (which must keep relaying the worker's signals); the box gets its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # re-raised by the test
            box["error"] = exc

    threading.Thread(target=run, daemon=True).start()
    return box


def wait_for(qtbot, box: dict[str, object]) -> object:
    qtbot.waitUntil(lambda: bool(box), timeout=TIMEOUT_MS)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]


class CountingLoader:
    """The real loader, keeping every pipeline it loads and every request each one generates."""

    def __init__(self):
        self.pipelines: list[object] = []
        self.used: list[object] = []

    def __call__(self, folder: Path, device: str):
        pipeline = load_pipeline(folder, device)
        generate = pipeline.generate

        def spied(request, *args, **kwargs):
            self.used.append(pipeline)
            return generate(request, *args, **kwargs)

        pipeline.generate = spied
        self.pipelines.append(pipeline)
        return pipeline


@pytest.fixture
def served_window(qtbot, tmp_path: Path):
    loader = CountingLoader()
    settings = AppSettings(serve_api=True, api_port=free_port(), compute_device="cpu", preview_every=1)
    window = MainWindow(settings, tmp_path / "library", loader=loader, demo_folder=DEMO_FOLDER)
    qtbot.addWidget(window)
    window.show()
    yield window, loader
    window.close()


def test_an_api_txt2img_runs_on_the_apps_worker_and_shows_in_its_progress_and_history(qtbot, served_window) -> None:
    window, loader = served_window
    history = install_history_browser(window)
    assert history.browser.model.rowCount() == 0
    assert window.api.address == ("127.0.0.1", window.settings.api_port)
    labels: list[str] = []
    window.controller.progressed.connect(lambda _report: labels.append(window.progress_label.text()))
    recorded: list[object] = []
    window.imageRecorded.connect(recorded.append)

    client = webuiapi.WebUIApi(host="127.0.0.1", port=window.api.address[1])
    box = in_thread(lambda: client.txt2img(prompt="a red square", width=64, height=64, steps=3, seed=11, sampler_name="Euler"))
    result = wait_for(qtbot, box)
    qtbot.waitUntil(lambda: len(recorded) == 1, timeout=TIMEOUT_MS)

    # one model, loaded by the app's worker, generated the API's image
    assert len(loader.pipelines) == 1 and loader.used == loader.pipelines
    assert window.controller.worker._pipeline is loader.pipelines[0]
    # the window showed the API job's progress, and recorded its image in the app's history
    assert any(label.startswith(API_PREFIX + "Step") for label in labels)
    assert result.info["all_seeds"] == [11]
    entry = recorded[0]
    assert entry.generation.seed == 11 and entry.generation.model == "demo"
    qtbot.waitUntil(lambda: history.browser.model.rowCount() == 1, timeout=10_000)  # the History tab reloaded
    store = HistoryStore(window.library)
    try:
        assert store.count(HistoryQuery()) == 1
    finally:
        store.close()
    recorded_pixels = np.asarray(result.image.convert("RGB"))
    with Image.open(entry.image_path) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), recorded_pixels)

    # the window's own Generate afterwards uses the same loaded model: still one load
    window.prompt_panel.set_prompts("a blue circle", "")
    window.parameters.set_values({"width": 64, "height": 64, "steps": 2})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT_MS):
        assert window.generate() is not None
    assert len(loader.pipelines) == 1 and len(loader.used) == 2
    assert not window.controller.busy and window.generate_button.isEnabled()


def test_turning_the_setting_off_stops_the_server_and_on_starts_it_again(qtbot, tmp_path: Path) -> None:
    library = tmp_path / "library"
    fake_model_folder(library / "models" / "tiny")
    port = free_port()
    window = open_window(qtbot, library, settings=AppSettings(serve_api=True, api_port=port))
    assert requests.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=10).json()[0]["model_name"] == "tiny"
    assert window.api.address == ("127.0.0.1", port)  # this machine only
    assert requests.get(f"http://127.0.0.1:{port}/sdapi/v1/cmd-flags", timeout=10).json()["listen"] is False

    window.apply_settings(dataclasses.replace(window.settings, serve_api=False))
    assert window.api.address is None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/sdapi/v1/options", timeout=10)

    other = free_port()
    window.apply_settings(dataclasses.replace(window.settings, serve_api=True, api_port=other))
    assert window.api.address[1] == other
    assert requests.get(f"http://127.0.0.1:{other}/sdapi/v1/progress", timeout=10).status_code == 200
    window.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{other}/sdapi/v1/progress", timeout=10)


def test_a_taken_port_is_a_message_in_the_window_which_keeps_working(qtbot, tmp_path: Path) -> None:
    library = tmp_path / "library"
    fake_model_folder(library / "models" / "tiny", native=64)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        window = open_window(qtbot, library, ScriptedPipeline(), settings=AppSettings(serve_api=True, api_port=port))
        assert window.api.address is None
        assert window.message_bar.kind == "error"
        assert f"Port {port}" in window.message_bar.text() and "Settings" in window.message_bar.text()
        with qtbot.waitSignal(window.controller.finished, timeout=10_000):
            assert window.generate() is not None


def test_the_settings_dialog_turns_the_api_on_with_its_port_and_the_next_start_serves_again(qtbot, tmp_path: Path) -> None:
    library, path = tmp_path / "library", tmp_path / "config" / "settings.json"
    fake_model_folder(library / "models" / "tiny", native=64)
    window = open_window(qtbot, library, settings_path=path)
    plugin = install_settings_dialog(window, path, library)
    dialog = plugin.open()
    assert dialog.serve_api_check.text() == SERVE_API_TEXT and not dialog.serve_api_check.isChecked()
    assert not dialog.api_port_spin.isEnabled()
    port = free_port()
    dialog.serve_api_check.setChecked(True)
    dialog.api_port_spin.setValue(port)
    dialog.accept()
    assert window.api.address == ("127.0.0.1", port)
    window.close()
    assert window.api.address is None

    settings = load_settings(path)
    assert (settings.serve_api, settings.api_port) == (True, port)
    again = open_window(qtbot, library, settings=settings, settings_path=path)
    assert again.api.address == ("127.0.0.1", port)

def test_an_api_interrupt_stops_its_job_and_the_windows_own_job_queued_behind_it_runs(qtbot, tmp_path: Path) -> None:
    library = tmp_path / "library"
    fake_model_folder(library / "models" / "tiny", native=64)
    pipeline = ScriptedPipeline(step_seconds=0.1)
    window = open_window(qtbot, library, pipeline, settings=AppSettings(serve_api=True, api_port=free_port()))
    url = f"http://127.0.0.1:{window.api.address[1]}/sdapi/v1"
    reports: list[object] = []
    window.controller.progressed.connect(reports.append)
    finished: list[object] = []
    window.controller.finished.connect(finished.append)
    box = in_thread(lambda: requests.post(f"{url}/txt2img", json={"prompt": "slow", "steps": 50, "width": 64, "height": 64}, timeout=60))
    qtbot.waitUntil(lambda: len(reports) >= 2, timeout=10_000)
    own = window.generate()  # queued on the worker behind the API's job
    assert own is not None and window.controller.busy
    assert requests.post(f"{url}/interrupt", timeout=10).json() == {}
    answer = wait_for(qtbot, box)
    assert answer.status_code == 200 and answer.json()["images"] == []
    assert json.loads(answer.json()["info"])["interrupted"] is True
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert [result.job.job_id for result in finished] == [own.job_id]
    assert not window.controller.busy and window.generate_button.isEnabled()
    api_steps = [r.step for r in reports if r.job_id != own.job_id]
    assert len(pipeline.requests) == 2 and max(api_steps) < 50

def test_the_port_setting_falls_back_to_the_default_when_out_of_range() -> None:
    assert AppSettings(api_port=0).validated().api_port == AppSettings().api_port
    assert AppSettings(api_port=70000).validated().api_port == AppSettings().api_port
    assert AppSettings(api_port=7861).validated().api_port == 7861


def test_the_window_loads_the_server_stack_only_when_the_api_is_on() -> None:
    code = "import sys, app.main, app.main_window; assert not [m for m in ('fastapi', 'uvicorn') if m in sys.modules]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_outside_calls_run_on_the_generation_thread_and_are_cancelled_once_it_ended(qtbot, tmp_path: Path) -> None:
    controller = GenerationController(tmp_path, scripted_loader(ScriptedPipeline()))
    try:
        thread = controller.call(lambda worker: threading.current_thread()).result(timeout=10)
        assert thread is not threading.current_thread()
        with pytest.raises(ZeroDivisionError):  # a failure goes back to the caller
            controller.call(lambda worker: 1 / 0).result(timeout=10)
    finally:
        controller.shutdown()
    assert controller.call(lambda worker: None).cancelled()
