"""GenerationRequest.validate at the boundary: text that cannot be saved, and the seed range that
keeps every recorded seed usable (issue 15 item 6)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_sd.noise import PhiloxGenerator, image_seeds
from mlx_sd.request import LARGEST_SEED, MAX_SEED, GenerationRequest, RequestError


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("bad", ["\ud83d", "\udcff", "\udc80abc"], ids=["high", "escaped-byte", "low"])
def test_lone_surrogates_are_refused_naming_the_character(field, bad):
    text = "a castle on a hill " + bad
    with pytest.raises(RequestError, match=rf"^{field} = .* valid Unicode text; character 20 is a lone surrogate") as info:
        GenerationRequest(**{field: text}).validate()
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)  # one line, an excerpt of the text


def test_a_huge_bad_prompt_gives_a_short_message():
    with pytest.raises(RequestError) as info:
        GenerationRequest(prompt="x" * 1_000_000 + "\udcff").validate()
    assert len(str(info.value)) < 300


def test_text_must_be_a_string():
    with pytest.raises(RequestError, match="prompt = 'a bytes' is not allowed: text"):
        GenerationRequest(prompt=b"a cat").validate()  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_is_either_accepted_and_savable_or_refused(text):
    try:
        GenerationRequest(prompt=text, negative_prompt=text).validate()
    except RequestError as exc:
        assert exc.field == "prompt"
        return
    text.encode("utf-8")  # what saving the infotext needs


def test_every_image_seed_of_a_run_is_a_valid_seed():
    for seed, batch_size, batch_count in ((MAX_SEED, 2, 1), (MAX_SEED - 5, 64, 64), (LARGEST_SEED - 63, 64, 1)):
        request = GenerationRequest(seed=seed, batch_size=batch_size, batch_count=batch_count)
        request.validate()
        for image_seed in image_seeds(seed, request.total_images):
            GenerationRequest(seed=image_seed).validate()  # accepted back as the seed of a new run
            PhiloxGenerator(image_seed)  # and the generator takes it
    with pytest.raises(RequestError, match="seed"):
        GenerationRequest(seed=LARGEST_SEED, batch_size=2).validate()


def test_seeds_past_32_bits_key_the_generator_with_their_high_word():
    low, high = PhiloxGenerator(2**32 + 5), PhiloxGenerator(5)
    assert list(low.key) == [5, 1] and list(high.key) == [5, 0]
    assert (low.randn((4,)) != high.randn((4,))).all()
