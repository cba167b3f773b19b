"""Fuzzing what users and other programs hand us (issue 15): prompts, infotexts, and image files for
init images, masks and drops. Every test builds its own hostile inputs (several per example, thousands
in all) and asserts that only the documented errors come out and that each input takes at most BUDGET
seconds; the parsers that were quadratic took minutes on inputs of these kinds.

Documented errors: the prompt and infotext parsers raise nothing; `request_from_infotext` raises
nothing and `validate` only RequestError; `open_image` one of UNDECODABLE; the CLI's `read_image` a
ValueError (one line); the app's `classify_file` nothing (an unsupported drop says why).
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.ExifTags import IFD, Base

from cli.generate import read_image
from mlx_sd.image_metadata import UNDECODABLE, open_image, save_image
from mlx_sd.image_prep import prepare_init_image, prepare_mask
from mlx_sd.infotext import Infotext, parse_infotext, request_from_infotext
from mlx_sd.prompt_parser import Break, Fragment, parse_prompt_attention
from mlx_sd.request import GenerationRequest, RequestError

BUDGET = 2.0  # seconds per input, generous for a shared CI machine
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INFOTEXT = (
    "a castle, (dramatic sky:1.2)\nNegative prompt: lowres\n"
    'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Lora: "a, b"'
)


def within_budget(function, *args):
    started = time.perf_counter()
    result = function(*args)
    elapsed = time.perf_counter() - started
    assert elapsed < BUDGET, f"{function.__name__} took {elapsed:.2f} s"
    return result


def repeated(pieces: st.SearchStrategy[str], longest: int = 20_000) -> st.SearchStrategy[str]:
    """Long inputs: a short generated unit repeated up to `longest` times (where quadratic parsers hang)."""
    return st.builds(lambda unit, times: unit * times, pieces, st.integers(1, longest))


# -- the prompt parser ----------------------------------------------------------------------------

PROMPT_PIECES = ["(", ")", "[", "]", ":", "\\", " ", "\t", "\n", ",", "a", "cat", "BREAK", "1.2", "-0.5", ".", "e9",
                 "é", "\udcff"]
PROMPT_UNITS = st.lists(st.sampled_from(PROMPT_PIECES), min_size=1, max_size=8).map("".join)
PROMPTS = st.lists(st.lists(st.sampled_from(PROMPT_PIECES), max_size=60).map("".join) | st.text(max_size=80)
                   | repeated(PROMPT_UNITS, 3_000), min_size=1, max_size=12)


@FUZZ
@given(PROMPTS)
def test_prompt_parser_takes_any_text(prompts):
    for prompt in prompts:
        parsed = within_budget(parse_prompt_attention, prompt)
        assert parsed and all(isinstance(item, (Fragment, Break)) for item in parsed)
        assert all(isinstance(item.weight, float) for item in parsed if isinstance(item, Fragment))


# -- the infotext parser ----------------------------------------------------------------------------

INFOTEXT_PIECES = ["Steps", "Seed", "Size", "CFG scale", "Sampler", "Negative prompt", ":", ": ", ",", ", ", '"',
                   "\\", "\n", "\r\n", " ", "\t", "-", "/", "20", "512x512", "1e999", "nan", "-1", "9" * 30, "é",
                   "\udcff"]
INFOTEXT_UNITS = st.lists(st.sampled_from(INFOTEXT_PIECES), min_size=1, max_size=8).map("".join)
INFOTEXTS = st.lists(
    st.lists(st.sampled_from(INFOTEXT_PIECES), max_size=60).map("".join)
    | st.text(max_size=120)
    | repeated(INFOTEXT_UNITS)
    | st.builds(lambda cut, junk: INFOTEXT[:cut] + junk, st.integers(0, len(INFOTEXT)), st.text(max_size=20)),
    min_size=1, max_size=8,
)


@FUZZ
@given(INFOTEXTS)
def test_infotext_parser_takes_any_text(texts):
    for text in texts:
        info = within_budget(parse_infotext, text)
        assert isinstance(info, Infotext) and all(isinstance(v, str) for v in info.params.values())
        request = within_budget(request_from_infotext, info)
        assert isinstance(request, GenerationRequest)
        try:
            request.validate()
        except RequestError:
            pass  # a clear message naming the field: what the app shows


# -- image files ------------------------------------------------------------------------------------

MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_files(folder: Path) -> dict[str, bytes]:
    """Small valid files with our metadata (a text chunk, an EXIF UserComment) to damage."""
    found = {}
    for suffix in (".png", ".jpg", ".webp"):
        path = save_image(Image.new("RGB", (24, 16), (200, 40, 40)), folder / f"base{suffix}", INFOTEXT)
        found[suffix] = path.read_bytes()
    return found


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    header = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    frame = jpeg.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    return jpeg[: frame + 5] + struct.pack(">HH", height, width) + jpeg[frame + 9 :]


def check_reading(path: Path) -> None:
    """What the CLI (init image, mask) and the app (drops) do with a file: only documented errors."""
    try:
        image, text = within_budget(open_image, path)
    except UNDECODABLE:
        with pytest.raises(ValueError, match="cannot read it as an image"):
            read_image(path, "--init-image")
        return
    assert text is None or (isinstance(text, str) and text.encode("utf-8"))
    for prepare, args in ((prepare_init_image, (64, 64)), (prepare_mask, (64, 64, 4))):
        try:
            array = within_budget(prepare, image, *args)
        except (OSError, ValueError):
            continue  # generation.plan turns these into RequestError naming the image
        assert np.isfinite(array).all()


Damage = st.tuples(
    st.sampled_from([".png", ".jpg", ".webp"]),
    st.integers(0, 2**16),  # where to cut (modulo the length)
    st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=8),  # bytes to overwrite
)


@FUZZ
@given(st.lists(Damage, min_size=1, max_size=6))
def test_truncated_and_corrupted_files(folder, valid_files, damages):
    path = folder / "damaged"
    for suffix, cut, writes in damages:
        data = bytearray(valid_files[suffix])
        for where, value in writes:
            data[where % len(data)] = value
        path.write_bytes(bytes(data[: cut % (len(data) + 1)]))
        check_reading(path)


@FUZZ
@given(st.lists(st.binary(max_size=600) | st.builds(lambda head, tail: head + tail,
                                                    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"GIF89a", b"BM", b"II*\x00"]),
                                                    st.binary(max_size=400)),
                    min_size=1, max_size=6))
def test_random_bytes(folder, blobs):
    path = folder / "random"
    for blob in blobs:
        path.write_bytes(blob)
        check_reading(path)


SIZES = (  # decoded (cheaply) or refused from the header
    st.tuples(st.integers(1, 1024), st.integers(1, 1024))
    | st.tuples(st.integers(1, 65535), st.integers(1, 65535)).filter(lambda size: size[0] * size[1] > 8192 * 8192)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["png", "jpg"]), SIZES), min_size=1, max_size=5))
def test_huge_declared_sizes_are_refused_before_decoding(folder, valid_files, sizes):
    path = folder / "declared"
    for kind, (width, height) in sizes:
        base = valid_files[f".{kind}"]
        path.write_bytes(with_png_size(base, width, height) if kind == "png" else with_jpeg_size(base, width, height))
        if width * height > 8192 * 8192:
            with pytest.raises(Image.DecompressionBombError):
                within_budget(open_image, path)
        else:
            check_reading(path)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["JPEG", "WEBP", "PNG"]), st.binary(max_size=300),
                          st.sampled_from([b"", b"Exif\x00\x00", b"MM\x00*\x00\x00\x00\x08", b"II*\x00\x08\x00\x00\x00"])),
                min_size=1, max_size=4))
def test_damaged_exif_blocks_never_refuse_the_image(folder, blocks):
    path = folder / "exif"
    for fmt, body, prefix in blocks:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buffer, format=fmt, exif=prefix + body)
        path.write_bytes(buffer.getvalue())
        image, text = within_budget(open_image, path)
        assert image.size == (16, 16) and (text is None or isinstance(text, str))


@FUZZ
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4), st.sampled_from(["JPEG", "WEBP"]))
def test_any_user_comment_reads_as_text(folder, comments, fmt):
    path = folder / "comment"
    for comment in comments:
        exif = Image.Exif()
        exif.get_ifd(IFD.Exif)[Base.UserComment] = comment
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buffer, format=fmt, exif=exif)
        path.write_bytes(buffer.getvalue())
        image, text = within_budget(open_image, path)
        assert text is None or text.encode("utf-8")  # decodable, savable text


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(MODES), st.sampled_from(["png", "tiff", "webp", "gif", "bmp"]))
def test_every_mode_prepares_as_init_image_and_mask(folder, mode, fmt):
    path = folder / f"mode.{fmt}"
    try:
        Image.new(mode, (20, 12)).save(path)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write this mode in this format
    check_reading(path)
