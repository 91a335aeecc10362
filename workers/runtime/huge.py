"""Runtime of the volumes made by ``models_registry.huge``: a Keras backbone, optionally with a
huge catalog head, and nothing else (no OCR, no color).

It serves two purposes: loading a model of many GB the way a worker does (``load_seconds``), and,
with the plain backbone (``--size-gb 0``), the backbone-only model of the benchmark, whose
``predict`` computes exactly the reference model's backbone, so that the pipeline can be measured
against the model alone and against other servers running the same network.

``category`` and ``name`` come from the ImageNet probabilities as in the reference model; ``brand``
and ``color`` are always null (this model has no such parts). The catalog head's nearest items are
computed by the model but not part of the four result fields.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.volume import ModelVolume
from workers.runtime import field
from workers.runtime.reference import category_and_classes, compose_name, load_taxonomy


class HugeRuntime:
    def __init__(self, volume: ModelVolume, *, weights: str = "map") -> None:
        self.volume = volume
        self.weights_mode = (
            weights  # the backbone's: "map" (page cache, default) or "read" (own memory)
        )
        manifest = volume.manifest
        self.decode_max_side = int(manifest["input"]["decode_max_side"])
        self.input_size = int(manifest["input"]["model_input"][0])
        self.thresholds: dict[str, float] = {k: float(v) for k, v in manifest["thresholds"].items()}
        self._backbone: Any = None
        self.load_seconds: float | None = None

    def load(self) -> None:
        from workers.runtime import backbone_class  # KERAS_BACKEND: TensorFlow (default) or JAX

        started = time.perf_counter()
        labels = self.volume.file("labels")
        (self.categories, self.class_names, self.class_category,
         self.category_matrix) = load_taxonomy(labels)
        backbone = backbone_class()(self.weights_mode)
        backbone.load(self.volume.file("backbone"))
        self._backbone = backbone
        self.load_seconds = time.perf_counter() - started

    @property
    def backbone(self) -> Any:
        return self._backbone

    def unload(self) -> None:
        if self._backbone is not None:
            self._backbone.unload()
        self._backbone = None

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        from workers.runtime.reference import center_square

        return center_square(rgb, self.input_size)

    def predict_outputs(self, batch: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The model's raw outputs for a batch of prepared images."""
        if self._backbone is None:
            raise RuntimeError("load() first")
        return self._backbone.predict_outputs(np.stack(batch))

    def predict(self, batch: list[np.ndarray]) -> list[dict[str, Any]]:
        probs = self.predict_outputs(batch)["probs"]
        category_probs = probs @ self.category_matrix
        return [self._compose(probs[i], category_probs[i]) for i in range(len(batch))]

    def _compose(self, probs: np.ndarray, category_probs: np.ndarray) -> dict[str, Any]:
        t = self.thresholds
        category, best, nouns = category_and_classes(
            self.categories, self.class_category, probs, category_probs, t["category"]
        )
        names = [(compose_name(None, None, self.class_names[i]), float(probs[i])) for i in nouns]
        return {
            "name": field(names[0][0], float(category_probs[best]), t["name"], names),
            "category": category,
            "brand": field(None, 0.0, t.get("brand", 1.0), []),
            "color": field(None, 0.0, t.get("color", 1.0), []),
        }

