"""LoRAs and textual inversion through Pipeline.generate, against diffusers on the same tiny models:
kohya (linear + LoCon) and PEFT LoRAs fused with `load_lora_weights` + `fuse_lora`, embeddings loaded with
`load_textual_inversion`; the images agree within 1/255 (the parity harness of test_parity_generation).
Also: weight 0 is bit-identical to no LoRA, the set merges once and is removed when a request has none,
a failing LoRA changes nothing, and the CPU path follows merged weights exactly like the plain path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from mlx.utils import tree_flatten

from convert import ConvertOptions, convert_model
from diffusers import DiffusionPipeline
from mlx_sd.library import Library, LibraryError
from mlx_sd.lora import LoraError
from mlx_sd.model_format import load_weights, weights_file
from mlx_sd.pipeline import Pipeline, build_models
from mlx_sd.request import GenerationRequest, LoraRequest
from reference import ReferencePipeline
from mlx_sd.samplers import sampler_by_name
from test_lora_merge import kohya_lora, peft_lora
from test_parity_generation import NEGATIVE, SEED, SIZE, STEPS, TOLERANCE, engine_match, float_pixels  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")]

PROMPT = "a red cube on a wooden table"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Kind:
    """A tiny kind converted to our format and loaded with its own library; its diffusers folder."""

    def __init__(self, source: Path, root: Path):
        self.source = source
        ours = convert_model(source, root / "model", ConvertOptions(dtype="float32")).output
        self.library = Library(root / "library")
        for kind in ("loras", "embeddings"):
            self.library.ensure_folder(kind)
        self.pipe = Pipeline.load(ours, dtype="float32", library=self.library)

    def reference(self, prepare: Callable[[DiffusionPipeline], None] = lambda pipe: None) -> ReferencePipeline:
        """diffusers' pipeline, `prepare`d before ReferencePipeline points the text encoders' `text_model`
        at themselves (which would make diffusers' LoRA loader miss every text-encoder layer)."""
        pipe = self.diffusers()
        prepare(pipe)
        return ReferencePipeline(pipe, torch.device("cpu"))

    def diffusers(self) -> DiffusionPipeline:
        return DiffusionPipeline.from_pretrained(self.source, dtype=torch.float32)

    def weights(self) -> dict[tuple[str, str], np.ndarray]:
        return {(c, name): np.array(a) for c in COMPONENTS if getattr(self.pipe, c, None) is not None
                for name, a in tree_flatten(getattr(self.pipe, c).parameters())}  # fmt: skip


@pytest.fixture(scope="module")
def kinds(tiny_models, tmp_path_factory):
    cache: dict[str, Kind] = {}

    def get(kind: str) -> Kind:
        if kind not in cache:
            cache[kind] = Kind(tiny_models.diffusers(kind), tmp_path_factory.mktemp(kind))
        return cache[kind]

    return get


def noise() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)


def ours(kind: Kind, float_pixels: list, prompt: str, negative: str = NEGATIVE, **changes) -> np.ndarray:
    match = engine_match(kind.pipe.config, sampler_by_name("Euler"), "Automatic", STEPS)
    latents = noise() * np.float32(match.initial_noise_scale / match.sigmas[0])
    request = GenerationRequest(
        prompt=prompt, negative_prompt=negative, width=SIZE, height=SIZE, steps=STEPS, cfg_scale=5.0,
        sampler="Euler", seed=SEED, latents=latents, **changes,
    )
    kind.last = kind.pipe.generate(request)
    return float_pixels[-1][None]


def theirs(kind: Kind, reference: ReferencePipeline, prompt: str, negative: str = NEGATIVE) -> np.ndarray:
    match = engine_match(kind.pipe.config, sampler_by_name("Euler"), "Automatic", STEPS)
    return reference.generate(prompt, negative, SIZE, SIZE, STEPS, 5.0, latents=noise(), scheduler=match.make(), seed=SEED)


def fused(kind: Kind, lora: Path, weight: float) -> ReferencePipeline:
    def fuse(pipe: DiffusionPipeline) -> None:
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora(components=[c for c in COMPONENTS if getattr(pipe, c, None) is not None], lora_scale=weight)
        pipe.unload_lora_weights()

    return kind.reference(fuse)


@pytest.mark.parametrize("weight", [0.5, 1.0, -1.0])
def test_kohya_locon_tag_equals_diffusers_fuse_lora(kinds, float_pixels, weight):
    sd1 = kinds("sd1")
    path = kohya_lora(sd1.diffusers(), sd1.library.folder("loras") / "locon.safetensors", sdxl=False)
    image = ours(sd1, float_pixels, f"{PROMPT} <lora:locon:{weight:g}>")
    assert np.abs(image - theirs(sd1, fused(sd1, path, weight), PROMPT)).max() < TOLERANCE
    assert f"<lora:locon:{weight:g}>" in sd1.last.infotexts[0] and "Lora hashes: \"locon: " in sd1.last.infotexts[0]
    without = ours(sd1, float_pixels, PROMPT)
    assert np.abs(image - without).max() > 10 * TOLERANCE, "the LoRA changed the image"


