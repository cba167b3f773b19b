"""The training command end to end on a tiny recipe: a loadable diffusers folder, reproducible from the seed."""

import dataclasses
import hashlib
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from mlx_sd.config import CLIPTextConfig, UNetConfig, VAEConfig
from training.demo_config import DiffusionTraining, TrainingRecipe, VAETraining
from training.train_demo import main, train
from training.train_diffusion import loss_weights

TINY = TrainingRecipe(
    seed=5,
    dataset_size=48,
    held_out=8,
    vae=VAETraining(steps=3, batch_size=4, warmup_steps=1),
    diffusion=DiffusionTraining(steps=3, batch_size=4, warmup_steps=1),
    text_encoder=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1),
    unet=UNetConfig(
        sample_size=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 32), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=2,
    ),
    vae_config=VAEConfig(block_out_channels=(32, 32, 32), layers_per_block=1, sample_size=64),
)


def weights_digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.slow
def test_tiny_training_is_reproducible_and_loadable(tmp_path):
    reports = [train(dataclasses.replace(TINY), tmp_path / name, log=lambda message: None) for name in ("a", "b")]
    first, second = weights_digest(tmp_path / "a"), weights_digest(tmp_path / "b")
    assert len(first) == 3 and first == second
    assert reports[0]["parameters"] == reports[1]["parameters"]

    folder = tmp_path / "a"
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (folder / "tokenizer").iterdir()}
    report = json.loads((folder / "training.json").read_text())
    assert set(report["seconds"]) == {"dataset", "vae", "encode", "diffusion", "total"}
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == report["recipe"]["vae_config"]["scaling_factor"] != 0.18215

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a blue background", height=64, width=64, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_a_different_seed_gives_different_weights(tmp_path):
    recipe = dataclasses.replace(TINY, dataset_size=8, vae=VAETraining(steps=1, batch_size=2, warmup_steps=1),
                                 diffusion=DiffusionTraining(steps=1, batch_size=2, warmup_steps=1))
    train(dataclasses.replace(recipe, seed=1), tmp_path / "one", log=lambda message: None)
    train(dataclasses.replace(recipe, seed=2), tmp_path / "two", log=lambda message: None)
    assert weights_digest(tmp_path / "one") != weights_digest(tmp_path / "two")


def test_the_command_refuses_an_existing_output(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path)])
    assert "already exists; choose a new folder" in capsys.readouterr().err


def test_min_snr_weights():
    alpha_bar = torch.tensor([0.999, 5 / 6, 0.5, 0.01])  # SNR 999, 5, 1, ~0.01
    weights = loss_weights(alpha_bar, snr_gamma=5.0)
    assert torch.allclose(weights, torch.tensor([5 / 999, 1.0, 1.0, 1.0]), rtol=1e-4)
    assert torch.equal(loss_weights(alpha_bar, None), torch.ones(4))
