"""Accuracy of the colour and brand parts of the reference model on synthetic photos.

The figures are measured on the project's synthetic split (models_registry/synthetic.py)
and are only ever reported together with that split's name and size: they say how well
the parts read a wordmark and name a colour on drawn items, not marketplace accuracy.
Tune on ``train``; report ``test``.

    python -m models_registry.field_eval --split test --count 200

``--ocr`` compares OCR pipelines on the same photos, read by each in turn (an A/B in one
run, fair on a shared machine), with each one's brand figures and CPU time per stage:

    python -m models_registry.field_eval --fields brand --ocr two-pass rapidocr,threads=2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models_registry.synthetic import SyntheticSample, generate, load_brands
from workers.runtime.brand import BrandReader, BrandResult, copy_ocr_models
from workers.runtime.color import dominant_color

DEFAULT_OCR = ("two-pass",)
# After a call, ONNX Runtime's pool threads (a session with more than one intra-op thread)
# spin for a while: about 40 ms of CPU after each call with 2 threads on this machine. A
# pipeline's time runs until they have stopped, so that it pays for its own spinning and
# not for the next pipeline's.
SETTLE_SECONDS = 0.1


def parse_ocr(spec: str) -> tuple[str, dict[str, object]]:
    """An OCR spec, ``pipeline[,key=value...]`` (e.g. ``rapidocr,threads=2``), as the
    ``BrandReader`` pipeline and keyword arguments it stands for."""
    pipeline, *options = spec.split(",")
    kwargs: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"{spec!r}: expected key=value, got {option!r}")
        kwargs[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
    return pipeline, kwargs


@dataclass
class _BrandTally:
    """What one OCR pipeline read, photo by photo."""

    reader: BrandReader
    hits: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    seconds_unbranded: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    misses: list[dict] = field(default_factory=list)
    false_brands: list[dict] = field(default_factory=list)
    by_background: dict[str, Counter[str]] = field(default_factory=dict)

    def read(self, rgb: np.ndarray) -> tuple[BrandResult, float]:
        start = time.process_time()
        brand = self.reader.read(rgb, stages=self.stages)
        time.sleep(SETTLE_SECONDS)
        return brand, time.process_time() - start

    def branded(self, sample: SyntheticSample, rgb: np.ndarray) -> None:
        brand, seconds = self.read(rgb)
        self.seconds.append(seconds)
        ok = brand.name == sample.brand
        self.hits["right"] += ok
        self.hits["top1"] += bool(brand.alternatives) and brand.alternatives[0][0] == sample.brand
        self.hits["shown"] += brand.name is not None
        self.hits["shown_right"] += brand.name is not None and ok
        self.by_background.setdefault(sample.background, Counter())["right"] += ok
        if not ok:
            self.misses.append(
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

    def unbranded(self, sample: SyntheticSample, rgb: np.ndarray) -> None:
        brand, seconds = self.read(rgb)
        self.seconds_unbranded.append(seconds)
        if brand.name is not None:
            self.false_brands.append(
                {
                    "seed": sample.seed,
                    "item": sample.item,
                    "got": brand.name,
                    "confidence": round(brand.confidence, 3),
                    "text": brand.text,
                }
            )

    def report(self, count: int, unbranded: int) -> dict:
        shown = self.hits["shown"]
        photos = len(self.seconds) + len(self.seconds_unbranded)
        return {
            "accuracy": self.hits["right"] / count,
            "top1_accuracy": self.hits["top1"] / count,
            "shown": shown,
            "shown_rate": shown / count,
            "shown_precision": self.hits["shown_right"] / shown if shown else None,
            "false_brands": len(self.false_brands),
            "false_brand_rate": len(self.false_brands) / unbranded if unbranded else None,
            "cpu_ms_per_image": _summary(self.seconds),
            "cpu_ms_per_image_unbranded": _summary(self.seconds_unbranded),
            # mean over every photo read, with and without a wordmark
            "cpu_ms_per_stage": {stage: round(1000 * s / photos, 2) for stage, s in self.stages.items()},
            "misses": self.misses,
            "false_brand_reads": self.false_brands,
        }


def _summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    return {
        "mean": 1000 * float(np.mean(seconds)),
        "p50": 1000 * float(np.median(seconds)),
        "p95": 1000 * float(np.percentile(seconds, 95)),
    }


def evaluate_color_and_brand(
    split: str = "test",
    count: int = 200,
    *,
    seed: int | None = None,
    fields: tuple[str, ...] = ("color", "brand"),
    unbranded: int = 50,
    ocr: tuple[str, ...] = DEFAULT_OCR,
    verbose: bool = True,
) -> dict:
    """Run ``dominant_color`` and ``BrandReader.read`` over ``count`` synthetic photos
    of ``split`` and return per-field accuracy, timings and the misses; with the
    brand field, also how often a brand is read on ``unbranded`` photos of the same
    scenes drawn without their wordmark (it should be None). With several ``ocr``
    specs (see ``parse_ocr``) each photo is read by each pipeline in turn; the
    top-level brand figures are the first one's, ``report["ocr"]`` has them all."""
    brands = load_brands()
    tallies: dict[str, _BrandTally] = {}
    tmp = None
    if "brand" in fields:
        tmp = tempfile.TemporaryDirectory(prefix="ocr-models-")
        copy_ocr_models(Path(tmp.name))
        for spec in ocr:
            pipeline, kwargs = parse_ocr(spec)
            tallies[spec] = _BrandTally(BrandReader(Path(tmp.name), brands, pipeline=pipeline, **kwargs))  # type: ignore[arg-type]

    def each_reader(index: int) -> list[_BrandTally]:
        # Rotated photo by photo, so that no pipeline always runs first (warm caches).
        order = list(tallies.values())
        return order[index % len(order) :] + order[: index % len(order)] if order else []

    hits: Counter[str] = Counter()
    color_seconds: list[float] = []
    color_misses: list[dict] = []
    by_background: dict[str, Counter[str]] = {}
    try:
        for index, sample in enumerate(generate(split, count, seed)):
            rgb = np.asarray(sample.image)
            if index == 0:
                for tally in tallies.values():
                    tally.reader.read(rgb)  # warm-up: the first call of a session costs more
                time.sleep(SETTLE_SECONDS)
            where = by_background.setdefault(sample.background, Counter())
            where["n"] += 1
            if "color" in fields:
                start = time.process_time()
                color = dominant_color(rgb)
                color_seconds.append(time.process_time() - start)
                ok = color.name == sample.color
                hits["color"] += ok
                where["color"] += ok
                if not ok:
                    color_misses.append(
                        {
                            "seed": sample.seed,
                            "item": sample.item,
                            "truth": sample.color,
                            "got": color.name,
                            "alternatives": color.alternatives,
                            "rgb": color.rgb,
                        }
                    )
            for tally in each_reader(index):
                tally.branded(sample, rgb)
        if tallies:
            for index, sample in enumerate(generate(split, unbranded, seed, wordmark=False)):
                rgb = np.asarray(sample.image)
                for tally in each_reader(index):
                    tally.unbranded(sample, rgb)
    finally:
        if tmp is not None:
            tmp.cleanup()

    first = next(iter(tallies.values()), None)
    report: dict = {
        "set": f"synthetic {split} split, {count} images (models_registry/synthetic.py)",
        "split": split,
        "count": count,
        "accuracy": {},
        # CPU time of this process (every thread: ONNX Runtime's own count too), not wall
        # time: the machine may be shared.
        "cpu_ms_per_image": {},
        "accuracy_by_background": {},
        "misses": {},
    }
    if "color" in fields:
        report["accuracy"]["color"] = hits["color"] / count
        report["cpu_ms_per_image"]["color"] = _summary(color_seconds)
        report["misses"]["color"] = color_misses
    if first is not None:
        report["accuracy"]["brand"] = first.hits["right"] / count
        report["cpu_ms_per_image"]["brand"] = _summary(first.seconds)
        report["misses"]["brand"] = first.misses
        report["ocr"] = {spec: tally.report(count, unbranded) for spec, tally in tallies.items()}
        figures = report["ocr"][next(iter(tallies))]
        report["brand"] = {key: figures[key] for key in ("top1_accuracy", "shown", "shown_rate", "shown_precision")}
        report["unbranded"] = {
            "count": unbranded,
            "false_brand_rate": figures["false_brand_rate"],
            "false_brands": first.false_brands,
        }
    for kind, c in sorted(by_background.items()):
        row = {"color": c["color"] / c["n"]} if "color" in fields else {}
        if first is not None:
            row["brand"] = first.by_background.get(kind, Counter())["right"] / c["n"]
        report["accuracy_by_background"][kind] = row
    if verbose:
        _print(report, count, unbranded)
    return report


