"""Our MLX weight format: a folder with `model.json`, one safetensors file per component, tokenizers.

    model.json                 ModelConfig (format version, family, component configs, ...)
    unet.safetensors           weights in MLX layout (channels-last convs), diffusers parameter names
    vae.safetensors
    text_encoder.safetensors   absent for the SDXL refiner
    text_encoder_2.safetensors SDXL / refiner only
    tokenizer/, tokenizer_2/   vocab.json + merges.txt for each text encoder

Loading is strict: every parameter of the model must be present with the right shape, and nothing
else may be in the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .config import ModelConfig
from . import mapped_weights
from .cpu.memory import prefault_heap
from .device import current_device, worker_streams

MODEL_JSON = "model.json"
TOKENIZER_FOR = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


class WeightsError(ValueError):
    """A weight file does not match the model it is loaded into."""


class ModelFolderError(ValueError):
    """A folder is not a usable converted model."""


def weights_file(folder: Path, component: str) -> Path:
    return Path(folder) / f"{component}.safetensors"


def read_config(folder: str | os.PathLike[str]) -> ModelConfig:
    path = Path(folder) / MODEL_JSON
    if not path.is_file():
        raise ModelFolderError(
            f"{folder} is not an mlx-sd model folder (no {MODEL_JSON}); "
            "convert a checkpoint with `mlx-sd convert SOURCE OUTPUT` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelConfig.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{path} is damaged: {exc}") from exc


def check_weights(module: nn.Module, weights: dict[str, mx.array], component: str) -> None:
    """Raise WeightsError naming the first missing, unexpected or misshapen key."""
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(weights))
    if missing:
        shape = tuple(expected[missing[0]].shape)
        raise WeightsError(
            f"{component}: missing weight {missing[0]!r} (expected shape {shape}, found none)"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        shape = tuple(weights[unexpected[0]].shape)
        raise WeightsError(
            f"{component}: unexpected weight {unexpected[0]!r} (found shape {shape}, the model has no such key)"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
        )
    for key, param in expected.items():
        if tuple(param.shape) != tuple(weights[key].shape):
            raise WeightsError(
                f"{component}: weight {key!r} has shape {tuple(weights[key].shape)}, "
                f"the model expects {tuple(param.shape)}"
            )


def load_weights(module: nn.Module, path: Path, component: str, dtype: mx.Dtype) -> None:
    """Strictly load one component's safetensors file into `module`, cast to `dtype`."""
    if not path.is_file():
        raise ModelFolderError(f"{component}: weight file {path} is missing")
    try:
        mapped = mapped_weights.load(path)  # the page cache's own pages, where this mlx allows it
        weights = mapped if mapped is not None else mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelFolderError(f"{component}: cannot read {path}: {exc}") from exc
    check_weights(module, weights, component)
    # mx.load is lazy: its read and the casts below take these bytes, faulted in ahead in 2 MB pages
    read = 0 if mapped is not None else sum(v.nbytes for v in weights.values())
    prefault_heap(read + sum(v.size * dtype.size for v in weights.values() if v.dtype != dtype))
    streams = worker_streams(current_device())
    module.update(tree_unflatten([
        (k, v.astype(dtype, stream=streams[i % len(streams)])) for i, (k, v) in enumerate(weights.items())
    ]))


def write_model(
    folder: str | os.PathLike[str],
    config: ModelConfig,
    components: dict[str, dict[str, mx.array]],
    tokenizers: dict[str, Path],
) -> Path:
    """Write a model folder atomically: into a temporary sibling, renamed into place when complete.

    `components` maps component name -> {parameter name: array} already in MLX layout and dtype;
    `tokenizers` maps "tokenizer"/"tokenizer_2" -> a folder holding vocab.json and merges.txt.
    """
    target = Path(folder)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another output folder or delete it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        for name, weights in components.items():
            mx.save_safetensors(str(weights_file(staging, name)), weights, metadata={"format": "mlx"})
        for name, source in tokenizers.items():
            shutil.copytree(source, staging / name)
        (staging / MODEL_JSON).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
