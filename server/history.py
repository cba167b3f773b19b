"""Every image the API generates goes into the library's history, the same store the app shows.

The store is opened on first use from the generation thread, the only thread that uses it
(HistoryStore is not thread-safe)."""

from __future__ import annotations

from pathlib import Path

from app.history_record import request_params
from app.history_store import Generation, HistoryError, HistoryStore
from mlx_sd.request import GenerationRequest, GenerationResult

from .library import ServedModel


class HistoryRecorder:
    """A `jobs.Recorder`: records a batch's images, returns why it could not (or None)."""

    def __init__(self, library: Path):
        self.library = library
        self._store: HistoryStore | None = None

    def __call__(self, request: GenerationRequest, result: GenerationResult, model: ServedModel) -> str | None:
        params = request_params(request)
        try:
            if self._store is None:
                self._store = HistoryStore(self.library)
            for image, seed, infotext in zip(result.images, result.seeds, result.infotexts, strict=True):
                generation = Generation(
                    prompt=request.prompt, negative_prompt=request.negative_prompt, model=model.name, seed=seed,
                    width=image.width, height=image.height, params={**params, "seed": seed}, infotext=infotext,
                )
                self._store.add(image, generation)
        except (HistoryError, OSError) as exc:
            return f"the images could not be recorded in the history: {exc}"
        return None

