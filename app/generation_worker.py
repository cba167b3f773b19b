"""Generation off the UI thread: a worker QObject living in its own QThread.

The worker loads the model (kept loaded between runs), calls `Pipeline.generate`, records every
finished image in the history store and reports back with signals; the UI thread never runs a model.
Cancelling sets a flag that the pipeline polls before every step, so a run stops within one step and
records nothing. A job whose memory estimate exceeds the machine's ends with `too_large` (the engine's
TooLargeError, before any model runs) so that the window can ask; the same job with `check_memory=False`
then runs anyway. `GenerationController` owns the thread and is what the window talks to.

Jobs from outside the window (the A1111 API's queue, app.api_service) run on the same thread with the
same loaded model: `GenerationController.call` hands a function to the worker's `run_call` slot and
returns a future, and the worker's `load_model`, `run_outside` and `record_outside` do the work there,
emitting the same signals as the window's own jobs, so those jobs show in its progress and history.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from PySide6.QtCore import QMetaObject, QObject, QThread, Qt, Signal, Slot
from PySide6.QtGui import QImage

from mlx_sd.device import PrecisionError
from mlx_sd.estimate import TooLargeError
from mlx_sd.generation import is_out_of_memory
from mlx_sd.library import Library
from mlx_sd.model_format import MODEL_JSON, ModelChangedError, ModelFolderError, WeightsError
from mlx_sd.pickle_files import PickleRefused
from mlx_sd.request import GenerationRequest, GenerationResult, Progress, RequestError
from mlx_sd.samplers import Cancelled

from convert.upscaler_reader import library_upscaler_reader

from .history_record import request_params
from .history_store import Generation, HistoryEntry, HistoryError, HistoryStore
from .result_view import pil_to_qimage
from .settings import PICKLES_OFF




def _upscaler_reader(library: Path | None) -> Callable[[str], object] | None:
    """Hires fix's upscaler models by name or file, from the library's upscalers/ (each read once)."""
    return None if library is None else library_upscaler_reader(library)


class PipelineLike(Protocol):
    precision: str  # of the CPU's products, set per job (mlx_sd.pipeline.Pipeline.precision)
    read_upscaler: Callable[[str], object] | None  # hires fix's upscaler models, set per job
    allow_pickle: bool  # read .pt/.ckpt LoRAs, embeddings and VAEs, set per job (Settings)

    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        check_memory: bool = True,
    ) -> GenerationResult: ...

    def release_cached_memory(self) -> None: ...


Loader = Callable[[Path, str], PipelineLike]


def load_pipeline(folder: Path, device: str) -> PipelineLike:
    """Load a model folder for `device` ("gpu" or "cpu"); the CPU is used when MLX has no GPU."""
    import mlx.core as mx

    from convert.vae_file import read_vae
    from mlx_sd.device import gpu_available
    from mlx_sd.pipeline import Pipeline

    mx.set_default_device(mx.gpu if device == "gpu" and gpu_available() else mx.cpu)
    pipeline = Pipeline.load(folder)
    pipeline.vae_reader = read_vae  # a request's `vae` (a VAE file or library name) is read by the converter's table
    return pipeline


def generate_options(check_memory: bool) -> dict[str, bool]:
    """Pipeline.generate's keyword for the memory check, passed only when off so that stand-in
    pipelines (tests) need not know it."""
    return {} if check_memory else {"check_memory": False}


def _configure(pipeline: PipelineLike, job: "GenerationJob", read_upscaler: Callable[[str], object] | None) -> None:
    """What a job sets on the loaded pipeline: none of it needs the model loaded again."""
    pipeline.precision = job.precision
    pipeline.allow_pickle = job.allow_pickle
    pipeline.read_upscaler = read_upscaler


OutsideWork = Callable[["GenerationWorker"], object]  # run on the generation thread, given the worker


@dataclass(frozen=True)
class GenerationJob:
    request: GenerationRequest
    model_folder: Path
    model_name: str  # what the history records as the model
    job_id: int = 0
    device: str = "gpu"
    preview_every: int = 1  # send a live preview every N steps, 0 = never
    precision: str = "float32"  # of the CPU's products; changing it needs no reload
    allow_pickle: bool = False  # Settings > Allow pickle files; changing it needs no reload
    outside: bool = False  # from the API, not the window's Generate
    check_memory: bool = True  # False once the user chose to go ahead past the memory estimate


@dataclass(frozen=True)
class StepReport:
    job_id: int
    step: int  # within the current batch, 1-based
    total: int
    batch_index: int  # 0-based
    batch_count: int
    done: int  # steps done over the whole run
    overall: int  # steps of the whole run
    seconds_left: float | None


@dataclass(frozen=True)
class UserMessage:
    """An error as the window shows it: a short title and a sentence or two of detail."""

    title: str
    detail: str


@dataclass(frozen=True)
class JobResult:
    job: GenerationJob
    result: GenerationResult
    entries: list[HistoryEntry]  # one per recorded image, in order
    record_error: UserMessage | None = None  # the images exist but could not all be recorded


def _is_disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left" in str(exc) or "database or disk is full" in str(exc):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def describe_error(exc: BaseException) -> UserMessage:
    """What went wrong, in words a user can act on."""
    if isinstance(exc, RequestError):
        return UserMessage("These settings cannot be generated", f"{exc}.")
    if isinstance(exc, PickleRefused):
        return UserMessage("Pickle files are not allowed", PICKLES_OFF.format(name=exc.path.name))
    if isinstance(exc, PrecisionError):
        return UserMessage("This CPU precision is not available here", f"{exc}, under CPU precision in Settings.")
    if isinstance(exc, (ModelFolderError, WeightsError)):
        return UserMessage(
            "The model could not be loaded",
            f"{exc}. Convert the checkpoint again or choose another model.",
        )
    if is_out_of_memory(exc):
        return UserMessage(
            "Out of memory",
            f"{exc}. Try a smaller size or batch, or turn on low-memory mode in Settings.",
        )
    if _is_disk_full(exc):
        return UserMessage("The disk is full", f"{exc}. Free some space or move the library in Settings.")
    if isinstance(exc, HistoryError):
        return UserMessage("The image could not be recorded in the history", f"{exc}.")
    if isinstance(exc, OSError):
        return UserMessage("A file could not be read or written", f"{exc}.")
    return UserMessage("Generation failed", f"{type(exc).__name__}: {exc}")


class ProgressClock:
    """Time left, from the average time per step so far over the whole run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._start = clock()

    def seconds_left(self, done: int, overall: int) -> float | None:
        if done <= 0:
            return None
        return (self._clock() - self._start) / done * max(0, overall - done)


