"""Deterministic synthetic listing photos with known colour, brand, item and category.

No labelled product photos are available offline, so the colour and brand parts of
the reference model are measured on photos drawn here: an item silhouette (t-shirt,
mug, handbag, ...) in a colour from the marketplace palette, carrying a fictional
brand wordmark from ``data/brands.txt``, on a background, with rotation, shading,
lighting, a partial occluder and JPEG re-encoding.

The splits are held out from each other, not only by seed:

- ``train`` and ``test`` draw their per-sample seeds from disjoint ranges;
- they use different background kinds (train: plain, linear gradient, noise,
  two-tone wall and table; test: radial gradient, wood, tiles, textured wall on
  wood) and different fonts (see ``TRAIN_FONTS`` and ``TEST_FONTS``).

Tune on ``train``; report on ``test``. Every figure measured here is a figure on
synthetic photos and must be reported as such.

Fonts come only from what a clean ``pip install`` of the pinned requirements
provides: Pillow's built-in Aileron (``ImageFont.load_default(size)``) and the
fonts embedded in OpenCV 5 (``cv2.FontFace("sans" | "italic" | "uni")``). Nothing is
read from the system's font directories.

    python -m models_registry.synthetic --split test --count 200 --out /tmp/synthetic-test
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models_registry import taxonomy
from workers.runtime.color import NAMED_COLORS, lab_to_srgb, nearest_colors, srgb_to_lab

BRANDS_FILE = Path(__file__).with_name("data") / "brands.txt"

# Per-split seed ranges: sample i of a split has seed first_seed + offset + i.
SEEDS_PER_SPLIT = 1_000_000

TRAIN_FONTS = ("aileron", "aileron_heavy", "rubik", "rubik_bold", "cv_uni")
TEST_FONTS = ("rubik_italic", "rubik_black_italic", "rubik_light", "rubik_black", "aileron_oblique")
TRAIN_BACKGROUNDS = ("plain", "linear_gradient", "noise", "two_tone")
TEST_BACKGROUNDS = ("radial_gradient", "wood", "tiles", "two_tone_textured")


@dataclass(frozen=True)
class SplitSpec:
    first_seed: int
    backgrounds: tuple[str, ...]
    fonts: tuple[str, ...]


SPLITS: dict[str, SplitSpec] = {
    "train": SplitSpec(0, TRAIN_BACKGROUNDS, TRAIN_FONTS),
    "test": SplitSpec(SEEDS_PER_SPLIT, TEST_BACKGROUNDS, TEST_FONTS),
}


@dataclass(frozen=True)
class SyntheticSample:
    image: Image.Image  # the decoded JPEG: exactly what a model would be given
    jpeg: bytes
    color: str
    brand: str
    item: str
    category: str
    seed: int
    split: str
    background: str
    font: str

    def label(self) -> dict[str, object]:
        return {
            "color": self.color,
            "brand": self.brand,
            "item": self.item,
            "category": self.category,
            "seed": self.seed,
            "split": self.split,
            "background": self.background,
            "font": self.font,
            "width": self.image.width,
            "height": self.image.height,
        }


def load_brands(path: Path = BRANDS_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def generate(
    split: str, count: int, seed: int | None = None, *, wordmark: bool = True
) -> Iterator[SyntheticSample]:
    """Yield ``count`` samples of ``split``. ``seed`` is an offset inside the split's
    seed range (default 0): the same (split, seed, index) always gives the same bytes.
    ``wordmark=False`` draws the same scenes without the brand (``brand`` is then
    ""), to measure how often a brand is read where there is none."""
    spec = _spec(split)
    offset = 0 if seed is None else seed
    if offset < 0 or offset + count > SEEDS_PER_SPLIT:
        raise ValueError(f"seed offset {offset} + count {count} leaves the {split} seed range")
    brands = load_brands()
    for i in range(count):
        yield render_sample(split, spec.first_seed + offset + i, brands=brands, wordmark=wordmark)


def write_split(directory: Path | str, split: str, count: int, seed: int | None = None) -> Path:
    """Write ``count`` JPEGs and a ``labels.jsonl`` (one object per image, with its
    ``file``) into ``directory``; returns the labels file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = directory / "labels.jsonl"
    with labels.open("w", encoding="utf-8") as out:
        for sample in generate(split, count, seed):
            name = f"{split}-{sample.seed:07d}.jpg"
            (directory / name).write_bytes(sample.jpeg)
            out.write(json.dumps({"file": name, **sample.label()}, sort_keys=True) + "\n")
    return labels


def render_sample(
    split: str, seed: int, *, brands: list[str] | None = None, wordmark: bool = True
) -> SyntheticSample:
    spec = _spec(split)
    if not spec.first_seed <= seed < spec.first_seed + SEEDS_PER_SPLIT:
        raise ValueError(f"seed {seed} is not in the {split} seed range")
    brands = brands if brands is not None else load_brands()
    rng = np.random.default_rng(seed)

    long_side = int(rng.integers(640, 1025))
    short_side = round(long_side * 0.75)
    width, height = (short_side, long_side) if rng.random() < 0.3 else (long_side, short_side)

    item = str(rng.choice(sorted(ITEMS)))
    color = str(rng.choice(list(NAMED_COLORS)))
    brand = str(rng.choice(brands))
    font = str(rng.choice(spec.fonts))
    background_kind = str(rng.choice(spec.backgrounds))

    item_rgb = _jittered_color(color, rng)
    canvas = _background(
        background_kind, width, height, srgb_to_lab(np.array(item_rgb, np.uint8)), rng
    )
    layer, text_mask, line_height = _draw_item(item, item_rgb, brand, font, rng, wordmark)
    photo, item_alpha, text_alpha = _place(canvas, layer, text_mask, line_height, rng)
    if rng.random() < 0.5:
        photo = _occlude(photo, item_alpha, text_alpha, rng)
    photo = _light(photo, rng)

    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=int(rng.integers(40, 96)))
    jpeg = buffer.getvalue()
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return SyntheticSample(
        image=image,
        jpeg=jpeg,
        color=color,
        brand=brand if wordmark else "",
        item=item,
        category=ITEMS[item][0],
        seed=seed,
        split=split,
        background=background_kind,
        font=font,
    )


