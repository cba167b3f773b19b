"""A real `mlx-sd serve` stack (uvicorn on 127.0.0.1, a free port) in a background thread, for the
server tests: the same pieces `cli/serve.py` puts together."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from mlx_sd.model_paths import DEMO_FOLDER
from server.app import ApiServer, ServerConfig, create_app, start_queue
from server.background import BackgroundServer, bind
from server.library import Library


def add_model_copy(library: Path, name: str, source_name: str) -> Path:
    """A copy of the demo model under <library>/models/<name>, with its own source name (and so its own
    `Model:` in the infotext) and no hash."""
    folder = library / "models" / name
    shutil.copytree(DEMO_FOLDER, folder)
    config = json.loads((folder / "model.json").read_text())
    config["source"] = {"name": source_name, "sha256": ""}
    (folder / "model.json").write_text(json.dumps(config))
    return folder


class RunningServer:
    def __init__(self, config: ServerConfig, model: str = "demo"):
        self.library = Library(config.library)
        sock = bind("127.0.0.1", 0)
        self.config = dataclasses.replace(config, port=sock.getsockname()[1])
        served = self.library.model(model)
        self.queue = start_queue(self.config, served)
        self.api = ApiServer(self.config, self.queue, served, self.library)
        self.background = BackgroundServer(create_app(self.api), sock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def stop(self) -> None:
        self.background.stop()
        self.queue.close(timeout=10)