class GenerationWorker(QObject):
    """Lives in the generation thread; call `run` through a queued signal, `cancel` from anywhere."""

    status = Signal(str)
    started = Signal(object)  # GenerationJob, as the worker begins it (the window's or an outside one)
    progressed = Signal(object)  # StepReport
    preview = Signal(int, QImage)  # job id, preview image
    finished = Signal(object)  # JobResult
    failed = Signal(int, object)  # job id, UserMessage
    cancelled = Signal(int)  # job id
    too_large = Signal(int, object)  # job id, TooLargeError: nothing ran, the window may ask to go ahead

    def __init__(self, library: Path | None, loader: Loader = load_pipeline):
        super().__init__()
        self._library = library
        self._read_upscaler = _upscaler_reader(library)
        self._loader = loader
        self._abort = threading.Event()
        self._pipeline: PipelineLike | None = None
        self._pipeline_key: tuple[str, str, float] | None = None
        self._store: HistoryStore | None = None

    # -- called from the UI thread ----------------------------------------------------------

    def cancel(self) -> None:
        self._abort.set()

    def reset_abort(self) -> None:
        self._abort.clear()

    # -- worker thread ----------------------------------------------------------------------

    @Slot(object)
    def run(self, job: GenerationJob) -> None:
        try:
            if self._abort.is_set():
                raise Cancelled("cancelled before the model was loaded")
            result = self._generate(job, self._abort.is_set)
            if self._abort.is_set():  # the last step finished as Cancel was pressed: still record nothing
                raise Cancelled("cancelled after the last step")
        except Cancelled:
            self.cancelled.emit(job.job_id)
            return
        except TooLargeError as exc:
            self.too_large.emit(job.job_id, exc)
            return
        except Exception as exc:  # every failure becomes a message in the window, never a crash
            self.failed.emit(job.job_id, describe_error(exc))
            return
        finally:
            if self._pipeline is not None:  # between runs the app holds its model, not the last run's activations
                self._pipeline.release_cached_memory()
        self.status.emit("Saving…")
        entries, record_error = self._record(job, result)
        self.finished.emit(JobResult(job, result, entries, record_error))

    def _generate(
        self, job: GenerationJob, cancel: Callable[[], bool], on_progress: Callable[[Progress], None] | None = None
    ) -> GenerationResult:
        """Generate `job` with its model loaded, reporting each step to the window (and to `on_progress`)."""
        self.started.emit(job)
        pipeline = self._pipeline_for(job.model_folder, job.model_name, job.device)
        _configure(pipeline, job, self._read_upscaler)
        self.status.emit("Encoding the prompt…")  # what the pipeline does before its first step
        clock = ProgressClock()

        def progressed(progress: Progress) -> None:
            if on_progress is not None:
                on_progress(progress)
            self._on_progress(job, progress, clock)

        # the engine fits an init image to the request's size
        options = generate_options(job.check_memory)
        try:
            return pipeline.generate(job.request, on_progress=progressed, cancel=cancel, **options)
        except ModelChangedError:
            # The model's files changed on disk since it was loaded (a re-conversion, an edit): the loaded
            # weights no longer match them, so load them again, once; a damaged file then fails to load.
            self._pipeline = self._pipeline_key = None
            pipeline = self._pipeline_for(job.model_folder, job.model_name, job.device)
            _configure(pipeline, job, self._read_upscaler)
            return pipeline.generate(job.request, on_progress=progressed, cancel=cancel, **options)

    def _pipeline_for(self, model_folder: Path, model_name: str, device: str) -> PipelineLike:
        folder = Path(model_folder)
        config = folder / MODEL_JSON
        key = (str(folder.resolve()), device, config.stat().st_mtime if config.exists() else 0.0)
        if self._pipeline is None or key != self._pipeline_key:
            self._pipeline = self._pipeline_key = None  # free the old model before loading the next
            self.status.emit(f"Loading the model {model_name}…")
            self._pipeline = self._loader(folder, device)
            self._pipeline_key = key
            self._use_library()
        return self._pipeline

    def _use_library(self) -> None:
        """The loaded model finds LoRAs, embeddings and VAEs in the app's library, not the default folder."""
        if self._pipeline is not None and self._library is not None:
            self._pipeline.library = Library(self._library)  # type: ignore[attr-defined]

    # -- outside jobs (worker thread, through run_call) -------------------------------------------

    @Slot(object)
    def run_call(self, call: "OutsideCall") -> None:
        """Run `call.work(self)` here, on the generation thread; its return value or exception goes to `call.future`."""
        if not call.future.set_running_or_notify_cancel():
            return  # its caller stopped waiting
        try:
            call.future.set_result(call.work(self))
        except BaseException as exc:  # the caller's thread decides what a failure means
            call.future.set_exception(exc)

    def load_model(self, model_folder: Path, model_name: str, device: str) -> PipelineLike:
        """Make this the loaded model (the one the window's jobs use too) and return it."""
        return self._pipeline_for(model_folder, model_name, device)

    def run_outside(
        self, job: GenerationJob, on_progress: Callable[[Progress], None], cancel: Callable[[], bool]
    ) -> GenerationResult:
        """Generate `job` with the loaded model, reporting to `on_progress` and to the window; the
        window's Cancel does not stop it, `cancel` does. Raises what the pipeline raises."""
        try:
            return self._generate(job, cancel, on_progress)
        except Cancelled:
            self.cancelled.emit(job.job_id)
            raise
        except Exception as exc:
            self.failed.emit(job.job_id, describe_error(exc))
            raise
        finally:
            if self._pipeline is not None:
                self._pipeline.release_cached_memory()

    def record_outside(self, job: GenerationJob, result: GenerationResult) -> UserMessage | None:
        """Record `result` in the window's history store and report it as finished; returns why it
        could not all be recorded (or None)."""
        entries, record_error = self._record(job, result)
        self.finished.emit(JobResult(job, result, entries, record_error))
        return record_error

    def _on_progress(self, job: GenerationJob, progress: Progress, clock: ProgressClock) -> None:
        done = progress.batch_index * progress.total + progress.step
        overall = progress.total * progress.batch_count
        self.progressed.emit(
            StepReport(
                job.job_id, progress.step, progress.total, progress.batch_index, progress.batch_count,
                done, overall, clock.seconds_left(done, overall),
            )
        )
        every = job.preview_every
        if progress.preview is not None and every > 0 and (progress.step % every == 0 or progress.step == progress.total):
            self.preview.emit(job.job_id, pil_to_qimage(progress.preview))

    def _record(self, job: GenerationJob, result: GenerationResult) -> tuple[list[HistoryEntry], UserMessage | None]:
        if self._library is None:
            return [], None
        request = job.request
        params = request_params(request)
        entries: list[HistoryEntry] = []
        try:
            if self._store is None:
                self._store = HistoryStore(self._library)
                self._store.reconcile_all()  # the full images-folder scan, here off the UI thread
            for image, seed, infotext in zip(result.images, result.seeds, result.infotexts):
                generation = Generation(
                    prompt=request.prompt, negative_prompt=request.negative_prompt, model=job.model_name,
                    seed=seed, width=image.width, height=image.height, params={**params, "seed": seed},
                    infotext=infotext,
                )
                entries.append(self._store.add(image, generation))
        except (HistoryError, OSError) as exc:
            return entries, describe_error(exc)
        return entries, None

    @Slot(object)
    def set_library(self, library: Path | None) -> None:
        self.close_store()
        self._library = library
        self._use_library()
        self._read_upscaler = _upscaler_reader(library)

    @Slot()
    def close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @Slot()
    def release(self) -> None:
        """Forget the loaded model and close the history (before the thread ends)."""
        self._pipeline = self._pipeline_key = None
        self.close_store()


