"""Animating a blend from one prompt to another: frame i of n has t = i / (n - 1), and conditions on
`from :1-t AND to :t`, as composable-diffusion weights or (`and_blend="embedding"`) as an
interpolation of the two encodings. With a second seed the initial noise moves along A1111's
variation-seed slerp from the first seed's noise to the second's. Each frame is an ordinary request,
so its infotext remakes it; the same animation and base request give the same frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from .composable import composed_prompt, prompt_parts
from .config import ModelConfig
from .generation import plan, resolve_seed
from .infotext import quote
from .noise import ImageNoise, slerp
from .request import AND_BLENDS, MAX_SEED, GenerationRequest, Progress, RequestError

MAX_FRAMES = 1000


@dataclass(frozen=True)
class Animation:
    from_prompt: str
    to_prompt: str
    frames: int = 24
    seed_to: int | None = None  # None: every frame starts from the base request's seed's noise
    blend: str = "weights"  # one of AND_BLENDS

    def validate(self) -> None:
        if not isinstance(self.frames, int) or not 1 <= self.frames <= MAX_FRAMES:
            raise RequestError("frames", self.frames, f"a whole number from 1 to {MAX_FRAMES}")
        if self.seed_to is not None and (not isinstance(self.seed_to, int) or not 0 <= self.seed_to <= MAX_SEED):
            raise RequestError("seed_to", self.seed_to, f"a whole number from 0 to {MAX_SEED}")
        if self.blend not in AND_BLENDS:
            raise RequestError("blend", self.blend, "one of " + ", ".join(AND_BLENDS))
        for name, prompt in (("from", self.from_prompt), ("to", self.to_prompt)):
            if prompt_parts(prompt).composable:
                raise RequestError(name, prompt, "a prompt without AND or a trailing :weight (the frames add them)")


def frame_position(index: int, frames: int) -> float:
    """t of frame `index`: 0 for the first frame, 1 for the last."""
    return index / (frames - 1) if frames > 1 else 0.0


def _noise(seed: int, latent_shape: tuple[int, int, int]) -> np.ndarray:
    """The seed's initial noise in (channels, height, width) layout."""
    return np.array(ImageNoise([seed], latent_shape).initial())[0].transpose(2, 0, 1)


def frame_requests(
    base: GenerationRequest, animation: Animation, latent_shape: tuple[int, int, int]
) -> Iterator[tuple[GenerationRequest, dict[str, object]]]:
    """(request, extra infotext parameters) for every frame. `base` holds the other settings and a
    resolved seed; `latent_shape` is the model's (height, width, channels) for base's size."""
    animation.validate()
    low = high = None
    if animation.seed_to is not None:
        low, high = _noise(base.seed, latent_shape), _noise(animation.seed_to, latent_shape)
    for index in range(animation.frames):
        t = frame_position(index, animation.frames)
        prompt = composed_prompt([(animation.from_prompt, 1.0 - t), (animation.to_prompt, t)])
        changes: dict[str, object] = {"prompt": prompt, "and_blend": animation.blend, "batch_size": 1, "batch_count": 1}
        extra: dict[str, object] = {}
        if low is not None:
            changes["latents"] = slerp(t, low, high)[None]
            extra.update({"Variation seed": animation.seed_to, "Variation seed strength": f"{t:.6g}"})
        yield dataclasses.replace(base, **changes), extra


def with_parameters(infotext: str, extra: dict[str, object]) -> str:
    """The infotext with `extra` appended to its parameter line (its last line)."""
    if not extra:
        return infotext
    return infotext + ", " + ", ".join(f"{key}: {quote(value)}" for key, value in extra.items())


def planned_frames(
    config: ModelConfig, base: GenerationRequest, animation: Animation
) -> list[tuple[GenerationRequest, dict[str, object]]]:
    """`frame_requests` for a model, base's seed resolved (-1 picks one for every frame), and every
    frame checked against the model (mlx_sd.generation.plan) before any of them runs."""
    animation.validate()
    base = plan(config, dataclasses.replace(base, seed=resolve_seed(base.seed))).request
    factor = config.vae.downscale
    latent_shape = (base.height // factor, base.width // factor, config.vae.latent_channels)
    frames = list(frame_requests(base, animation, latent_shape))
    for request, _ in frames:
        plan(config, request)
    return frames


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based
    image: Image.Image
    infotext: str  # remakes this frame on its own


def render_frames(
    pipe: Any,  # a Pipeline, or anything with its generate()
    frames: list[tuple[GenerationRequest, dict[str, object]]],
    on_progress: Callable[[int, Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> Iterator[Frame]:
    """Generate the frames in order, reporting (frame index, progress) and yielding each as it is done;
    `cancel` stops within a step (samplers.Cancelled), `options` go to Pipeline.generate."""
    for index, (request, extra) in enumerate(frames):
        progress = None if on_progress is None else (lambda p, index=index: on_progress(index, p))
        result = pipe.generate(request, on_progress=progress, cancel=cancel, **options)
        yield Frame(index, result.images[0], with_parameters(result.infotexts[0], extra))
