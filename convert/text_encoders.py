"""Text-encoder key tables (docs/facts.md §2.7): OpenAI CLIP in transformers naming (with A1111's repair of
files that lost the `text_model.` level) and OpenCLIP naming -> transformers CLIPTextModel names.

A table maps one source key to a list of (target name, transform) pairs: usually one pair, three for
OpenCLIP's fused q/k/v projection, none for keys that are known and deliberately dropped. None means
the table does not know the key.
"""

from __future__ import annotations

import re

from .layout import Rows, Transform, Transpose

Targets = list[tuple[str, Transform | None]]

_CLIP_RE = re.compile(
    r"text_model\.(embeddings\.(token|position)_embedding\.weight"
    r"|encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|layer_norm[12]|mlp\.fc[12])\.(weight|bias)"
    r"|final_layer_norm\.(weight|bias))$|text_projection\.weight$"
)
_OPENCLIP_FIXED = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_RESBLOCK_RE = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ_RE = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
OPENCLIP_JUNK = ("logit_scale", "attn_mask")


def clip_targets(key: str) -> Targets | None:
    """A CLIP text key (prefix removed) in transformers naming -> targets."""
    if key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
        key = f"text_model.{key}"  # old files omit this level; A1111 inserts it the same way
    if key.endswith("embeddings.position_ids"):
        return []
    return [(key, None)] if _CLIP_RE.match(key) else None


def openclip_targets(key: str, drop_layer: int | None, keep_projection: bool) -> Targets | None:
    """An OpenCLIP text key (prefix removed) -> targets.

    `drop_layer`: the resblock SD2 does not use (diffusers keeps 23 of its 24 layers, docs/facts.md §1.4);
    `keep_projection`: SDXL's bigG keeps `text_projection` (stored [in, out], transposed here).
    """
    if key in _OPENCLIP_FIXED:
        return [(_OPENCLIP_FIXED[key], None)]
    if key == "text_projection":
        return [("text_projection.weight", Transpose())] if keep_projection else []
    if key in OPENCLIP_JUNK:
        return []
    fused = _IN_PROJ_RE.match(key)
    if fused:
        layer, tail = fused.groups()
        if drop_layer is not None and int(layer) == drop_layer:
            return []
        prefix = f"text_model.encoder.layers.{layer}.self_attn"
        return [(f"{prefix}.{name}_proj.{tail}", Rows(part)) for part, name in enumerate("qkv")]
    block = _RESBLOCK_RE.match(key)
    if block:
        layer, inner, tail = block.groups()
        if drop_layer is not None and int(layer) == drop_layer:
            return []
        if inner in _OPENCLIP_BLOCK:
            return [(f"text_model.encoder.layers.{layer}.{_OPENCLIP_BLOCK[inner]}.{tail}", None)]
    return None