def test_sdxl_kohya_lora_from_the_request_equals_diffusers(kinds, float_pixels):
    sdxl = kinds("sdxl")
    path = kohya_lora(sdxl.diffusers(), sdxl.library.folder("loras") / "xl.safetensors", sdxl=True)
    image = ours(sdxl, float_pixels, PROMPT, loras=(LoraRequest("xl", 0.5, 0.5),))
    assert np.abs(image - theirs(sdxl, fused(sdxl, path, 0.5), PROMPT)).max() < TOLERANCE
    ours(sdxl, float_pixels, PROMPT)  # no LoRA: removed


def test_peft_lora_by_path_equals_diffusers(kinds, float_pixels, tmp_path):
    sd1 = kinds("sd1")
    path = peft_lora(sd1.diffusers(), tmp_path / "peft.safetensors")
    image = ours(sd1, float_pixels, PROMPT, loras=(LoraRequest(str(path)),))
    assert np.abs(image - theirs(sd1, fused(sd1, path, 1.0), PROMPT)).max() < TOLERANCE


def test_weight_zero_is_bit_identical_and_the_set_is_removed(kinds, float_pixels):
    sd1 = kinds("sd1")
    kohya_lora(sd1.diffusers(), sd1.library.folder("loras") / "zero.safetensors", sdxl=False)
    plain = ours(sd1, float_pixels, PROMPT)  # also removes what an earlier test merged
    before = sd1.weights()
    assert np.array_equal(ours(sd1, float_pixels, f"{PROMPT}<lora:zero:0>", f"{NEGATIVE}<lora:zero:0:0>"), plain)
    ours(sd1, float_pixels, f"{PROMPT}<lora:zero:0.7>")
    assert not all(np.array_equal(before[key], array) for key, array in sd1.weights().items())
    assert np.array_equal(ours(sd1, float_pixels, PROMPT), plain)
    assert all(np.array_equal(before[key], array) for key, array in sd1.weights().items())


def test_the_same_set_is_merged_once(kinds, float_pixels, monkeypatch):
    sd1 = kinds("sd1")
    kohya_lora(sd1.diffusers(), sd1.library.folder("loras") / "once.safetensors", sdxl=False)
    first = ours(sd1, float_pixels, f"{PROMPT} <lora:once:0.5>")
    merges = []
    apply = type(sd1.pipe._loras.merger).apply
    monkeypatch.setattr(type(sd1.pipe._loras.merger), "apply", lambda self, *a, **k: merges.append(1) or apply(self, *a, **k))
    assert np.array_equal(ours(sd1, float_pixels, f"{PROMPT} <lora:once:0.5>"), first)
    assert merges == []
    ours(sd1, float_pixels, PROMPT)
    assert merges == [1]


def test_failing_loras_change_nothing_and_say_why_in_one_line(kinds, float_pixels, tmp_path):
    sd1, sdxl = kinds("sd1"), kinds("sdxl")
    loras = sd1.library.folder("loras")
    kohya_lora(sd1.diffusers(), loras / "good.safetensors", sdxl=False)
    kohya_lora(sdxl.diffusers(), loras / "xl_style.safetensors", sdxl=True)
    (loras / "cut.safetensors").write_bytes((loras / "good.safetensors").read_bytes()[:500])
    safetensors.torch.save_file({"model.diffusion_model.out.0.weight": torch.zeros(2)}, str(loras / "model.safetensors"))
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, loras / "pickled.pt")
    ours(sd1, float_pixels, f"{PROMPT} <lora:good:0.5>")
    merged = sd1.weights()
    failures = {
        "<lora:xl_style:1>": (LoraError, "xl_style is a LoRA for SDXL; the loaded model is SD1"),
        "<lora:cut:1>": (LoraError, "cut.safetensors cannot be read as a safetensors file"),
        "<lora:model:1>": (LoraError, "model.safetensors is a full model checkpoint"),
        "<lora:pickled:1>": (LoraError, "pickled.pt is a pickle checkpoint .* --allow-pickle"),
        "<lora:gdoo:1>": (LibraryError, "no LoRA named 'gdoo' .*closest: good"),
        "<lora:good:x>": (LoraError, "the weight 'x' is not a number"),
    }
    for tag, (error, message) in failures.items():
        with pytest.raises(error, match=message) as caught:
            ours(sd1, float_pixels, f"{PROMPT} {tag}")
        assert "\n" not in str(caught.value)
        assert all(np.array_equal(merged[key], array) for key, array in sd1.weights().items()), tag
    ours(sd1, float_pixels, PROMPT)


