"""Save images with their A1111 infotext and read it back (docs/facts.md §6.1), with Pillow only.

- PNG: a text chunk keyed `parameters`: tEXt when the text is Latin-1 encodable, else iTXt (UTF-8).
- JPEG and WebP: the EXIF UserComment, "UNICODE" character code + UTF-16 big-endian, which is what
  A1111 writes through piexif (and what its reader expects).

Reading accepts these files from any A1111-compatible tool. A file Pillow cannot decode raises
ImageMetadataError; an image without metadata reads as None. What is read is bounded: an image of
more than MAX_PIXELS is refused from its header, before any pixel is decoded, and a PNG text chunk
may decompress to at most Pillow's MAX_TEXT_CHUNK (1 MiB), so a small file cannot expand to gigabytes.
Damaged metadata (a malformed EXIF block, a UTF-16 comment with an odd byte) never refuses the image:
what can be decoded is read, the rest is replaced or dropped.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin
from PIL.ExifTags import IFD, Base

PARAMETERS_KEY = "parameters"
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
JPEG_EXIF_LIMIT = 65533  # an APP1 segment holds at most this many bytes (length field is 16 bits)

# What Pillow raises for a file it cannot decode (missing, truncated, not an image, a decompression bomb).
UNDECODABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# What Pillow's EXIF reader raises for a damaged EXIF block (read as no metadata, not as a bad image).
_DAMAGED_EXIF = (*UNDECODABLE, struct.error, KeyError, IndexError, TypeError, UnicodeDecodeError)
MAX_PIXELS = 8192 * 8192  # 16x the largest output; a 64 Mpx RGBA image decodes to 256 MiB

_UNICODE = b"UNICODE\x00"
_ASCII = b"ASCII\x00\x00\x00"


class ImageMetadataError(ValueError):
    """An image file that cannot be read, or metadata that cannot be written."""


def _format_for(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageMetadataError(
            f"cannot save {path.name}: expected a file name ending in {', '.join(FORMATS)}, got {path.suffix!r}"
        )
    return fmt


def _user_comment(text: str) -> bytes:
    return _UNICODE + text.encode("utf-16-be")


def _decode_user_comment(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE:
        body = body[: len(body) // 2 * 2]  # an odd last byte is half a character: dropped
        if body[:2] == b"\xfe\xff":
            return body[2:].decode("utf-16-be", errors="replace")
        if body[:2] == b"\xff\xfe":
            return body[2:].decode("utf-16-le", errors="replace")
        # No BOM: writers use the EXIF byte order; for mostly-ASCII text the zero high bytes
        # sit at even offsets in big-endian and at odd offsets in little-endian.
        little = body[1::2].count(0) > body[0::2].count(0)
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    if prefix == _ASCII:
        return body.decode("latin-1")
    return (body if prefix == b"\x00" * 8 else data).decode("utf-8", errors="replace").rstrip("\x00")


def _save_to(image: Image.Image, target: str | BinaryIO, fmt: str, infotext: str | None, quality: int) -> None:
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if infotext is not None:
            try:
                infotext.encode("latin-1")
                info.add_text(PARAMETERS_KEY, infotext)
            except UnicodeEncodeError:
                info.add_itxt(PARAMETERS_KEY, infotext)
        image.save(target, format="PNG", pnginfo=info)
        return
    exif = Image.Exif()
    if infotext is not None:
        comment = _user_comment(infotext)
        if fmt == "JPEG" and len(comment) > JPEG_EXIF_LIMIT - 100:  # leave room for the EXIF structure
            raise ImageMetadataError(
                f"the infotext is too long for JPEG EXIF: {len(comment)} bytes as UTF-16, "
                f"at most about {JPEG_EXIF_LIMIT - 100} fit; save as PNG or WebP instead"
            )
        exif.get_ifd(IFD.Exif)[Base.UserComment] = comment
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(target, format=fmt, exif=exif, quality=quality)


def save_image(
    image: Image.Image,
    path: str | os.PathLike[str],
    infotext: str | None = None,
    *,
    quality: int = 95,
    durable: bool = False,
) -> Path:
    """Save `image` to `path` (format from the suffix: .png, .jpg/.jpeg, .webp) with `infotext`.

    `durable`: written with `write_durably`, so that once this returns the file is complete on disk;
    an interrupted save leaves no partial file.
    """
    path = Path(path)
    fmt = _format_for(path)
    if not durable:
        _save_to(image, str(path), fmt, infotext, quality)
        return path
    write_durably(path, image_bytes(image, fmt, infotext, quality))
    return path


def image_bytes(image: Image.Image, fmt: str = "PNG", infotext: str | None = None, quality: int = 95) -> bytes:
    """`image` encoded as `fmt` ("PNG", "JPEG", "WEBP") with `infotext`, as `save_image` writes it."""
    buffer = io.BytesIO()
    _save_to(image, buffer, fmt, infotext, quality)
    return buffer.getvalue()


def write_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that once this returns the file is complete on disk: a temporary
    `.<name>.*.partial` in the same folder, flushed and fsynced, renamed into place, then the folder
    fsynced. An interrupted write leaves no partial file and the previous file at `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = _create_partial(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _create_partial(path: Path) -> tuple[int, str]:
    """A new empty `.<name>.<random>.partial` beside `path`, opened for writing. Created with mode
    0666 so that the umask gives the saved file the permissions any new file gets (mkstemp's 0600
    would make every image private whatever the umask)."""
    while True:
        name = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.partial")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue  # another writer's name: draw again


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; folders cannot be opened for fsync on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def infotext_from_image(image: Image.Image) -> str | None:
    """The `parameters` text of an opened image (PNG text chunk or EXIF UserComment), or None."""
    text = getattr(image, "text", None) if image.format == "PNG" else None  # includes chunks after IDAT
    if text and PARAMETERS_KEY in text:
        return str(text[PARAMETERS_KEY])
    if isinstance(image.info.get(PARAMETERS_KEY), str):
        return image.info[PARAMETERS_KEY]
    try:
        comment = image.getexif().get_ifd(IFD.Exif).get(Base.UserComment)
    except _DAMAGED_EXIF:
        return None
    if comment:
        return _decode_user_comment(comment) or None
    return None


def open_image(path: str | os.PathLike[str]) -> tuple[Image.Image, str | None]:
    """An image file decoded completely (a truncated or corrupt file fails here, not later): the image,
    detached from the file, and its infotext or None. Raises one of UNDECODABLE; an image of more than
    MAX_PIXELS raises Image.DecompressionBombError before its pixels are decoded."""
    # Pillow warns (several lines on stderr) about damaged EXIF it skips and about large images; the
    # first is read leniently on purpose and the second is bounded here, so neither is news to the user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Image.DecompressionBombError(
                    f"{width}x{height} pixels is more than the {MAX_PIXELS // 2**20} Mpx images may have"
                )
            image.load()
            return image.copy(), infotext_from_image(image)


def read_infotext(path: str | os.PathLike[str]) -> str | None:
    """The infotext stored in an image file, or None when it has none.

    Raises ImageMetadataError when the file is missing or is not a complete image Pillow can decode.
    """
    try:
        return open_image(path)[1]
    except UNDECODABLE as exc:
        raise ImageMetadataError(f"cannot read image metadata from {os.fspath(path)}: {exc}") from exc
