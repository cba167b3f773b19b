"""What the history records about a request, Qt-free: shared by the app's generation worker and
`mlx-sd serve`, so both write the same records into the same store."""

from __future__ import annotations

import dataclasses
from typing import Any

from mlx_sd.request import GenerationRequest

# Fields of a request that are images or arrays: the history keeps the rest as JSON.
NOT_RECORDED = ("init_image", "mask", "latents")


def request_params(request: GenerationRequest) -> dict[str, Any]:
    """The request as JSON-ready values for the history (images and arrays left out)."""
    params = {f.name: _json_ready(getattr(request, f.name)) for f in dataclasses.fields(request) if f.name not in NOT_RECORDED}
    params["img2img"] = request.init_image is not None
    return params


def _json_ready(value: Any) -> Any:
    """What JSON gives back for a field: tuples as lists, dataclasses (a LoRA with its weights) as objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _json_ready(item) for name, item in dataclasses.asdict(value).items()}
    if isinstance(value, (tuple, list)):
        return [_json_ready(item) for item in value]
    return value
