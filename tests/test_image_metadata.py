import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from PIL.ExifTags import IFD, Base

from mlx_sd import image_metadata
from mlx_sd.image_metadata import ImageMetadataError, infotext_from_image, read_infotext, save_image

LONG_UNICODE = (
    "a photo of a café in Zürich, (masterpiece:1.2), 日本の寺院, emoji 🎨🖼️, \"quoted\" \\ backslash\n"
    "second line: ünïcödé BREAK third part\n" * 40
    + "Negative prompt: blurry, лишние пальцы\n"
    'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, '
    'Lora hashes: "a: 0123456789ab", Version: mlx-sd v0.1.0'
)
LATIN1 = "a red cube, (studio light:1.1)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"


def image(mode="RGB"):
    rng = np.random.default_rng(0)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 255, (48, 64, channels), dtype=np.uint8).squeeze(), mode)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
@pytest.mark.parametrize("durable", [False, True])
def test_round_trip_long_unicode(tmp_path, suffix, durable):
    path = save_image(image(), tmp_path / f"out{suffix}", LONG_UNICODE, durable=durable)
    assert path.is_file()
    assert read_infotext(path) == LONG_UNICODE
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    with Image.open(path) as reopened:
        assert reopened.size == (64, 48)


def chunk_types(path):
    data = path.read_bytes()[8:]
    types = []
    while data:
        length, kind = struct.unpack(">I4s", data[:8])
        types.append((kind.decode(), data[8 : 8 + length]))
        data = data[12 + length :]
    return types


def test_png_uses_text_when_latin1_and_itxt_otherwise(tmp_path):
    latin = save_image(image(), tmp_path / "latin.png", LATIN1)
    unicode = save_image(image(), tmp_path / "unicode.png", LONG_UNICODE)
    latin_chunks = dict(chunk_types(latin))
    assert latin_chunks["tEXt"] == b"parameters\x00" + LATIN1.encode("latin-1")
    assert "iTXt" not in latin_chunks
    unicode_chunks = dict(chunk_types(unicode))
    assert "tEXt" not in unicode_chunks
    assert unicode_chunks["iTXt"].startswith(b"parameters\x00")
    assert unicode_chunks["iTXt"].endswith(LONG_UNICODE.encode("utf-8"))


def test_jpeg_and_webp_user_comment_is_piexif_unicode(tmp_path):
    for suffix in (".jpg", ".webp"):
        path = save_image(image(), tmp_path / f"x{suffix}", LATIN1)
        with Image.open(path) as reopened:
            raw = reopened.getexif().get_ifd(IFD.Exif)[Base.UserComment]
        assert raw == b"UNICODE\x00" + LATIN1.encode("utf-16-be")


def test_rgba_saved_as_jpeg_and_png(tmp_path):
    for suffix in (".jpg", ".png", ".webp"):
        path = save_image(image("RGBA"), tmp_path / f"a{suffix}", LATIN1)
        assert read_infotext(path) == LATIN1


def test_reads_a1111_style_png_with_other_chunks(tmp_path):
    # A1111 writes `parameters` with PngInfo.add_text next to whatever other text chunks exist.
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "other tool")
    info.add_text("parameters", LATIN1)
    path = tmp_path / "a1111.png"
    image().save(path, pnginfo=info)
    assert read_infotext(path) == LATIN1


def test_reads_parameters_chunk_after_image_data(tmp_path):
    path = tmp_path / "late.png"
    image().save(path)
    data = path.read_bytes()
    body = b"parameters\x00" + LATIN1.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    path.write_bytes(data[:iend] + chunk + data[iend:])
    assert read_infotext(path) == LATIN1


@pytest.mark.parametrize(
    "comment",
    [
        b"UNICODE\x00" + LATIN1.encode("utf-16-le"),  # other writers follow a little-endian EXIF
        b"UNICODE\x00" + LATIN1.encode("utf-16"),  # with a byte-order mark
        b"ASCII\x00\x00\x00" + LATIN1.encode(),
        b"\x00" * 8 + LATIN1.encode(),  # undefined character code
    ],
)
def test_reads_other_user_comment_encodings(tmp_path, comment):
    exif = Image.Exif()
    exif.get_ifd(IFD.Exif)[Base.UserComment] = comment
    path = tmp_path / "other.jpg"
    image().save(path, exif=exif)
    assert read_infotext(path) == LATIN1


