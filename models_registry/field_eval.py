"""Accuracy of the colour and brand parts of the reference model on synthetic photos.

The figures are measured on the project's synthetic split (models_registry/synthetic.py)
and are only ever reported together with that split's name and size: they say how well
the parts read a wordmark and name a colour on drawn items, not marketplace accuracy.
Tune on ``train``; report ``test``.

    python -m models_registry.field_eval --split test --count 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from models_registry.synthetic import generate, load_brands
from workers.runtime.brand import BrandReader, copy_ocr_models
from workers.runtime.color import dominant_color


def evaluate_color_and_brand(
    split: str = "test",
    count: int = 200,
    *,
    seed: int | None = None,
    fields: tuple[str, ...] = ("color", "brand"),
    unbranded: int = 50,
    verbose: bool = True,
) -> dict:
    """Run ``dominant_color`` and ``BrandReader.read`` over ``count`` synthetic photos
    of ``split`` and return per-field accuracy, timings and the misses; with the
    brand field, also how often a brand is read on ``unbranded`` photos of the same
    scenes drawn without their wordmark (it should be None)."""
    brands = load_brands()
    reader = None
    tmp = None
    if "brand" in fields:
        tmp = tempfile.TemporaryDirectory(prefix="ocr-models-")
        copy_ocr_models(Path(tmp.name))
        reader = BrandReader(Path(tmp.name), brands)

    hits: Counter[str] = Counter()
    seconds: dict[str, list[float]] = {field: [] for field in fields}
    misses: dict[str, list[dict]] = {field: [] for field in fields}
    by_background: dict[str, Counter[str]] = {}
    try:
        for sample in generate(split, count, seed):
            rgb = np.asarray(sample.image)
            where = by_background.setdefault(sample.background, Counter())
            where["n"] += 1
            if "color" in fields:
                start = time.process_time()
                color = dominant_color(rgb)
                seconds["color"].append(time.process_time() - start)
                ok = color.name == sample.color
                hits["color"] += ok
                where["color"] += ok
                if not ok:
                    misses["color"].append(
                        {
                            "seed": sample.seed,
                            "item": sample.item,
                            "truth": sample.color,
                            "got": color.name,
                            "alternatives": color.alternatives,
                            "rgb": color.rgb,
                        }
                    )
            if reader is not None:
                start = time.process_time()
                brand = reader.read(rgb)
                seconds["brand"].append(time.process_time() - start)
                ok = brand.name == sample.brand
                hits["brand"] += ok
                where["brand"] += ok
                hits["brand_top1"] += bool(brand.alternatives) and brand.alternatives[0][0] == sample.brand
                hits["brand_shown"] += brand.name is not None
                hits["brand_shown_right"] += brand.name is not None and ok
                if not ok:
                    misses["brand"].append(
                        {
                            "seed": sample.seed,
                            "item": sample.item,
                            "font": sample.font,
                            "truth": sample.brand,
                            "got": brand.name,
                            "confidence": round(brand.confidence, 3),
                            "text": brand.text,
                        }
                    )
        false_brands = []
        if reader is not None:
            for sample in generate(split, unbranded, seed, wordmark=False):
                brand = reader.read(np.asarray(sample.image))
                if brand.name is not None:
                    false_brands.append(
                        {
                            "seed": sample.seed,
                            "item": sample.item,
                            "got": brand.name,
                            "confidence": round(brand.confidence, 3),
                            "text": brand.text,
                        }
                    )
    finally:
        if tmp is not None:
            tmp.cleanup()

    report = {
        "set": f"synthetic {split} split, {count} images (models_registry/synthetic.py)",
        "split": split,
        "count": count,
        "accuracy": {field: hits[field] / count for field in fields},
        # CPU time of this process (every thread: ONNX Runtime's own count too), not wall
        # time: the machine may be shared.
        "cpu_ms_per_image": {
            field: {
                "mean": 1000 * float(np.mean(values)),
                "p50": 1000 * float(np.median(values)),
                "p95": 1000 * float(np.percentile(values, 95)),
            }
            for field, values in seconds.items()
            if values
        },
        "accuracy_by_background": {
            kind: {field: c[field] / c["n"] for field in fields}
            for kind, c in sorted(by_background.items())
        },
        "misses": misses,
    }
    if reader is not None:
        shown = hits["brand_shown"]
        report["brand"] = {
            "top1_accuracy": hits["brand_top1"] / count,
            "shown": shown,
            "shown_rate": shown / count,
            "shown_precision": hits["brand_shown_right"] / shown if shown else None,
        }
        report["unbranded"] = {
            "count": unbranded,
            "false_brand_rate": len(false_brands) / unbranded if unbranded else None,
            "false_brands": false_brands,
        }
    if verbose:
        print(f"{report['set']}")
        for field in fields:
            timing = report["cpu_ms_per_image"].get(field, {})
            print(
                f"  {field:6s} accuracy {report['accuracy'][field]:6.1%}"
                f"   {timing.get('mean', 0):7.1f} CPU ms/image mean, p95 {timing.get('p95', 0):7.1f} ms"
            )
        if "brand" in report:
            b = report["brand"]
            precision = "-" if b["shown_precision"] is None else f"{b['shown_precision']:.1%}"
            print(
                f"  brand  top-1 {b['top1_accuracy']:6.1%}, shown {b['shown']}/{count},"
                f" precision of the shown {precision}"
            )
        if "unbranded" in report and unbranded:
            print(
                f"  brand read on {unbranded} photos without a wordmark: "
                f"{report['unbranded']['false_brand_rate']:.1%} (should be 0)"
            )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fields", default="color,brand")
    parser.add_argument("--unbranded", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    args = parser.parse_args(argv)
    report = evaluate_color_and_brand(
        args.split,
        args.count,
        seed=args.seed,
        fields=tuple(args.fields.split(",")),
        unbranded=args.unbranded,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
