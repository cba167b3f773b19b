"""Upscaler model files as users download them: which network, at what size, and its weights under
the engine's names (mlx_sd/upscalers).

Supported: RRDBNet in its three key layouts (ESRGAN's original `model.N...` Sequential, BSRGAN's
`RRDB_trunk...`, Real-ESRGAN's `body.N.rdbK...`), with or without pixel-unshuffled input, and
SRVGGNetCompact (`body.N`, convolutions and PReLUs alternating). Everything is read from the keys
and shapes: nothing in the file's name matters.

`.pth` files (the form these models are published in) are read with torch's weights-only unpickler,
which builds tensors and plain containers and never runs code from the file; `.safetensors` directly.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten
from mlx_sd.model_format import WeightsError, check_weights
from mlx_sd.pickle_files import PICKLE_SUFFIXES
from mlx_sd.upscalers import CompactConfig, RRDBNetConfig, UpscalerConfig, build_upscaler

from .errors import ConversionError
from .pickle_file import PickleCheckpoint
from .safetensors_file import SafetensorsFile

UPSCALER_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

Shapes = dict[str, tuple[int, ...]]

# RRDBNet's dense-block convolutions in each layout -> (block, rdb, conv, weight|bias)
_DENSE_LAYOUTS = (
    re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)"),  # ESRGAN (old architecture)
    re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)"),  # BSRGAN, RealSR
    re.compile(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)"),  # Real-ESRGAN
)
# The other RRDBNet layers in the two newer layouts (the old one numbers them, see _old_layers)
_NAMED_LAYERS = {
    "conv_first": "conv_first", "trunk_conv": "conv_body", "conv_body": "conv_body",
    "HRconv": "conv_hr", "conv_hr": "conv_hr", "conv_last": "conv_last",
}
_UPCONV = re.compile(r"(?:upconv|conv_up)(\d+)")
_COMPACT = re.compile(r"body\.(\d+)\.(weight|bias)")
# Key fragments of models that are not upscalers mlx-sd runs, to name them in the error
_OTHER_MODELS = (
    ("model.diffusion_model.", "a Stable Diffusion checkpoint"),
    ("residual_group", "a transformer upscaler (SwinIR, HAT or similar)"),
    (".conv1x1.", "an ESRGAN+ model"),
    ("lora_", "a LoRA"),
)


@dataclass(frozen=True)
class UpscalerFile:
    """What an upscaler file holds: `config` and, for each engine key, the file's key."""

    config: UpscalerConfig
    sources: dict[str, str]

    @property
    def description(self) -> str:
        c = self.config
        if isinstance(c, RRDBNetConfig):
            return f"ESRGAN (RRDBNet, {c.blocks} blocks, {c.features} features, {c.scale}x)"
        return f"Real-ESRGAN compact (SRVGGNetCompact, {c.convs} convolutions, {c.features} features, {c.scale}x)"


def _unknown(name: str, shapes: Shapes) -> ConversionError:
    for fragment, what in _OTHER_MODELS:
        if any(fragment in key for key in shapes):
            found = what
            break
    else:
        sample = ", ".join(repr(k) for k in sorted(shapes)[:3]) or "no tensors"
        found = f"{len(shapes)} tensors ({sample}{', ...' if len(shapes) > 3 else ''})"
    return ConversionError(
        f"{name} is not an upscaler architecture mlx-sd knows: found {found}; supported are ESRGAN-family "
        "models (RRDBNet: ESRGAN, Real-ESRGAN x4plus/x2plus/anime_6B, 4x-UltraSharp, Remacri) and "
        "Real-ESRGAN compact models (SRVGGNetCompact: realesr-general-x4v3, realesr-animevideov3)"
    )


def _old_layers(shapes: Shapes) -> dict[str, str]:
    """ESRGAN's Sequential: 0 first conv, 1 the trunk (its last entry is the trunk's conv), then one
    (upsample, conv, activation) triple per 2x step, the HR conv, an activation, the last conv."""
    top = sorted({int(k.split(".")[1]) for k in shapes if re.fullmatch(r"model\.\d+\.(weight|bias)", k)})
    trunk = [int(m.group(1)) for k in shapes if (m := re.fullmatch(r"model\.1\.sub\.(\d+)\.weight", k))]
    if len(top) < 3 or top[0] != 0 or not trunk:
        return {}
    *upconvs, hr, last = top[1:]
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last"} | {n: f"upconvs.{i}" for i, n in enumerate(upconvs)}
    sources = {f"{names[n]}.{kind}": f"model.{n}.{kind}" for n in top for kind in ("weight", "bias")}
    sources |= {f"conv_body.{kind}": f"model.1.sub.{max(trunk)}.{kind}" for kind in ("weight", "bias")}
    return sources


