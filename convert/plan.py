"""A conversion plan: which tensors to read from which files, where each one goes, and the model config.

Every source format (single file, diffusers folder) produces a ConversionPlan; the orchestrator
executes it the same way for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import mlx.core as mx
from mlx_sd.config import ModelConfig

from .layout import Route, Shape
from .safetensors_file import TensorInfo

Weights = dict[str, dict[str, mx.array]]  # component -> parameter name -> array


class TensorSource(Protocol):
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    def arrays(
        self, wanted: Collection[str], hasher: "hashlib._Hash | None" = None
    ) -> Iterator[tuple[str, mx.array]]: ...


@dataclass
class Read:
    """Tensors to read from one source; `hashed` feeds the whole source to the model hash."""

    source: TensorSource
    routes: dict[str, list[Route]]
    hashed: bool = False

    def torch_shapes(self) -> dict[str, dict[str, Shape]]:
        shapes: dict[str, dict[str, Shape]] = {}
        for key, routes in self.routes.items():
            for route in routes:
                shapes.setdefault(route.component, {})[route.name] = route.torch_shape(self.source.tensors[key].shape)
        return shapes


@dataclass
class ConversionPlan:
    config: ModelConfig
    reads: list[Read]
    tokenizers: dict[str, Path]  # "tokenizer"/"tokenizer_2" -> folder to copy
    source_kind: str  # "single file", "diffusers folder", "Hugging Face repo"
    family_by: str  # how the family was decided, for the report
    prediction_by: str  # how the prediction type was decided (may be settled by `after_read`)
    hashed: str  # what the recorded SHA-256 covers
    notes: list[str] = field(default_factory=list)  # detection facts worth printing (EMA, replaced VAE, ...)
    warnings: list[str] = field(default_factory=list)
    dropped: int = 0  # known junk keys left out (DDPM buffers, position_ids, unused layers, ...)
    ignored: list[str] = field(default_factory=list)  # keys no table knows
    # Runs once the weights are read (the SD2 v-prediction probe needs the UNet); may edit config/prediction_by.
    after_read: Callable[["ConversionPlan", Weights], None] | None = None
