"""Prompt editing and alternation (mlx_sd.prompt_schedule) against A1111's documented examples (the
doctests of its prompt_parser.py), its hires-pass rules, malformed prompts, and linear time."""

import gc
import time

import pytest

from mlx_sd.prompt_schedule import at_step, prompt_schedule

# A1111's documented examples, 10 steps: prompt -> [(last step, text), ...]
A1111_EXAMPLES = {
    "test": [(10, "test")],
    "a [b:3]": [(3, "a "), (10, "a b")],
    "a [b: 3]": [(3, "a "), (10, "a b")],
    "a [[[b]]:2]": [(2, "a "), (10, "a [[b]]")],
    "[(a:2):3]": [(3, ""), (10, "(a:2)")],
    "a [b : c : 1] d": [(1, "a b  d"), (10, "a  c  d")],
    "a[b:[c:d:2]:1]e": [(1, "abe"), (2, "ace"), (10, "ade")],
    "a [unbalanced": [(10, "a [unbalanced")],
    "a [b:.5] c": [(5, "a  c"), (10, "a b c")],
    "((a][:b:c [d:3]": [(3, "((a][:b:c "), (10, "((a][:b:c d")],
    "[a|(b:1.1)]": [(k, "a" if k % 2 else "(b:1.1)") for k in range(1, 11)],
    "[fe|]male": [(k, "female" if k % 2 else "male") for k in range(1, 11)],
    "[fe|||]male": [(k, "female" if k % 4 == 1 else "male") for k in range(1, 11)],
    # A1111's comment example, 100 steps below
}


@pytest.mark.parametrize("prompt", list(A1111_EXAMPLES))
def test_a1111_documented_examples(prompt):
    assert prompt_schedule(prompt, 10) == A1111_EXAMPLES[prompt]


def test_a1111_comment_example_at_100_steps():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
              "[: in background:0.25] [shoddy:masterful:0.5]")
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_hires_pass_rules():
    """A1111's documented hires examples (10 + 10 steps): fractions count from the hires pass's start
    (1.5 is halfway through it), whole numbers from the first pass's."""
    assert prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:13] c", 10, hires_steps=20) == [(3, "a  c"), (20, "a b c")]


def test_when_as_a1111_reads_it():
    assert prompt_schedule("[a:b:1e1]", 10) == [(10, "a")]  # no decimal point: a step number
    assert prompt_schedule("[a:b:25]", 10) == [(10, "a")]  # capped at the step count
    assert prompt_schedule("[a:b:-2]", 10) == [(10, "b")]  # never before: `to` throughout
    assert prompt_schedule("[a:b:0.05]", 10) == [(10, "b")]  # int(0.5) = 0: no boundary, `to`
    assert prompt_schedule("[a::0.5]", 10) == [(5, "a"), (10, "")]


@pytest.mark.parametrize("prompt", ["a | b", "(a|b)", "[a|[b:c]]", "[a|b:0.5]", "x [a:b:3] \\", "[a|b"])
def test_what_a1111_cannot_parse_is_plain_text(prompt):
    assert prompt_schedule(prompt, 10) == [(10, prompt)]


@pytest.mark.parametrize("prompt", ["[a:b]", "[a:b:c:0.5]", "(a:b:c)", "a) [b", "]["])
def test_brackets_that_fit_no_construct_stay_as_written(prompt):
    assert prompt_schedule(prompt, 10) == [(10, prompt)]


def test_at_step_follows_a1111s_comparison():
    schedule = prompt_schedule("[a:b:3]", 10)  # [(3, 'a'), (10, 'b')]
    assert [at_step(schedule, step) for step in range(12)] == ["a"] * 4 + ["b"] * 7 + ["a"]  # then the first


def test_steps_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        prompt_schedule("a", 0)


def test_deep_nesting_and_long_prompts_take_linear_time():
    prompt_schedule("[" * 5000 + "a:b:2" + "]" * 5000, 10)  # no recursion limit
    sizes = {}
    for n in (2000, 8000):
        prompt = "[a:b:3] (c:1.2) [d|e] " * n + "((([" * n
        times = []
        gc.disable()  # the collector's full passes scan the whole test session's heap: not the parser's time
        try:
            for _ in range(3):  # the fastest of three: a loaded machine only ever adds time
                started = time.perf_counter()
                schedule = prompt_schedule(prompt, 2)
                times.append(time.perf_counter() - started)
        finally:
            gc.enable()
        sizes[n] = min(times)
        assert len(schedule) == 2
    assert sizes[8000] < 10 * sizes[2000]  # 4x the text: linear takes about 4x the time, quadratic 16x
