import dataclasses
import functools

import mlx.core as mx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten, tree_unflatten

from mlx_sd.clip import CLIPTextModel
from mlx_sd.conditioning import PromptEncoder, apply_emphasis, prompt_chunks
from mlx_sd.config import CLIPTextConfig
from mlx_sd.model_format import check_weights
from reference import models as reference_models
from mlx_sd.tokenizer import BUNDLED_FOLDER, CLIPTokenizer

EOS, BOS = 49407, 49406
CAT, DOG, COMMA = 2368, 1929, 267
WIDTH = 128  # tiny text towers: 2 heads of 64 (tiny-model rule)

TINY = CLIPTextConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=3, num_attention_heads=2)
SD1 = TINY
SD2 = dataclasses.replace(TINY, hidden_act="gelu", pad_token_id=0)
SDXL_L = dataclasses.replace(TINY, hidden_layer=-2, final_norm=False)
SDXL_G = dataclasses.replace(SD2, projection_dim=WIDTH, hidden_layer=-2, final_norm=False)


def random_model(config: CLIPTextConfig, seed: int) -> CLIPTextModel:
    mx.random.seed(seed)
    model = CLIPTextModel(config)
    # Unit-scale random parameters everywhere (LayerNorms included) so every path is exercised.
    params = tree_flatten(model.parameters())
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * (0.5 if v.ndim == 1 else 0.1)) for k, v in params]))
    mx.eval(model.parameters())
    return model


@functools.cache
def bundled(pad_token_id: int) -> CLIPTokenizer:
    return CLIPTokenizer.bundled(pad_token_id)


def tokenizer(config: CLIPTextConfig) -> CLIPTokenizer:
    return bundled(config.pad_token_id)


@pytest.fixture(scope="module")
def sd1():
    return tokenizer(SD1), random_model(SD1, 1)


@pytest.fixture(scope="module")
def sdxl():
    return (tokenizer(SDXL_L), random_model(SDXL_L, 2)), (tokenizer(SDXL_G), random_model(SDXL_G, 3))


def plain(model, ids, clip_skip=1):
    out = model.encode(mx.array([ids], dtype=mx.int32), clip_skip)
    return np.array(out.hidden[0]), None if out.pooled is None else np.array(out.pooled[0])


def close(a, b, atol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)


# --- chunking ---------------------------------------------------------------------------------


def ids_of(chunk):
    return list(chunk.ids)


def test_short_prompt_is_one_chunk_padded_with_eos(sd1):
    tok, _ = sd1
    (chunk,) = prompt_chunks("a photo of a cat", tok)
    assert ids_of(chunk) == tok("a photo of a cat") == [BOS, 320, 1125, 539, 320, CAT] + [EOS] * 71
    assert chunk.weights == (1.0,) * 77


def test_openclip_padding_is_zero_after_the_first_eos():
    tok = tokenizer(SD2)
    (chunk,) = prompt_chunks("a cat", tok)
    assert ids_of(chunk) == [BOS, 320, CAT, EOS] + [0] * 73
    (full,) = prompt_chunks(" ".join(["cat"] * 75), tok)
    assert ids_of(full) == [BOS] + [CAT] * 75 + [EOS]


def test_empty_prompt_is_one_empty_chunk(sd1):
    tok, _ = sd1
    for prompt in ("", "BREAK", "  "):
        (chunk,) = prompt_chunks(prompt, tok)
        assert ids_of(chunk) == [BOS] + [EOS] * 76


def test_weights_follow_tokens(sd1):
    tok, _ = sd1
    (chunk,) = prompt_chunks("a (red:1.5) [cat], ((dog))", tok)
    assert ids_of(chunk)[:7] == [BOS, 320, 736, CAT, COMMA, DOG, EOS]
    assert chunk.weights[:7] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0, 1.21, 1.0])


def test_200_tokens_give_3_chunks(sd1):
    tok, _ = sd1
    chunks = prompt_chunks(" ".join(["cat"] * 200), tok)
    assert [ids_of(c).count(CAT) for c in chunks] == [75, 75, 50]
    assert all(c.ids[0] == BOS and c.ids[76] == EOS for c in chunks)