@dataclass(frozen=True)
class OutsideCall:
    work: OutsideWork
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)


class GenerationController(QObject):
    """The UI thread's handle on the worker: starts jobs, cancels, shuts the thread down.

    It relays the worker's signals as its own, emitted on the UI thread (connect to these: a plain
    Python callable connected to the worker's signals would run in the worker thread)."""

    status = Signal(str)
    started = Signal(object)  # GenerationJob
    progressed = Signal(object)  # StepReport
    preview = Signal(int, QImage)
    finished = Signal(object)  # JobResult
    failed = Signal(int, object)  # job id, UserMessage
    cancelled = Signal(int)
    too_large = Signal(int, object)  # job id, TooLargeError

    _run = Signal(object)
    _call = Signal(object)
    _set_library = Signal(object)

    def __init__(self, library: Path | None, loader: Loader = load_pipeline, parent: QObject | None = None):
        super().__init__(parent)
        self._thread = QThread()
        self._thread.setObjectName("generation")
        self.worker = GenerationWorker(library, loader)
        self.worker.moveToThread(self._thread)
        self._run.connect(self.worker.run)
        self._call.connect(self.worker.run_call, Qt.ConnectionType.QueuedConnection)  # emitted from any thread
        self._set_library.connect(self.worker.set_library)
        # runs in the worker thread as it ends, so the SQLite connection closes in its own thread
        self._thread.finished.connect(self.worker.release, Qt.ConnectionType.DirectConnection)
        self.worker.status.connect(self._on_status)
        self.worker.started.connect(self._on_started)
        self.worker.progressed.connect(self._on_progressed)
        self.worker.preview.connect(self._on_preview)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.worker.cancelled.connect(self._on_cancelled)
        self.worker.too_large.connect(self._on_too_large)
        self._busy = False
        self._job_id = 0  # the window's last job
        self._ids = itertools.count(1)  # shared by the window's jobs and outside ones, from any thread
        self._calls: list[OutsideCall] = []  # cancelled when the thread ends before running them
        self._calls_lock = threading.Lock()
        self._stopped = False
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self, job: GenerationJob) -> GenerationJob:
        """Queue `job` (its id is assigned here); raises RuntimeError while a job runs."""
        if self._busy:
            raise RuntimeError("a generation is already running; cancel it or wait for it to finish")
        job = dataclasses.replace(job, job_id=self.next_job_id())
        self._job_id = job.job_id
        self._busy = True
        self.worker.reset_abort()
        self._run.emit(job)
        return job

    def cancel(self) -> None:
        self.worker.cancel()

    def next_job_id(self) -> int:
        return next(self._ids)

    def call(self, work: OutsideWork) -> concurrent.futures.Future:
        """Queue `work(worker)` on the generation thread, behind the jobs already queued (any thread)."""
        call = OutsideCall(work)
        with self._calls_lock:
            if self._stopped:
                call.future.cancel()
                return call.future
            self._calls = [c for c in self._calls if not c.future.done()] + [call]
        self._call.emit(call)
        return call.future

    def set_library(self, library: Path | None) -> None:
        self._set_library.emit(library)

    def release_library(self) -> None:
        """Cancel a run and close the worker's history connection; returns once it is closed (after
        at most one sampling step, or a model load in progress)."""
        self.worker.cancel()
        QMetaObject.invokeMethod(self.worker, "close_store", Qt.ConnectionType.BlockingQueuedConnection)

    # -- relays (UI thread); `busy` is False before anyone hears that a job ended ----------------

    @Slot(str)
    def _on_status(self, text: str) -> None:
        self.status.emit(text)

    @Slot(object)
    def _on_started(self, job: GenerationJob) -> None:
        self.started.emit(job)

    @Slot(object)
    def _on_progressed(self, report: StepReport) -> None:
        self.progressed.emit(report)

    @Slot(int, QImage)
    def _on_preview(self, job_id: int, image: QImage) -> None:
        self.preview.emit(job_id, image)

    def _ended(self, job_id: int) -> None:
        if job_id == self._job_id:  # an outside job ending leaves the window's own one running
            self._busy = False

    @Slot(object)
    def _on_finished(self, result: JobResult) -> None:
        self._ended(result.job.job_id)
        self.finished.emit(result)

    @Slot(int, object)
    def _on_failed(self, job_id: int, message: UserMessage) -> None:
        self._ended(job_id)
        self.failed.emit(job_id, message)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        self._ended(job_id)
        self.cancelled.emit(job_id)

    @Slot(int, object)
    def _on_too_large(self, job_id: int, error: TooLargeError) -> None:
        self._ended(job_id)
        self.too_large.emit(job_id, error)

    def shutdown(self) -> None:
        """Cancel a running job and wait for the thread to end (at most about one step)."""
        if not self._thread.isRunning():
            return
        self.worker.cancel()
        self._thread.quit()
        self._thread.wait()
        with self._calls_lock:
            self._stopped = True
            for call in self._calls:
                call.future.cancel()  # never run: whoever waits for it hears so instead of waiting for ever
            self._calls = []
