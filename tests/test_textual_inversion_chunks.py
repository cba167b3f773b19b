"""Embeddings in A1111's 75-token chunks (sd_hijack_clip.tokenize_line): each vector takes one position,
an embedding that does not fit in the rest of a chunk starts the next, and emphasis weighs its vectors."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlx_sd.conditioning import PLACEHOLDER_ID, prompt_chunks
from mlx_sd.library import Library
from mlx_sd.lora import LoraError
from mlx_sd.textual_inversion import TextualInversion
from mlx_sd.tokenizer import CLIPTokenizer

WIDTH = 8


@pytest.fixture
def setup(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_file({"emb_params": np.arange(3 * WIDTH, dtype=np.float32).reshape(3, WIDTH)}, str(folder / "EasyNegative.safetensors"))
    save_file({"emb_params": np.ones((80, WIDTH), np.float32)}, str(folder / "huge.safetensors"))
    tokenizer = CLIPTokenizer.bundled(49407)
    ti = TextualInversion(Library(tmp_path), {"text_encoder": tokenizer})
    assert ti.refresh({"text_encoder": WIDTH})
    assert not ti.refresh({"text_encoder": WIDTH}), "nothing changed"
    return tokenizer, lambda tokens, position: ti.find("text_encoder", tokens, position), ti


def test_vectors_take_one_position_each_with_their_weight(setup):
    tokenizer, find, _ = setup
    [chunk] = prompt_chunks("a cat, (easynegative:1.2) dog", tokenizer, embeddings=find)
    cat_comma = tokenizer.tokenize("a cat,")
    assert chunk.ids[1 : 1 + len(cat_comma)] == tuple(cat_comma)
    start = len(cat_comma)
    assert chunk.ids[1 + start : 4 + start] == (PLACEHOLDER_ID,) * 3
    assert chunk.weights[1 + start : 4 + start] == (1.2,) * 3
    assert chunk.ids[4 + start] == tokenizer.tokenize("dog")[0]
    [(position, vectors)] = chunk.embeddings
    assert position == start and vectors.shape == (3, WIDTH)


def test_an_embedding_that_does_not_fit_starts_the_next_chunk(setup):
    tokenizer, find, _ = setup
    first, second = prompt_chunks("a " * 73 + "EasyNegative", tokenizer, embeddings=find)
    assert first.ids[1:74] == tuple(tokenizer.tokenize("a")) * 73 and first.ids[74] == tokenizer.eos_id
    assert first.embeddings == ()
    assert second.ids[1:4] == (PLACEHOLDER_ID,) * 3 and second.embeddings[0][0] == 0
    [whole] = prompt_chunks("a " * 72 + "EasyNegative", tokenizer, embeddings=find)  # exactly 75
    assert whole.ids[73:76] == (PLACEHOLDER_ID,) * 3


def test_used_names_and_one_line_errors(setup):
    tokenizer, find, ti = setup
    assert list(ti.used(["a cat", "blurry, EASYNEGATIVE"])) == ["EasyNegative"]
    with pytest.raises(LoraError, match="^huge has 80 vectors; a prompt chunk holds 75$"):
        prompt_chunks("huge", tokenizer, embeddings=find)