def test_comma_backtrack_moves_the_words_after_the_last_comma(sd1):
    tok, _ = sd1
    chunks = prompt_chunks(" ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10), tok)
    # The chunk fills at 70 cats + comma + 4 dogs; the comma is 5 tokens back, so those 4 dogs move.
    assert ids_of(chunks[0]) == [BOS] + [CAT] * 70 + [COMMA] + [EOS] * 5
    assert ids_of(chunks[1]) == [BOS] + [DOG] * 10 + [EOS] * 66


def test_comma_backtrack_keeps_weights_with_their_tokens(sd1):
    tok, _ = sd1
    chunks = prompt_chunks(" ".join(["cat"] * 70) + ", (dog:1.3) " + " ".join(["dog"] * 9), tok)
    assert chunks[1].weights[:3] == (1.0, 1.3, 1.0)


def test_no_backtrack_when_the_comma_is_more_than_20_tokens_back(sd1):
    tok, _ = sd1
    chunks = prompt_chunks(" ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 40), tok)
    assert ids_of(chunks[0]) == [BOS] + [CAT] * 50 + [COMMA] + [DOG] * 24 + [EOS]
    assert ids_of(chunks[1]) == [BOS] + [DOG] * 16 + [EOS] * 60
    # Exactly 20 back still moves; backtrack 0 disables it.
    moved = prompt_chunks(" ".join(["cat"] * 55) + ", " + " ".join(["dog"] * 30), tok)
    assert ids_of(moved[0]) == [BOS] + [CAT] * 55 + [COMMA] + [EOS] * 20
    kept = prompt_chunks(" ".join(["cat"] * 55) + ", " + " ".join(["dog"] * 30), tok, comma_backtrack=0)
    assert ids_of(kept[0]) == [BOS] + [CAT] * 55 + [COMMA] + [DOG] * 19 + [EOS]


def test_comma_exactly_at_the_chunk_end_opens_the_next_chunk(sd1):
    tok, _ = sd1
    chunks = prompt_chunks(" ".join(["cat"] * 75) + ", dog", tok)
    assert ids_of(chunks[0]) == [BOS] + [CAT] * 75 + [EOS]
    assert ids_of(chunks[1])[:4] == [BOS, COMMA, DOG, EOS]


def test_break_starts_a_new_chunk(sd1):
    tok, _ = sd1
    chunks = prompt_chunks("a cat BREAK a dog", tok)
    assert [ids_of(c)[:4] for c in chunks] == [[BOS, 320, CAT, EOS], [BOS, 320, DOG, EOS]]
    assert len(prompt_chunks("a cat BREAK", tok)) == 1  # a trailing BREAK adds nothing
    assert len(prompt_chunks("BREAK a cat", tok)) == 2  # a leading one leaves an empty chunk


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["cat", "dog", ",", "(", ")", "[", "]", ":1.3)", "BREAK", " ", "\\", "日本", "🎨"]), max_size=250))
def test_fuzz_chunks_are_always_well_formed(words):
    for tok in (tokenizer(SD1), tokenizer(SD2)):
        chunks = prompt_chunks("".join(words), tok)
        assert chunks
        for chunk in chunks:
            assert len(chunk.ids) == len(chunk.weights) == 77
            assert chunk.ids[0] == BOS and EOS in chunk.ids[1:]
            assert all(np.isfinite(chunk.weights))


# --- encoding ---------------------------------------------------------------------------------


def test_short_unweighted_prompt_equals_the_plain_encoder(sd1):
    tok, model = sd1
    cond = PromptEncoder([tok], [model]).encode(["a photo of a cat"])
    assert cond.context.shape == (1, 77, WIDTH) and cond.pooled is None
    assert np.array_equal(np.array(cond.context[0]), plain(model, tok("a photo of a cat"))[0])


def test_clip_skip_passes_through(sd1):
    tok, model = sd1
    cond = PromptEncoder([tok], [model]).encode(["a cat"], clip_skip=2)
    close(cond.context[0], plain(model, tok("a cat"), clip_skip=2)[0])
    assert not np.allclose(np.array(cond.context[0]), plain(model, tok("a cat"))[0])


