"""The model runtime seam: load / prepare / predict / unload.

``prepare`` runs per image on any worker thread (CPU work that overlaps the model:
resizing, OCR, color); ``predict`` runs batched on the one inference thread. One
implementation per kind of model, chosen by the volume's manifest ``runtime``.
Only ``workers.runtime.tensorflow_backend`` imports TensorFlow, and only the
reference runtime imports it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from common.volume import ModelVolume, VolumeError


class ModelRuntime(Protocol):
    volume: ModelVolume
    # Long side the worker decodes photos to before ``prepare``.
    decode_max_side: int

    def load(self) -> None: ...

    def prepare(self, rgb: np.ndarray) -> Any: ...

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]: ...

    def unload(self) -> None: ...


def runtime_for(volume: ModelVolume) -> ModelRuntime:
    kind = volume.manifest["runtime"]
    if kind == "reference":
        from workers.runtime.reference import ReferenceRuntime

        return ReferenceRuntime(volume)
    if kind == "huge":
        from workers.runtime.huge import HugeRuntime

        return HugeRuntime(volume)
    if kind == "null":
        from workers.runtime.null import NullRuntime

        return NullRuntime(volume)
    raise VolumeError(f"{volume.path}: unknown runtime {kind!r}")


def field(value: str | None, confidence: float, threshold: float,
          alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    """One result field; the value is withheld (null) below the threshold."""
    return {
        "value": value if value is not None and confidence >= threshold else None,
        "confidence": round(float(confidence), 4),
        "threshold": threshold,
        "alternatives": [{"value": v, "confidence": round(float(c), 4)} for v, c in alternatives],
    }