def _spec(split: str) -> SplitSpec:
    try:
        return SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}") from None


# --- colours -------------------------------------------------------------------------


def _jittered_color(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """The named colour moved a little in Lab, staying clearly nearest to its name."""
    base = np.array(NAMED_COLORS[name].lab)
    for _ in range(30):
        lab = base + rng.uniform(-1, 1, 3) * np.array([7.0, 6.0, 6.0])
        rgb = lab_to_srgb(lab)
        ranked = nearest_colors(srgb_to_lab(rgb))
        if ranked[0][0] == name and ranked[1][1] - ranked[0][1] > 6.0:
            return int(rgb[0]), int(rgb[1]), int(rgb[2])
    return NAMED_COLORS[name].rgb


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c * factor), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _detail(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Seams and outlines: darker on light items, lighter on very dark ones."""
    if srgb_to_lab(np.array(rgb, np.uint8))[0] < 25:
        return tuple(min(255, c + 40) for c in rgb)  # type: ignore[return-value]
    return _shade(rgb, 0.72)


def _text_color(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    lab = srgb_to_lab(np.array(rgb, np.uint8))
    if rng.random() < 0.15:
        # A tonal print: the item's own colour, lighter or darker.
        shifted = lab + np.array([-32.0 if lab[0] > 50 else 32.0, 0.0, 0.0])
        return tuple(int(v) for v in lab_to_srgb(shifted))  # type: ignore[return-value]
    if lab[0] > 58:
        options = [(20, 20, 22), (45, 45, 50), (25, 30, 70), (90, 20, 25)]
    else:
        options = [(250, 250, 250), (235, 235, 230), (240, 215, 120), (200, 225, 245)]
    return options[int(rng.integers(len(options)))]


# --- backgrounds -----------------------------------------------------------------------

_SURFACES = [
    (246, 246, 243),
    (236, 233, 226),
    (250, 247, 238),
    (214, 214, 212),
    (192, 194, 197),
    (150, 150, 152),
    (98, 100, 104),
    (52, 54, 58),
    (34, 34, 37),
    (72, 62, 56),
    (226, 212, 186),
    (241, 229, 206),
    (202, 163, 112),
    (150, 108, 70),
    (118, 80, 52),
    (200, 220, 236),
    (240, 216, 221),
    (190, 206, 186),
    (214, 206, 230),
    (176, 196, 214),
]


def _surface(rng: np.random.Generator, item_lab: np.ndarray, avoid: list[np.ndarray]) -> np.ndarray:
    """A surface colour not too close to the item: a seller's photo shows the item,
    though often on a background of a similar tone."""
    best, best_d = None, -1.0
    for _ in range(40):
        rgb = np.array(_SURFACES[int(rng.integers(len(_SURFACES)))], float)
        rgb = np.clip(rgb + rng.normal(0, 6, 3), 0, 255)
        lab = srgb_to_lab(rgb.astype(np.uint8))
        if any(float(np.linalg.norm(lab - a)) < 8 for a in avoid):
            continue
        d = float(np.linalg.norm(lab - item_lab))
        if d >= 16:
            return rgb
        if d > best_d:
            best, best_d = rgb, d
    assert best is not None
    return best


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x / width, y / height


def _smooth_noise(width: int, height: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.normal(0, 1, (max(2, height // cell), max(2, width // cell))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _lerp(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]


def _linear_gradient(
    w: int, h: int, c1: np.ndarray, c2: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    x, y = _grid(w, h)
    angle = rng.uniform(0, 2 * math.pi)
    t = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
    return _lerp(c1, c2, t)


def _wood(w: int, h: int, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(w, h)
    plank = rng.uniform(0.12, 0.3)
    warp = _smooth_noise(w, h, 40, rng) * 0.02
    grain = np.sin((y + warp + 0.01 * np.sin(x * 9)) * rng.uniform(120, 260)) * 0.5 + 0.5
    fine = _smooth_noise(w, h, 3, rng) * 0.03
    image = base[None, None, :] * (0.88 + 0.14 * grain[..., None] + fine[..., None])
    seams = (np.abs(((y / plank) % 1.0) - 0.5) > 0.492)[..., None]
    return np.where(seams, image * 0.7, image)


def _textured(
    w: int, h: int, base: np.ndarray, rng: np.random.Generator, amplitude: float
) -> np.ndarray:
    noise = _smooth_noise(w, h, int(rng.integers(6, 30)), rng) + 0.5 * _smooth_noise(w, h, 2, rng)
    return base[None, None, :] + amplitude * noise[..., None]


def _background(
    kind: str, w: int, h: int, item_lab: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    c1 = _surface(rng, item_lab, [])
    if kind == "plain":
        image = np.broadcast_to(c1, (h, w, 3)) + rng.normal(0, 1.0, (h, w, 1))
    elif kind == "linear_gradient":
        c2 = _surface(rng, item_lab, [srgb_to_lab(c1.astype(np.uint8))])
        image = _linear_gradient(w, h, c1, c2, rng)
    elif kind == "noise":
        image = _textured(w, h, c1, rng, rng.uniform(5, 14))
    elif kind == "two_tone":
        c2 = _surface(rng, item_lab, [srgb_to_lab(c1.astype(np.uint8))])
        x, y = _grid(w, h)
        horizon = rng.uniform(0.4, 0.72)
        wall = c1[None, None, :] * (1.0 - 0.12 * y[..., None])
        table = c2[None, None, :] * (0.95 + 0.1 * (1 - y[..., None]))
        image = np.where((y < horizon)[..., None], wall, table)
    elif kind == "radial_gradient":
        c2 = _shade(tuple(int(v) for v in c1), rng.uniform(0.55, 0.8))  # type: ignore[arg-type]
        x, y = _grid(w, h)
        cx, cy = rng.uniform(0.35, 0.65, 2)
        t = np.clip(np.hypot((x - cx) * w / h, y - cy) / 0.9, 0, 1) ** 1.5
        image = _lerp(c1, np.array(c2, float), t)
    elif kind == "wood":
        image = _wood(w, h, c1, rng)
    elif kind == "tiles":
        tile = int(rng.integers(50, 170))
        grout = _shade(tuple(int(v) for v in c1), rng.choice([0.7, 1.2]))  # type: ignore[arg-type]
        y, x = np.mgrid[0:h, 0:w]
        jitter = rng.normal(0, 5, ((h // tile) + 2, (w // tile) + 2, 1))
        image = c1[None, None, :] + jitter[y // tile, x // tile]
        lines = ((y % tile) < 3) | ((x % tile) < 3)
        image = np.where(lines[..., None], np.array(grout, float), image)
    elif kind == "two_tone_textured":
        c2 = _surface(rng, item_lab, [srgb_to_lab(c1.astype(np.uint8))])
        horizon = rng.uniform(0.4, 0.72)
        wall = _textured(w, h, c1, rng, rng.uniform(4, 10))
        table = _wood(w, h, c2, rng)
        y = np.mgrid[0:h, 0:w][0] / h
        image = np.where((y < horizon)[..., None], wall, table)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return np.clip(image, 0, 255).astype(np.uint8)


# --- fonts and wordmarks ------------------------------------------------------------------

# name -> (OpenCV embedded face, weight); the Aileron ones come from Pillow.
_CV_FONTS = {
    "rubik": ("sans", 400),
    "rubik_bold": ("sans", 700),
    "rubik_light": ("sans", 300),
    "rubik_black": ("sans", 900),
    "rubik_italic": ("italic", 400),
    "rubik_black_italic": ("italic", 850),
    "cv_uni": ("uni", 400),
}


def _render_line(text: str, font: str, px: int) -> np.ndarray:
    """White-on-black anti-aliased text, cropped to its ink."""
    pad = px // 2
    if font.startswith("aileron"):
        face = ImageFont.load_default(px)
        stroke = max(1, round(px * 0.035)) if font == "aileron_heavy" else 0
        left, top, right, bottom = face.getbbox(text, stroke_width=stroke)
        image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
        ImageDraw.Draw(image).text(
            (pad - left, pad - top), text, fill=255, font=face, stroke_width=stroke, stroke_fill=255
        )
        if font == "aileron_oblique":
            shear = 0.21
            extra = int(image.height * shear) + 1
            image = image.transform(
                (image.width + extra, image.height),
                Image.Transform.AFFINE,
                (1, shear, -extra, 0, 1, 0),
                resample=Image.Resampling.BICUBIC,
            )
        mask = np.asarray(image)
    else:
        name, weight = _CV_FONTS[font]
        face = cv2.FontFace(name)
        x, y, w, h = cv2.getTextSize((0, 0), text, (0, 0), face, px, weight)
        mask = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
        cv2.putText(mask, text, (pad - x, pad - y), 255, face, px, weight)
    ys, xs = np.nonzero(mask > 20)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _wordmark(brand: str, font: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The brand's mask (upper, lower or as written; one line or one per word)
    and its number of lines."""
    case = rng.random()
    text = brand.upper() if case < 0.35 else brand.lower() if case < 0.45 else brand
    words = text.split()
    if len(words) > 1 and rng.random() < 0.35:
        lines = [_render_line(word, font, 96) for word in words]
        gap = 24
        width = max(line.shape[1] for line in lines)
        height = sum(line.shape[0] for line in lines) + gap * (len(lines) - 1)
        mask = np.zeros((height, width), np.uint8)
        top = 0
        for line in lines:
            left = (width - line.shape[1]) // 2
            mask[top : top + line.shape[0], left : left + line.shape[1]] = line
            top += line.shape[0] + gap
        return mask, len(lines)
    return _render_line(text, font, 96), 1


# --- items ---------------------------------------------------------------------------------

_S = 768  # item canvas side; items are drawn large and scaled down (anti-aliasing)

Box = tuple[float, float, float, float]


class _Canvas:
    """Draws an item in unit coordinates: shapes set colour and opacity, details
    only colour (so a seam never paints outside the silhouette)."""

    def __init__(self) -> None:
        self.rgb = Image.new("RGB", (_S, _S), (0, 0, 0))
        self.alpha = Image.new("L", (_S, _S), 0)
        self._rgb = ImageDraw.Draw(self.rgb)
        self._alpha = ImageDraw.Draw(self.alpha)

    @staticmethod
    def _pts(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * _S, y * _S) for x, y in points]

    @staticmethod
    def _box(box: Box) -> list[float]:
        return [box[0] * _S, box[1] * _S, box[2] * _S, box[3] * _S]

    def polygon(self, points, color, shape: bool = True) -> None:
        self._rgb.polygon(self._pts(points), fill=color)
        if shape:
            self._alpha.polygon(self._pts(points), fill=255)

    def ellipse(self, box: Box, color, shape: bool = True) -> None:
        self._rgb.ellipse(self._box(box), fill=color)
        if shape:
            self._alpha.ellipse(self._box(box), fill=255)

    def rect(self, box: Box, color, radius: float = 0.0, shape: bool = True) -> None:
        r = radius * _S
        self._rgb.rounded_rectangle(self._box(box), r, fill=color)
        if shape:
            self._alpha.rounded_rectangle(self._box(box), r, fill=255)

    def ring(
        self, box: Box, color, width: float, start: float = 0, end: float = 360, shape: bool = True
    ) -> None:
        w = max(1, round(width * _S))
        self._rgb.arc(self._box(box), start, end, fill=color, width=w)
        if shape:
            self._alpha.arc(self._box(box), start, end, fill=255, width=w)

    def line(self, points, color, width: float) -> None:
        self._rgb.line(
            self._pts(points), fill=color, width=max(1, round(width * _S)), joint="curve"
        )

    def cut_ellipse(self, box: Box) -> None:
        self._alpha.ellipse(self._box(box), fill=0)


