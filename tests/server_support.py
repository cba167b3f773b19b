"""A real `mlx-sd serve` stack (uvicorn on 127.0.0.1, a free port) in a background thread, for the
server tests: the same pieces `cli/serve.py` puts together."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn

from mlx_sd.model_paths import DEMO_FOLDER
from server.app import ApiServer, ServerConfig, create_app, start_queue
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
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.config = dataclasses.replace(config, port=self.sock.getsockname()[1])
        served = self.library.model(model)
        self.queue = start_queue(self.config, served)
        self.api = ApiServer(self.config, self.queue, served, self.library)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.api), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.queue.close(timeout=10)
        self.sock.close()
