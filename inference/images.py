"""Image inputs: every accepted kind (path, bytes, file object, PIL image, numpy array) to an RGB PIL image.

The checks happen here, once, for the local backend, the remote client and the server alike.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInput

__all__ = ["LOCAL_FORMATS", "WIRE_FORMATS", "ImageData", "encode_image", "load_image"]

_ORIENTATION = 0x0112  # the EXIF tag
#: Formats we decode for local callers.
LOCAL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
#: Formats the wire protocol carries: what the server accepts (others are re-encoded before upload).
WIRE_FORMATS = ("JPEG", "PNG", "WEBP")


def load_image(source: Any, *, max_pixels: int = 40_000_000) -> Image.Image:
    """Decode ``source`` into an RGB ``PIL.Image`` with its EXIF orientation applied.

    Args:
        source: a file path, encoded bytes, a binary file object (e.g. a Streamlit upload),
            a ``PIL.Image`` or an RGB / grayscale ``numpy`` array of shape (H, W[, 3|4]).
        max_pixels: images with more pixels than this are refused before they are decoded.

    Raises:
        InvalidInput: the file is missing, the bytes are not an image, the image is truncated,
            too large, or the array has the wrong shape or type.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _to_rgb(source)
    if _is_array(source):
        return _from_array(source, max_pixels)
    data, origin = _read_source(source)
    return _decode(data, origin, max_pixels)


_UPLOADABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class ImageData:
    """An image input, checked at once but decoded only when pixels are needed.

    The header is read up front: a missing file, bytes that are not an image or too many pixels fail
    here. ``image`` decodes (a local run needs pixels); ``for_upload`` sends encoded inputs as they are
    when the wire protocol allows their format and they need no downscaling (a remote run does not).
    """

    def __init__(self, source: Any, *, max_pixels: int = 40_000_000,
                 formats: tuple[str, ...] = LOCAL_FORMATS) -> None:
        """Check ``source``; ``formats`` are the encoded formats accepted (the server passes ``WIRE_FORMATS``)."""
        self.max_pixels = max_pixels
        self.raw: bytes | None = None
        self._image: Image.Image | None = None
        if isinstance(source, Image.Image) or _is_array(source):
            self._image = load_image(source, max_pixels=max_pixels)
            self.format, self.size = None, self._image.size
            return
        self.raw, self.origin = _read_source(source)
        if not self.raw:
            raise InvalidInput(f"{self.origin} is empty: upload or pass a JPEG, PNG or WebP image",
                               code="unsupported_media_type")
        with _pillow_errors(self.origin, max_pixels):
            header = Image.open(io.BytesIO(self.raw), formats=LOCAL_FORMATS)
            _check_size(header.size, max_pixels)  # before anything below could decode a pixel
            # Pillow finds a PNG's EXIF after the pixels only by decoding them: read it when the header had it.
            exif = header.getexif() if header.format != "PNG" or "exif" in header.info else {}
            orientation = exif.get(_ORIENTATION, 1)
        if header.format not in formats:
            names = ", ".join("WebP" if name == "WEBP" else name for name in formats)
            raise InvalidInput(f"{self.origin} is a {header.format} image, which is not accepted here: send {names}",
                               code="unsupported_media_type")
        self.format = header.format
        width, height = header.size
        # EXIF orientations 5-8 turn the picture a quarter: as people see it, width and height swap.
        self.size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)

    @property
    def image(self) -> Image.Image:
        """The decoded RGB image (decoded once, on first use)."""
        if self._image is None:
            assert self.raw is not None
            self._image = _decode(self.raw, self.origin, self.max_pixels)
        return self._image

    def for_upload(self, max_edge: int | None) -> tuple[bytes, str, float]:
        """(data, content_type, scale) to send; see ``encode_image`` for ``scale``."""
        fits = not max_edge or max(self.size) <= max_edge
        if self.raw is not None and self.format in _UPLOADABLE and fits:
            return self.raw, _UPLOADABLE[self.format], 1.0
        return encode_image(self.image, max_edge=max_edge)


def _read_source(source: Any) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source), f"file {os.fspath(source)!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "the image data"
    if hasattr(source, "read"):
        data = source.getvalue() if hasattr(source, "getvalue") else source.read()
        return data, f"upload {getattr(source, 'name', '')!r}".replace(" ''", "")
    raise InvalidInput(
        f"cannot use a {type(source).__name__} as an image: pass a file path, bytes, a PIL.Image or a numpy RGB array"
    )