def test_weights_scale_tokens_and_restore_the_mean(sd1):
    tok, model = sd1
    prompt = "a (red:1.5) [cat], ((dog))"
    cond = PromptEncoder([tok], [model]).encode([prompt])
    (chunk,) = prompt_chunks(prompt, tok)
    z, _ = plain(model, list(chunk.ids))
    z = z.astype(np.float64)
    weighted = z * np.array(chunk.weights)[:, None]
    expected = weighted * (z.mean() / weighted.mean())
    close(cond.context[0], expected, atol=1e-5)
    assert float(np.array(cond.context).mean()) == pytest.approx(z.mean(), rel=1e-4, abs=1e-6)
    assert not np.allclose(expected, z)


def test_apply_emphasis_is_per_chunk():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 77, 8)).astype(np.float32) + 0.3
    weights = rng.uniform(0.5, 1.5, size=(2, 77)).astype(np.float32)
    out = np.array(apply_emphasis(mx.array(hidden), mx.array(weights)))
    for i in range(2):
        expected = hidden[i] * weights[i][:, None]
        expected *= hidden[i].mean() / expected.mean()
        close(out[i], expected, atol=1e-5)
    same = np.array(apply_emphasis(mx.array(hidden), mx.ones((2, 77))))
    assert np.array_equal(same, hidden)  # weight 1 everywhere changes nothing, bit for bit


def test_long_prompt_chunks_are_encoded_independently_and_concatenated(sd1):
    tok, model = sd1
    prompt = ", ".join(f"{w} cat" for w in ["red", "blue", "green", "big", "small"] * 14)  # ~210 tokens
    chunks = prompt_chunks(prompt, tok)
    assert len(chunks) == 3
    cond = PromptEncoder([tok], [model]).encode([prompt])
    assert cond.context.shape == (1, 231, WIDTH)
    for i, chunk in enumerate(chunks):
        close(cond.context[0, 77 * i : 77 * (i + 1)], plain(model, list(chunk.ids))[0])


def test_openclip_encoder_sees_zero_padding():
    tok, model = tokenizer(SD2), random_model(SD2, 4)
    cond = PromptEncoder([tok], [model]).encode(["a cat"])
    close(cond.context[0], plain(model, [BOS, 320, CAT, EOS] + [0] * 73)[0])
    assert not np.allclose(np.array(cond.context[0]), plain(model, [BOS, 320, CAT] + [EOS] * 74)[0])


def test_sdxl_concatenates_features_and_pools_from_bigg_first_chunk(sdxl):
    (tok_l, model_l), (tok_g, model_g) = sdxl
    prompt = "a (cat:1.2) BREAK on a mat"
    cond = PromptEncoder([tok_l, tok_g], [model_l, model_g]).encode([prompt])
    assert cond.context.shape == (1, 154, 2 * WIDTH) and cond.pooled.shape == (1, WIDTH)
    only_l = PromptEncoder([tok_l], [model_l]).encode([prompt]).context
    only_g = PromptEncoder([tok_g], [model_g]).encode([prompt])
    close(cond.context[..., :WIDTH], only_l)
    close(cond.context[..., WIDTH:], only_g.context)
    first_g = prompt_chunks(prompt, tok_g)[0]
    close(cond.pooled[0], plain(model_g, list(first_g.ids))[1])
    second_g = prompt_chunks(prompt, tok_g)[1]
    assert not np.allclose(np.array(cond.pooled[0]), plain(model_g, list(second_g.ids))[1])


def test_refiner_uses_bigg_alone(sdxl):
    _, (tok_g, model_g) = sdxl
    cond = PromptEncoder([tok_g], [model_g]).encode(["a cat"])
    assert cond.context.shape == (1, 77, WIDTH) and cond.pooled.shape == (1, WIDTH)


