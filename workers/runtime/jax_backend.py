"""The saved backbone (``model.json`` + ``weights.safetensors``) under Keras' JAX backend, for hosts
that have JAX (say with CUDA) and no TensorFlow. ``KERAS_BACKEND=jax`` chooses it
(``workers.runtime.backbone_class``); TensorFlow (``workers.runtime.tensorflow_backend``) stays the
default and the production image's.

It never imports TensorFlow, not even through Keras: Keras picks its backend once, when it is first
imported, from ``KERAS_BACKEND``, so the process must have that set to ``jax`` before anything
imports Keras (the worker's environment does); importing this module in a process whose Keras
already runs on another backend is an ImportError that says so.

``JaxBackbone`` has ``KerasBackbone``'s interface (``load(directory)``, ``loaded``, ``predict``,
``predict_outputs``, ``unload``, ``load_seconds``, ``weights_bytes``) and loads the same way: the
graph is rebuilt from ``model.json`` with its variables uninitialised, and
``workers.runtime.weights.WeightsFile`` hands each tensor's bytes (``"map"``: in the page cache;
``"read"``: a buffer of its own) to ``jax.device_put``, which on JAX's CPU client uses an aligned
host buffer in place (no second copy in host memory) and on a GPU copies it to the device, once.

``predict`` runs one ``jax.jit``-compiled function of (weights, images): Keras' ``stateless_call``,
the weights passed as arguments (never baked into the program as constants), and for a catalog
model the top-k items. That costs about 0.1 ms of Python per call, against ~1.9 ms for
``model.predict_on_batch`` (which also gathers and reassigns every variable each call): measured on
the 2-core development VM with a model of the same 247 variables and almost no arithmetic. XLA
compiles one program per input shape (about 1-3 s each for this network on that VM), so batches are
padded up to one of a few sizes (``BATCH_SIZES``; beyond those, multiples of 256): a worker
compiles at most a dozen programs, each once, the first time a batch of that size comes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
    raise ImportError(
        f"workers.runtime.jax_backend needs KERAS_BACKEND=jax, not "
        f"{os.environ['KERAS_BACKEND']!r} (Keras reads it once, at its first import)"
    )

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from workers.runtime.keras_graph import Backbone, load_saved  # noqa: E402
from workers.runtime.weights import (  # noqa: E402
    CATALOG_TOP_K,
    INPUT_SIZE,
    check_batch,
)

if keras.backend.backend() != "jax":
    raise ImportError(
        f"workers.runtime.jax_backend needs Keras on the JAX backend, but Keras was imported on "
        f"{keras.backend.backend()!r} before KERAS_BACKEND=jax was set"
    )

__all__ = ["BATCH_SIZES", "JaxBackbone", "batch_size_for", "jax_versions"]

# The batch sizes that programs are compiled for; a batch is padded up to the next one.
BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def batch_size_for(n: int) -> int:
    """The compiled batch size that ``n`` images are padded to."""
    for size in BATCH_SIZES:
        if n <= size:
            return size
    return -(-n // 256) * 256


def _adopt_into(variable: Any, array: np.ndarray) -> None:
    """The variable takes ``array``'s bytes: on the CPU in place (``array`` is 64-byte aligned,
    and JAX keeps it alive as long as it uses it), on a GPU by one copy to the device."""
    variable._initialize(jax.device_put(array))
    variable._initializer = None


class JaxBackbone(Backbone):
    """A saved backbone loaded for inference on JAX's default device (a GPU where there is one).

    The caller serializes calls (the worker's one inference thread); a lock still guards
    load/unload/predict against overlapping use. After ``load``, ``load_seconds`` is how long it
    took (the weights on the device included) and ``weights_bytes`` how many tensor bytes it read.
    """

    def __init__(self, weights: str = "map") -> None:
        super().__init__(weights)
        self._params: tuple[list[Any], list[Any]] | None = None

    @property
    def device(self) -> str:
        return str(jax.devices()[0])

    def load(self, directory: Path) -> None:
        started = time.perf_counter()
        model, total, has_catalog = load_saved(directory, self.weights_mode, _adopt_into)
        params = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )
        jax.block_until_ready(params)  # the copies to a GPU are asynchronous

        def serve(params: tuple[list[Any], list[Any]], images: jax.Array) -> dict[str, jax.Array]:
            trainable, non_trainable = params
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
            served = {"probs": outputs["probs"], "embedding": outputs["embedding"]}
            if has_catalog:
                scores = outputs["catalog_scores"]
                values, items = jax.lax.top_k(scores, min(CATALOG_TOP_K, int(scores.shape[1])))
                served["catalog_top_scores"] = values
                served["catalog_top_items"] = items
            return served

        with self._lock:
            self._model, self._params, self._serve = model, params, jax.jit(serve)
            extra = {"catalog_top_scores", "catalog_top_items"} if has_catalog else set()
            self.output_names = tuple(sorted({"probs", "embedding"} | extra))
            self.weights_bytes = total
            self.load_seconds = time.perf_counter() - started

    def compile(self, sizes: Iterable[int], threads: int = 1) -> float:
        """Compile the programs for these batch sizes now (each padded as ``predict`` pads it),
        on ``threads`` threads at once (XLA compiles without the GIL); returns the seconds taken.
        With JAX's compilation cache on disk (``JAX_COMPILATION_CACHE_DIR``) other processes then
        find them there."""
        if self._serve is None or self._params is None:
            raise RuntimeError("backbone is not loaded")
        serve, params = self._serve, self._params
        padded = sorted({batch_size_for(max(int(n), 1)) for n in sizes})
        started = time.perf_counter()

        def run(size: int) -> None:
            jax.block_until_ready(serve(params, np.zeros((size, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)))

        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="jax-compile") as pool:
            list(pool.map(run, padded))
        return time.perf_counter() - started

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> ``probs`` (N, 1000), ``embedding`` (N, 1280), and for a
        model with a catalog head ``catalog_top_scores`` / ``catalog_top_items`` (N, <= 5)."""
        batch = check_batch(batch)
        count = len(batch)
        size = batch_size_for(max(count, 1))
        if size != count:
            padded = np.zeros((size, *batch.shape[1:]), dtype=np.uint8)
            padded[:count] = batch
            batch = padded
        with self._lock:
            if self._serve is None or self._params is None:
                raise RuntimeError("backbone is not loaded")
            outputs = self._serve(self._params, batch)
            # On the lock's thread: the device work ends here, not in the caller's reads.
            result = {name: np.asarray(value)[:count] for name, value in outputs.items()}
        return result

    def unload(self) -> None:
        with self._lock:
            self._model = None
            self._params = None
            self._serve = None


def jax_versions() -> dict[str, str]:
    return {"jax": jax.__version__, "keras": keras.__version__,
            "device": str(jax.devices()[0])}
