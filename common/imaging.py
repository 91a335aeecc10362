"""Image checks (API) and decoding (worker), on Pillow.

The API calls :func:`inspect_image` to reject bad uploads with a precise error
before anything is queued, without decoding full-size pixels: JPEGs are decoded
in draft mode at 1/8 scale (DCT scaling; it still reads every scan, so truncation
is caught), PNGs have every chunk's CRC checked to the end of the file (damage and
truncation, no pixel decoded), WebP's container length is checked, HEIF's header
read. The worker calls :func:`decode_rgb` to get an upright 8-bit RGB array no
larger than it needs. Both hold the bytes they decode in a ``DecodeBudget``.

Animated images (GIF is not accepted; animated WebP/PNG, HEIF sequences) are
accepted and their FIRST frame is used.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.errors import (
    DecodeBusy,
    ImageCorrupt,
    ImageDecodeFailed,
    ImageEmpty,
    ImageNotAnImage,
    ImageTooLarge,
    ImageTooManyPixels,
    ImageTooManyScans,
    ImageTooSmall,
    ImageUnsupportedFormat,
)
from common.membudget import DecodeBudget, DecodeBudgetExceeded

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True


ImageFile.LOAD_TRUNCATED_IMAGES = False

# Pillow format name -> (public name, content type). MPO is how Pillow names JPEGs
# from cameras that embed a second picture; it is a JPEG.
ALLOWED_FORMATS = {
    "JPEG": ("jpeg", "image/jpeg"),
    "MPO": ("jpeg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "HEIF": ("heif", "image/heif"),
}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    width: int  # as displayed, after EXIF orientation
    height: int
    mode: str
    frames: int


def inspect_image(
    data: bytes, *, max_bytes: int, max_pixels: int, min_side: int = 1,
    budget: DecodeBudget | None = None, budget_wait: float = 0.0,
) -> ImageInfo:
    if not data:
        raise ImageEmpty()
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"The image is {len(data):,} bytes; the limit is {max_bytes:,} bytes."
        )
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageNotAnImage(
                "The upload is not an image in a format we can read "
                "(send JPEG, PNG, WebP or HEIC)."
            ) from exc
        raise _too_many_pixels(max_pixels) from exc
    except Exception as exc:  # a damaged header can raise anything from a plugin
        raise ImageCorrupt("The image header is damaged.") from exc
    with image:
        fmt = image.format or ""
        if fmt not in ALLOWED_FORMATS:
            raise ImageUnsupportedFormat(
                f"{fmt or 'This'} images are not accepted; send JPEG, PNG, WebP or HEIC."
            )
        width, height = image.size
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels, width, height)
        if min(width, height) < min_side:
            raise ImageTooSmall(
                f"The image is {width}x{height}; each side must be at least {min_side} pixels."
            )
        frames = int(getattr(image, "n_frames", 1) or 1)
        mode = image.mode
        try:
            orientation = _check_without_full_decode(image, fmt, data, budget, budget_wait)
        except (DecodeBusy, ImageTooManyScans):
            raise
        except Image.DecompressionBombError as exc:
            raise _too_many_pixels(max_pixels) from exc
        except Exception as exc:
            raise ImageCorrupt(
                "The image is truncated or corrupt and cannot be decoded."
            ) from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    public, content_type = ALLOWED_FORMATS[fmt]
    return ImageInfo(public, content_type, width, height, mode, frames)


# A progressive JPEG is decoded once per scan over the whole image: a few hundred KB can hold
# thousands of scans (each a marker and a few bytes) and cost minutes of CPU. Cameras and encoders
# write at most a dozen or so.
MAX_JPEG_SCANS = 64


def jpeg_scans(data: bytes) -> int:
    """The JPEG's start-of-scan markers. Entropy-coded data escapes every 0xFF byte (0xFF00), so
    FF DA occurs only as a marker (an EXIF thumbnail's scans count too: a small overcount)."""
    return data.count(b"\xff\xda")


def _check_scans(data: bytes) -> None:
    scans = jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise ImageTooManyScans(
            f"The JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted. Re-encode it (baseline or a "
            "standard progressive JPEG)."
        )


def _check_without_full_decode(
    image: Image.Image, fmt: str, data: bytes, budget: DecodeBudget | None, budget_wait: float,
) -> int:
    """A bounded integrity check; returns the EXIF orientation (1 when none)."""
    if fmt in ("JPEG", "MPO"):
        _check_scans(data)
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        with _reserved(budget, _decoded_bytes(image), budget_wait):
            image.load()
        return int(image.getexif().get(0x0112, 1))
    if fmt == "PNG":
        image.verify()  # every chunk's CRC to IEND: damage and truncation, nothing inflated
        # Orientation from an eXIf chunk, wherever it was (PNG's getexif() would decode).
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(0x0112, 1))
    if fmt == "WEBP" and len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise ImageCorrupt("The image is truncated or corrupt and cannot be decoded.")
    return int(image.getexif().get(0x0112, 1))  # WebP, HEIF: from the container, nothing decoded


