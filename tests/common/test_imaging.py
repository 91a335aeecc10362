"""Upload checks and decoding: every bad input gets its own error code."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from common import errors
from common.imaging import decode_rgb, draft_size, inspect_image
from tests.conftest import encode, jpeg_bytes, solid

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 50_000_000, "min_side": 32}


def inspect(data: bytes, **overrides):  # type: ignore[no-untyped-def]
    return inspect_image(data, **{**LIMITS, **overrides})


def test_it_accepts_jpeg_png_webp_and_heic(coffee: Image.Image) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    for fmt, public in (("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("HEIF", "heif")):
        info = inspect(encode(coffee, fmt))
        assert (info.format, info.width, info.height) == (public, 600, 400)


def test_it_rejects_an_empty_file() -> None:
    with pytest.raises(errors.ImageEmpty):
        inspect(b"")


def test_it_rejects_too_many_bytes(coffee: Image.Image) -> None:
    with pytest.raises(errors.ImageTooLarge) as raised:
        inspect(jpeg_bytes(coffee), max_bytes=1000)
    assert raised.value.http_status == 413


def test_it_rejects_text_whatever_it_is_called() -> None:
    with pytest.raises(errors.ImageNotAnImage):
        inspect(b"this is not a photo, even if the file is named photo.jpg")


def test_it_rejects_unsupported_formats(coffee: Image.Image) -> None:
    for fmt in ("GIF", "BMP", "TIFF"):
        with pytest.raises(errors.ImageUnsupportedFormat, match=fmt):
            inspect(encode(coffee, fmt))


def test_it_rejects_a_truncated_jpeg(coffee: Image.Image) -> None:
    data = jpeg_bytes(coffee)
    with pytest.raises(errors.ImageCorrupt):
        inspect(data[: len(data) // 2])


def test_it_rejects_a_truncated_png(coffee: Image.Image) -> None:
    data = encode(coffee, "PNG")
    with pytest.raises(errors.ImageCorrupt):
        inspect(data[: len(data) // 2])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: what a decompression bomb looks like up front."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_it_rejects_a_decompression_bomb_before_decoding() -> None:
    with pytest.raises(errors.ImageTooManyPixels, match="pixels"):
        inspect(_png_header_only(40_000, 40_000))


def test_it_rejects_an_image_smaller_than_the_minimum() -> None:
    with pytest.raises(errors.ImageTooSmall):
        inspect(encode(solid((1, 2, 3), (16, 16)), "PNG"))


def test_it_uses_the_first_frame_of_an_animated_image() -> None:
    frames = [solid((255, 0, 0)), solid((0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    info = inspect(buffer.getvalue())
    assert info.frames == 2
    rgb = decode_rgb(buffer.getvalue(), max_side=64)
    assert tuple(rgb[10, 10]) == (255, 0, 0)


def test_it_converts_cmyk_to_rgb() -> None:
    image = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red in CMYK
    rgb = decode_rgb(jpeg_bytes(image, quality=95), max_side=64)
    assert rgb.shape == (48, 64, 3)
    r, g, b = rgb[24, 32].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_it_scales_16_bit_images_instead_of_clipping_them() -> None:
    array = np.full((48, 64), 32768, dtype=np.uint16)  # mid-gray in 16 bits
    data = encode(Image.fromarray(array), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    rgb = decode_rgb(data, max_side=64)
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_it_converts_palette_images() -> None:
    image = solid((0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    rgb = decode_rgb(encode(image, "PNG"), max_side=64)
    assert tuple(rgb[0, 0]) == (0, 128, 0)


def test_it_puts_transparent_pixels_on_white() -> None:
    image = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (16, 12, 48, 36))
    rgb = decode_rgb(encode(image, "PNG"), max_side=64)
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[24, 32]) == (0, 0, 255)


def test_it_honours_exif_orientation() -> None:
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = jpeg_bytes(image, exif=exif, quality=95)
    info = inspect(data)
    assert (info.width, info.height) == (40, 80)
    rgb = decode_rgb(data, max_side=100)
    assert rgb.shape == (80, 40, 3)
    top = rgb[5, 20].astype(int)
    assert top[2] > 200 and top[0] < 60  # the blue half is on top once upright


def test_it_decodes_large_jpegs_at_reduced_size(coffee: Image.Image) -> None:
    big = coffee.resize((2400, 1600))
    rgb = decode_rgb(jpeg_bytes(big), max_side=500)
    assert max(rgb.shape[:2]) <= 500
    assert rgb.dtype == np.uint8


def test_a_wide_jpeg_is_decoded_at_the_scale_its_long_side_needs(coffee: Image.Image) -> None:
    # 640x427 to a long side of 256: half scale (320x214) suffices; asking draft mode for
    # (256, 256) would have kept the short side at 256 too and decoded all 640x427 pixels.
    wide = coffee.resize((640, 427))
    assert draft_size(640, 427, 256) == (256, 171)
    image = Image.open(io.BytesIO(jpeg_bytes(wide)))
    image.draft("RGB", draft_size(*image.size, 256))
    assert image.size == (320, 214)
    assert decode_rgb(jpeg_bytes(wide), max_side=256).shape == (171, 256, 3)
    assert draft_size(200, 100, 256) == (200, 100)  # no larger than the photo


def test_it_reports_undecodable_data_as_a_job_failure() -> None:
    with pytest.raises(errors.ImageDecodeFailed):
        decode_rgb(b"garbage", max_side=100)


def test_png_webp_and_heic_are_checked_without_decoding_their_pixels(
    coffee: Image.Image, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import ImageFile

    def decode(self):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the API decoded the pixels of a {self.format}")

    encoded = {fmt: encode(coffee, fmt) for fmt in ("PNG", "WEBP", "HEIF")}
    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    for fmt, data in encoded.items():
        assert inspect(data).width == 600, fmt


def test_a_png_with_a_damaged_chunk_or_a_short_webp_is_refused(coffee: Image.Image) -> None:
    png = bytearray(encode(coffee, "PNG"))
    png[len(png) // 2] ^= 0xFF  # inside the pixel data: its chunk's CRC no longer matches
    with pytest.raises(errors.ImageCorrupt):
        inspect(bytes(png))
    webp = encode(coffee, "WEBP")
    with pytest.raises(errors.ImageCorrupt):
        inspect(webp[: len(webp) - 100])


def test_the_orientation_of_a_png_comes_from_its_exif_chunk() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    info = inspect(encode(Image.new("RGB", (80, 40), (1, 2, 3)), "PNG", exif=exif))
    assert (info.width, info.height) == (40, 80)


def test_a_decode_waits_for_its_share_of_the_budget_and_gives_up_with_a_503_error(coffee: Image.Image) -> None:
    from common.membudget import DecodeBudget

    budget = DecodeBudget(1024 * 1024)
    data = jpeg_bytes(coffee)
    with budget.reserve(1024 * 1024, timeout=0):  # another decode holds it all
        with pytest.raises(errors.DecodeBusy) as raised:
            inspect(data, budget=budget, budget_wait=0.05)
        with pytest.raises(errors.DecodeBusy):
            decode_rgb(data, max_side=64, budget=budget, budget_wait=0.05)
    assert raised.value.http_status == 503 and raised.value.code == "overloaded"
    assert decode_rgb(data, max_side=64, budget=budget, budget_wait=0.05).shape == (43, 64, 3)
    assert budget.in_flight == 0


def test_a_jpeg_with_more_scans_than_allowed_is_refused_before_it_is_decoded(coffee: Image.Image) -> None:
    from common.imaging import MAX_JPEG_SCANS, jpeg_scans

    progressive = jpeg_bytes(coffee, progressive=True)
    assert 1 < jpeg_scans(progressive) <= MAX_JPEG_SCANS  # what encoders write passes
    assert inspect(progressive).format == "jpeg"
    # Start-of-scan markers past the bound (here in a comment segment, which is counted too: the
    # check reads markers, not the decoder's state).
    comment = b"\xff\xda" * MAX_JPEG_SCANS
    many = progressive[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + progressive[2:]
    with pytest.raises(errors.ImageTooManyScans, match=f"at most {MAX_JPEG_SCANS}"):
        inspect(many)
    with pytest.raises(errors.ImageDecodeFailed, match="scans"):
        decode_rgb(many, max_side=64)