def encode_image(image: Image.Image, *, max_edge: int | None = None, quality: int = 90) -> tuple[bytes, str, float]:
    """Encode ``image`` for upload, downscaled so its long edge is at most ``max_edge``.

    An image that needs no downscaling goes as lossless PNG, so the remote model sees exactly the pixels
    a local run sees (comparisons stay fair); a downscaled one goes as JPEG, small on the wire.

    Returns:
        (data, content_type, scale) where ``scale`` = original size / sent size (1.0 when not resized),
        so that pixel coordinates in the answer can be mapped back with ``x * scale``.
    """
    buffer = io.BytesIO()
    if not max_edge or max(image.size) <= max_edge:
        # compress_level=1: PNG's size barely shrinks at higher levels, but encoding gets several times slower.
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), "image/png", 1.0
    scale = max(image.size) / max_edge
    size = (max(1, round(image.width / scale)), max(1, round(image.height / scale)))
    image.resize(size, Image.Resampling.LANCZOS).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), "image/jpeg", scale


def _read_path(source: str | os.PathLike) -> bytes:
    path = Path(source).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"image file {os.fspath(source)!r} does not exist: check the path") from None
    except IsADirectoryError:
        raise InvalidInput(f"{os.fspath(source)!r} is a directory, not an image file") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read image file {os.fspath(source)!r}: {exc.strerror or exc}") from None


def _decode(data: bytes, origin: str, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidInput(f"{origin} is empty: upload or pass a JPEG, PNG or WebP image", code="unsupported_media_type")
    with _pillow_errors(origin, max_pixels):
        # Image.open reads only the header, so the size check below runs before any pixel is decoded.
        image = Image.open(io.BytesIO(data), formats=LOCAL_FORMATS)
        _check_size(image.size, max_pixels)
        image.load()
    return _to_rgb(image)


@contextmanager
def _pillow_errors(origin: str, max_pixels: int) -> Iterator[None]:
    """Whatever Pillow raises on untrusted bytes, as the ``InvalidInput`` it means: the image is bad, not the caller."""
    try:
        yield
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(origin, max_pixels, exc) from None
    except UnidentifiedImageError:
        raise InvalidInput(f"{origin} is not an image Pillow can read: use JPEG, PNG or WebP",
                           code="unsupported_media_type") from None
    except Exception as exc:
        # Pillow raises OSError("image file is truncated"), SyntaxError, struct.error, ... for damaged files.
        raise InvalidInput(f"{origin} is damaged or truncated and cannot be decoded ({exc})",
                           code="unsupported_media_type") from None


# NOTE: no warnings.catch_warnings() around Image.open: it swaps the process-wide filters, which is not
# thread-safe (the server decodes on many threads). Pillow itself only raises DecompressionBombError past
# twice its own limit; every size past ``max_pixels`` is refused by _check_size before any pixel is decoded.
def _bomb(origin: str, max_pixels: int, exc: Image.DecompressionBombError) -> InvalidInput:
    """Pillow refused to open a huge image (before our size check could): say how large it is, as that check does."""
    found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (400000000 pixels) exceeds limit of ..."
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return InvalidInput(f"{origin} is too large: {size}, over the limit of {max_pixels:,}. Resize it first (or "
                        "raise INFERENCE_MAX_IMAGE_PIXELS)", code="image_too_large")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInput(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}: "
            "resize it first (or raise INFERENCE_MAX_IMAGE_PIXELS)",
            code="image_too_large",
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    # NOTE: phone photos store rotation in EXIF; boxes must match the picture as people see it.
    # Checking the tag first avoids exif_transpose's full copy of every image that needs no turn.
    if image.getexif().get(_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _is_array(source: Any) -> bool:
    return type(source).__module__ == "numpy" and type(source).__name__ == "ndarray"


def _from_array(array: Any, max_pixels: int) -> Image.Image:
    import numpy as np

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidInput(
            f"a numpy image must have shape (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, got {array.shape}"
        )
    _check_size((array.shape[1], array.shape[0]), max_pixels)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
            array = (array * 255).round()
        elif not np.issubdtype(array.dtype, np.number) or array.size and (array.min() < 0 or array.max() > 255):
            raise InvalidInput(
                f"a numpy image must hold uint8 values 0-255 or floats 0-1, got {array.dtype} "
                f"in [{array.min()}, {array.max()}]"
            )
        array = array.astype(np.uint8)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))
