"""`convert_model`: from a source (single file, diffusers folder, Hugging Face repo id) to a model folder.

Plan (detect, route, infer configs) -> read every tensor once, in file order, hashing as it goes ->
settle what needed the weights (the SD2 probe) -> check every component against our engine models ->
write atomically -> load the result back. Progress goes to a callback; `cancel` is polled between
tensors. Whatever happens, no half-written output folder is left behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from mlx_sd.config import ConfigError, ModelConfig
from mlx_sd.device import dtype_from_name
from mlx_sd.model_format import (
    MODEL_JSON, ModelFolderError, WeightsError, check_weights, remove_stale_folders, write_model,
)
from mlx_sd.pipeline import Pipeline, build_models

from . import hub
from .diffusers_folder import MODEL_INDEX, plan_diffusers_folder
from .errors import ConversionCancelled, ConversionError
from .local_paths import describe_missing, looks_like_path
from .options import ConversionProgress, ConversionReport, ConvertOptions
from .plan import ConversionPlan, Read, Weights
from .single_file import plan_single_file

ProgressCallback = Callable[[ConversionProgress], None]
CancelCheck = Callable[[], bool]
SCRATCH_MARK = "mlx-sd-convert-"  # mlx-sd-convert-<pid>-<random> in the temporary folder


def convert_model(
    source: str | Path,
    output: str | Path,
    options: ConvertOptions | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> ConversionReport:
    """Convert `source` into the mlx-sd model folder `output` (which must not exist yet)."""
    started = time.perf_counter()
    options = options or ConvertOptions()
    output = Path(output)
    if output.exists():
        raise ConversionError(f"output {output} already exists; choose another folder or delete it")
    notify: ProgressCallback = on_progress or (lambda progress: None)
    # what conversions killed mid-way (SIGKILL, power loss) left: their process is gone
    remove_stale_folders(output.parent)
    remove_stale_folders(Path(tempfile.gettempdir()), SCRATCH_MARK)

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise ConversionCancelled()

    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_MARK}{os.getpid()}-") as scratch:
        try:
            plan = _plan(str(source), options, Path(scratch), notify, check_cancel)
        except ConfigError as exc:  # shapes read from a damaged or hostile file
            raise ConversionError(f"{source}: its tensors describe no model mlx-sd can build ({exc})") from None
        weights, sha256 = read_weights(plan.reads, dtype_from_name(options.dtype), notify, check_cancel)
        if plan.after_read:
            plan.after_read(plan, weights)
        plan.config.source.sha256 = sha256
        _check(plan.config, weights)
        parameters = {name: sum(a.size for a in arrays.values()) for name, arrays in weights.items()}
        check_cancel()
        notify(ConversionProgress("write", 0, 1, str(output)))
        write_model(output, plan.config, weights, plan.tokenizers)
    del weights  # free the converted arrays before loading the result back
    try:
        notify(ConversionProgress("validate", 0, 1, str(output)))
        _validate(output, options.dtype)
        check_cancel()
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    notify(ConversionProgress("done", 1, 1, str(output)))
    return ConversionReport(
        output=output,
        source=plan.config.source.name,
        source_kind=plan.source_kind,
        family=plan.config.family,
        family_by=plan.family_by,
        prediction_type=plan.config.prediction_type,
        prediction_by=plan.prediction_by,
        in_channels=plan.config.unet.in_channels,
        default_size=plan.config.default_size,
        dtype=options.dtype,
        sha256=sha256,
        hashed=plan.hashed,
        parameters=parameters,
        notes=plan.notes,
        warnings=plan.warnings,
        dropped=plan.dropped,
        ignored=plan.ignored,
        seconds=time.perf_counter() - started,
    )


def _plan(
    source: str, options: ConvertOptions, scratch: Path, notify: ProgressCallback, check_cancel: Callable[[], None]
) -> ConversionPlan:
    path = Path(source).expanduser()
    try:
        mode = path.stat().st_mode  # not opened: a FIFO would block
    except OSError as exc:
        if looks_like_path(source):
            raise describe_missing(source, exc) from None
        if not hub.looks_like_repo_id(source):
            raise ConversionError(f"{source}: no such file or folder, and not a Hugging Face repo id (owner/name)") from None
        return _plan_hub(source, options, notify, check_cancel)
    if not stat.S_ISDIR(mode):
        return plan_single_file(path, options, scratch)  # which refuses what is not a regular file
    if (path / MODEL_JSON).is_file():
        raise ConversionError(f"{path} is already an mlx-sd model folder; there is nothing to convert")
    if not (path / MODEL_INDEX).is_file():
        raise ConversionError(
            f"{path} is a folder without {MODEL_INDEX}; expected a diffusers pipeline folder or a checkpoint file"
        )
    return plan_diffusers_folder(path, options, name=path.name, kind="diffusers folder")


def _plan_hub(source: str, options: ConvertOptions, notify: ProgressCallback, check_cancel: Callable[[], None]) -> ConversionPlan:
    notify(ConversionProgress("fetch", 0, 1, source))
    folder = hub.fetch(source, options.revision, options.variant, options.hub_cache)
    check_cancel()
    notify(ConversionProgress("fetch", 1, 1, source))
    name = source + (f"@{options.revision}" if options.revision else "")
    return plan_diffusers_folder(folder, options, name=name, kind="Hugging Face repo")


def read_weights(
    reads: list[Read], dtype: mx.Dtype, notify: ProgressCallback = lambda progress: None,
    check_cancel: Callable[[], None] = lambda: None,
) -> tuple[Weights, str]:
    """Read, route and convert every planned tensor; returns the weights and the SHA-256 of the hashed
    sources (a conversion's, and convert.vae_file's VAE read in memory)."""
    weights: Weights = {}
    hasher = hashlib.sha256()
    total = sum(len(read.routes) for read in reads)
    done = 0
    notify(ConversionProgress("read", 0, total, ""))
    for read in reads:
        for key, array in read.source.arrays(read.routes.keys(), hasher if read.hashed else None):
            converted = []
            for route in read.routes[key]:
                component = weights.setdefault(route.component, {})
                if route.name in component:
                    raise ConversionError(
                        f"{read.source.path.name}: two tensors map to {route.component} {route.name!r} "
                        f"(the second is {key!r})"
                    )
                try:
                    component[route.name] = route.apply(array, dtype)
                except ValueError as exc:  # mlx's own words for a shape that cannot take the transform
                    raise ConversionError(f"{read.source.path.name}: tensor {key!r} of shape {array.shape}: {exc}") from None
                converted.append(component[route.name])
            mx.eval(converted)  # drop the source array now: memory stays near the output size
            done += 1
            check_cancel()
            notify(ConversionProgress("read", done, total, key))
    return weights, hasher.hexdigest()


def _check(config: ModelConfig, weights: Weights) -> None:
    """Every parameter of every engine model present with the right shape, nothing extra."""
    try:
        models = build_models(config)
        for component, model in models.items():
            check_weights(model, weights.get(component, {}), component)
    except (WeightsError, ValueError) as exc:
        raise ConversionError(
            f"{exc}; the checkpoint is incomplete, damaged, or an architecture mlx-sd does not know"
        ) from None
    extra = sorted(set(weights) - set(models))
    if extra:
        raise ConversionError(
            f"the checkpoint has weights for {', '.join(extra)}, which a {config.family} model does not use"
        )


def _validate(output: Path, dtype: str) -> None:
    try:
        Pipeline.load(output, dtype=dtype)
    except (ModelFolderError, WeightsError) as exc:
        raise ConversionError(f"the converted model does not load ({exc}); this is a bug in the converter") from None
