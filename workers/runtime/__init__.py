"""The model runtime seam: load / prepare / predict / unload.

``prepare`` runs per image on any worker thread (CPU work that overlaps the model:
resizing, OCR, color); ``predict`` runs batched on the one inference thread. One
implementation per kind of model, chosen by the volume's manifest ``runtime``.
Only ``workers.runtime.tensorflow_backend`` imports TensorFlow, and only the
Keras runtimes (reference, huge) import it, through ``backbone_class``: with
``KERAS_BACKEND=jax`` they run the same volume files on ``workers.runtime.jax_backend``
instead, which never imports TensorFlow.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from common.env import ConfigurationError
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


KERAS_BACKENDS = ("tensorflow", "jax")


def backbone_class() -> type:
    """The backbone class for this process's ``KERAS_BACKEND``: unset or ``tensorflow`` ->
    ``KerasBackbone`` (the default, and the production image's), ``jax`` -> ``JaxBackbone``.
    Keras reads the variable once, at its first import, so the process's environment decides."""
    backend = os.environ.get("KERAS_BACKEND", "").strip() or "tensorflow"
    if backend == "tensorflow":
        from workers.runtime.tensorflow_backend import KerasBackbone  # the one TF module

        return KerasBackbone
    if backend == "jax":
        from workers.runtime.jax_backend import JaxBackbone

        return JaxBackbone
    raise ConfigurationError(
        f"KERAS_BACKEND={backend!r} is not a backend the worker can run the model on: "
        f"use one of {', '.join(KERAS_BACKENDS)} (unset means tensorflow)"
    )


def field(value: str | None, confidence: float, threshold: float,
          alternatives: list[tuple[str, float]]) -> dict[str, Any]:
    """One result field; the value is withheld (null) below the threshold."""
    return {
        "value": value if value is not None and confidence >= threshold else None,
        "confidence": round(float(confidence), 4),
        "threshold": threshold,
        "alternatives": [{"value": v, "confidence": round(float(c), 4)} for v, c in alternatives],
    }