def test_cpu_path_follows_merged_weights_like_the_plain_path(kinds, float_pixels):
    """No CPU substitute caches anything derived from its weights (Winograd filters and GEMM operands are
    made per call): a LoRA merged into the CPU-prepared UNet changes its output exactly as it changes
    the plain UNet's."""
    sd1 = kinds("sd1")
    assert sd1.pipe.cpu is not None, "this machine runs the CPU path"
    kohya_lora(sd1.diffusers(), sd1.library.folder("loras") / "cpu.safetensors", sdxl=False)
    plain = Pipeline.load(sd1.pipe.folder, dtype="float32", library=sd1.library)
    unet = build_models(plain.config)["unet"]  # the plain modules, no CPU substitutes
    load_weights(unet, weights_file(plain.folder, "unet"), "unet", plain.dtype)
    plain.unet, plain.cpu = unet, None
    for prompt in [f"{PROMPT} <lora:cpu:0.8>", PROMPT, f"{PROMPT} <lora:cpu:-0.5>"]:
        cpu_image = ours(sd1, float_pixels, prompt)
        plain_image = ours(SimpleNamespace(pipe=plain), float_pixels, prompt)
        assert np.abs(cpu_image - plain_image).max() < 1e-4, prompt


def embedding_file(path: Path, vectors: dict[str, torch.Tensor]) -> Path:
    safetensors.torch.save_file(vectors, str(path))
    return path


def test_textual_inversion_equals_diffusers_load_textual_inversion(kinds, float_pixels):
    """A lower-case name: diffusers lower-cases the prompt before it looks for a multi-vector token's
    `_1`, `_2` companions, so a mixed-case name would get one vector there (A1111 and we match any case)."""
    sd1 = kinds("sd1")
    vectors = torch.randn(3, 128, generator=torch.Generator().manual_seed(5))
    path = embedding_file(sd1.library.folder("embeddings") / "easyneg.safetensors", {"emb_params": vectors})
    reference = sd1.reference(lambda pipe: pipe.load_textual_inversion(str(path), token="easyneg"))
    for prompt, negative in [(f"{PROMPT}, easyneg", NEGATIVE), (PROMPT, f"easyneg, {NEGATIVE}")]:
        image = ours(sd1, float_pixels, prompt, negative)
        assert np.abs(image - theirs(sd1, reference, prompt, negative)).max() < TOLERANCE
        assert "TI hashes: \"easyneg: " in sd1.last.infotexts[0]
    without = ours(sd1, float_pixels, PROMPT, f"easyneg, {NEGATIVE}", loras=())
    path.unlink()
    assert np.abs(ours(sd1, float_pixels, PROMPT, f"easyneg, {NEGATIVE}") - without).max() > 10 * TOLERANCE


def test_sdxl_embedding_pair_equals_diffusers(kinds, float_pixels):
    sdxl = kinds("sdxl")
    generator = torch.Generator().manual_seed(6)
    clip_l, clip_g = torch.randn(2, 128, generator=generator), torch.randn(2, 192, generator=generator)
    embedding_file(sdxl.library.folder("embeddings") / "pairtoken.safetensors", {"clip_l": clip_l, "clip_g": clip_g})
    def load(pipe: DiffusionPipeline) -> None:
        pipe.load_textual_inversion(clip_l, token="pairtoken", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(clip_g, token="pairtoken", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)

    reference = sdxl.reference(load)
    prompt = f"pairtoken {PROMPT}"
    assert np.abs(ours(sdxl, float_pixels, prompt) - theirs(sdxl, reference, prompt)).max() < TOLERANCE


def test_embedding_of_another_width_is_one_line(kinds, float_pixels):
    sd1 = kinds("sd1")
    path = embedding_file(sd1.library.folder("embeddings") / "wide.safetensors", {"emb_params": torch.randn(1, 768)})
    with pytest.raises(LoraError, match=r"^wide is an embedding of width 768; the loaded model's text encoder has width 128$"):
        ours(sd1, float_pixels, f"{PROMPT} wide")
    path.unlink()
    ours(sd1, float_pixels, f"{PROMPT} wide")  # gone: an ordinary word again
    assert "TI hashes" not in sd1.last.infotexts[0]


def test_a_lora_changes_the_text_encoder_of_an_encoded_prompt(kinds, float_pixels):
    """The prompt cache is dropped when the merged weights change (else the LoRA's text-encoder part
    would be skipped for a prompt encoded before), also in low-memory mode, where the text encoders are
    loaded again before each run and the LoRA merged into them again."""
    sd1 = kinds("sd1")
    kohya_lora(sd1.diffusers(), sd1.library.folder("loras") / "te.safetensors", sdxl=False)
    encoder_only = sd1.library.folder("loras") / "te_only.safetensors"
    state = safetensors.torch.load_file(str(sd1.library.folder("loras") / "te.safetensors"))
    safetensors.torch.save_file({k: v for k, v in state.items() if k.startswith("lora_te_")}, str(encoder_only))
    plain = ours(sd1, float_pixels, PROMPT)
    with_lora = ours(sd1, float_pixels, f"{PROMPT}<lora:te_only:1>")
    assert np.abs(with_lora - plain).max() > 10 * TOLERANCE
    low = ours(sd1, float_pixels, f"{PROMPT}<lora:te_only:1>", low_memory=True)
    again = ours(sd1, float_pixels, f"{PROMPT}<lora:te_only:1>", low_memory=True)  # text encoders reloaded
    assert np.array_equal(low, with_lora) and np.array_equal(again, with_lora)
    assert np.array_equal(ours(sd1, float_pixels, PROMPT), plain)