def test_no_metadata_reads_as_none(tmp_path):
    for suffix in (".png", ".jpg", ".webp"):
        path = tmp_path / f"plain{suffix}"
        image().save(path)
        assert read_infotext(path) is None
        save_image(image(), tmp_path / f"none{suffix}")
        assert read_infotext(tmp_path / f"none{suffix}") is None


def test_infotext_from_open_image(tmp_path):
    path = save_image(image(), tmp_path / "x.webp", LONG_UNICODE)
    with Image.open(path) as opened:
        assert infotext_from_image(opened) == LONG_UNICODE


def test_corrupt_files_raise_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(2000))
    truncated = save_image(image(), tmp_path / "truncated.png", LATIN1)
    truncated.write_bytes(truncated.read_bytes()[:200])
    bad_jpeg = save_image(image(), tmp_path / "bad.jpg", LATIN1)
    bad_jpeg.write_bytes(bad_jpeg.read_bytes()[:300])
    for path in (garbage, truncated, bad_jpeg, tmp_path / "missing.png"):
        with pytest.raises(ImageMetadataError, match="cannot read image metadata from .*" + path.name):
            read_infotext(path)


def test_unknown_suffix_and_too_long_jpeg_comment(tmp_path):
    with pytest.raises(ImageMetadataError, match=r"ending in .png, .jpg, .jpeg, .webp, got '.gif'"):
        save_image(image(), tmp_path / "x.gif", LATIN1)
    with pytest.raises(ImageMetadataError, match="too long for JPEG EXIF"):
        save_image(image(), tmp_path / "x.jpg", "x" * 40000)
    assert not (tmp_path / "x.jpg").exists()
    path = save_image(image(), tmp_path / "x.webp", "x" * 40000)  # WebP has no such limit
    assert read_infotext(path) == "x" * 40000


def test_durable_save_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    save_image(image(), target, "old")

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(image_metadata.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        save_image(image(), target, "new", durable=True)
    assert read_infotext(target) == "old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


# -- hostile files read leniently and within bounds (issue 15) ----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        LATIN1.encode("utf-16-be") + b"\x00",  # an odd byte count: half a character at the end
        b"\xfe\xff" + LATIN1.encode("utf-16-be") + b"!",  # with a byte-order mark
        b"\xff\xfe" + LATIN1.encode("utf-16-le") + b"!",
        b"\xd8\x00" + LATIN1.encode("utf-16-be"),  # a lone high surrogate
    ],
)
def test_an_odd_user_comment_does_not_refuse_the_image(tmp_path, body):
    exif = Image.Exif()
    exif.get_ifd(IFD.Exif)[Base.UserComment] = b"UNICODE\x00" + body
    path = tmp_path / "odd.jpg"
    image().save(path, exif=exif)
    decoded, text = image_metadata.open_image(path)
    assert decoded.size == image().size
    assert LATIN1 in text and text.encode("utf-8")  # decodable text: a broken character becomes U+FFFD


def test_damaged_exif_reads_as_no_metadata_without_warnings(tmp_path, recwarn):
    path = tmp_path / "damaged.jpg"
    image().save(path, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x87\x69\x00\x04\x00\x00\x00\x01\xff\xff")
    decoded, text = image_metadata.open_image(path)
    assert decoded.size == image().size and text is None
    assert not [w for w in recwarn if "PIL" in w.filename]  # Pillow's warnings would print several lines


def with_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares another size (its CRC fixed), the pixel data unchanged."""
    header = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


@pytest.mark.parametrize("width, height", [(8193, 8192), (60000, 60000), (2**31 - 1, 1)])
def test_huge_declared_sizes_are_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    image().save(path)
    path.write_bytes(with_size(path.read_bytes(), width, height))
    with pytest.raises(Image.DecompressionBombError, match="pixels"):
        image_metadata.open_image(path)
    with pytest.raises(ImageMetadataError, match="bomb.png"):
        read_infotext(path)


def test_a_compressed_text_chunk_is_bounded(tmp_path):
    path = tmp_path / "zip-bomb.png"
    info = PngImagePlugin.PngInfo()
    info.add_text(image_metadata.PARAMETERS_KEY, "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    image().save(path, pnginfo=info)
    assert path.stat().st_size < 20_000  # 1 MiB of text in a few KB
    with pytest.raises(ImageMetadataError, match="zip-bomb.png.*Decompressed"):
        read_infotext(path)
