"""Running an animation (mlx_sd.animate) for the app: on the generation thread, with the window's
loaded model, queued behind the window's and the API's jobs (`GenerationController.call`).

`AnimationRunner` lives in the UI thread; its signals are emitted from the generation thread and so
arrive queued, in order: `progressed` for every step, `frameReady` for every frame as it is done, then
one of `finished`, `cancelled` (the frames so far stay), `tooLarge` (nothing ran: the window may ask
and run it with `check_memory=False`) or `failed`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from mlx_sd.animate import Animation, planned_frames, render_frames
from mlx_sd.estimate import TooLargeError
from mlx_sd.request import GenerationRequest, Progress
from mlx_sd.samplers import Cancelled

from .generation_worker import GenerationController, GenerationWorker, describe_error, generate_options


@dataclass(frozen=True)
class AnimationJob:
    base: GenerationRequest  # everything but the prompt: size, steps, sampler, seed, negative prompt...
    animation: Animation
    model_folder: Path
    model_name: str
    device: str = "gpu"
    precision: str = "float32"
    check_memory: bool = True


class AnimationRunner(QObject):
    started = Signal(int, int)  # frames in all (every frame passed the checks), the seed (-1 resolved)
    progressed = Signal(int, int, int)  # frame index, step, steps
    frameReady = Signal(object)  # mlx_sd.animate.Frame
    finished = Signal()
    cancelled = Signal()
    tooLarge = Signal(object)  # TooLargeError
    failed = Signal(object)  # generation_worker.UserMessage

    def __init__(self, controller: GenerationController, parent: QObject | None = None):
        super().__init__(parent)
        self._controller = controller
        self._stop = threading.Event()
        self.running = False

    def start(self, job: AnimationJob) -> None:
        """Queue the animation on the generation thread (one at a time: check `running`)."""
        self.running = True
        self._stop.clear()
        self._controller.call(lambda worker: self._run(worker, job))

    def cancel(self) -> None:
        """Stop within a step; the frames done so far stay."""
        self._stop.set()

    def _ended(self, signal: Signal, *args: object) -> None:
        self.running = False
        signal.emit(*args)

    def _run(self, worker: GenerationWorker, job: AnimationJob) -> None:  # the generation thread
        pipeline = None
        try:
            if self._stop.is_set():
                raise Cancelled("cancelled before the model was loaded")
            pipeline = worker.load_model(job.model_folder, job.model_name, job.device)
            pipeline.precision = job.precision
            frames = planned_frames(pipeline.config, job.base, job.animation)
            self.started.emit(len(frames), frames[0][0].seed)

            def progressed(index: int, progress: Progress) -> None:
                self.progressed.emit(index, progress.step, progress.total)

            options = generate_options(job.check_memory)
            for frame in render_frames(pipeline, frames, progressed, self._stop.is_set, **options):
                self.frameReady.emit(frame)
                if self._stop.is_set() and frame.index < len(frames) - 1:
                    raise Cancelled("cancelled between frames")
        except Cancelled:
            self._ended(self.cancelled)
        except TooLargeError as exc:
            self._ended(self.tooLarge, exc)
        except Exception as exc:  # every failure becomes a message in the window, never a crash
            self._ended(self.failed, describe_error(exc))
        else:
            self._ended(self.finished)
        finally:
            if pipeline is not None:  # between runs the app holds its model, not the last run's activations
                pipeline.release_cached_memory()
