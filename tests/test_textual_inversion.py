"""Textual-inversion files: our vectors equal what diffusers' load_textual_inversion puts into the tiny SD1
text encoder (A1111 .pt and .safetensors), SDXL pairs, bundled embeddings, and the one-line errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import safetensors.torch
import torch

from mlx_sd.embeddings import embedding_from_tensors, read_embedding, token_vectors
from mlx_sd.lora import LoraError, read_lora

SD1 = {"text_encoder": 128}  # the tiny models' widths (tests/tiny_models.py)
SDXL = {"text_encoder": 128, "text_encoder_2": 192}


def _a1111_pt(path, vectors: torch.Tensor) -> None:
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": vectors},
                "name": path.stem, "step": 1000}, path)  # fmt: skip


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_vectors_equal_diffusers_load_textual_inversion(tiny_models, tmp_path, suffix):
    from diffusers import DiffusionPipeline

    vectors = torch.randn(3, 128)
    path = tmp_path / f"EasyNegative{suffix}"
    if suffix == ".pt":
        _a1111_pt(path, vectors)
    else:
        safetensors.torch.save_file({"emb_params": vectors}, str(path))
    pipe = DiffusionPipeline.from_pretrained(tiny_models.diffusers("sd1"), dtype=torch.float32)
    pipe.load_textual_inversion(str(path), token="EasyNegative")
    ids = pipe.tokenizer.convert_tokens_to_ids(["EasyNegative", "EasyNegative_1", "EasyNegative_2"])
    expected = pipe.text_encoder.get_input_embeddings().weight[ids].detach().numpy()

    embedding = read_embedding(path, allow_pickle=True)
    assert embedding.name == "EasyNegative" and embedding.count == 3
    assert np.array_equal(np.array(token_vectors(embedding, SD1)["text_encoder"]), expected)


def test_sdxl_pair_and_wrong_width(tmp_path):
    path = tmp_path / "pair.safetensors"
    clip_l, clip_g = torch.randn(2, 128), torch.randn(2, 192)
    safetensors.torch.save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    vectors = token_vectors(read_embedding(path), SDXL)
    assert np.array_equal(np.array(vectors["text_encoder_2"]), clip_g.numpy())
    assert np.array_equal(np.array(vectors["text_encoder"]), clip_l.numpy())
    with pytest.raises(LoraError, match=r"^pair is an embedding of width 128 and 192; the loaded model's text encoder has width 128$"):
        token_vectors(read_embedding(path), SD1)
    sd2 = tmp_path / "sd2.safetensors"
    safetensors.torch.save_file({"emb_params": torch.randn(1, 1024)}, str(sd2))
    assert read_embedding(sd2).vectors["text_encoder"].shape == (1, 1024)  # SD2's width
    with pytest.raises(LoraError, match="width 1024; the loaded model's text encoder has width 128"):
        token_vectors(read_embedding(sd2), SD1)


def test_the_family_follows_the_text_encoders_widths_and_the_size_is_in_words():
    cases = {
        "sd1": ({"emb_params": mx.zeros((1, 768))}, "1 vector of width 768"),
        "sd2": ({"emb_params": mx.zeros((3, 1024))}, "3 vectors of width 1024"),
        "sdxl": ({"clip_l": mx.zeros((2, 768)), "clip_g": mx.zeros((2, 1280))}, "2 vectors of width 768+1280"),
        "": ({"emb_params": mx.zeros((2, 128))}, "2 vectors of width 128"),  # a width no family's encoder has
    }
    for family, (tensors, words) in cases.items():
        embedding = embedding_from_tensors("e", tensors)
        assert (embedding.family, embedding.shape_phrase()) == (family, words)


def test_single_vector_and_bundled_in_a_lora(tmp_path):
    path = tmp_path / "bundle.safetensors"
    safetensors.torch.save_file({
        "lora_unet_a.lora_down.weight": torch.randn(2, 3), "lora_unet_a.lora_up.weight": torch.randn(3, 2),
        "bundle_emb.mytoken.string_to_param.*": torch.randn(4, 128),
    }, str(path))  # fmt: skip
    bundled = read_lora(path).embeddings
    embedding = embedding_from_tensors("mytoken", bundled["mytoken"])
    assert embedding.count == 4 and token_vectors(embedding, SD1)["text_encoder"].shape == (4, 128)
    learned = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": torch.randn(128)}, learned)
    assert read_embedding(learned, allow_pickle=True).count == 1


def test_bad_files_are_one_line(tmp_path):
    pt = tmp_path / "neg.pt"
    _a1111_pt(pt, torch.randn(1, 128))
    with pytest.raises(LoraError, match="neg.pt is a pickle checkpoint .* --allow-pickle"):
        read_embedding(pt)
    lora = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"a.lora_down.weight": torch.randn(2, 3), "b.lora_up.weight": torch.randn(3, 2)}, str(lora))
    with pytest.raises(LoraError, match=r"^lora is not a textual-inversion embedding \(expected string_to_param"):
        read_embedding(lora)
