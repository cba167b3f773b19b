"""Images in requests and responses: base64 PNG out with the infotext embedded, base64 in with the
size checked from the header before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import Image

from mlx_sd.image_metadata import PARAMETERS_KEY, UNDECODABLE, image_bytes, infotext_from_image

MAX_IMAGE_SIDE = 8192  # pixels; an init image or mask larger than this is refused before decoding
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


class ImageInputError(ValueError):
    """An image field that cannot be used; the message names the field and the reason."""


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Base64 PNG (no data-URL prefix, as A1111 answers) carrying `infotext` as `parameters`."""
    return base64.b64encode(image_bytes(image, "PNG", infotext)).decode("ascii")


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    infotext: str | None  # A1111's `parameters` (PNG text chunk or EXIF UserComment)
    items: dict[str, str]  # the image's other text chunks


def decode_image(data: str, field: str) -> DecodedImage:
    """A base64 image, with or without a `data:image/...;base64,` prefix, decoded completely.

    Raises ImageInputError for bad base64, an undecodable image, or one over the size bounds (read
    from the header, so a decompression bomb is never decoded)."""
    if not isinstance(data, str) or not data:
        raise ImageInputError(f"{field}: expected a base64-encoded image, got {type(data).__name__}")
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{field}: not valid base64 ({exc})") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
            width, height = image.size
            if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
                raise ImageInputError(
                    f"{field}: {width}x{height} pixels is too large; at most {MAX_IMAGE_SIDE} pixels a side"
                )
            image.load()
            items = {key: value for key, value in image.info.items() if isinstance(value, str) and key != PARAMETERS_KEY}
            return DecodedImage(image.copy(), infotext_from_image(image), items)
    except Image.DecompressionBombError as exc:  # Pillow's own bound, checked from the header too
        raise ImageInputError(f"{field}: the image is too large ({exc})") from None
    except UNDECODABLE as exc:
        raise ImageInputError(f"{field}: cannot decode the image ({exc}); expected a PNG, JPEG or WebP") from None
