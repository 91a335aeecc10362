"""A saved backbone's graph, rebuilt without its weights, on whichever backend Keras runs (the
caller's module has imported Keras on its own backend first: ``tensorflow_backend`` or
``jax_backend``). The variables are then given the volume's bytes by ``weights.WeightsFile``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from workers.runtime.weights import INPUT_SIZE, MODEL_JSON, WEIGHTS_MODES, WeightsFile, weights_by_path


def model_without_weights(config_json: str) -> keras.Model:
    """The model of ``config_json`` with every variable created but not initialised."""
    with keras.StatelessScope(initialize_variables=False):
        return keras.models.model_from_json(config_json)


def drop_from_uninitialized(variables: list[Any]) -> None:
    """Forget deferred variables that were initialised by hand (Keras keeps a per-thread list)."""
    from keras.src.backend.common import global_state

    ours = {id(v) for v in variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if id(v) not in ours]
    )


def load_saved(
    directory: Path, weights_mode: str, adopt_into: Callable[[Any, Any], None],
) -> tuple[keras.Model, int, bool]:
    """The saved backbone of ``directory`` with every variable holding the volume's bytes, given to
    it by ``adopt_into(variable, array)`` (the backend's way); the tensor bytes read; whether it
    has the catalog head. The read-ahead starts before the graph is built, and everything is
    checked before a byte of tensor data is read."""
    with WeightsFile(Path(directory), weights_mode) as weights:
        directory = weights.directory
        model = model_without_weights(weights.model_json())
        try:
            total = weights.adopt(weights_by_path(model), adopt_into)
        finally:
            drop_from_uninitialized(model.weights)
    outputs = tuple(sorted(model.output.keys())) if isinstance(model.output, dict) else ()
    if not {"probs", "embedding"} <= set(outputs):
        raise ValueError(f"{directory / MODEL_JSON}: outputs {outputs}, need probs and embedding")
    return model, total, "catalog_scores" in outputs


class Backbone:
    """What both backbones share: their state before a load, ``loaded``, and ``predict`` from their
    ``predict_outputs``."""

    input_size = INPUT_SIZE

    def __init__(self, weights: str = "map") -> None:
        if weights not in WEIGHTS_MODES:
            raise ValueError(f"weights must be 'map' or 'read', not {weights!r}")
        self.weights_mode = weights
        self._lock = threading.Lock()
        self._model: keras.Model | None = None
        self._serve: Any = None
        self.output_names: tuple[str, ...] = ()
        self.load_seconds: float | None = None
        self.weights_bytes = 0

    @property
    def loaded(self) -> bool:
        return self._serve is not None

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> (probs float32 (N, 1000), embedding float32 (N, 1280))."""
        outputs = self.predict_outputs(batch)
        return (outputs["probs"].astype(np.float32, copy=False),
                outputs["embedding"].astype(np.float32, copy=False))
