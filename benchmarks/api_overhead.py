"""What the HTTP API adds to a generation: `python -m benchmarks.api_overhead [--images 20]`.

Serves the bundled demo model with `mlx-sd serve`'s own pieces (uvicorn on 127.0.0.1 in a
background thread) and times, alternating, the same txt2img request as a direct `Pipeline.generate`
call and as POST /sdapi/v1/txt2img (JSON in, base64 PNG with its infotext out, through the queue),
with and without recording in the history. On a shared machine the generation itself varies far
more than the API costs, so each API request is also split into the engine's time (measured inside
the executor) and the rest: `outside_engine_ms` is the API's own cost per image. Prints a table and,
as its last line, one JSON object with every figure. The target is an overhead of at most 5% + 20 ms
per image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import requests

import mlx_sd  # noqa: F401  (binds OpenBLAS before mlx.core loads)
from mlx_sd.model_paths import DEMO_FOLDER
from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest, GenerationResult, Progress
from server.app import ApiServer, ServerConfig, create_app, start_queue
from server.background import BackgroundServer, bind
from server.jobs import GenerationExecutor
from server.library import Library, ServedModel


class EngineClock:
    """Wraps the queue's executor and keeps how long each `generate` took."""

    def __init__(self, executor: GenerationExecutor):
        self.executor = executor
        self.seconds: list[float] = []

    def load(self, model: ServedModel) -> None:
        self.executor.load(model)

    def generate(
        self, request: GenerationRequest, on_progress: Callable[[Progress], None], cancel: Callable[[], bool]
    ) -> GenerationResult:
        started = time.perf_counter()
        try:
            return self.executor.generate(request, on_progress, cancel)
        finally:
            self.seconds.append(time.perf_counter() - started)


def served(library: Path, record_history: bool) -> tuple[BackgroundServer, ApiServer, EngineClock]:
    sock = bind("127.0.0.1", 0)
    config = ServerConfig(library=library, port=sock.getsockname()[1], record_history=record_history)
    model = Library(library).model("demo")
    queue = start_queue(config, model)
    clock = queue.executor = EngineClock(queue.executor)
    api = ApiServer(config, queue, model)
    return BackgroundServer(create_app(api), sock), api, clock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="timed images per side (default 20)")
    parser.add_argument("--size", type=int, default=64, help="pixels a side (default 64, the demo model's size)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    body = {"prompt": "a red circle on a blue background", "seed": 1, "width": args.size, "height": args.size,
            "steps": args.steps, "sampler_name": "DPM++ 2M", "scheduler": "Automatic"}
    request = GenerationRequest(prompt=body["prompt"], seed=1, width=args.size, height=args.size, steps=args.steps,
                                sampler="DPM++ 2M")
    pipe = Pipeline.load(DEMO_FOLDER)
    times: dict[str, list[float]] = {"direct": [], "api": [], "api+history": []}
    with tempfile.TemporaryDirectory() as folder:
        servers = {"api": served(Path(folder) / "a", False), "api+history": served(Path(folder) / "b", True)}
        try:
            for round_ in range(args.images + 1):  # round 0 warms every side up and is not counted
                for side in times:
                    started = time.perf_counter()
                    if side == "direct":
                        pipe.generate(request)
                    else:
                        port = servers[side][0].port
                        response = requests.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=body, timeout=600)
                        response.raise_for_status()
                    if round_:
                        times[side].append(time.perf_counter() - started)
        finally:
            for background, api, _ in servers.values():
                background.stop()
                api.queue.close(timeout=10)

    direct = statistics.median(times["direct"])
    figures: dict[str, float | int | bool] = {"images": args.images, "size": args.size, "steps": args.steps,
                                             "direct_s": direct}
    print(f"{'side':<12} {'median s':>9} {'vs direct ms':>13} {'outside engine ms':>18}")
    for side, values in times.items():
        median = statistics.median(values)
        outside = 0.0
        if side != "direct":
            engine = servers[side][2].seconds[-len(values):]  # the warm-up's and the model load's left out
            outside = statistics.median(total - inside for total, inside in zip(values, engine, strict=True))
            key = side.replace("+", "_")
            figures.update({
                f"{key}_s": median, f"{key}_vs_direct_ms": (median - direct) * 1000,
                f"{key}_outside_engine_ms": outside * 1000, f"{key}_within_target": outside <= 0.05 * direct + 0.020,
            })
        print(f"{side:<12} {median:>9.3f} {(median - direct) * 1000:>13.1f} {outside * 1000:>18.1f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