def _decoded_bytes(image: Image.Image) -> int:
    """What decoding ``image`` (at its current, maybe drafted, size) holds at its peak: the pixels,
    and as much again for the conversions after (orientation, RGB, the downscale)."""
    return image.width * image.height * max(len(image.getbands()), 3) * 2


@contextmanager
def _reserved(budget: DecodeBudget | None, nbytes: int, wait: float) -> Iterator[None]:
    if budget is None:
        yield
        return
    try:
        with budget.reserve(nbytes, timeout=wait):
            yield
    except DecodeBudgetExceeded as exc:
        raise DecodeBusy(
            "Too many large images are being decoded right now; retry shortly."
        ) from exc


def _too_many_pixels(max_pixels: int, width: int = 0, height: int = 0) -> ImageTooManyPixels:
    size = f"{width}x{height} = {width * height:,} pixels; " if width else ""
    return ImageTooManyPixels(
        f"The image is too large to decode ({size}the limit is {max_pixels:,} pixels)."
    )


MAX_DECODE_PIXELS = 200_000_000


def decoded_bytes_estimate(data: bytes, max_side: int, max_pixels: int = MAX_DECODE_PIXELS) -> int:
    """What ``decode_rgb`` reserves from its budget for this photo, read from its header without
    decoding it (for a decode done elsewhere: ``workers.preparepool``); 0 when decode_rgb will
    refuse it before decoding (an unreadable header, too many pixels)."""
    _register_heif()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                return 0
            _draft(image, max_side)  # the size only: nothing is decoded
            return _decoded_bytes(image)
    except Exception:
        return 0


def _draft(image: Image.Image, max_side: int) -> None:
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", draft_size(image.width, image.height, max_side))


def decode_rgb(
    data: bytes, *, max_side: int, max_pixels: int = MAX_DECODE_PIXELS,
    budget: DecodeBudget | None = None, budget_wait: float = 0.0,
) -> np.ndarray:
    """Decode to an upright uint8 RGB array whose long side is at most ``max_side``.

    JPEGs are decoded at a reduced size when the photo is much larger than needed
    (a 12-megapixel photo decodes ~6x faster at 1/4 scale); other formats decode at full
    size (Pillow cannot reduce them on load), within ``budget``.
    """
    _register_heif()
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ImageDecodeFailed("The image has too many pixels.")
        image.seek(0)
        if image.format in ("JPEG", "MPO"):
            _check_scans(data)
        _draft(image, max_side)
        with _reserved(budget, _decoded_bytes(image), budget_wait):
            image.load()
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(image)
    except (ImageDecodeFailed, DecodeBusy):
        raise
    except ImageTooManyScans as exc:
        raise ImageDecodeFailed(exc.message) from exc
    except Exception as exc:
        raise ImageDecodeFailed(f"The image could not be decoded: {exc}") from exc


def draft_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size to ask a JPEG's draft mode for, when the decode's long side is to be ``max_side``.

    Pillow decodes at the largest DCT scale (1/2, 1/4, 1/8) that keeps *both* asked sides, so
    asking for ``(max_side, max_side)`` kept the short side at ``max_side`` too: a 640x427 photo
    for a 256 px decode was decoded whole, where 1/2 scale gives 320x214, four times fewer pixels
    for the same 256x171 result. Asking for the photo's own proportions keeps the long side only.
    """
    scale = max_side / max(width, height, 1)
    if scale >= 1:
        return width, height
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: transparency onto white, 16-bit scaled (not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.uint32)
        # 16-bit samples keep their top byte; a 32-bit "I" image that fits in 8 bits is kept.
        scaled = array if mode == "I" and array.max(initial=0) <= 255 else array >> 8
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        array = np.clip(np.asarray(image), 0, 1) * 255
        return Image.fromarray(array.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode == "RGB":
            return image
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
