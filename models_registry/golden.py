"""Golden inputs: a few photos stored in the volume with the outputs recorded at build time.

``verify`` runs them through the loaded model and compares, so a volume that
loads but computes something else (a bad port, a swapped file with a matching
manifest, a broken runtime) is caught before it takes traffic. A field withheld both times (below
its threshold) is not compared by confidence: what a client sees is the same, and code-only changes
(the OCR's cheaper detector, 2026-12-01) may move a hidden field's confidence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.imaging import decode_rgb
from common.volume import ModelVolume

GOLDEN = "golden"
# Confidences may differ slightly between CPU and GPU kernels; top values may not.
TOLERANCE = 0.02


def golden_photos() -> list[tuple[str, bytes]]:
    import io

    from PIL import Image
    from skimage import data

    from models_registry.synthetic import generate

    photos = []
    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, "JPEG", quality=92)
    photos.append(("coffee.jpg", buffer.getvalue()))
    for i, sample in enumerate(generate("train", 3, seed=2024)):
        photos.append((f"synthetic-{i}.jpg", sample.jpeg))
    return photos


def run(runtime: Any, photos: list[bytes]) -> list[dict[str, Any]]:
    prepared = [runtime.prepare(decode_rgb(p, max_side=runtime.decode_max_side)) for p in photos]
    return runtime.predict(prepared)


def write_golden(directory: Path, runtime: Any, photos: list[tuple[str, bytes]]) -> None:
    inputs = directory / GOLDEN / "inputs"
    inputs.mkdir(parents=True)
    for name, data in photos:
        (inputs / name).write_bytes(data)
    outputs = run(runtime, [data for _, data in photos])
    expected = {name: output for (name, _), output in zip(photos, outputs, strict=True)}
    (directory / GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def check_golden(volume: ModelVolume, runtime: Any) -> list[str]:
    """Differences between recorded and computed outputs, each naming its photo and field."""
    expected_path = volume.path / GOLDEN / "expected.json"
    if not expected_path.exists():
        return [f"{GOLDEN}/expected.json: missing (the volume has no golden inputs)"]
    expected = json.loads(expected_path.read_text())
    names = sorted(expected)
    outputs = run(runtime, [(volume.path / GOLDEN / "inputs" / n).read_bytes() for n in names])
    problems = []
    for name, got in zip(names, outputs, strict=True):
        for field, want in expected[name].items():
            have = got.get(field, {})
            if have.get("value") != want.get("value"):
                problems.append(f"{name} {field}: {have.get('value')!r} != recorded {want.get('value')!r}")
            elif want.get("value") is None:
                # Withheld both times: below its threshold either way, what a seller sees is the
                # same. (A code-only change to the OCR may read a stray letter it read before, or
                # not: the coffee photo's brand confidence went from 0.35 to 0.)
                continue
            elif abs(float(have.get("confidence", -1)) - float(want.get("confidence", 0))) > TOLERANCE:
                problems.append(
                    f"{name} {field}: confidence {have.get('confidence')} != recorded {want.get('confidence')}"
                )
    return problems
