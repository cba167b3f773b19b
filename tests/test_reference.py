"""reference: diffusers on torch behind a numpy interface. Every tiny kind loaded from its diffusers
folder and from its single file must give identical outputs; torch and the reference stay out of mlx_sd."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import tiny_models as tm  # noqa: E402
from reference import ReferencePipeline, pipeline_class_for_checkpoint  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with tm.single_threaded_torch():
        yield


@pytest.fixture(scope="module")
def from_folder(tiny_models):
    """kind -> ReferencePipeline of the kind's diffusers folder, loaded once per module."""
    loaded: dict[str, ReferencePipeline] = {}

    def get(kind: str) -> ReferencePipeline:
        if kind not in loaded:
            loaded[kind] = ReferencePipeline.load(tiny_models.diffusers(kind))
        return loaded[kind]

    return get


def test_torch_qt_and_the_converter_stay_out_of_the_engine():
    """Importing every mlx_sd module loads neither torch, nor Qt, nor `convert`, nor the reference package."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import mlx_sd
        names = [m.name for m in pkgutil.walk_packages(mlx_sd.__path__, "mlx_sd.")]
        for name in names:
            importlib.import_module(name)
        heavy = sorted({"torch", "diffusers", "transformers", "PySide6", "convert", "reference"} & set(sys.modules))
        print(len(names), heavy)
        """
    )
    # from the checkout root, so that it imports this checkout's mlx_sd whatever an editable install points at
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    count, heavy = result.stdout.split(" ", 1)
    assert int(count) >= 5, result.stdout  # the walk found the package's modules
    assert heavy.strip() == "[]", f"importing mlx_sd modules loaded {heavy.strip()}"


def _unet_inputs(ref: ReferencePipeline, kind: str, rng: np.random.Generator) -> dict:
    s = tm.spec(kind)
    enc = ref.encode_prompt("a photo of a cat", "blurry")
    inputs = {
        "sample": rng.standard_normal((2, s.unet["in_channels"], 16, 16), dtype=np.float32),
        "timestep": np.array([999.0, 20.5], dtype=np.float32),  # fractional timesteps are allowed
        "context": np.concatenate([enc.hidden, enc.negative_hidden]),
    }
    if ref.is_sdxl:
        ids = [128.0, 128.0, 0.0, 0.0, 128.0, 128.0] if s.family == "sdxl" else [128.0, 128.0, 0.0, 0.0, 6.0]
        inputs["text_embeds"] = np.concatenate([enc.pooled, enc.negative_pooled])
        inputs["time_ids"] = np.array([ids, ids], dtype=np.float32)
    return inputs


@pytest.mark.parametrize("kind", tm.KINDS)
def test_folder_and_single_file_give_identical_outputs(kind, tiny_models, from_folder):
    folder = from_folder(kind)
    single = ReferencePipeline.load(tiny_models.single_file(kind), config=tiny_models.configs_only(kind))
    assert type(single.pipeline) is type(folder.pipeline) is tm.spec(kind).pipeline
    assert folder.device.type == single.device.type

    for a, b in zip(folder.encode_prompt("a photo of a cat", "blurry").__dict__.values(),
                    single.encode_prompt("a photo of a cat", "blurry").__dict__.values()):
        assert (a is None and b is None) or np.array_equal(a, b)

    inputs = _unet_inputs(folder, kind, np.random.default_rng(0))
    out = folder.unet(**inputs)
    assert out.shape == (2, 4, 16, 16) and 0.2 < out.std() < 5
    np.testing.assert_array_equal(out, single.unet(**inputs))

    images = np.random.default_rng(1).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    moments = folder.vae_encode(images)
    assert moments.shape == (1, 8, 8, 8)
    np.testing.assert_array_equal(moments, single.vae_encode(images))
    decoded = folder.vae_decode(moments[:, :4])
    assert decoded.shape == (1, 3, 64, 64)
    np.testing.assert_array_equal(decoded, single.vae_decode(moments[:, :4]))


@pytest.mark.parametrize(
    ("kind", "hidden_width", "pooled_width", "zero_negative"),
    [
        ("sd1", 128, None, False),
        ("sd2-v", 128, None, False),
        ("sdxl", 320, 192, True),
        ("sdxl-refiner", 192, 192, False),
    ],
)
def test_encode_prompt_follows_the_pipeline(kind, hidden_width, pooled_width, zero_negative, from_folder):
    ref = from_folder(kind)
    enc = ref.encode_prompt("a photo of a cat")
    assert enc.hidden.shape == enc.negative_hidden.shape == (1, 77, hidden_width)
    assert enc.hidden.dtype == np.float32
    if pooled_width is None:
        assert enc.pooled is None and enc.negative_pooled is None
    else:
        assert enc.pooled.shape == enc.negative_pooled.shape == (1, pooled_width)
    # an empty negative prompt: zeros for SDXL base (force_zeros_for_empty_prompt), encoded "" otherwise
    assert (not enc.negative_hidden.any()) == zero_negative
    assert not np.array_equal(enc.hidden, ref.encode_prompt("a photo of a dog").hidden)
    skipped = ref.encode_prompt("a photo of a cat", clip_skip=1)
    assert not np.array_equal(enc.hidden, skipped.hidden)
    if pooled_width is None:
        # diffusers' SD pipelines: one layer earlier, then the final LayerNorm; the negative is not skipped
        encoder = ref.components["text_encoder"]
        ids = ref.components["tokenizer"]("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt")
        with torch.no_grad():
            layer = encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2]
            expected = encoder.text_model.final_layer_norm(layer).numpy()
        np.testing.assert_array_equal(skipped.hidden, expected)
        np.testing.assert_array_equal(skipped.negative_hidden, enc.negative_hidden)


