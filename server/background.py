"""The API served from a background thread: what the desktop app, the benchmark and the tests use
(`mlx-sd serve` runs the same uvicorn server in the foreground)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); an OSError says why it cannot be had."""
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)


def uvicorn_server(app: FastAPI) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level="warning"))


class BackgroundServer:
    """Serves `app` on `sock` from a daemon thread; returns once it accepts connections."""

    def __init__(self, app: FastAPI, sock: socket.socket, timeout: float = 30.0):
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._server = uvicorn_server(app)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
