"""Which of our layers a LoRA key belongs to.

A LoRA key is `<module name>.<part>`: the part says what the tensor is (`lora_down.weight`, `hada_w1_a`,
`alpha`, ...), the module name which layer it changes, in one of the spellings users download
(docs/facts.md §2.5 for the LDM names):

- kohya / A1111: `lora_unet_<path with _ for .>`, `lora_te_`, SDXL `lora_te1_` / `lora_te2_`; UNet paths
  in diffusers spelling or in the original LDM / SGM spelling (`input_blocks_4_1_...`), which the
  shared key table (mlx_sd.ldm_unet_keys) turns into diffusers names;
- diffusers / PEFT: `unet.<path>`, `text_encoder.<path>`, `text_encoder_2.<path>`.

Our parameter names are diffusers' / transformers' names, so a resolved module is a path in our models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import mlx.nn as nn
from mlx.utils import tree_flatten

from ..ldm_unet_keys import unet_key

# A key's part -> our name for it. PEFT's lora_A / lora_B and diffusers' old lora.down / lora.up are a
# plain LoRA's down / up. Longer suffixes come first so `lora.down.weight` is not read as `weight`.
PARTS: dict[str, str] = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
    "lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
    "alpha": "alpha", "dora_scale": "dora_scale",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b", "lokr_t2": "lokr_t2",
    "diff": "diff", "diff_b": "diff_b",
}  # fmt: skip
_PART_SUFFIXES = sorted(PARTS, key=len, reverse=True)

# Prefix of a module name -> the component it changes.
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}  # fmt: skip
PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
BUNDLED_EMBEDDING_PREFIX = "bundle_emb."

# kohya's LDM spelling with `_` for `.` -> dotted LDM names for ldm_unet_keys.unet_key.
_LDM_BLOCK_RE = re.compile(r"(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$")
_LDM_MIDDLE_RE = re.compile(r"middle_block_(\d+)_(.+)$")
_LDM_FIXED_RE = re.compile(r"(time_embed|out)_(\d+)$|label_emb_0_(\d+)$")
_LDM_RESNET_PART_RE = re.compile(r"(in_layers|emb_layers|out_layers)_(\d+)$")
_LDM_TRANSFORMER_RE = re.compile(r"transformer_blocks_(\d+)_(.+)$")


def split_key(key: str) -> tuple[str, str] | None:
    """`<module>.<part>` -> (module, part name), None when the key has no LoRA part."""
    for suffix in _PART_SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)].endswith("."):
            return key[: -len(suffix) - 1], PARTS[suffix]
    return None


def _ldm_rest(rest: str) -> str:
    resnet = _LDM_RESNET_PART_RE.match(rest)
    if resnet:
        return f"{resnet.group(1)}.{resnet.group(2)}"
    transformer = _LDM_TRANSFORMER_RE.match(rest)
    # inside a transformer the names are diffusers' already; unet_key passes them through
    return f"transformer_blocks.{transformer.group(1)}.{transformer.group(2)}" if transformer else rest


def ldm_to_diffusers(name: str, layers_per_block: int) -> str | None:
    """A kohya UNet module name in LDM / SGM spelling -> the diffusers module path with `_` for `.`."""
    if name == "input_blocks_0_0":
        dotted = "input_blocks.0.0"
    elif block := _LDM_BLOCK_RE.match(name):
        dotted = f"{block.group(1)}.{block.group(2)}.{block.group(3)}.{_ldm_rest(block.group(4))}"
    elif middle := _LDM_MIDDLE_RE.match(name):
        dotted = f"middle_block.{middle.group(1)}.{_ldm_rest(middle.group(2))}"
    elif fixed := _LDM_FIXED_RE.match(name):
        dotted = f"{fixed.group(1)}.{fixed.group(2)}" if fixed.group(1) else f"label_emb.0.{fixed.group(3)}"
    else:
        return None
    target = unet_key(f"{dotted}.weight", layers_per_block)
    return target.removesuffix(".weight").replace(".", "_") if target else None


class LayerIndex:
    """Our models' weighted layers, found by any spelling of their name."""

    def __init__(self, models: Mapping[str, nn.Module], layers_per_block: int):
        self.models = models
        self.layers_per_block = layers_per_block
        self._paths: dict[str, set[str]] = {}
        self._underscored: dict[str, dict[str, str]] = {}
        for component, model in models.items():
            paths = {name.removesuffix(".weight") for name, _ in tree_flatten(model.parameters()) if name.endswith(".weight")}
            self._paths[component] = paths
            self._underscored[component] = {path.replace(".", "_"): path for path in paths}

    def resolve(self, module: str) -> tuple[str, str] | None:
        """A LoRA module name -> (component, module path in our model), None when no layer matches."""
        for prefix, component in PEFT_PREFIXES.items():
            if module.startswith(prefix) and component in self._paths:
                path = self._find(component, module[len(prefix):], ".")
                return (component, path) if path else None
        for prefix, component in KOHYA_PREFIXES.items():
            if module.startswith(prefix) and component in self._paths:
                name = module[len(prefix):]
                if component == "unet" and name not in self._underscored[component]:
                    name = ldm_to_diffusers(name, self.layers_per_block) or name
                path = self._find(component, name, "_")
                return (component, path) if path else None
        return None

    def _find(self, component: str, name: str, separator: str) -> str | None:
        """Our path of `name` (dotted or underscored) in `component`, also when a text encoder's name lacks
        its `text_model` level (transformers 5 and some trainers drop it; the converter repairs it alike)."""
        dotted = separator == "."
        for candidate in (name, f"text_model{separator}{name}" if component != "unet" else None):
            if dotted and candidate in self._paths[component]:
                return candidate
            if not dotted and candidate in self._underscored[component]:
                return self._underscored[component][candidate]
        return None
