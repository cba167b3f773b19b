import math
import time
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_sd.prompt_parser import BREAK, Break, Fragment, parse_prompt_attention


def pairs(items):
    return [("BREAK", None) if isinstance(i, Break) else (i.text, i.weight) for i in items]


def assert_parses(prompt, expected):
    got = pairs(parse_prompt_attention(prompt))
    assert [t for t, _ in got] == [t for t, _ in expected], got
    for (_, w), (_, e) in zip(got, expected):
        assert (w is None and e is None) or w == pytest.approx(e, rel=1e-12), got


def escape(text: str) -> str:
    return re.sub(r"([\\()\[\]])", r"\\\1", text)


# The examples of A1111's own docstring (docs/facts.md §5.1).
@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)],
        ),
    ],
)
def test_a1111_docstring_examples(prompt, expected):
    assert_parses(prompt, expected)


def test_docstring_weights_are_bit_identical_to_a1111():
    # Merging compares weights exactly, so the multiplication order must match A1111's.
    out = parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert out[1].weight == 1.5730000000000004
    assert out[7].weight == 1.4641000000000006


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("", [("", 1.0)]),
        ("(word:1.2)", [("word", 1.2)]),
        ("(word: 1.2 )", [("word", 1.2)]),
        ("(word:-0.5)", [("word", -0.5)]),
        ("(word:.5)", [("word", 0.5)]),
        ("((a))", [("a", 1.21)]),
        ("[a]", [("a", 1 / 1.1)]),
        ("[[a]]", [("a", 1 / 1.21)]),
        ("([a])", [("a", 1.0)]),
        ("((a:2))", [("a", 2.2)]),
        ("[(a:2)]", [("a", 2 / 1.1)]),
        ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("((a", [("a", 1.21)]),
        ("([a", [("a", 1.1 / 1.1)]),
        ("a) b] c", [("a) b] c", 1.0)]),
        ("(a]", [("a]", 1.1)]),
        ("a:1.2) b", [("a:1.2) b", 1.0)]),
        ("x:y", [("x:y", 1.0)]),
        (r"\\", [("\\", 1.0)]),
        (r"a\b", [("ab", 1.0)]),  # a lone backslash is dropped, as A1111's parser does
        (r"(a\)b)", [("a)b", 1.1)]),
        (r"\((a)\)", [("(", 1.0), ("a", 1.1), (")", 1.0)]),
        ("(a)(b:1.1)", [("ab", 1.1)]),
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # A1111 crashes on this; we keep the text
        ("(a:.)", [("a:.", 1.1)]),
        ("(a:" + "9" * 400 + ")", [("a:" + "9" * 400, 1.1)]),  # overflow to inf is not a weight
    ],
)
def test_emphasis(prompt, expected):
    assert_parses(prompt, expected)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a BREAK b", [("a", 1.0), ("BREAK", None), ("b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), ("BREAK", None), ("b", 1.0)]),
        ("BREAK", [("", 1.0), ("BREAK", None), ("", 1.0)]),
        ("a BREAK BREAK b", [("a", 1.0), ("BREAK", None), ("", 1.0), ("BREAK", None), ("b", 1.0)]),
        ("(a) BREAK (b)", [("a", 1.1), ("", 1.0), ("BREAK", None), ("", 1.0), ("b", 1.1)]),
        ("(a BREAK b)", [("a", 1.1), ("BREAK", None), ("b", 1.1)]),  # A1111 would weight "break" -1.1
        ("breakfast BREAKS break Break xBREAK", [("breakfast BREAKS break Break xBREAK", 1.0)]),
        (r"a \BREAK b", [("a ", 1.0), ("BREAK", None), ("b", 1.0)]),
    ],
)
def test_break(prompt, expected):
    assert_parses(prompt, expected)


def test_break_is_the_shared_marker():
    assert parse_prompt_attention("a BREAK b")[1] is BREAK


def test_prompt_editing_and_and_are_verbatim():
    assert_parses("a [cat:dog:0.5] AND b", [("a ", 1.0), ("cat:dog:0.5", 1 / 1.1), (" AND b", 1.0)])
    assert_parses("[fe|]male", [("fe|", 1 / 1.1), ("male", 1.0)])


special = st.sampled_from(list("()[]\\: ,.") + ["BREAK", " BREAK ", ":1.5)", ":0.2)", ":x)", "\n"])
prompt_text = st.lists(st.one_of(special, st.text(max_size=5)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(prompt_text)
def test_fuzz_never_crashes_and_output_is_well_formed(prompt):
    out = parse_prompt_attention(prompt)
    assert out
    for item in out:
        assert isinstance(item, (Fragment, Break))
        if isinstance(item, Fragment):
            assert math.isfinite(item.weight)
    for a, b in zip(out, out[1:]):
        assert not (isinstance(a, Fragment) and isinstance(b, Fragment) and a.weight == b.weight)
    # Every BREAK of the input survives; no other text disappears except syntax characters.
    assert sum(isinstance(i, Break) for i in out) == len(re.findall(r"\bBREAK\b", prompt))


# Text that stays literal inside brackets: no BREAK, and no ending `:<number>`, which `(text)` would
# read as an explicit weight (A1111 does too: `(:0)` is an empty fragment of weight 0).
plain = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: not re.search(r"\bBREAK\b", s) and not re.search(r":\s*[+-]?[.\d]+\s*$", s)
)


@settings(max_examples=200, deadline=None)
@given(plain)
def test_fuzz_escaped_text_is_literal(text):
    assert pairs(parse_prompt_attention(escape(text))) == [(text, 1.0)]
    assert_parses("(" + escape(text) + ")", [(text, 1.1)])
    assert_parses("[" + escape(text) + "]", [(text, 1 / 1.1)])


@settings(max_examples=200, deadline=None)
@given(plain, st.floats(min_value=-10, max_value=10, allow_nan=False).map(lambda w: round(w, 3)))
def test_fuzz_explicit_weight(text, weight):
    assert pairs(parse_prompt_attention(f"({escape(text)}:{weight})")) == [(text, weight)]


# -- linear time (issue 15) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "(a" * 50_000,  # deep unclosed nesting: A1111 re-multiplies everything after each opener
        "(a" * 25_000 + ")" * 25_000,
        "[a(b" * 25_000,
        "(a:1.1)" * 14_000,
        " " * 100_000 + "BREAK",  # A1111's BREAK split retries its leading \s* at every space
        "a:" * 50_000,  # one fragment of equal weight after another: joined once, not per fragment
        "\\" * 100_000,
    ],
    ids=["nested", "balanced", "mixed", "weights", "spaces", "colons", "backslashes"],
)
def test_hostile_100kb_prompts_parse_in_linear_time(prompt):
    started = time.perf_counter()
    parse_prompt_attention(prompt)
    assert time.perf_counter() - started < 5  # generous for a shared CI machine; quadratic: minutes


def test_brackets_deeper_than_the_limit_add_no_weight():
    from mlx_sd.prompt_parser import MAX_NESTING

    deep = "(" * (MAX_NESTING + 3) + "x" + ")" * (MAX_NESTING + 3) + " y"
    assert pairs(parse_prompt_attention(deep)) == [("x", pytest.approx(1.1**MAX_NESTING)), (" y", 1.0)]
    assert pairs(parse_prompt_attention("[" * 40 + "x")) == [("x", pytest.approx(1.1**-MAX_NESTING))]
