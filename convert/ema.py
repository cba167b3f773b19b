"""EMA UNet weights: LDM stores them under `model_ema.` with every dot of the rest of the name removed
(`model_ema.diffusion_modelinput_blocks10in_layers0weight`). Files that carry only these need the dots
put back, which the finite vocabulary of LDM UNet names makes unambiguous."""

from __future__ import annotations

import re

from mlx_sd.ldm_unet_keys import PREFIX as UNET_PREFIX

_EMA_UNET = "model_ema.diffusion_model"
# Every word of an LDM UNet key; longest first so that `out_layers` wins over `out`, `norm1` over `norm`.
_WORDS = sorted(
    """input_blocks middle_block output_blocks time_embed label_emb out in_layers emb_layers out_layers
    skip_connection op conv norm norm1 norm2 norm3 proj_in proj_out transformer_blocks attn1 attn2
    to_q to_k to_v to_out ff net proj weight bias""".split(),
    key=len,
    reverse=True,
)
_TOKEN_RE = re.compile("|".join(_WORDS) + r"|\d+")


def has_ema(keys: set[str] | dict) -> bool:
    """LDM's own test: a file with more than 100 EMA UNet keys carries EMA weights."""
    return sum(1 for key in keys if key.startswith(_EMA_UNET)) > 100


def ema_name(ldm_key: str) -> str:
    """`model.diffusion_model.a.b.c` -> its EMA copy's name."""
    return _EMA_UNET + ldm_key[len(UNET_PREFIX):].replace(".", "")


def restore_dots(ema_key: str) -> str | None:
    """`model_ema.diffusion_model<dotless>` -> `model.diffusion_model.<dotted>`, None if not a UNet name."""
    if not ema_key.startswith(_EMA_UNET):
        return None
    rest = ema_key[len(_EMA_UNET):]
    tokens = _TOKEN_RE.findall(rest)
    if "".join(tokens) != rest:
        return None
    parts: list[str] = []
    for token in tokens:
        if token.isdigit() and parts and parts[-1] in ("input_blocks", "output_blocks"):
            parts += [token[:-1], token[-1]] if len(token) > 1 else [token]  # block number, then a 1-digit part
        elif token.isdigit() and parts and parts[-1] == "label_emb":
            parts += [token[0], token[1:]]  # always `label_emb.0.<0|2>`
        else:
            parts.append(token)
    return UNET_PREFIX + ".".join(parts)