def test_unet_checks_its_inputs(from_folder):
    ref = from_folder("sdxl")
    context = np.zeros((1, 77, 320), dtype=np.float32)
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, h, w\), received \(1, 9, 8, 8\)"):
        ref.unet(np.zeros((1, 9, 8, 8), np.float32), 1.0, context)
    with pytest.raises(ValueError, match=r"context: expected shape \(B, L, 320\)"):
        ref.unet(np.zeros((1, 4, 8, 8), np.float32), 1.0, context[..., :128])
    with pytest.raises(ValueError, match="needs text_embeds"):
        ref.unet(np.zeros((1, 4, 8, 8), np.float32), 1.0, context)


def test_txt2img_returns_images_of_the_requested_size(from_folder):
    ref = from_folder("sd1")
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 16), dtype=np.float32)
    images = ref.generate("a photo of a cat", "", width=128, height=64, steps=3, guidance_scale=7.0, latents=latents)
    assert images.shape == (1, 64, 128, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.01
    # the same latents give the same image; other latents another one
    again = ref.generate("a photo of a cat", "", width=128, height=64, steps=3, latents=latents)
    np.testing.assert_array_equal(images, again)
    other = ref.generate("a photo of a cat", "", width=128, height=64, steps=3, latents=latents[:, ::-1].copy())
    assert not np.array_equal(images, other)


def test_generate_uses_the_given_scheduler_for_that_call_only(from_folder):
    from diffusers import EulerDiscreteScheduler

    ref = from_folder("sd2-v")
    default = ref.components["scheduler"]
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    base = ref.generate("a cat", width=64, height=64, steps=2, latents=latents)
    euler = EulerDiscreteScheduler.from_config(default.config)
    with_euler = ref.generate("a cat", width=64, height=64, steps=2, latents=latents, scheduler=euler)
    assert not np.array_equal(base, with_euler)
    assert ref.components["scheduler"] is default


def test_inpainting_and_refiner_take_images(from_folder):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = from_folder("sd1-inpaint")
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    out = inpaint.generate("a cat", width=64, height=64, steps=2, latents=latents, image=image, mask=mask)
    assert out.shape == (1, 64, 64, 3)
    refiner = from_folder("sdxl-refiner")
    refined = refiner.generate("a cat", steps=4, image=image, strength=0.5)
    assert refined.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="takes no mask_image"):
        refiner.generate("a cat", steps=2, image=image, mask=mask)


def test_pipeline_class_from_checkpoint_keys():
    unet_in = "model.diffusion_model.input_blocks.0.0.weight"
    assert pipeline_class_for_checkpoint({unet_in: (320, 4, 3, 3)}) == "StableDiffusionPipeline"
    assert pipeline_class_for_checkpoint({unet_in: (320, 9, 3, 3)}) == "StableDiffusionInpaintPipeline"
    sdxl = {unet_in: (320, 4, 3, 3), "conditioner.embedders.1.model.ln_final.weight": (1280,)}
    assert pipeline_class_for_checkpoint(sdxl) == "StableDiffusionXLPipeline"
    refiner = {unet_in: (384, 4, 3, 3), "conditioner.embedders.0.model.ln_final.weight": (1280,)}
    assert pipeline_class_for_checkpoint(refiner) == "StableDiffusionXLImg2ImgPipeline"
    with pytest.raises(ValueError, match="expected the UNet key"):
        pipeline_class_for_checkpoint({"encoder.conv_in.weight": (128, 3, 3, 3)})


def test_pickled_ckpt_loads_like_the_safetensors_file(tmp_path, tiny_models, from_folder):
    state = tm.single_file_state_dict("sd1-inpaint")
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 1000}, str(path))
    ref = ReferencePipeline.load(path, config=tiny_models.configs_only("sd1-inpaint"))
    assert type(ref.pipeline).__name__ == "StableDiffusionInpaintPipeline"
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(ref.vae_decode(latents), from_folder("sd1-inpaint").vae_decode(latents))


def test_load_errors_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a diffusers folder or a single-file checkpoint"):
        ReferencePipeline.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="no model_index.json"):
        ReferencePipeline.load(tmp_path)
    with pytest.raises(ValueError, match="dtype 'float64' is not one of"):
        ReferencePipeline.load(tmp_path, dtype="float64")
