"""`GenerationRequest.vae` / `--vae`: another VAE per generation, as a single LDM or diffusers file, a diffusers
`vae` folder or a library name, gives the image of the model converted with that VAE built in; only the VAE
is swapped; bad VAEs get one line each."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from convert.options import ConvertOptions
from convert.orchestrator import convert_model
from convert.vae_file import VaeFileReader
from mlx_sd.infotext import parse_infotext, request_from_infotext
from mlx_sd.library import Library, LibraryError
from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest, RequestError

LDM_PREFIX = "first_stage_model."
TOLERANCE = 1  # of 255: the bound for "the same image"


@pytest.fixture(scope="module")
def vaes(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """sd1-inpaint's VAE (sd1's architecture, other weights) as an LDM file, a diffusers file and a diffusers
    folder; sd1 converted plainly ("plain") and with that VAE built in ("built_in")."""
    root = tmp_path_factory.mktemp("vae_swap")
    library = root / "library"
    (library / "vae").mkdir(parents=True)
    state = load_file(str(tiny_models.single_file("sd1-inpaint")))
    ldm = library / "vae" / "other-vae.safetensors"
    save_file({k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}, str(ldm))
    folder = root / "vae"
    shutil.copytree(tiny_models.diffusers("sd1-inpaint") / "vae", folder)
    diffusers_file = root / "sdxl_vae_style.safetensors"
    shutil.copyfile(folder / "diffusion_pytorch_model.safetensors", diffusers_file)
    convert_model(tiny_models.diffusers("sd1"), root / "plain", ConvertOptions(dtype="float32"))
    convert_model(tiny_models.diffusers("sd1"), root / "built_in", ConvertOptions(dtype="float32", vae=ldm))
    return {"library": library, "ldm": ldm, "folder": folder, "diffusers_file": diffusers_file,
            "plain": root / "plain", "built_in": root / "built_in", "checkpoint": tiny_models.single_file("sd1")}


@pytest.fixture(scope="module")
def pipes(vaes) -> dict[str, Pipeline]:
    plain = Pipeline.load(vaes["plain"])
    plain.library = Library(vaes["library"])
    plain.vae_reader = VaeFileReader()
    return {"plain": plain, "built_in": Pipeline.load(vaes["built_in"])}


def request(**changes) -> GenerationRequest:
    return GenerationRequest(prompt="a red circle", width=64, height=64, steps=3, seed=7, **changes)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def largest_difference(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.mark.parametrize("which", ["ldm", "diffusers_file", "folder", "name"])
def test_a_swapped_vae_gives_the_image_of_the_model_with_it_built_in(vaes, pipes, which) -> None:
    plain = pipes["plain"]
    unet, text_encoder = plain.unet, plain.text_encoder
    choice = "other-vae" if which == "name" else str(vaes[which])
    swapped = plain.generate(request(vae=choice))
    built_in = pipes["built_in"].generate(request())
    assert largest_difference(swapped, built_in) <= TOLERANCE
    assert plain.unet is unet and plain.text_encoder is text_encoder  # nothing but the VAE was replaced
    params = parse_infotext(swapped.infotexts[0]).params
    hashed = vaes["folder"] / "diffusion_pytorch_model.safetensors" if which == "folder" else Path(choice if which != "name" else vaes["ldm"])
    assert params["VAE hash"] == hashlib.sha256(hashed.read_bytes()).hexdigest()[:10]
    assert params["VAE"] == (vaes["folder"].name if which == "folder" else hashed.name)


def test_automatic_returns_to_the_models_own_vae_bit_for_bit(vaes, pipes) -> None:
    plain = pipes["plain"]
    before = plain.generate(request())
    own = plain.vae
    plain.generate(request(vae=str(vaes["ldm"])))
    assert plain.vae is not own
    for back in (None, "Automatic", "none"):
        again = plain.generate(request(vae=back))
        assert plain.vae is own
        assert np.array_equal(pixels(again), pixels(before))
        assert "VAE" not in parse_infotext(again.infotexts[0]).params


def test_the_same_vae_is_read_once(vaes, pipes, monkeypatch) -> None:
    plain = pipes["plain"]
    plain.use_vae(str(vaes["ldm"]))
    monkeypatch.setattr(plain, "vae_reader", None)  # a second read would fail now
    assert plain.use_vae(str(vaes["ldm"])).name == vaes["ldm"].name


def test_the_infotext_names_the_vae_for_the_next_run(vaes, pipes) -> None:
    result = pipes["plain"].generate(request(vae="other-vae"))
    again = request_from_infotext(result.infotexts[0])
    assert again.vae == "other-vae"  # A1111's `VAE: other-vae.safetensors`, as the library names it
    assert largest_difference(pipes["plain"].generate(again), result) == 0


def bad(pipe: Pipeline, choice: object) -> str:
    pipe.use_vae(None)
    own = pipe.vae
    with pytest.raises(ValueError) as caught:
        pipe.use_vae(choice)  # type: ignore[arg-type]
    assert pipe.vae is own  # a failed choice changes nothing
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unknown_name_lists_the_closest(pipes) -> None:
    with pytest.raises(LibraryError, match="no VAE named 'other-vea'.*closest: other-vae"):
        pipes["plain"].use_vae("other-vea")


def test_a_whole_checkpoint_is_not_a_vae(vaes, pipes) -> None:
    assert "is a whole checkpoint (it holds a UNet), not a VAE" in bad(pipes["plain"], str(vaes["checkpoint"]))


def test_a_whole_diffusers_pipeline_is_not_a_vae(tiny_models, pipes) -> None:
    message = bad(pipes["plain"], str(tiny_models.diffusers("sd1")))
    assert "is a whole diffusers pipeline, not a VAE: pass its vae folder" in message


def test_a_vae_of_another_architecture(tmp_path, pipes) -> None:
    from diffusers import AutoencoderKL

    other = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=2,
    )
    path = tmp_path / "flux-like.safetensors"
    save_file(other.state_dict(), str(path))
    message = bad(pipes["plain"], str(path))
    assert message == (
        "flux-like.safetensors is a VAE of another architecture (latent channels: 16, where this sd1 model's "
        "VAE has 4); use a VAE made for sd1"
    )


def test_a_truncated_vae(vaes, tmp_path, pipes) -> None:
    cut = tmp_path / "cut.safetensors"
    data = vaes["ldm"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert "cut.safetensors" in bad(pipes["plain"], str(cut))


def test_a_lora_is_not_a_vae(tmp_path, pipes) -> None:
    import torch

    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(path))
    assert "holds no VAE weights" in bad(pipes["plain"], str(path))


def test_a_pickled_vae_only_with_allow_pickle(vaes, tmp_path, pipes) -> None:
    import torch

    path = tmp_path / "old-vae.pt"
    torch.save({"state_dict": load_file(str(vaes["ldm"]))}, path)
    assert "--allow-pickle" in bad(pipes["plain"], str(path))
    plain = pipes["plain"]
    plain.vae_reader = VaeFileReader(allow_pickle=True)
    try:
        pickled = plain.generate(request(vae=str(path)))
    finally:
        plain.vae_reader = VaeFileReader()
    assert largest_difference(pickled, pipes["built_in"].generate(request())) <= TOLERANCE


def test_a_vae_that_is_not_text_is_refused(pipes) -> None:
    with pytest.raises(RequestError, match="vae = 'a int' is not allowed"):
        pipes["plain"].generate(dataclasses.replace(request(), vae=3))  # type: ignore[arg-type]
