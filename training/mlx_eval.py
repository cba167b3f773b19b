"""Generate with the shipped model through our own MLX pipeline, for scoring the product itself."""

from __future__ import annotations

from PIL import Image

from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest

from .evaluate import Generate, Img2Img

# evaluate.SAMPLER_FAMILIES as our A1111 sampler names
SAMPLERS = {"euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}


def generator(pipe: Pipeline, steps: int = 20, cfg: float = 6.0, sampler: str = "dpmpp_2m") -> Generate:
    def generate(prompt: str, seed: int) -> Image.Image:
        size = pipe.config.default_size
        request = GenerationRequest(prompt=prompt, width=size, height=size, steps=steps, cfg_scale=cfg,
                                    sampler=SAMPLERS[sampler], seed=seed)
        return pipe.generate(request).images[0]

    return generate


def img2img_generator(pipe: Pipeline, steps: int = 20, cfg: float = 6.0, sampler: str = "dpmpp_2m") -> Img2Img:
    def run(image: Image.Image, prompt: str, strength: float, seed: int) -> Image.Image:
        request = GenerationRequest(prompt=prompt, width=image.width, height=image.height, steps=steps,
                                    cfg_scale=cfg, sampler=SAMPLERS[sampler], seed=seed, init_image=image,
                                    strength=strength)
        return pipe.generate(request).images[0]

    return run
