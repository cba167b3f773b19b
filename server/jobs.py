"""The single generation queue: one job at a time, first in first out, with a bound.

Jobs run on one worker thread through a `GenerationExecutor`, which holds the loaded model. The
server's own executor loads pipelines itself (`PipelineExecutor`); the desktop app can implement the
same two methods over its generation worker so that the app and the API share one model and one
queue. A job runs batch by batch (image k of the run uses seed + k, as in A1111 and the CLI), so
`skip` drops only the current batch and `interrupt` keeps the batches already finished.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import mlx.nn as nn
from PIL import Image

from convert.vae_file import read_vae
from mlx_sd.generation import resolve_seed
from mlx_sd.library import Library
from mlx_sd.noise import image_seeds
from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest, GenerationResult, Progress
from mlx_sd.samplers import Cancelled

from .library import ServedModel

DEFAULT_MAX_QUEUED = 16


class QueueFullError(RuntimeError):
    """More jobs are waiting than the queue's bound allows; try again later."""


class GenerationExecutor(Protocol):
    """Runs generations for the queue, always from the queue's one worker thread."""

    def load(self, model: ServedModel) -> None:
        """Make `model` the loaded one (nothing to do when it already is)."""

    def generate(
        self, request: GenerationRequest, on_progress: Callable[[Progress], None], cancel: Callable[[], bool]
    ) -> GenerationResult: ...


class PipelineExecutor:
    """The server's own executor: one `mlx_sd.pipeline.Pipeline`, replaced when another model is asked for."""

    def __init__(
        self,
        precision: str = "float32",
        read_upscaler: Callable[[str], nn.Module] | None = None,
        library: Library | None = None,
    ):
        self.precision = precision
        self.library = library or Library(names_only=True)  # LoRAs, embeddings, refiners: by name only
        self.read_upscaler = read_upscaler  # hires fix's upscaler models by name
        self.loaded: ServedModel | None = None
        self._pipeline: Pipeline | None = None

    def load(self, model: ServedModel) -> None:
        if self.loaded == model:
            return
        self._pipeline = self.loaded = None  # free the old model before loading the next
        self._pipeline = Pipeline.load(model.folder, precision=self.precision, library=self.library)
        self._pipeline.vae_reader = read_vae  # models: sd_vae, a library VAE file (server.library)
        self._pipeline.read_upscaler = self.read_upscaler
        self.loaded = model

    def generate(
        self, request: GenerationRequest, on_progress: Callable[[Progress], None], cancel: Callable[[], bool]
    ) -> GenerationResult:
        if self._pipeline is None:
            raise RuntimeError("no model is loaded")
        return self._pipeline.generate(request, on_progress=on_progress, cancel=cancel)


Recorder = Callable[[GenerationRequest, GenerationResult, ServedModel], str | None]  # -> error message or None


@dataclass(frozen=True)
class JobOutcome:
    model: ServedModel
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    interrupted: bool = False
    history_error: str | None = None


@dataclass
class _Job:
    model: ServedModel
    request: GenerationRequest | None  # None: only switch to `model`
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True)
class ProgressSnapshot:
    """What GET /sdapi/v1/progress reports."""

    job_count: int  # the running job and those waiting
    sampling_step: int
    sampling_steps: int
    batch_index: int
    progress: float  # of the running job, 0 to 1
    eta_relative: float  # seconds
    interrupted: bool
    skipped: bool
    job_timestamp: str
    preview: Image.Image | None