def _rrdbnet(shapes: Shapes) -> UpscalerFile | None:
    sources: dict[str, str] = {}
    for layout in _DENSE_LAYOUTS:
        for key in shapes:
            if m := layout.fullmatch(key):
                block, rdb, conv, kind = m.groups()
                sources[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = key
        if sources:
            break
    if not sources:
        return None
    if "model.0.weight" in shapes:
        sources |= _old_layers(shapes)
    else:
        upconvs = sorted({(int(m.group(1)), m.group(0)) for k in shapes if (m := _UPCONV.match(k))})
        for i, (_, layer) in enumerate(upconvs):
            sources |= {f"upconvs.{i}.{kind}": f"{layer}.{kind}" for kind in ("weight", "bias")}
        for key in shapes:
            layer, _, kind = key.rpartition(".")
            if layer in _NAMED_LAYERS:
                sources[f"{_NAMED_LAYERS[layer]}.{kind}"] = key
    needed = ("conv_first.weight", "conv_last.weight", "body.0.rdb1.conv1.weight")
    if any(sources.get(k) not in shapes for k in needed):
        return None
    first, last = shapes[sources["conv_first.weight"]], shapes[sources["conv_last.weight"]]
    in_channels, out_channels = first[1], last[0]
    # Real-ESRGAN x2plus (and 1x models) pixel-unshuffle the image: 4 or 16 times the channels go in
    unshuffle = 1
    for factor in (2, 4):
        if in_channels == out_channels * factor * factor:
            unshuffle, in_channels = factor, out_channels
    config = RRDBNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        features=first[0],
        blocks=1 + max(int(k.split(".")[1]) for k in sources if k.startswith("body.")),
        growth=shapes[sources["body.0.rdb1.conv1.weight"]][0],
        upsamplings=sum(1 for k in sources if k.startswith("upconvs.") and k.endswith(".weight")),
        unshuffle=unshuffle,
    )
    return UpscalerFile(config, sources)


def _compact(shapes: Shapes) -> UpscalerFile | None:
    layers = {int(m.group(1)) for k in shapes if (m := _COMPACT.fullmatch(k))}
    if not layers or len(shapes.get("body.0.weight", ())) != 4 or len(shapes.get("body.1.weight", ())) != 1:
        return None
    last = max(layers)
    in_channels, features = shapes["body.0.weight"][1], shapes["body.0.weight"][0]
    shuffled = shapes[f"body.{last}.weight"][0]
    scale = math.isqrt(shuffled // in_channels)
    if scale * scale * in_channels != shuffled:  # outputs as many channels as it takes, as every known model
        return None
    config = CompactConfig(
        in_channels=in_channels, out_channels=in_channels, features=features, convs=(last - 2) // 2, scale=scale
    )
    sources = {k: k for k in shapes if _COMPACT.fullmatch(k)}
    return UpscalerFile(config, sources)


def detect_upscaler(shapes: Shapes, name: str) -> UpscalerFile:
    """The architecture of the file called `name` holding tensors of these `shapes`, or a
    ConversionError in one line naming what was found instead."""
    found = _rrdbnet(shapes) or _compact(shapes)
    if found is None:
        raise _unknown(name, shapes)
    return found


def _open(path: Path) -> SafetensorsFile | PickleCheckpoint:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsFile(path)
    if suffix in PICKLE_SUFFIXES:
        return PickleCheckpoint(path)
    raise ConversionError(
        f"{path.name}: an upscaler model is a {', '.join(UPSCALER_SUFFIXES)} file, not {suffix or 'a file without suffix'}"
    )


def read_upscaler(path: str | os.PathLike[str]) -> tuple[nn.Module, UpscalerFile]:
    """The upscaler network in `path` with its weights (float32), and what the file holds."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"upscaler model {path} does not exist")
    source = _open(path)
    shapes = {name: tuple(info.shape) for name, info in source.tensors.items()}
    found = detect_upscaler(shapes, path.name)
    by_source = {v: k for k, v in found.sources.items()}
    weights: dict[str, mx.array] = {}
    for name, array in source.arrays(set(by_source)):
        # torch convolutions are (out, in, kh, kw); MLX's are (out, kh, kw, in)
        weights[by_source[name]] = (array.transpose(0, 2, 3, 1) if array.ndim == 4 else array).astype(mx.float32)
    model = build_upscaler(found.config)
    try:
        check_weights(model, weights, f"{path.name} ({found.description})")
    except WeightsError as exc:
        raise ConversionError(str(exc)) from None
    model.update(tree_unflatten(list(weights.items())))
    mx.eval(model.parameters())
    return model, found
