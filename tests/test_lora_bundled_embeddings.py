"""Embeddings bundled in a LoRA (`bundle_emb.<name>.*`, A1111's pivotal-tuning bundles) at generation time,
on tiny random SD1 and SDXL models: usable by name in both prompts exactly while their LoRA is in the
request, conditioning as the same vectors in the library's own file do, named in `TI hashes` with the
LoRA's name (A1111), and losing to a library embedding of the same name (A1111 skips the bundled one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlx_sd.library import Library
from mlx_sd.lora import LoraError
from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest, LoraRequest
from model_folders import CONFIGS, write_random_model

PROMPT, NEGATIVE = "a cat, mytoken", "mytoken, blurry"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundled")
    folders = {}
    for family in ("sd1", "sdxl"):
        folders[family] = root / family
        write_random_model(folders[family], CONFIGS[family])
    return folders


def vectors(family: str, seed: int) -> dict[str, np.ndarray]:
    """An embedding's tensors as a library file holds them (the tiny encoders are 128 wide)."""
    rng = np.random.default_rng(seed)
    if family == "sdxl":
        return {"clip_l": rng.standard_normal((2, 128), np.float32), "clip_g": rng.standard_normal((2, 128), np.float32)}
    return {"emb_params": rng.standard_normal((3, 128), np.float32)}


def bundle(library: Library, lora: str, name: str, tensors: dict[str, np.ndarray]) -> None:
    """A LoRA file bundling `tensors` as the embedding `name`, SD1's as A1111's `string_to_param.*`."""
    keys = {f"bundle_emb.{name}.{'string_to_param.*' if key == 'emb_params' else key}": v for key, v in tensors.items()}
    save_file(keys, str(library.folder("loras") / f"{lora}.safetensors"))


@pytest.fixture(params=["sd1", "sdxl"])
def setup(request, folders, tmp_path) -> tuple[Pipeline, Library, str]:
    library = Library(tmp_path / "library")
    for kind in ("loras", "embeddings"):
        library.ensure_folder(kind)
    return Pipeline.load(folders[request.param], library=library), library, request.param


def conditioning(pipe: Pipeline, prompt: str = PROMPT, negative: str = NEGATIVE, **changes):
    """The prompt's and negative prompt's encodings as generate makes them, and the infotext's entries."""
    resources = pipe.use_resources(GenerationRequest(prompt=prompt, negative_prompt=negative, **changes))
    encoder = pipe.prompt_encoder()
    texts = (resources.request.prompt, resources.request.negative_prompt)
    return [np.array(encoder.encode([text]).context) for text in texts], resources.infotext


@pytest.mark.parametrize("asked", ["tag", "request"])
def test_bundled_embedding_conditions_as_the_same_file_in_the_library(setup, asked):
    pipe, library, family = setup
    tensors = vectors(family, 1)
    bundle(library, "pivot", "mytoken", tensors)
    plain, _ = conditioning(pipe)
    if asked == "tag":
        bundled, infotext = conditioning(pipe, f"{PROMPT} <lora:pivot:0.8>")
    else:
        bundled, infotext = conditioning(pipe, loras=(LoraRequest("pivot", 0.8, 0.8),))
    assert infotext["TI hashes"] == "mytoken: pivot", "A1111 names the LoRA in place of a hash"
    assert infotext["Lora hashes"].startswith("pivot: ")
    save_file(tensors, str(library.folder("embeddings") / "mytoken.safetensors"))
    in_library, infotext = conditioning(pipe)
    assert infotext["TI hashes"] != "mytoken: pivot" and infotext["TI hashes"].startswith("mytoken: ")
    for ours, theirs, before in zip(bundled, in_library, plain):
        assert np.array_equal(ours, theirs)
        assert not np.allclose(ours, before), "the name was read as an embedding, not as text"


def test_without_the_lora_the_name_is_plain_text_again(setup):
    pipe, library, family = setup
    bundle(library, "pivot", "mytoken", vectors(family, 2))
    plain, infotext = conditioning(pipe)
    assert "TI hashes" not in infotext
    with_lora, infotext = conditioning(pipe, f"{PROMPT} <lora:pivot:1>")
    assert "TI hashes" in infotext and not np.allclose(with_lora[0], plain[0])
    after, infotext = conditioning(pipe)  # the same texts as before: encoded afresh, not from the cache
    assert "TI hashes" not in infotext
    assert all(np.array_equal(a, b) for a, b in zip(after, plain))


def test_a_library_embedding_of_the_same_name_wins(setup):
    pipe, library, family = setup
    bundle(library, "pivot", "mytoken", vectors(family, 3))
    save_file(vectors(family, 4), str(library.folder("embeddings") / "MyToken.safetensors"))
    from_library, infotext = conditioning(pipe)
    with_lora, infotext_lora = conditioning(pipe, f"{PROMPT} <lora:pivot:1>")
    assert all(np.array_equal(a, b) for a, b in zip(with_lora, from_library))
    assert infotext_lora["TI hashes"] == infotext["TI hashes"] != "MyToken: pivot"


def test_of_two_loras_bundling_one_name_the_first_asked_for_wins(setup):
    pipe, library, family = setup
    bundle(library, "first", "mytoken", vectors(family, 5))
    bundle(library, "second", "mytoken", vectors(family, 6))
    alone, _ = conditioning(pipe, f"{PROMPT} <lora:first:1>")
    both, infotext = conditioning(pipe, f"{PROMPT} <lora:first:1> <lora:second:1>")
    assert infotext["TI hashes"] == "mytoken: first"
    assert all(np.array_equal(a, b) for a, b in zip(both, alone))


def test_an_unusable_bundled_embedding_is_refused_in_one_line_only_when_named(setup):
    pipe, library, _ = setup
    save_file({"bundle_emb.wide.emb_params": np.ones((1, 768), np.float32)}, str(library.folder("loras") / "w.safetensors"))
    conditioning(pipe, "a cat <lora:w:1>", "")  # not named: the LoRA works
    with pytest.raises(LoraError, match=r"^wide \(bundled in the LoRA w\) is an embedding of width 768; "):
        conditioning(pipe, "a cat, wide <lora:w:1>", "")
