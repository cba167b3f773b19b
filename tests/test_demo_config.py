"""The demo model's configs are ours: the torch modules built from them save configs that our
dataclasses read back unchanged, and the noise schedule is Stable Diffusion's."""

import dataclasses
import json

import pytest
import torch
from diffusers import DDPMScheduler

from mlx_sd.config import CLIPTextConfig, UNetConfig, VAEConfig
from mlx_sd.tokenizer import BUNDLED_FOLDER
from training.demo_config import IMAGE_SIZE, NOISE_SCHEDULE, TEXT_ENCODER, UNET, VAE
from reference.models import text_encoder as build_text_encoder
from reference.models import unet as build_unet
from reference.models import vae as build_vae
from training.torch_models import alphas_cumprod, load_tokenizer


def saved_config(module, tmp_path) -> dict:
    module.save_pretrained(str(tmp_path))
    return json.loads((tmp_path / "config.json").read_text())


def test_unet_config_round_trips(tmp_path):
    unet = build_unet(UNET)
    assert UNetConfig.from_dict(saved_config(unet, tmp_path)) == UNET
    assert UNET.cross_attention_dim == TEXT_ENCODER.hidden_size
    assert all(c % UNET.norm_num_groups == 0 for c in UNET.block_out_channels)


def test_vae_config_round_trips(tmp_path):
    vae = build_vae(VAE)
    assert VAEConfig.from_dict(saved_config(vae, tmp_path)) == VAE
    assert IMAGE_SIZE // VAE.downscale == UNET.sample_size == 16


def test_text_encoder_config_round_trips(tmp_path):
    encoder = build_text_encoder(TEXT_ENCODER)
    saved = saved_config(encoder, tmp_path)
    # transformers writes a projection_dim for every CLIP text config (SD1's says 768); a plain
    # CLIPTextModel has no projection, which the architecture name tells.
    assert saved["architectures"] == ["CLIPTextModel"]
    read_back = CLIPTextConfig.from_dict({k: v for k, v in saved.items() if k != "projection_dim"})
    # transformers does not store how SD reads the tower; SD1's default (last layer, final norm) applies
    assert read_back == TEXT_ENCODER
    assert (TEXT_ENCODER.hidden_layer, TEXT_ENCODER.final_norm, TEXT_ENCODER.hidden_act) == (-1, True, "quick_gelu")


def test_the_model_is_small():
    counts = {name: sum(p.numel() for p in build(cfg).parameters())
              for name, build, cfg in (("te", build_text_encoder, TEXT_ENCODER), ("unet", build_unet, UNET),
                                       ("vae", build_vae, VAE))}
    assert sum(counts.values()) * 2 < 20e6, counts  # bytes at float16


def test_unet_runs_on_16x16_latents_with_the_text_context():
    unet = build_unet(UNET).eval()
    context = torch.randn(2, 77, TEXT_ENCODER.hidden_size)
    with torch.no_grad():
        out = unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), context).sample
    assert out.shape == (2, 4, 16, 16)


def test_the_bundled_tokenizer_gives_the_standard_ids():
    tokenizer = load_tokenizer(BUNDLED_FOLDER)
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and len(ids) == 77
    assert ids[7:] == [TEXT_ENCODER.pad_token_id] * 70


def test_missing_tokenizer_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected vocab.json and merges.txt in"):
        load_tokenizer(tmp_path)


def test_noise_schedule_is_sd_scaled_linear():
    ours = alphas_cumprod(NOISE_SCHEDULE)
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    assert torch.equal(ours, reference)
    assert abs(float(ours[0]) - 0.99915) < 1e-6 and abs(float(ours[-1]) - 0.0046601) < 1e-6
    assert dataclasses.asdict(NOISE_SCHEDULE) == {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    }
