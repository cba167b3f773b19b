"""epsilon or v-prediction for a single-file checkpoint (docs/facts.md §2.4).

In order: the user's --prediction; a side-car `<name>.yaml` with `parameterization: "v"` (A1111 looks
for it first); SDXL's `v_pred` marker key; for SD2 without either, A1111's probe: run the UNet on a
constant input and look at the mean of (output - input), which is strongly negative for v-models.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_unflatten
from mlx_sd.config import UNetConfig

_PARAMETERIZATION_RE = re.compile(r"^\s*parameterization\s*:\s*[\"']?(\w+)[\"']?\s*(#.*)?$", re.MULTILINE)
PROBE_THRESHOLD = -1.0  # A1111's: mean(output - input) below this means v-prediction
PROBE_VALUE = 0.5
PROBE_TIMESTEP = 999.0


def sidecar_yaml(checkpoint: Path) -> Path | None:
    for suffix in (".yaml", ".yml"):
        candidate = checkpoint.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def yaml_prediction(path: Path) -> str | None:
    """"v_prediction" / "epsilon" when the yaml states a parameterization, else None."""
    match = _PARAMETERIZATION_RE.search(path.read_text(encoding="utf-8", errors="replace"))
    if not match:
        return None
    return "v_prediction" if match.group(1) == "v" else "epsilon"


def probe_mean(config: UNetConfig, weights: dict[str, mx.array]) -> float:
    """mean(unet(x, 999, context) - x) for x = context = 0.5, computed in float32 (A1111's test input)."""
    from mlx_sd.unet import UNet2DConditionModel  # the engine model; imported only when a probe runs

    unet = UNet2DConditionModel(config)
    unet.update(tree_unflatten([(name, array.astype(mx.float32)) for name, array in weights.items()]))
    sample = mx.full((1, 8, 8, config.in_channels), PROBE_VALUE, dtype=mx.float32)
    context = mx.full((1, 2, config.context_dim), PROBE_VALUE, dtype=mx.float32)
    output = unet(sample, mx.array([PROBE_TIMESTEP], dtype=mx.float32), context)
    return (output - sample[..., : config.out_channels]).mean().item()


def probe_prediction(config: UNetConfig, weights: dict[str, mx.array]) -> tuple[str, float]:
    mean = probe_mean(config, weights)
    return ("v_prediction" if mean < PROBE_THRESHOLD else "epsilon"), mean