Drawer = Callable[[_Canvas, tuple[int, int, int], np.random.Generator], Box]


def _tshirt(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.polygon(
        [
            (0.28, 0.17),
            (0.40, 0.08),
            (0.60, 0.08),
            (0.72, 0.17),
            (0.92, 0.36),
            (0.82, 0.47),
            (0.73, 0.39),
            (0.73, 0.95),
            (0.27, 0.95),
            (0.27, 0.39),
            (0.18, 0.47),
            (0.08, 0.36),
        ],
        col,
    )
    c.cut_ellipse((0.41, 0.02, 0.59, 0.15))
    c.ring((0.40, 0.01, 0.60, 0.16), d, 0.012, 0, 180, shape=False)
    c.line([(0.27, 0.92), (0.73, 0.92)], d, 0.006)
    c.line([(0.20, 0.44), (0.11, 0.35)], d, 0.006)
    c.line([(0.80, 0.44), (0.89, 0.35)], d, 0.006)
    return (0.33, 0.24, 0.67, 0.46)


def _sweater(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.polygon(
        [
            (0.28, 0.15),
            (0.40, 0.07),
            (0.60, 0.07),
            (0.72, 0.15),
            (0.86, 0.30),
            (0.95, 0.86),
            (0.85, 0.88),
            (0.75, 0.45),
            (0.74, 0.95),
            (0.26, 0.95),
            (0.25, 0.45),
            (0.15, 0.88),
            (0.05, 0.86),
            (0.14, 0.30),
        ],
        col,
    )
    c.cut_ellipse((0.41, 0.01, 0.59, 0.14))
    c.ring((0.40, 0.0, 0.60, 0.15), d, 0.015, 0, 180, shape=False)
    c.rect((0.26, 0.90, 0.74, 0.95), d, shape=False)
    c.line([(0.06, 0.83), (0.15, 0.85)], d, 0.02)
    c.line([(0.85, 0.85), (0.94, 0.83)], d, 0.02)
    return (0.32, 0.26, 0.68, 0.48)


def _trousers(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.polygon(
        [
            (0.27, 0.04),
            (0.73, 0.04),
            (0.76, 0.20),
            (0.80, 0.97),
            (0.56, 0.97),
            (0.50, 0.40),
            (0.44, 0.97),
            (0.20, 0.97),
            (0.24, 0.20),
        ],
        col,
    )
    c.line([(0.27, 0.10), (0.73, 0.10)], d, 0.008)
    c.line([(0.50, 0.10), (0.50, 0.30)], d, 0.006)
    return (0.29, 0.13, 0.71, 0.28)


def _shorts(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.polygon(
        [
            (0.22, 0.14),
            (0.78, 0.14),
            (0.85, 0.80),
            (0.54, 0.84),
            (0.50, 0.54),
            (0.46, 0.84),
            (0.15, 0.80),
        ],
        col,
    )
    c.line([(0.22, 0.21), (0.78, 0.21)], d, 0.008)
    return (0.26, 0.25, 0.74, 0.44)


def _sneaker(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    sole = (245, 245, 245) if srgb_to_lab(np.array(col, np.uint8))[0] < 70 else (40, 40, 40)
    c.polygon(
        [
            (0.07, 0.73),
            (0.08, 0.55),
            (0.30, 0.46),
            (0.45, 0.30),
            (0.62, 0.27),
            (0.70, 0.40),
            (0.93, 0.55),
            (0.95, 0.73),
        ],
        col,
    )
    c.rect((0.05, 0.71, 0.96, 0.82), sole, radius=0.04)
    for i in range(4):
        x = 0.47 + 0.05 * i
        c.line([(x, 0.34 + 0.03 * i), (x + 0.06, 0.38 + 0.03 * i)], d, 0.008)
    return (0.28, 0.50, 0.80, 0.67)


def _handbag(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.ring((0.30, 0.10, 0.70, 0.62), col, 0.045, 180, 360)
    c.polygon([(0.20, 0.36), (0.80, 0.36), (0.91, 0.92), (0.09, 0.92)], col)
    c.line([(0.20, 0.36), (0.80, 0.36)], d, 0.01)
    c.line([(0.17, 0.50), (0.83, 0.50)], d, 0.006)
    c.rect((0.46, 0.46, 0.54, 0.54), (205, 180, 110), shape=False)
    return (0.22, 0.58, 0.78, 0.82)


def _backpack(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.ring((0.40, 0.02, 0.60, 0.22), d, 0.03, 180, 360)
    c.rect((0.18, 0.10, 0.82, 0.96), col, radius=0.14)
    c.rect((0.25, 0.56, 0.75, 0.90), d, radius=0.06, shape=False)
    c.rect((0.27, 0.58, 0.73, 0.88), col, radius=0.05, shape=False)
    return (0.25, 0.22, 0.75, 0.44)


def _cap(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.polygon(
        [(0.10, 0.58), (0.55, 0.52), (0.97, 0.60), (0.90, 0.70), (0.55, 0.64), (0.12, 0.66)], d
    )
    c.ellipse((0.15, 0.10, 0.85, 0.98), col)
    c.cut_ellipse((0.0, 0.545, 1.0, 1.4))
    c.polygon(
        [(0.10, 0.58), (0.55, 0.52), (0.97, 0.60), (0.90, 0.70), (0.55, 0.64), (0.12, 0.66)], d
    )
    c.ellipse((0.47, 0.08, 0.53, 0.13), d)
    c.line([(0.50, 0.12), (0.50, 0.25)], d, 0.006)
    return (0.25, 0.27, 0.75, 0.47)


def _watch(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.36, 0.0, 0.64, 1.0), col, radius=0.03)
    c.ellipse((0.16, 0.16, 0.84, 0.84), d)
    c.ellipse((0.20, 0.20, 0.80, 0.80), col)
    for k in range(12):
        a = k * math.pi / 6
        c.line(
            [
                (0.5 + 0.27 * math.cos(a), 0.5 + 0.27 * math.sin(a)),
                (0.5 + 0.24 * math.cos(a), 0.5 + 0.24 * math.sin(a)),
            ],
            d,
            0.008,
        )
    c.line([(0.5, 0.5), (0.5, 0.62)], d, 0.012)
    c.line([(0.5, 0.5), (0.62, 0.58)], d, 0.008)
    return (0.27, 0.31, 0.73, 0.46)


def _speaker(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.06, 0.26, 0.94, 0.80), col, radius=0.12)
    for i in range(16):
        for j in range(3):
            c.ellipse(
                (0.12 + 0.049 * i, 0.58 + 0.06 * j, 0.14 + 0.049 * i, 0.60 + 0.06 * j),
                d,
                shape=False,
            )
    return (0.20, 0.33, 0.80, 0.52)


def _laptop(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.10, 0.12, 0.90, 0.70), col, radius=0.03)
    c.polygon([(0.10, 0.70), (0.90, 0.70), (0.97, 0.80), (0.03, 0.80)], d)
    return (0.26, 0.30, 0.74, 0.50)


def _phone(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.24, 0.03, 0.76, 0.97), col, radius=0.07)
    c.rect((0.29, 0.08, 0.49, 0.26), d, radius=0.04, shape=False)
    c.ellipse((0.31, 0.10, 0.38, 0.17), (25, 25, 28), shape=False)
    c.ellipse((0.40, 0.17, 0.47, 0.24), (25, 25, 28), shape=False)
    return (0.28, 0.50, 0.72, 0.62)


def _camera(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.20, 0.18, 0.44, 0.32), col, radius=0.02)
    c.rect((0.06, 0.28, 0.94, 0.86), col, radius=0.05)
    c.ellipse((0.52, 0.41, 0.86, 0.75), (40, 40, 44), shape=False)
    c.ellipse((0.58, 0.47, 0.80, 0.69), (15, 15, 18), shape=False)
    c.ellipse((0.64, 0.52, 0.70, 0.58), (120, 130, 150), shape=False)
    c.line([(0.06, 0.36), (0.94, 0.36)], d, 0.006)
    return (0.10, 0.42, 0.49, 0.58)


def _mug(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.ring((0.58, 0.30, 0.90, 0.74), col, 0.06)
    c.rect((0.18, 0.20, 0.70, 0.88), col)
    c.ellipse((0.18, 0.81, 0.70, 0.95), col)
    c.ellipse((0.18, 0.13, 0.70, 0.27), _shade(col, 1.08))
    c.ellipse((0.21, 0.155, 0.67, 0.245), d, shape=False)
    return (0.23, 0.38, 0.65, 0.64)


def _bottle(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.40, 0.03, 0.60, 0.14), d, radius=0.02)
    c.polygon([(0.42, 0.13), (0.58, 0.13), (0.70, 0.26), (0.30, 0.26)], col)
    c.rect((0.25, 0.24, 0.75, 0.97), col, radius=0.06)
    c.line([(0.25, 0.34), (0.75, 0.34)], d, 0.006)
    return (0.28, 0.46, 0.72, 0.62)


def _cushion(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    pts = []
    for side in range(4):
        for k in range(12):
            t = k / 12
            bulge = 0.035 * math.sin(math.pi * t)
            if side == 0:
                pts.append((0.1 + 0.8 * t, 0.14 + bulge))
            elif side == 1:
                pts.append((0.9 - bulge, 0.14 + 0.74 * t))
            elif side == 2:
                pts.append((0.9 - 0.8 * t, 0.88 - bulge))
            else:
                pts.append((0.1 + bulge, 0.88 - 0.74 * t))
    c.polygon(pts, col)
    c.line(pts[:13], d, 0.006)
    return (0.22, 0.40, 0.78, 0.62)


def _teddy(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.ellipse((0.22, 0.04, 0.40, 0.22), col)
    c.ellipse((0.60, 0.04, 0.78, 0.22), col)
    c.ellipse((0.10, 0.45, 0.32, 0.70), col)
    c.ellipse((0.68, 0.45, 0.90, 0.70), col)
    c.ellipse((0.20, 0.80, 0.42, 0.99), col)
    c.ellipse((0.58, 0.80, 0.80, 0.99), col)
    c.ellipse((0.22, 0.38, 0.78, 0.95), col)
    c.ellipse((0.28, 0.08, 0.72, 0.46), col)
    c.ellipse((0.42, 0.26, 0.58, 0.40), _shade(col, 1.15) if d[0] < col[0] else d, shape=False)
    c.ellipse((0.38, 0.19, 0.43, 0.24), (15, 15, 15), shape=False)
    c.ellipse((0.57, 0.19, 0.62, 0.24), (15, 15, 15), shape=False)
    return (0.29, 0.56, 0.71, 0.76)


def _book(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.rect((0.80, 0.08, 0.84, 0.92), (238, 232, 214))
    c.rect((0.18, 0.05, 0.81, 0.95), col)
    c.rect((0.18, 0.05, 0.24, 0.95), d, shape=False)
    c.line([(0.32, 0.52), (0.72, 0.52)], d, 0.006)
    return (0.29, 0.18, 0.75, 0.40)


def _ball(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    c.ellipse((0.10, 0.10, 0.90, 0.90), col)
    c.ring((-0.35, 0.12, 0.30, 0.88), d, 0.008, 300, 60, shape=False)
    c.ring((0.70, 0.12, 1.35, 0.88), d, 0.008, 120, 240, shape=False)
    return (0.24, 0.41, 0.76, 0.59)


def _guitar(c: _Canvas, col, rng) -> Box:
    d = _detail(col)
    wood = (95, 62, 38) if col != (95, 62, 38) else (60, 40, 25)
    c.rect((0.46, 0.08, 0.54, 0.42), wood)
    c.rect((0.43, 0.01, 0.57, 0.10), wood, radius=0.02)
    c.ellipse((0.28, 0.32, 0.72, 0.66), col)
    c.ellipse((0.18, 0.52, 0.82, 0.99), col)
    c.ellipse((0.43, 0.50, 0.57, 0.62), (20, 18, 16), shape=False)
    c.rect((0.40, 0.85, 0.60, 0.88), d, shape=False)
    return (0.27, 0.66, 0.73, 0.82)


def _box(c: _Canvas, col, rng) -> Box:
    c.polygon([(0.08, 0.36), (0.28, 0.18), (0.92, 0.18), (0.72, 0.36)], _shade(col, 1.12))
    c.polygon([(0.72, 0.36), (0.92, 0.18), (0.92, 0.74), (0.72, 0.93)], _shade(col, 0.8))
    c.rect((0.08, 0.36, 0.72, 0.93), col)
    return (0.13, 0.52, 0.67, 0.74)


ITEMS: dict[str, tuple[str, Drawer]] = {
    "t-shirt": ("tops", _tshirt),
    "sweater": ("tops", _sweater),
    "trousers": ("bottoms", _trousers),
    "shorts": ("bottoms", _shorts),
    "sneaker": ("shoes", _sneaker),
    "handbag": ("bags", _handbag),
    "backpack": ("bags", _backpack),
    "cap": ("accessories", _cap),
    "watch": ("watches", _watch),
    "speaker": ("electronics", _speaker),
    "laptop": ("electronics", _laptop),
    "phone": ("phones", _phone),
    "camera": ("cameras", _camera),
    "mug": ("kitchen_tableware", _mug),
    "cushion": ("home", _cushion),
    "teddy bear": ("toys", _teddy),
    "book": ("books", _book),
    "water bottle": ("sports", _bottle),
    "ball": ("sports", _ball),
    "guitar": ("musical_instruments", _guitar),
    "box": ("other", _box),
}

# The marketplace categories the generator draws items of, in taxonomy order.
CATEGORIES = tuple(c for c in taxonomy.CATEGORIES if c in {cat for cat, _ in ITEMS.values()})


def _draw_item(
    item: str,
    rgb: tuple[int, int, int],
    brand: str,
    font: str,
    rng: np.random.Generator,
    wordmark: bool = True,
) -> tuple[Image.Image, Image.Image, float]:
    """The item as an RGBA layer, the wordmark's own mask on the same canvas, and
    the height of one line of the wordmark in canvas pixels."""
    canvas = _Canvas()
    region = ITEMS[item][1](canvas, rgb, rng)
    colour = np.asarray(canvas.rgb, np.float32)
    alpha = np.asarray(canvas.alpha, np.float32) / 255.0

    # The wordmark, fitted into the item's print area.
    mark_u8, lines = _wordmark(brand, font, rng)
    mark = mark_u8.astype(np.float32) / 255.0
    rx0, ry0, rx1, ry1 = (round(v * _S) for v in region)
    fill = rng.uniform(0.6, 0.97)
    scale = min((rx1 - rx0) * fill / mark.shape[1], (ry1 - ry0) / mark.shape[0])
    mw, mh = max(1, round(mark.shape[1] * scale)), max(1, round(mark.shape[0] * scale))
    mark = cv2.resize(mark, (mw, mh), interpolation=cv2.INTER_AREA)
    x0 = rx0 + int(rng.integers(0, max(1, rx1 - rx0 - mw + 1)))
    y0 = ry0 + int(rng.integers(0, max(1, ry1 - ry0 - mh + 1)))
    text = np.zeros((_S, _S), np.float32)
    text[y0 : y0 + mh, x0 : x0 + mw] = mark
    text *= alpha if wordmark else 0.0  # same draws either way: same photo, less the brand
    ink = np.array(_text_color(rgb, rng), np.float32)
    colour = colour * (1 - text[..., None]) + ink * text[..., None]

    # Shading: light falls across the item from one side, with a soft highlight.
    y, x = np.mgrid[0:_S, 0:_S].astype(np.float32) / _S - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.1, 0.35) * (x * math.cos(angle) + y * math.sin(angle))
    hx, hy = rng.uniform(-0.25, 0.25, 2)
    light += rng.uniform(0.0, 0.12) * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / 0.02)
    colour = np.clip(colour * light[..., None], 0, 255)

    rgba = np.dstack([colour, alpha * 255]).astype(np.uint8)
    layer = Image.fromarray(rgba, "RGBA")
    text_mask = Image.fromarray((text * 255).astype(np.uint8), "L")
    bbox = layer.getbbox()
    return layer.crop(bbox), text_mask.crop(bbox), mh / lines


def _place(
    canvas: np.ndarray,
    layer: Image.Image,
    text_mask: Image.Image,
    line_height: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate, scale and drop the item (with a soft shadow) onto the background;
    now and then as a close-up that the frame cuts, never through the wordmark.
    Returns the photo and the item's and the wordmark's masks in photo pixels."""
    h, w = canvas.shape[:2]
    angle = rng.uniform(-25, 25)
    layer = layer.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    text_mask = text_mask.rotate(angle, Image.Resampling.BICUBIC, expand=True)

    close_up = rng.random() < 0.15
    fit = min(w / layer.width, h / layer.height)
    if close_up:
        scale = rng.uniform(1.0, 1.25) * fit
    else:
        scale = min(0.92 * fit, rng.uniform(0.5, 0.85) * min(w, h) / max(layer.size))
    # Keep the wordmark large enough to read, as a seller's photo of a brand would.
    scale = max(scale, min(0.92 * fit, 16.0 / line_height))
    size = (max(1, round(layer.width * scale)), max(1, round(layer.height * scale)))
    layer = layer.resize(size, Image.Resampling.LANCZOS)
    text_mask = text_mask.resize(size, Image.Resampling.BILINEAR)
    lw, lh = size
    tys, txs = np.nonzero(np.asarray(text_mask) > 32)
    if len(txs):
        tx0, tx1, ty0, ty1 = txs.min(), txs.max(), tys.min(), tys.max()
    else:  # no wordmark: keep the whole item in view
        tx0, tx1, ty0, ty1 = 0, lw - 1, 0, lh - 1

    # Left/top positions keeping the wordmark (with a margin) inside the frame.
    lo_x, hi_x = -tx0 + 4, w - tx1 - 5
    lo_y, hi_y = -ty0 + 4, h - ty1 - 5
    if not close_up:
        lo_x, hi_x = max(lo_x, 0), min(hi_x, w - lw)
        lo_y, hi_y = max(lo_y, 0), min(hi_y, h - lh)
    left = int(rng.integers(lo_x, hi_x + 1)) if hi_x >= lo_x else (w - lw) // 2
    top = int(rng.integers(lo_y, hi_y + 1)) if hi_y >= lo_y else (h - lh) // 2

    def onto_frame(src: np.ndarray) -> np.ndarray:
        out = np.zeros((h, w) + src.shape[2:], np.float32)
        x0, y0 = max(0, left), max(0, top)
        x1, y1 = min(w, left + lw), min(h, top + lh)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = src[y0 - top : y1 - top, x0 - left : x1 - left]
        return out

    rgba = np.asarray(layer)
    item_alpha = onto_frame(rgba[..., 3]) / 255.0
    text_alpha = onto_frame(np.asarray(text_mask)) / 255.0
    item_rgb = onto_frame(rgba[..., :3])

    sigma = max(2.0, 0.03 * max(lw, lh))
    shift = np.float32([[1, 0, rng.uniform(-0.04, 0.04) * lw], [0, 1, rng.uniform(0.0, 0.05) * lh]])
    shadow = cv2.warpAffine(item_alpha, shift, (w, h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigma)
    photo = canvas.astype(np.float32) * (1 - rng.uniform(0.15, 0.4) * shadow[..., None])
    photo = photo * (1 - item_alpha[..., None]) + item_rgb * item_alpha[..., None]
    return np.clip(photo, 0, 255).astype(np.uint8), item_alpha, text_alpha


_SKIN = [(236, 192, 160), (214, 160, 122), (170, 112, 78), (112, 72, 48)]


def _occlude(
    photo: np.ndarray, item_alpha: np.ndarray, text_alpha: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A hand, a price tag, a leaf or another object over part of the item, but off
    the wordmark (at most a sliver of it) and off most of the item."""
    h, w = photo.shape[:2]
    ys, xs = np.nonzero(item_alpha > 0.5)
    if len(ys) == 0:
        return photo
    item_size = max(xs.max() - xs.min(), ys.max() - ys.min())
    item_area = len(ys)
    text_area = max(1.0, float((text_alpha > 0.5).sum()))
    kind = str(rng.choice(["hand", "tag", "leaf", "object"]))
    cy, cx = ys.mean(), xs.mean()

    for _ in range(25):
        k = int(rng.integers(len(ys)))
        px, py = xs[k], ys[k]
        size = rng.uniform(0.22, 0.4) * item_size
        angle = math.degrees(math.atan2(cy - py, cx - px))  # pointing into the item
        layer = Image.new("RGBA", (int(size * 2), int(size * 2)), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        s = layer.width
        if kind == "hand":
            skin = _SKIN[int(rng.integers(len(_SKIN)))]
            draw.ellipse([0.05 * s, 0.30 * s, 0.55 * s, 0.70 * s], fill=skin + (255,))
            for f in range(4):
                y0 = 0.32 * s + f * 0.085 * s
                draw.rounded_rectangle(
                    [0.40 * s, y0, 0.82 * s - abs(f - 1.5) * 0.05 * s, y0 + 0.075 * s],
                    0.035 * s,
                    fill=skin + (255,),
                )
        elif kind == "tag":
            paper = (246, 244, 236)
            draw.rectangle([0.35 * s, 0.38 * s, 0.80 * s, 0.62 * s], fill=paper + (255,))
            draw.line(
                [(0.0, 0.5 * s), (0.38 * s, 0.5 * s)],
                fill=(60, 60, 60, 255),
                width=max(1, s // 100),
            )
            price = f"{int(rng.integers(3, 90))},{int(rng.integers(0, 100)):02d}"
            face = ImageFont.load_default(max(8, int(0.11 * s)))
            draw.text((0.42 * s, 0.43 * s), price, fill=(20, 20, 20, 255), font=face)
        elif kind == "leaf":
            green = (
                int(rng.integers(30, 80)),
                int(rng.integers(90, 150)),
                int(rng.integers(30, 70)),
            )
            draw.ellipse([0.10 * s, 0.35 * s, 0.95 * s, 0.65 * s], fill=green + (255,))
            draw.line(
                [(0.1 * s, 0.5 * s), (0.95 * s, 0.5 * s)],
                fill=_shade(green, 0.7) + (255,),
                width=max(1, s // 80),
            )
        else:
            other = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rounded_rectangle(
                [0.15 * s, 0.25 * s, 0.95 * s, 0.75 * s], 0.08 * s, fill=other + (255,)
            )
        layer = layer.rotate(-angle, Image.Resampling.BICUBIC)
        # Put the occluder's centre outside the item edge, so it reaches in.
        ox = int(px - layer.width / 2 - 0.25 * size * math.cos(math.radians(angle)))
        oy = int(py - layer.height / 2 - 0.25 * size * math.sin(math.radians(angle)))
        alpha = np.zeros((h, w), np.float32)
        src = np.asarray(layer)
        x0, y0 = max(0, ox), max(0, oy)
        x1, y1 = min(w, ox + layer.width), min(h, oy + layer.height)
        if x1 <= x0 or y1 <= y0:
            continue
        alpha[y0:y1, x0:x1] = src[y0 - oy : y1 - oy, x0 - ox : x1 - ox, 3] / 255.0
        covered_text = float(((alpha > 0.5) & (text_alpha > 0.5)).sum()) / text_area
        covered_item = float(((alpha > 0.5) & (item_alpha > 0.5)).sum()) / item_area
        if covered_text <= 0.08 and 0.02 <= covered_item <= 0.2:
            rgb = np.zeros((h, w, 3), np.float32)
            rgb[y0:y1, x0:x1] = src[y0 - oy : y1 - oy, x0 - ox : x1 - ox, :3]
            out = photo.astype(np.float32) * (1 - alpha[..., None]) + rgb * alpha[..., None]
            return np.clip(out, 0, 255).astype(np.uint8)
    return photo


def _light(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Focus blur, exposure, gamma, a white-balance cast, a vignette and sensor noise."""
    h, w = photo.shape[:2]
    if rng.random() < 0.3:
        photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.5, 1.4))
    image = photo.astype(np.float32) / 255.0
    image = image ** rng.uniform(0.85, 1.2) * rng.uniform(0.85, 1.15)
    image *= np.array([1 + rng.uniform(-0.05, 0.05), 1.0, 1 + rng.uniform(-0.05, 0.05)], np.float32)
    x, y = _grid(w, h)
    r2 = ((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.5
    image *= (1 - rng.uniform(0.0, 0.35) * r2)[..., None]
    image = image * 255.0 + rng.normal(0, rng.uniform(0, 3.5), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(SPLITS), default="test")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument(
        "--seed", type=int, default=None, help="offset inside the split's seed range"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    labels = write_split(args.out, args.split, args.count, args.seed)
    print(f"wrote {args.count} {args.split} images and {labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