def _print(report: dict, count: int, unbranded: int) -> None:
    print(f"{report['set']}")
    if "color" in report["accuracy"]:
        timing = report["cpu_ms_per_image"]["color"]
        print(
            f"  color  accuracy {report['accuracy']['color']:6.1%}"
            f"   {timing.get('mean', 0):7.1f} CPU ms/image mean, p95 {timing.get('p95', 0):7.1f} ms"
        )
    for spec, b in report.get("ocr", {}).items():
        precision = "-" if b["shown_precision"] is None else f"{b['shown_precision']:.1%}"
        timing, other = b["cpu_ms_per_image"], b["cpu_ms_per_image_unbranded"]
        print(f"  brand, OCR {spec}:")
        print(
            f"    accuracy {b['accuracy']:6.1%}, top-1 {b['top1_accuracy']:6.1%}, shown {b['shown']}/{count},"
            f" precision of the shown {precision}"
        )
        if unbranded:
            print(f"    brand read on {unbranded} photos without a wordmark: {b['false_brands']} (should be 0)")
        print(
            f"    CPU ms/image: {timing.get('mean', 0):.1f} mean, p95 {timing.get('p95', 0):.1f}"
            + (f"; without a wordmark {other.get('mean', 0):.1f} mean" if other else "")
        )
        print("    CPU ms/image by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in b["cpu_ms_per_stage"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fields", default="color,brand")
    parser.add_argument("--unbranded", type=int, default=50)
    parser.add_argument(
        "--ocr",
        nargs="+",
        default=list(DEFAULT_OCR),
        metavar="SPEC",
        help="OCR pipelines to compare, each pipeline[,key=value...]: two-pass (the default), "
        "rapidocr (as before), e.g. rapidocr,threads=2 or two-pass,early_exit=false",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    args = parser.parse_args(argv)
    report = evaluate_color_and_brand(
        args.split,
        args.count,
        seed=args.seed,
        fields=tuple(args.fields.split(",")),
        unbranded=args.unbranded,
        ocr=tuple(args.ocr),
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
