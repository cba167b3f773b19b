"""Variation seeds at the request level (A1111's subseeds; the noise itself is mlx_sd.noise).

A request with `variation_strength` > 0 bends each image's initial noise towards its variation seed's:
image k of the run uses seed + k and variation seed + k. A variation seed of -1 is drawn once per run
(`with_resolved_variation_seed`), like the seed. `resize_seed_from` (width, height) makes both noises at
that size and centres them in the image's, so a picture found at one size keeps its layout at another.
The infotext keys are A1111's: `Variation seed`, `Variation seed strength`, `Seed resize from`.
"""

from __future__ import annotations

import dataclasses

from .noise import SeedVariation, image_seeds
from .request import RANDOM_SEED, GenerationRequest

VARIATION_SEED = "Variation seed"
VARIATION_STRENGTH = "Variation seed strength"
SEED_RESIZE_FROM = "Seed resize from"


def with_resolved_variation_seed(request: GenerationRequest, random_seed: int) -> GenerationRequest:
    """`request` with a variation seed of -1 replaced by `random_seed` when it is used."""
    if request.variation_strength and request.variation_seed == RANDOM_SEED:
        return dataclasses.replace(request, variation_seed=random_seed)
    return request


def seed_variation(request: GenerationRequest, start: int, count: int, latent_factor: int) -> SeedVariation:
    """How the first draws of images start .. start+count-1 of the run are bent (a resolved request)."""
    width, height = request.resize_seed_from
    seed_size = (height // latent_factor, width // latent_factor) if width and height else None
    if not request.variation_strength:
        return SeedVariation(seed_size=seed_size)
    seeds = tuple(image_seeds(request.variation_seed, count, start))
    return SeedVariation(seeds, float(request.variation_strength), seed_size)


def batch_changes(request: GenerationRequest, start: int) -> dict[str, int]:
    """Field changes for a request that runs the images from `start` on as its own run (the CLI runs
    each batch so): its variation seed moves along with its seed."""
    if not request.variation_strength:
        return {}
    return {"variation_seed": image_seeds(request.variation_seed, 1, start)[0]}


def variation_parameters(request: GenerationRequest, index: int) -> dict[str, object]:
    """The infotext keys of image `index` of a resolved request (none for a request without them)."""
    params: dict[str, object] = {}
    if request.variation_strength:
        params[VARIATION_SEED] = image_seeds(request.variation_seed, 1, index)[0]
        params[VARIATION_STRENGTH] = f"{request.variation_strength:g}"
    if any(request.resize_seed_from):
        params[SEED_RESIZE_FROM] = "{}x{}".format(*request.resize_seed_from)
    return params
