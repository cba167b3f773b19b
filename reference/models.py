"""Our config dataclasses as the reference's torch modules (transformers / diffusers), default-initialised,
and diffusers folders saved as the hub repos are laid out.

Whoever needs torch weights for an architecture we describe (parity tests, the benchmark's random
full-size models, the demo model's training) builds and saves them here, so each config field maps one way.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import safetensors.torch
import torch
import transformers
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

from mlx_sd.config import CLIPTextConfig, UNetConfig, VAEConfig
from mlx_sd.tokenizer import BUNDLED_FOLDER, CONTEXT_LENGTH, EOS_TOKEN, OPENCLIP_PAD_TOKEN

TOKENIZER_FILES = ("vocab.json", "merges.txt")


def bundled_tokenizer(pad_token_id: int) -> transformers.CLIPTokenizer:
    """The bundled CLIP vocabulary as a transformers tokenizer padding with `pad_token_id`
    (0 for OpenCLIP, EOS for OpenAI CLIP), 77 tokens long."""
    missing = [name for name in TOKENIZER_FILES if not (BUNDLED_FOLDER / name).is_file()]
    if missing:
        raise FileNotFoundError(f"bundled tokenizer files missing in {BUNDLED_FOLDER}: {', '.join(missing)}")
    pad = OPENCLIP_PAD_TOKEN if pad_token_id == 0 else EOS_TOKEN
    return transformers.CLIPTokenizer.from_pretrained(
        str(BUNDLED_FOLDER), pad_token=pad, model_max_length=CONTEXT_LENGTH, local_files_only=True
    )


def text_encoder(config: CLIPTextConfig) -> transformers.CLIPTextModel | transformers.CLIPTextModelWithProjection:
    """CLIPTextModelWithProjection when the config has a projection (SDXL's bigG), else CLIPTextModel.
    How SD reads the tower (hidden_layer, final_norm) is not part of the torch module."""
    hf_config = transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        projection_dim=config.projection_dim or config.hidden_size,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    if config.projection_dim:
        return transformers.CLIPTextModelWithProjection(hf_config)
    return transformers.CLIPTextModel(hf_config)


def unet(config: UNetConfig) -> UNet2DConditionModel:
    # None fields are diffusers' defaults (it refuses num_attention_heads: its naming issue 2011).
    return UNet2DConditionModel(**{k: v for k, v in dataclasses.asdict(config).items() if v is not None})


def vae(config: VAEConfig) -> AutoencoderKL:
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        **dataclasses.asdict(config),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
    )


def hf_clip_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights with the classic `text_model.` prefix.

    transformers >= 5.6 flattened CLIPTextModel (no `text_model.` in its own state dict) while
    CLIPTextModelWithProjection still nests it; checkpoints always carry the prefix."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = value
    return out


def save_hub_layout(pipe: DiffusionPipeline, folder: str | Path) -> Path:
    """save_pretrained (safetensors), laid out as the real hub repos are.

    Two fixes over a plain transformers 5 save: tokenizer folders also get vocab.json and merges.txt
    (the bundled CLIP vocabulary; it writes only tokenizer.json), and text-encoder weights keep the
    `text_model.` key prefix (it drops the prefix of CLIPTextModel; hub repos and transformers 4 have it)."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (folder / tokenizer).is_dir():
            for name in TOKENIZER_FILES:
                shutil.copyfile(BUNDLED_FOLDER / name, folder / tokenizer / name)
    for encoder in ("text_encoder", "text_encoder_2"):
        weights = folder / encoder / "model.safetensors"
        if weights.is_file():
            state = {k: v.contiguous() for k, v in hf_clip_state(getattr(pipe, encoder)).items()}
            safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    return folder
