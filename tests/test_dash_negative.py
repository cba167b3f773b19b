"""Prompt lines starting with `-` go to the negative prompt (mlx_sd.dash_negative), opt-in through the
request, `mlx-sd generate --dash-lines-negative` and the app's Settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_generate import generate, model  # noqa: F401

from mlx_sd.dash_negative import move_dash_lines, with_dash_lines_moved
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import request_from_infotext
from mlx_sd.request import GenerationRequest


@pytest.mark.parametrize(
    ("prompt", "negative", "expected"),
    [
        ("a cat\n", "blurry", ("a cat\n", "blurry")),  # nothing to move: untouched
        ("a cat\n-blurry\n  - low quality ", "", ("a cat", "blurry, low quality")),
        ("a cat\n- text", "ugly ", ("a cat", "ugly, text")),
        ("a cat-dog, -1 eye", "", ("a cat-dog, -1 eye", "")),  # only a line's first character counts
        ("-\n-only", "", ("", "only")),
    ],
)
def test_dash_lines_move_to_the_negative_prompt(prompt, negative, expected):
    assert move_dash_lines(prompt, negative) == expected


def test_only_a_request_that_asks_moves_them():
    request = GenerationRequest(prompt="a cat\n-blurry", negative_prompt="ugly")
    assert with_dash_lines_moved(request) is request
    moved = with_dash_lines_moved(GenerationRequest(prompt="a cat\n-blurry", negative_prompt="ugly", dash_lines_negative=True))
    assert (moved.prompt, moved.negative_prompt, moved.dash_lines_negative) == ("a cat", "ugly, blurry", False)


@pytest.mark.parametrize("flag", [True, False])
def test_the_cli_flag_moves_them_and_the_infotext_records_the_result(capsys, model: Path, tmp_path: Path, flag):
    args = ["--dash-lines-negative"] if flag else []
    code, paths, err = generate(
        capsys, model, tmp_path / "out", "a red cube\n-blurry", "--negative", "ugly", "--steps", "1", "--seed", "3", *args
    )
    assert code == 0, err
    recorded = request_from_infotext(read_infotext(paths[0]))
    if flag:
        assert (recorded.prompt, recorded.negative_prompt) == ("a red cube", "ugly, blurry")
    else:
        assert (recorded.prompt, recorded.negative_prompt) == ("a red cube\n-blurry", "ugly")