def test_sdxl_empty_negative_is_zeros_only_with_the_flag(sdxl):
    (tok_l, model_l), (tok_g, model_g) = sdxl
    zeros = PromptEncoder([tok_l, tok_g], [model_l, model_g], force_zeros_for_empty_prompt=True)
    positive, negative = zeros.encode_for_guidance(["a cat", "a dog"], ["", ""])
    assert negative.context.shape == (2, 77, 2 * WIDTH) and negative.pooled.shape == (2, WIDTH)
    assert not np.any(np.array(negative.context)) and not np.any(np.array(negative.pooled))
    # One non-empty negative in the batch: every negative is encoded (A1111's rule).
    _, mixed = zeros.encode_for_guidance(["a cat", "a dog"], ["", "blurry"])
    assert np.any(np.array(mixed.context[0])) and np.any(np.array(mixed.pooled[0]))
    # Without the flag (SD1/SD2, refiner) the empty string is encoded.
    encoded = PromptEncoder([tok_l, tok_g], [model_l, model_g])
    _, negative = encoded.encode_for_guidance(["a cat"], [""])
    close(negative.context, encoded.encode([""]).context)


def test_long_positive_with_zero_negative_pads_with_the_empty_prompt(sdxl):
    (tok_l, model_l), (tok_g, model_g) = sdxl
    encoder = PromptEncoder([tok_l, tok_g], [model_l, model_g], force_zeros_for_empty_prompt=True)
    positive, negative = encoder.encode_for_guidance(["a cat BREAK a dog"], [""])
    assert positive.context.shape == negative.context.shape == (1, 154, 2 * WIDTH)
    assert not np.any(np.array(negative.context[:, :77]))
    close(negative.context[:, 77:], PromptEncoder([tok_l, tok_g], [model_l, model_g]).encode([""]).context)


def test_cond_and_uncond_are_padded_to_equal_length(sd1):
    tok, model = sd1
    encoder = PromptEncoder([tok], [model])
    negative_text = "ugly BREAK blurry BREAK watermark"
    positive, negative = encoder.encode_for_guidance(["a cat", "a dog"], [negative_text] * 2)
    assert positive.context.shape == negative.context.shape == (2, 231, WIDTH)
    empty = encoder.encode([""]).context
    close(positive.context[:, :77], encoder.encode(["a cat", "a dog"]).context)
    for i in (1, 2):
        close(positive.context[:, 77 * i : 77 * (i + 1)], mx.broadcast_to(empty, (2, 77, WIDTH)))
    close(negative.context, encoder.encode([negative_text] * 2).context)
    # and the other way round
    positive, negative = encoder.encode_for_guidance([negative_text], ["a cat"])
    assert negative.context.shape == (1, 231, WIDTH)
    close(negative.context[:, 77:154], empty)


def test_batch_of_different_lengths_repeats_the_last_vector(sd1):
    tok, model = sd1
    encoder = PromptEncoder([tok], [model])
    cond = encoder.encode(["a cat", "a cat BREAK a dog"])
    assert cond.context.shape == (2, 154, WIDTH)
    short = np.array(encoder.encode(["a cat"]).context[0])
    close(cond.context[0, :77], short)
    close(cond.context[0, 77:], np.repeat(short[-1:], 77, axis=0))


class CountingModel:
    def __init__(self, model):
        self.model, self.rows = model, []

    def encode(self, ids, clip_skip=1, tokens=None):
        self.rows.append(ids.shape[0])
        return self.model.encode(ids, clip_skip, tokens)


def test_identical_prompts_are_encoded_once(sd1):
    tok, model = sd1
    counting = CountingModel(model)
    encoder = PromptEncoder([tok], [counting])
    cond = encoder.encode(["a cat"] * 4 + ["a dog BREAK x"])
    assert cond.context.shape == (5, 154, WIDTH)
    assert counting.rows == [3]  # one call: "a cat" once (1 chunk) + "a dog BREAK x" (2 chunks)
    positive, negative = encoder.encode_for_guidance(["a cat"] * 4, [""] * 4)
    assert counting.rows == [3, 1]  # only the empty prompt was new
    close(positive.context, mx.broadcast_to(cond.context[:1, :77], (4, 77, WIDTH)))
    encoder.encode_for_guidance(["a bird"], ["a fish BREAK x"])
    assert counting.rows == [3, 1, 3]  # new positive and negative texts share one call
    encoder.encode(["a cat"], clip_skip=2)
    assert counting.rows == [3, 1, 3, 1]  # clip skip is part of the cache key


