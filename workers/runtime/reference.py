"""The reference model: EfficientNet-Lite0 (category), OCR + brand list (brand),
dominant item color (color), and a name composed from those.

Everything is read from the model volume; nothing from the network or from the
installed packages' data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.volume import ModelVolume
from workers.runtime import field
from workers.runtime.brand import BrandReader, BrandResult
from workers.runtime.color import ColorResult, dominant_color

TOP_K = 3


@dataclass(frozen=True)
class Prepared:
    model_input: np.ndarray  # (224, 224, 3) uint8
    color: ColorResult
    brand: BrandResult


class ReferenceRuntime:
    def __init__(self, volume: ModelVolume) -> None:
        self.volume = volume
        manifest = volume.manifest
        self.decode_max_side = int(manifest["input"]["decode_max_side"])
        self.input_size = int(manifest["input"]["model_input"][0])
        self.thresholds: dict[str, float] = {k: float(v) for k, v in manifest["thresholds"].items()}
        self._backbone: Any = None
        self._brands: BrandReader | None = None

    def load(self, *, prepare_only: bool = False) -> None:
        """``prepare_only``: only what ``prepare`` needs (the OCR models and the brand list), no
        TensorFlow: for the processes of ``workers.preparepool``, which never ``predict``."""
        labels = self.volume.file("labels")
        brands = [
            line.strip()
            for line in (labels / "brands.txt").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        self._brands = BrandReader(self.volume.file("ocr"), brands)
        if prepare_only:
            return
        from workers.runtime import backbone_class  # KERAS_BACKEND: TensorFlow (default) or JAX

        (self.categories, self.class_names, self.class_category,
         self.category_matrix) = load_taxonomy(labels)
        self._head = None
        head = self.volume.manifest.get("category_head")
        if head:
            from safetensors.numpy import load_file

            weights = load_file(str(self.volume.file(head["path"]) / "head.safetensors"))
            classes = json.loads((self.volume.file(head["path"]) / "classes.json").read_text())
            # Columns of the head, re-ordered onto the taxonomy's categories.
            placement = np.zeros((len(classes), len(self.categories)), dtype=np.float32)
            placement[np.arange(len(classes)), [self.categories.index(c) for c in classes]] = 1.0
            self._head = (weights["weight"], weights["bias"], placement, float(head["blend"]))
        backbone = backbone_class()()
        backbone.load(self.volume.file("backbone"))
        self._backbone = backbone

    def unload(self) -> None:
        if self._backbone is not None:
            self._backbone.unload()
        self._backbone = None
        self._brands = None

    def prepare(self, rgb: np.ndarray) -> Prepared:
        assert self._brands is not None, "load() first"
        return Prepared(
            model_input=center_square(rgb, self.input_size),
            color=dominant_color(rgb),
            brand=self._brands.read(rgb),
        )

    def predict(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        probs, embedding = self._backbone.predict(np.stack([p.model_input for p in batch]))
        category_probs = probs @ self.category_matrix
        if self._head is not None:
            weight, bias, placement, blend = self._head
            logits = embedding @ weight + bias
            logits -= logits.max(axis=1, keepdims=True)
            head_probs = np.exp(logits)
            head_probs /= head_probs.sum(axis=1, keepdims=True)
            category_probs = (1 - blend) * category_probs + blend * (head_probs @ placement)
        return [self._compose(p, probs[i], category_probs[i]) for i, p in enumerate(batch)]

    def _compose(self, prepared: Prepared, probs: np.ndarray, category_probs: np.ndarray) -> dict[str, Any]:
        t = self.thresholds
        category, best, nouns = category_and_classes(
            self.categories, self.class_category, probs, category_probs, t["category"]
        )
        color = prepared.color
        brand = prepared.brand
        color_field = field(color.name, color.confidence, t["color"], color.alternatives[:TOP_K])
        brand_field = field(brand.name, brand.confidence, t["brand"], brand.alternatives[:TOP_K])
        # The name stands or falls with its category; alternatives swap the noun
        # for the next classes of that category (their own probabilities).
        names = [
            (compose_name(brand_field["value"], color_field["value"], self.class_names[i]),
             float(probs[i]))
            for i in nouns
        ]
        name = field(names[0][0], float(category_probs[best]), t["name"], names)
        return {"name": name, "category": category, "brand": brand_field, "color": color_field}


def category_and_classes(
    categories: list[str], class_category: np.ndarray, probs: np.ndarray,
    category_probs: np.ndarray, threshold: float,
) -> tuple[dict[str, Any], int, np.ndarray]:
    """The category field (its top-K alternatives), the best category's index, and the indices
    of the top-K ImageNet classes within that category, most probable first."""
    order = np.argsort(-category_probs)[:TOP_K]
    best = int(order[0])
    category = field(
        categories[best],
        float(category_probs[best]),
        threshold,
        [(categories[i], float(category_probs[i])) for i in order],
    )
    in_category = np.where(class_category == best)[0]
    return category, best, in_category[np.argsort(-probs[in_category])][:TOP_K]


def load_taxonomy(labels: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """A volume's taxonomy: categories, ImageNet class names, each class's category index,
    and the 0/1 matrix that sums class probabilities into category probabilities."""
    taxonomy = json.loads((labels / "taxonomy.json").read_text(encoding="utf-8"))
    categories = [c["slug"] for c in taxonomy["categories"]]
    class_names = (labels / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    by_index = {int(m["index"]): m["category"] for m in taxonomy["mapping"]}
    class_category = np.array([categories.index(by_index[i]) for i in range(len(class_names))])
    matrix = np.zeros((len(class_names), len(categories)), dtype=np.float32)
    matrix[np.arange(len(class_names)), class_category] = 1.0
    return categories, class_names, class_category, matrix


def compose_name(brand: str | None, color: str | None, class_name: str) -> str:
    noun = class_name.split(",")[0].strip()
    words = [w for w in (brand, color, noun) if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def center_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to size*8/7 and crop the center (the usual ImageNet eval crop)."""
    height, width = rgb.shape[:2]
    scale = size * 8 / 7 / min(height, width)
    image = Image.fromarray(rgb).resize(
        (max(size, round(width * scale)), max(size, round(height * scale))),
        Image.Resampling.BILINEAR,
        reducing_gap=2.0,
    )
    left = (image.width - size) // 2
    top = (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))