class GenerationQueue:
    """FIFO queue of at most `max_queued` waiting jobs in front of one worker thread."""

    def __init__(self, executor: GenerationExecutor, max_queued: int = DEFAULT_MAX_QUEUED, recorder: Recorder | None = None):
        self.executor = executor
        self.max_queued = max_queued
        self.recorder = recorder
        self._lock = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._running: _Job | None = None
        self._closed = False
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._step = self._steps = self._batch = self._batch_count = 0
        self._done_steps = self._all_steps = 0
        self._started = 0.0
        self._timestamp = ""
        self._preview: Image.Image | None = None
        self._thread = threading.Thread(target=self._work, name="generation", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------

    def submit(self, model: ServedModel, request: GenerationRequest | None) -> concurrent.futures.Future:
        """Queue a generation (or, with `request` None, a model switch); the future gives a JobOutcome.

        Raises QueueFullError when `max_queued` jobs are already waiting."""
        job = _Job(model, request)
        with self._lock:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if len(self._waiting) >= self.max_queued:
                raise QueueFullError(f"{len(self._waiting)} jobs are waiting, the most this server queues")
            self._waiting.append(job)
            self._lock.notify()
        return job.future

    def interrupt(self) -> None:
        """Stop the running job at its next step; the batches it finished are still returned."""
        with self._lock:
            if self._running is not None:
                self._interrupt.set()

    def skip(self) -> None:
        """Drop the running job's current batch and go on with its next one."""
        with self._lock:
            if self._running is not None:
                self._skip.set()

    def progress(self) -> ProgressSnapshot:
        with self._lock:
            running = self._running is not None and self._running.request is not None
            fraction = self._done_steps / self._all_steps if running and self._all_steps else 0.0
            elapsed = time.monotonic() - self._started
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            return ProgressSnapshot(
                job_count=len(self._waiting) + (self._running is not None),
                sampling_step=self._step if running else 0,
                sampling_steps=self._steps if running else 0,
                batch_index=self._batch,
                progress=fraction,
                eta_relative=eta,
                interrupted=self._interrupt.is_set(),
                skipped=self._skip.is_set(),
                job_timestamp=self._timestamp,
                preview=self._preview if running else None,
            )

    def close(self, timeout: float | None = None) -> None:
        """Stop the running job, fail the waiting ones, end the worker thread."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            if self._running is not None:
                self._interrupt.set()
            self._lock.notify()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():  # not when its client already went away
                job.future.set_exception(QueueFullError("the server is shutting down"))
        self._thread.join(timeout)

    # -- the worker thread --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue  # its client went away while it waited
                self._running = job
                self._interrupt.clear()
                self._skip.clear()
                self._start(job.request)
            try:
                outcome = self._run(job)
            except BaseException as exc:  # every failure goes back to the request that caused it
                job.future.set_exception(exc)
            else:
                job.future.set_result(outcome)
            finally:
                with self._lock:
                    self._running = None
                    self._preview = None

    def _start(self, request: GenerationRequest | None) -> None:
        self._step = self._batch = self._done_steps = 0
        self._steps = request.steps if request else 0
        self._batch_count = request.batch_count if request else 0
        self._all_steps = self._steps * self._batch_count
        self._started = time.monotonic()
        self._timestamp = time.strftime("%Y%m%d%H%M%S")

    def _run(self, job: _Job) -> JobOutcome | None:
        self.executor.load(job.model)
        request = job.request
        if request is None:
            return None
        seed = resolve_seed(request.seed)
        images: list[Image.Image] = []
        seeds: list[int] = []
        infotexts: list[str] = []
        errors: list[str] = []
        for batch_index in range(request.batch_count):
            if self._interrupt.is_set():
                break
            self._skip.clear()
            with self._lock:
                self._batch = batch_index
            first = image_seeds(seed, 1, start=batch_index * request.batch_size)[0]
            batch = dataclasses.replace(request, seed=first, batch_count=1)
            try:
                result = self.executor.generate(batch, self._on_progress, self._stop_requested)
            except Cancelled:
                continue  # skipped: the next batch; interrupted: the loop ends above
            if self.recorder is not None:
                error = self.recorder(batch, result, job.model)
                if error:
                    errors.append(error)
            images += result.images
            seeds += result.seeds
            infotexts += result.infotexts
        return JobOutcome(
            job.model, request, images, seeds, infotexts, self._interrupt.is_set(), errors[0] if errors else None
        )

    def _stop_requested(self) -> bool:
        return self._interrupt.is_set() or self._skip.is_set()

    def _on_progress(self, progress: Progress) -> None:
        with self._lock:
            self._step, self._steps = progress.step, progress.total
            self._done_steps = self._batch * progress.total + progress.step
            self._all_steps = progress.total * self._batch_count  # img2img runs fewer steps than asked
            self._preview = progress.preview