def test_bad_arguments(sd1):
    tok, model = sd1
    with pytest.raises(ValueError, match="one tokenizer per text encoder"):
        PromptEncoder([tok, tok], [model])
    encoder = PromptEncoder([tok], [model])
    with pytest.raises(ValueError, match="non-empty list of prompt strings, got 'a cat'"):
        encoder.encode("a cat")
    with pytest.raises(ValueError, match=r"one negative prompt per prompt \(2\)"):
        encoder.encode_for_guidance(["a", "b"], ["x"])


# --- parity with diffusers' encode_prompt --------------------------------------------------------


def transformers_clip(config: CLIPTextConfig, seed: int):
    torch.manual_seed(seed)
    hf = reference_models.text_encoder(config).eval()
    with torch.no_grad():  # unit-scale activations rather than the tiny ones of the default init
        for name, param in hf.named_parameters():
            param.normal_(0.0, 1.0 if "embedding" in name else 0.5 if param.ndim == 1 else 0.1)
    ours = CLIPTextModel(config)
    # transformers 5's CLIPTextModel drops the `text_model.` prefix its checkpoints (and we) use.
    weights = {
        (k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): mx.array(v.numpy())
        for k, v in hf.state_dict().items()
        if "position_ids" not in k
    }
    check_weights(ours, weights, "text_encoder")
    ours.update(tree_unflatten(list(weights.items())))
    mx.eval(ours.parameters())
    return hf, ours


def transformers_tokenizer(pad: str):
    from transformers import CLIPTokenizer as HFTokenizer

    return HFTokenizer(
        str(BUNDLED_FOLDER / "vocab.json"), str(BUNDLED_FOLDER / "merges.txt"), pad_token=pad, model_max_length=77
    )


PARITY_PROMPT = "A photo of an astronaut riding a horse on mars, highly detailed"


def test_matches_diffusers_sd_encode_prompt():
    from diffusers import StableDiffusionPipeline

    hf, ours = transformers_clip(SD1, 5)
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=hf, tokenizer=transformers_tokenizer("<|endoftext|>"), unet=None,
        scheduler=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(PARITY_PROMPT, "cpu", 1, True, negative_prompt="blurry, ugly")
    ours_pos, ours_neg = PromptEncoder([tokenizer(SD1)], [ours]).encode_for_guidance([PARITY_PROMPT], ["blurry, ugly"])
    error = max(np.abs(np.array(ours_pos.context) - positive.numpy()).max(),
                np.abs(np.array(ours_neg.context) - negative.numpy()).max())
    print(f"SD encode_prompt max abs error {error:.2e} (context std {positive.numpy().std():.2f})")
    assert error < 1e-4


def test_matches_diffusers_sdxl_encode_prompt():
    from diffusers import StableDiffusionXLPipeline

    hf_l, ours_l = transformers_clip(SDXL_L, 6)
    hf_g, ours_g = transformers_clip(SDXL_G, 7)
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=hf_l, text_encoder_2=hf_g, tokenizer=transformers_tokenizer("<|endoftext|>"),
        tokenizer_2=transformers_tokenizer("!"), unet=None, scheduler=None, force_zeros_for_empty_prompt=True,
    )
    with torch.no_grad():
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(PARITY_PROMPT, device="cpu", negative_prompt=None)
    encoder = PromptEncoder(
        [tokenizer(SDXL_L), tokenizer(SDXL_G)], [ours_l, ours_g], force_zeros_for_empty_prompt=True
    )
    ours_pos, ours_neg = encoder.encode_for_guidance([PARITY_PROMPT], [""])
    errors = {
        "context": np.abs(np.array(ours_pos.context) - pos.numpy()).max(),
        "pooled": np.abs(np.array(ours_pos.pooled) - pooled.numpy()).max(),
    }
    print("SDXL encode_prompt max abs errors", {k: f"{v:.2e}" for k, v in errors.items()},
          f"(context std {pos.numpy().std():.2f}, pooled std {pooled.numpy().std():.2f})")
    assert max(errors.values()) < 1e-4
    assert not neg.numpy().any() and not neg_pooled.numpy().any()
    assert not np.array(ours_neg.context).any() and not np.array(ours_neg.pooled).any()
