"""Our MLX weight format: a folder with `model.json`, one safetensors file per component, tokenizers.

    model.json                 ModelConfig (format version, family, component configs, ...)
    unet.safetensors           weights in MLX layout (channels-last convs), diffusers parameter names
    vae.safetensors
    text_encoder.safetensors   absent for the SDXL refiner
    text_encoder_2.safetensors SDXL / refiner only
    tokenizer/, tokenizer_2/   vocab.json + merges.txt for each text encoder

Loading is strict: every parameter of the model must be present with the right shape, and nothing
else may be in the file.

A folder is written once, atomically, and its files are made read-only: a model the library owns
never changes under a loaded pipeline (which may have its weight files mapped), and `LoadedFiles`
notices before a generation when one did anyway.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .config import ModelConfig
from . import mapped_weights
from .dtypes import safetensors_code
from .safetensors_header import HeaderError, read_header
from .cpu.memory import prefault_heap
from .device import current_device, worker_streams

MODEL_JSON = "model.json"
TOKENIZER_FOR = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


class WeightsError(ValueError):
    """A weight file does not match the model it is loaded into."""


class ModelFolderError(ValueError):
    """A folder is not a usable converted model."""


class ModelChangedError(ModelFolderError):
    """A loaded model's files changed on disk since it was loaded."""


@dataclass(frozen=True)
class FileIdentity:
    """What tells a file from a rewritten, replaced or truncated one."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileIdentity | None":
        try:
            info = path.stat()
        except OSError:
            return None
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class LoadedFiles:
    """The weight files a pipeline was loaded from, as they were when loading began.

    `check()` before each generation: a file truncated under a mapping would crash the process with
    SIGBUS at its next read, and a file rewritten in place would silently change the images."""

    def __init__(self, paths: list[Path]):
        self.identities = {path: FileIdentity.of(path) for path in paths}

    @classmethod
    def of_model(cls, folder: Path, config: ModelConfig) -> "LoadedFiles":
        return cls([weights_file(folder, name) for name in ("unet", "vae", *config.text_encoders)])

    def check(self) -> None:
        """Raise ModelChangedError naming the first file that changed since loading."""
        for path, identity in self.identities.items():
            now = FileIdentity.of(path)
            if now != identity:
                what = "was removed" if now is None else "was replaced or rewritten"
                raise ModelChangedError(
                    f"{path} {what} after the model was loaded; load the model again to use the file as it is now"
                )


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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFolderError(f"{path} is damaged: it is not JSON ({exc.__class__.__name__})") from None
    try:
        return ModelConfig.from_dict(data)
    except ValueError as exc:  # config.ConfigError: names the field
        raise ModelFolderError(f"{path} is damaged: {exc}") from None


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
        header = read_header(path)  # the one validator, whether the file is then mapped or read
        mapped = mapped_weights.load(path, header)  # the page cache's own pages, where that is safe
        weights = mapped if mapped is not None else mx.load(str(path))
    except HeaderError as exc:
        raise ModelFolderError(f"{component}: cannot read {path.parent}/{exc}") from None
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


STAGING_MARK = ".partial-"  # .<name>.partial-<pid>-<random>: the pid says whether its writer still runs
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_model(
    folder: str | os.PathLike[str],
    config: ModelConfig,
    components: dict[str, dict[str, mx.array]],
    tokenizers: dict[str, Path],
) -> Path:
    """Write a model folder atomically: into a staging sibling, renamed into place when complete.

    `components` maps component name -> {parameter name: array} already in MLX layout and dtype;
    `tokenizers` maps "tokenizer"/"tokenizer_2" -> a folder holding vocab.json and merges.txt.
    Folders get the umask's permissions, files the umask's without write permission. On any failure
    (a full disk, a signal) nothing is left: not the staging folder, nor the parents it created.
    """
    target = Path(folder)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another output folder or delete it")
    created = _make_parents(target.parent)
    staging = target.parent / f".{target.name}{STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir()  # mode 0777 less the umask, as the user expects of a new folder
        for name, weights in components.items():
            write_safetensors(weights_file(staging, name), weights, {"format": "mlx"})
        for name, source in tokenizers.items():
            _copy_folder(Path(source), staging / name)
        (staging / MODEL_JSON).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        make_files_read_only(staging)
        os.replace(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:
            _remove_if_empty(parent)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise OSError(exc.errno, f"not enough space to write {target} ({os.strerror(exc.errno)}); nothing was kept") from None
        raise
    return target


def remove_stale_folders(parent: Path, mark: str = STAGING_MARK) -> list[Path]:
    """Remove the folders in `parent` named `...<mark><pid>-...` whose process is gone (killed mid-write)."""
    removed = []
    for path in parent.glob(f"*{mark}*") if parent.is_dir() else ():
        owner = path.name.rpartition(mark)[2].split("-")[0]
        if path.is_dir() and not path.is_symlink() and owner.isdigit() and not process_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # another user's process
    except (ProcessLookupError, OverflowError):
        return False
    return True


def write_safetensors(path: Path, arrays: dict[str, mx.array], metadata: dict[str, str]) -> None:
    """Write `arrays` as a safetensors file with Python's own file calls, so that a full disk is an
    OSError with its errno (mx.save_safetensors reports it as a RuntimeError without one)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, array in arrays.items():
        code = safetensors_code(str(array.dtype).rpartition(".")[2])
        if code is None:
            raise ValueError(f"{name}: safetensors has no element type for {array.dtype}")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    with path.open("xb") as file:
        file.write(len(text).to_bytes(8, "little") + text)
        for array in arrays.values():
            array = mx.contiguous(array.view(mx.uint16) if array.dtype == mx.bfloat16 else array)
            mx.eval(array)
            file.write(memoryview(array))


def _copy_folder(source: Path, target: Path) -> None:
    """Copy a tree's contents, giving the copies the umask's modes (not the source's, as copytree does)."""
    target.mkdir()
    for item in source.iterdir():
        if item.is_dir():
            _copy_folder(item, target / item.name)
        else:
            shutil.copyfile(item, target / item.name)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: someone else put something there meanwhile


def make_files_read_only(folder: Path) -> None:
    """Take the write bits off every file in `folder`: a model's files are written once, and only read-only
    weight files are mapped (mapped_weights), since a mapped file rewritten in place would change the
    loaded model."""
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
