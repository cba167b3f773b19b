"""`convert_model`: from a source (single file, diffusers folder, Hugging Face repo id) to a model folder.

Plan (detect, route, infer configs) -> read every tensor once, in file order, hashing as it goes ->
settle what needed the weights (the SD2 probe) -> check every component against our engine models ->
write atomically -> load the result back. Progress goes to a callback; `cancel` is polled between
tensors. Whatever happens, no half-written output folder is left behind.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from mlx_sd.config import ModelConfig
from mlx_sd.device import dtype_from_name
from mlx_sd.model_format import MODEL_JSON, ModelFolderError, WeightsError, check_weights, write_model
from mlx_sd.pipeline import Pipeline, build_models

from . import hub
from .diffusers_folder import MODEL_INDEX, plan_diffusers_folder
from .errors import ConversionCancelled, ConversionError
from .options import ConversionReport, ConvertOptions, Progress
from .plan import Plan, Weights
from .single_file import plan_single_file

ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


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

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise ConversionCancelled()

    with tempfile.TemporaryDirectory(prefix="mlx-sd-convert-") as scratch:
        plan = _plan(str(source), options, Path(scratch), notify, check_cancel)
        weights, sha256 = _read(plan, dtype_from_name(options.dtype), notify, check_cancel)
        if plan.after_read:
            plan.after_read(plan, weights)
        plan.config.source.sha256 = sha256
        _check(plan.config, weights)
        parameters = {name: sum(a.size for a in arrays.values()) for name, arrays in weights.items()}
        check_cancel()
        notify(Progress("write", 0, 1, str(output)))
        write_model(output, plan.config, weights, plan.tokenizers)
    del weights  # free the converted arrays before loading the result back
    try:
        notify(Progress("validate", 0, 1, str(output)))
        _validate(output, options.dtype)
        check_cancel()
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    notify(Progress("done", 1, 1, str(output)))
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
) -> Plan:
    path = Path(source).expanduser()
    if path.is_file():
        return plan_single_file(path, options, scratch)
    if path.is_dir():
        if (path / MODEL_JSON).is_file():
            raise ConversionError(f"{path} is already an mlx-sd model folder; there is nothing to convert")
        if not (path / MODEL_INDEX).is_file():
            raise ConversionError(
                f"{path} is a folder without {MODEL_INDEX}; expected a diffusers pipeline folder or a checkpoint file"
            )
        return plan_diffusers_folder(path, options, name=path.name, kind="diffusers folder")
    if hub.looks_like_repo_id(source):
        notify(Progress("fetch", 0, 1, source))
        folder = hub.fetch(source, options.revision, options.variant, options.hub_cache)
        check_cancel()
        notify(Progress("fetch", 1, 1, source))
        name = source + (f"@{options.revision}" if options.revision else "")
        return plan_diffusers_folder(folder, options, name=name, kind="Hugging Face repo")
    raise ConversionError(f"{source}: no such file or folder, and not a Hugging Face repo id (owner/name)")


def _read(
    plan: Plan, dtype: mx.Dtype, notify: ProgressCallback, check_cancel: Callable[[], None]
) -> tuple[Weights, str]:
    """Read, route and convert every planned tensor; returns the weights and the SHA-256 of the hashed source."""
    weights: Weights = {}
    hasher = hashlib.sha256()
    total = sum(len(read.routes) for read in plan.reads)
    done = 0
    notify(Progress("read", 0, total, ""))
    for read in plan.reads:
        for key, array in read.source.arrays(read.routes.keys(), hasher if read.hashed else None):
            converted = []
            for route in read.routes[key]:
                component = weights.setdefault(route.component, {})
                if route.name in component:
                    raise ConversionError(
                        f"{read.source.path.name}: two tensors map to {route.component} {route.name!r} "
                        f"(the second is {key!r})"
                    )
                component[route.name] = route.apply(array, dtype)
                converted.append(component[route.name])
            mx.eval(converted)  # drop the source array now: memory stays near the output size
            done += 1
            check_cancel()
            notify(Progress("read", done, total, key))
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
