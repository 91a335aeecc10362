"""The peer's pre-processing: the same operations as the worker's runtimes, written with Pillow
and numpy alone so that they run in var/venv-bench (tests check that they give the same pixels,
and the same answer on the null model).

``common.imaging.decode_rgb`` for a JPEG: draft-mode decode to a long side <= ``max_side``, load,
EXIF orientation, RGB, bilinear thumbnail to ``max_side``. The backbone-only runtime decodes to
512 and then ``workers.runtime.reference.center_square``: short side to 256 (224 * 8 / 7),
bilinear, center 224x224. The null runtime (``workers.runtime.null``) decodes to 256 and answers
the mean color, with the fields ``workers.runtime.field`` writes.

What this does not reproduce: ``common.imaging.to_rgb``'s special cases (transparency composited
onto white, 16-bit and float samples scaled); here any other mode goes through Pillow's
``convert("RGB")``. The benchmark sends opaque 8-bit JPEGs, for which the two are the same.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageOps

DECODE_MAX_SIDE = 512
INPUT_SIZE = 224
NULL_DECODE_MAX_SIDE = 256  # what models_registry.build.build_null writes in the manifest


def upright_rgb(image: Image.Image, max_side: int) -> Image.Image:
    """``common.imaging.decode_rgb`` for opaque 8-bit photos: upright RGB, long side <= max_side."""
    if image.format in ("JPEG", "MPO"):
        # common.imaging.draft_size: the long side only, in the photo's proportions
        scale = min(1.0, max_side / max(image.width, image.height, 1))
        image.draft("RGB", (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale))))
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image


def decode(image: Image.Image) -> np.ndarray:
    """The backbone-only runtime's input: 224x224 RGB uint8."""
    image = upright_rgb(image, DECODE_MAX_SIDE)
    width, height = image.size
    scale = INPUT_SIZE * 8 / 7 / min(height, width)
    image = image.resize(
        (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale))),
        Image.Resampling.BILINEAR,
        reducing_gap=2.0,
    )
    left, top = (image.width - INPUT_SIZE) // 2, (image.height - INPUT_SIZE) // 2
    return np.asarray(image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)))


def decode_bytes(data: bytes) -> np.ndarray:
    return decode(Image.open(io.BytesIO(data)))


def _field(value: str | None, confidence: float, threshold: float,
           alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    """``workers.runtime.field``: one result field, its value withheld below the threshold."""
    return {
        "value": value if value is not None and confidence >= threshold else None,
        "confidence": round(float(confidence), 4),
        "threshold": threshold,
        "alternatives": [{"value": v, "confidence": round(float(c), 4)} for v, c in alternatives],
    }


def null_answer(image: Image.Image) -> dict[str, Any]:
    """The null runtime's answer for one photo: decode to 256 px, the mean color (``prepare``),
    the four fields (``predict``)."""
    rgb = np.asarray(upright_rgb(image, NULL_DECODE_MAX_SIDE))
    mean = tuple(int(x) for x in rgb.reshape(-1, 3).mean(axis=0))
    value = "#{:02x}{:02x}{:02x}".format(*mean)
    return {
        "name": _field(None, 0.0, 1.0, []),
        "category": _field("other", 1.0, 0.0, [("other", 1.0)]),
        "brand": _field(None, 0.0, 1.0, []),
        "color": _field(value, 1.0, 0.0, [(value, 1.0)]),
    }


def null_answer_bytes(data: bytes) -> dict[str, Any]:
    return null_answer(Image.open(io.BytesIO(data)))
