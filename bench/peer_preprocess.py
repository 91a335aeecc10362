"""The peer's pre-processing: the same operations as the worker's backbone-only runtime,
written with Pillow and numpy alone so that it runs in var/venv-bench (a test checks that they
give the same pixels).

``common.imaging.decode_rgb`` for a JPEG: draft-mode decode to a long side <= 512, load, EXIF
orientation, RGB, bilinear thumbnail to 512; then ``workers.runtime.reference.center_square``:
short side to 256 (224 * 8 / 7), bilinear, center 224x224.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

DECODE_MAX_SIDE = 512
INPUT_SIZE = 224


def decode(image: Image.Image) -> np.ndarray:
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", (DECODE_MAX_SIDE, DECODE_MAX_SIDE))
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > DECODE_MAX_SIDE:
        image.thumbnail(
            (DECODE_MAX_SIDE, DECODE_MAX_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
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
