"""The app's settings: a typed dataclass, stored as JSON, restored on the next start.

Qt-free: the caller passes the file location (from QStandardPaths) and the default library folder.
A value of the wrong type in the file falls back to its default instead of breaking the start.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_sd.device import PRECISIONS as CPU_PRECISIONS  # of the CPU's products
from mlx_sd.upscalers.tiling import DEFAULT_TILE
from server.exposure import DEFAULT_PORT  # light: no server stack

OUTPUT_FORMATS = ("png", "jpeg", "webp")
PRECISIONS = ("float16", "bfloat16", "float32")
DEVICES = ("gpu", "cpu")



# What the app says of a pickle while Settings > Allow pickle files is off ({name}: the file's name).
PICKLES_OFF = (
    "{name} is a pickle file, which can run code when it is opened. If you trust it, enable 'Allow pickle files' "
    "in Settings (it is then read with a weights-only unpickler), or use a .safetensors version."
)

@dataclass
class Preset:
    """A named set of generation parameters (the built-in ones and the user's own)."""

    name: str
    params: dict[str, Any]


@dataclass
class AppSettings:
    library_folder: str = ""  # "" means the platform's app data folder
    default_model: str = ""  # a model folder name in the library's models/, or "demo"
    precision: str = "float16"  # storage dtype for conversions; the CPU computes in float32 anyway
    low_memory: bool = False  # release the text encoders before the UNet runs
    dash_lines_negative: bool = False  # prompt lines starting with `-` go to the negative prompt
    compute_device: str = "gpu"  # used when MLX offers a GPU
    cpu_precision: str = "float32"  # of the CPU's products: "bfloat16" is faster where the CPU has AVX512_BF16
    preview_every: int = 1  # live preview every N steps (0 = off)
    output_format: str = "png"
    prompt_prefix: str = ""
    prompt_suffix: str = ""
    user_presets: list[Preset] = field(default_factory=list)
    serve_api: bool = False  # serve the A1111 API on 127.0.0.1 with the app's model and queue
    api_port: int = DEFAULT_PORT  # A1111's
    model_vaes: dict[str, str] = field(default_factory=dict)  # model name -> its VAE (a library VAE's name)
    upscale_tile: int = DEFAULT_TILE  # input pixels a side an upscaler model runs on at once (0: whole pictures)
    allow_pickle: bool = False  # read .pt/.ckpt LoRAs, embeddings and VAEs (weights-only unpickler)

    def validated(self) -> "AppSettings":
        """A copy with every out-of-range value replaced by its default."""
        default = AppSettings()
        fixed = dataclasses.replace(self)
        if fixed.precision not in PRECISIONS:
            fixed.precision = default.precision
        if fixed.compute_device not in DEVICES:
            fixed.compute_device = default.compute_device
        if fixed.cpu_precision not in CPU_PRECISIONS:
            fixed.cpu_precision = default.cpu_precision
        if fixed.output_format not in OUTPUT_FORMATS:
            fixed.output_format = default.output_format
        if fixed.preview_every < 0:
            fixed.preview_every = default.preview_every
        if not 1 <= fixed.api_port <= 65535:
            fixed.api_port = default.api_port
        fixed.model_vaes = {k: v for k, v in fixed.model_vaes.items() if isinstance(k, str) and isinstance(v, str)}
        if fixed.upscale_tile < 0:
            fixed.upscale_tile = default.upscale_tile
        return fixed


def library_path(folder: str, default: Path) -> Path:
    """The library folder a `library_folder` setting means ("" is the platform default, `default`)."""
    return Path(folder).expanduser() if folder else default


def load_settings(path: str | os.PathLike[str]) -> AppSettings:
    """Settings from `path`; defaults for a missing or unreadable file and for each bad value."""
    values = typed_values(AppSettings, read_json_object(path))
    if "user_presets" in values:
        values["user_presets"] = [
            Preset(str(p["name"]), dict(p["params"]))
            for p in values["user_presets"] if isinstance(p, dict) and isinstance(p.get("params"), dict) and "name" in p
        ]
    return AppSettings(**values).validated()


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in `path`; empty for a missing, unreadable or malformed file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def typed_values(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The values in `data` for the dataclass `cls`'s fields that have their default's type (a hand-edited
    file's wrong value falls back to the default instead of breaking the start)."""
    default = cls()
    return {
        f.name: data[f.name] for f in dataclasses.fields(cls)
        if f.name in data and type(data[f.name]) is type(getattr(default, f.name))
    }


def save_settings(settings: AppSettings, path: str | os.PathLike[str]) -> None:
    write_json(dataclasses.asdict(settings), path)


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write atomically, so a crash mid-save never leaves a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.partial")
    temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, target)
