"""Evaluate a model volume on sets we can name honestly.

- ``synthetic-test``: the project's own generated product photos, held-out split
  (its own seeds, backgrounds and fonts). Figures on it say how the brand and
  color parts work on photos LIKE THESE, not how the model does on a marketplace.
- ``bundled-photos``: real photos bundled with scikit-image and scikit-learn, each
  with the category a person would file it under (a smoke test, a handful of images).
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import numpy as np

from common.imaging import decode_rgb
from common.volume import ModelVolume

BATCH = 16


def bundled_photos() -> list[tuple[str, np.ndarray, str]]:
    """(name, RGB array, expected category) for real photos shipped in installed packages."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return [
        ("skimage.coffee", skdata.coffee(), "kitchen_tableware"),
        ("skimage.chelsea", skdata.chelsea(), "other"),
        ("skimage.astronaut", skdata.astronaut(), "other"),
        ("skimage.rocket", skdata.rocket(), "other"),
        ("sklearn.china", china, "other"),
        ("sklearn.flower", flower, "other"),
    ]


def _run(runtime: Any, images: list[np.ndarray], *, desc: str | None = None) -> tuple[list[dict[str, Any]], float]:
    """Results and seconds per image; with ``desc``, a progress bar on stderr (a build takes minutes)."""
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tqdm(total=len(images), desc=desc, unit="photo", disable=desc is None, leave=False,
              mininterval=1.0, file=sys.stderr) as bar:
        for i in range(0, len(images), BATCH):
            prepared = [runtime.prepare(rgb) for rgb in images[i : i + BATCH]]
            results += runtime.predict(prepared)
            bar.update(len(prepared))
    return results, (time.perf_counter() - started) / max(1, len(images))


def _top(field: dict[str, Any]) -> str | None:
    alternatives = field.get("alternatives") or []
    return alternatives[0]["value"] if alternatives else None


def evaluate_volume(volume: ModelVolume, *, count: int = 200, runtime: Any = None) -> list[dict[str, Any]]:
    from models_registry.synthetic import generate
    from workers.runtime import runtime_for

    if runtime is None:
        runtime = runtime_for(volume)
        runtime.load()
    side = runtime.decode_max_side
    samples = list(generate("test", count))
    images = [decode_rgb(s.jpeg, max_side=side) for s in samples]
    results, per_image = _run(runtime, images, desc=f"evaluating {volume.name}/{volume.version}")
    metrics: dict[str, Any] = {}
    for name, truth in (("color", [s.color for s in samples]), ("brand", [s.brand for s in samples]),
                        ("category", [s.category for s in samples])):
        top = [_top(r[name]) for r in results]
        shown = [r[name]["value"] for r in results]
        answered = [v for v in shown if v is not None]
        metrics[name] = {
            "top1_accuracy": round(float(np.mean([t == y for t, y in zip(top, truth, strict=True)])), 4),
            # of the values shown (confidence above threshold), how many were right
            "shown_precision": round(
                float(np.mean([v == y for v, y in zip(shown, truth, strict=True) if v is not None]))
                if answered else 0.0, 4),
            "shown_rate": round(len(answered) / len(shown), 4),
        }
    evaluations = [{
        "set": "synthetic-test",
        "description": (
            f"{count} generated product photos from the held-out test split "
            "(models_registry/synthetic.py: held-out seeds, backgrounds and fonts); "
            "NOT marketplace photos"
        ),
        "count": count,
        "metrics": metrics,
        "seconds_per_image_cpu": round(per_image, 4),
    }]
    photos = bundled_photos()
    real = []
    for _, rgb, _ in photos:
        buffer = io.BytesIO()
        from PIL import Image

        Image.fromarray(rgb).save(buffer, "JPEG", quality=92)
        real.append(decode_rgb(buffer.getvalue(), max_side=side))
    real_results, _ = _run(runtime, real)
    rows = [
        {"photo": name, "expected_category": expected, "category": _top(r["category"]),
         "name": r["name"]["value"] or _top(r["name"]), "correct": _top(r["category"]) == expected}
        for (name, _, expected), r in zip(photos, real_results, strict=True)
    ]
    evaluations.append({
        "set": "bundled-photos",
        "description": "real photos bundled with scikit-image and scikit-learn (smoke set)",
        "count": len(rows),
        "metrics": {"category": {"top1_accuracy": round(float(np.mean([r["correct"] for r in rows])), 4)}},
        "photos": rows,
    })
    return evaluations
