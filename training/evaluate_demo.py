"""Score a trained demo model: `python -m training.evaluate_demo FOLDER [--engine mlx|torch]`.

FOLDER is our converted model (engine mlx, the default: the product's own pipeline) or the diffusers
folder written by training.train_demo (engine torch). Generates the prompt grid (every colour and
shape, two backgrounds each, two seeds) with one sampler of each family, the grid with CFG 1 and an
empty prompt (which must score at chance), and the img2img check; writes evaluation.json and a contact
sheet per sampler into --report (default: FOLDER).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .evaluate import (
    SAMPLER_FAMILIES, EvalCase, Generate, Img2Img, contact_sheet, evaluate, grid_cases, img2img_check,
)

# Empty-prompt seeds apart from the grid's, one per case: with the grid's two seeds the CFG 1
# pictures would be just two, right or wrong together.
EMPTY_PROMPT_SEED = 1000


@dataclasses.dataclass
class Engine:
    grid: Callable[[str, float], Generate]  # (sampler, cfg) -> generate(prompt, seed)
    img2img: Callable[[float], Img2Img]  # cfg -> img2img(image, prompt, strength, seed)


def mlx_engine(folder: Path, steps: int) -> Engine:
    from mlx_sd.pipeline import Pipeline

    from . import mlx_eval

    pipe = Pipeline.load(folder)
    return Engine(lambda sampler, cfg: mlx_eval.generator(pipe, steps, cfg, sampler),
                  lambda cfg: mlx_eval.img2img_generator(pipe, steps, cfg))


def torch_engine(folder: Path, steps: int) -> Engine:
    from . import torch_eval

    pipe = torch_eval.load_pipeline(folder)
    return Engine(lambda sampler, cfg: torch_eval.generator(torch_eval.with_sampler(pipe, sampler), steps, cfg),
                  lambda cfg: torch_eval.img2img_generator(torch_eval.with_sampler(pipe, "dpmpp_2m"), steps, cfg))


def empty_prompt_cases(cases: list[EvalCase]) -> list[EvalCase]:
    return [dataclasses.replace(case, seed=EMPTY_PROMPT_SEED + i) for i, case in enumerate(cases)]


def run(engine: Engine, samplers: tuple[str, ...], cfg: float, report: Path, log=print) -> dict:
    cases = grid_cases()
    results: dict[str, dict] = {}
    for name in samplers:
        started = time.monotonic()
        scores, images = evaluate(engine.grid(name, cfg), cases)
        seconds = time.monotonic() - started
        contact_sheet(images).save(report / f"grid_{name}.png")
        results[name] = {"foreground": scores.foreground, "background": scores.background,
                         "shape": scores.shape, "images": scores.count, "seconds": seconds}
        log(f"{name:9s} {scores}  {seconds / scores.count:.2f} s/image")

    plain = engine.grid("dpmpp_2m", 1.0)
    scores, images = evaluate(lambda prompt, seed: plain("", seed), empty_prompt_cases(cases))
    contact_sheet(images).save(report / "grid_cfg1_empty.png")
    results["cfg1_empty_prompt"] = {"foreground": scores.foreground, "background": scores.background,
                                    "shape": scores.shape, "images": scores.count}
    log(f"CFG 1, empty prompt: {scores}")

    # img2img at the grid's CFG, and without guidance: how much of a low-strength change is guidance's
    results["img2img"] = {}
    for guidance in (cfg, 1.0):
        sources, changes = img2img_check(engine.img2img(guidance))
        results["img2img"][f"cfg {guidance:g}"] = [dataclasses.asdict(change) for change in changes]
        for change in changes:
            log(f"img2img CFG {guidance:g}, {change.source.colour} {change.source.shape} on "
                f"{change.source.background}, strength {change.strength}: mean |change| "
                f"{change.mean_abs_change:.1f}/255, now {change.prediction.colour} {change.prediction.shape} "
                f"on {change.prediction.background}")
    contact_sheet(sources, columns=len(sources)).save(report / "img2img_sources.png")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--engine", choices=("mlx", "torch"), default="mlx")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--samplers", default=",".join(SAMPLER_FAMILIES), help="comma-separated, from: " + ", ".join(SAMPLER_FAMILIES))
    parser.add_argument("--report", type=Path, default=None, help="folder for the report (default: FOLDER)")
    args = parser.parse_args(argv)
    samplers = tuple(args.samplers.split(","))
    if unknown := [s for s in samplers if s not in SAMPLER_FAMILIES]:
        parser.error(f"unknown sampler(s) {', '.join(unknown)}; choose from {', '.join(SAMPLER_FAMILIES)}")
    report = args.report or args.folder
    report.mkdir(parents=True, exist_ok=True)
    engine = (mlx_engine if args.engine == "mlx" else torch_engine)(args.folder, args.steps)
    results = run(engine, samplers, args.cfg, report, log=lambda message: print(message, flush=True))
    (report / "evaluation.json").write_text(json.dumps(
        {"engine": args.engine, "steps": args.steps, "cfg": args.cfg, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
