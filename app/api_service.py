"""The app serving the A1111 API on localhost (Settings > "Serve the A1111 API on localhost").

The API's `GenerationQueue` runs its jobs through `WorkerExecutor`, which hands every model load,
generation and recording to the window's generation worker: the app and the API share one loaded
model and one generation thread, and the API's jobs show in the window's progress and history.
Only 127.0.0.1 is bound; a port in use is a message in the window, and the app goes on without the API.
The server stack (FastAPI, uvicorn) is imported only when the API is switched on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mlx_sd.request import GenerationRequest, GenerationResult, Progress

from .generation_worker import GenerationController, GenerationJob, OutsideWork
from .settings import AppSettings

if TYPE_CHECKING:
    from server.background import BackgroundServer
    from server.jobs import GenerationQueue
    from server.library import ServedModel

    from .main_window import MainWindow

API_HOST = "127.0.0.1"  # the app never serves beyond this machine (`mlx-sd serve --host` can, with auth)
STOP_TIMEOUT = 10.0  # seconds for the running job to stop at its next step


class WorkerExecutor:
    """A `server.jobs.GenerationExecutor`, and its Recorder, over the app's generation worker. Called
    from the queue's thread; each call waits for the generation thread to run it."""

    def __init__(self, controller: GenerationController, settings: Callable[[], AppSettings]):
        self._controller = controller
        self._settings = settings  # the window's, read per job: a Settings change applies to the next one
        self._model: ServedModel | None = None
        self._job: GenerationJob | None = None  # the batch being generated, for its recording

    def load(self, model: ServedModel) -> None:
        device = self._settings().compute_device
        self._on_worker(lambda worker: worker.load_model(model.folder, model.name, device))
        self._model = model

    def generate(
        self, request: GenerationRequest, on_progress: Callable[[Progress], None], cancel: Callable[[], bool]
    ) -> GenerationResult:
        if self._model is None:
            raise RuntimeError("no model is loaded")
        settings = self._settings()
        job = GenerationJob(
            request, self._model.folder, self._model.name, self._controller.next_job_id(),
            device=settings.compute_device, preview_every=settings.preview_every, precision=settings.cpu_precision,
            allow_pickle=settings.allow_pickle, outside=True,
        )
        self._job = job
        return self._on_worker(lambda worker: worker.run_outside(job, on_progress, cancel))

    def record(self, request: GenerationRequest, result: GenerationResult, model: ServedModel) -> str | None:
        """The queue calls this right after `generate` with the same batch."""
        job = self._job
        if job is None or job.request is not request:
            raise RuntimeError("record() without the generate() of the same batch")
        error = self._on_worker(lambda worker: worker.record_outside(job, result))
        return f"{error.title}: {error.detail}" if error else None

    def _on_worker(self, work: OutsideWork) -> Any:
        return self._controller.call(work).result()


class ApiService:
    """Starts, restarts and stops the API as the window's settings and library change."""

    def __init__(self, window: MainWindow):
        self._window = window
        self._serving: tuple[int, Path] | None = None  # port and library
        self._queue: GenerationQueue | None = None
        self._server: BackgroundServer | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and port served, None when the API is off."""
        return self._server.sock.getsockname()[:2] if self._server is not None else None

    def apply(self, settings: AppSettings, library: Path) -> None:
        wanted = (settings.api_port, Path(library)) if settings.serve_api else None
        if wanted == self._serving:
            return
        self.stop()
        if wanted is not None:
            self._start(*wanted)

    def stop(self) -> None:
        """Stop the running API job at its next step, answer the waiting ones, close the port."""
        queue, server = self._queue, self._server
        self._queue = self._server = self._serving = None
        if queue is not None:
            queue.close(timeout=STOP_TIMEOUT)
        if server is not None:
            server.stop()

    def _start(self, port: int, library: Path) -> None:
        from server.app import ApiServer, ServerConfig, create_app
        from server.background import BackgroundServer, bind
        from server.jobs import GenerationQueue
        from server.library import Library

        window = self._window
        served = Library(library, window.picker.library)
        current = window.picker.current()
        models = served.models()
        model = next((m for m in models if current is not None and m.name == current.name), models[0] if models else None)
        if model is None:
            window.show_error("The A1111 API is not served", "There is no model to serve: import one, then turn the API on again.")
            return
        try:
            sock = bind(API_HOST, port)
        except OSError as exc:
            window.show_error(
                "The A1111 API is not served",
                f"Port {port} on {API_HOST} cannot be used ({exc.strerror or exc}); another program may be serving on it. "
                "Choose another port in Settings.",
            )
            return
        executor = WorkerExecutor(window.controller, lambda: window.settings)
        queue = GenerationQueue(executor, recorder=executor.record)
        config = ServerConfig(library=library, host=API_HOST, port=sock.getsockname()[1])
        try:
            server = BackgroundServer(create_app(ApiServer(config, queue, model, served)), sock)
        except RuntimeError as exc:
            queue.close()
            sock.close()
            window.show_error("The A1111 API is not served", f"{exc}.")
            return
        self._queue, self._server, self._serving = queue, server, (port, Path(library))
        window.statusBar().showMessage(f"Serving the A1111 API on http://{API_HOST}:{server.port}/sdapi/v1", 8000)

