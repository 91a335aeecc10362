"""Brand from the wordmark in a listing photo: OCR, then fuzzy matching to a brand list.

OCR uses the PP-OCRv4 detection and recognition models shipped in the
``rapidocr_onnxruntime`` wheel; the model-volume builder copies them (and the direction
classifier) into the version directory with ``copy_ocr_models`` so a volume is
self-contained, and ``BrandReader`` loads them from there. Nothing is downloaded, ever.

The models run on ONNX Runtime sessions of our own, with RapidOCR's post-processing (DB
boxes, CTC decoding) but not its pipeline, which costs 4x more CPU on the synthetic photos
with one thread, 8x as it was run before with two (docs/PERFORMANCE.md, "OCR cost"):

- Detection in two passes. The coarse pass sees the whole photo small: long side 384 px,
  but never below half the photo's own resolution, so that a 16 px wordmark is still
  8 px there. Only where it saw something text-like (a peak of its text probability) does
  the fine pass look again, at each such region on its own (scaled to at most 320 px on
  its long side, never enlarged: a small region at the photo's resolution), which boxes
  a wordmark the coarse pass saw too small to box, or merged with the item around it.
- The lines the coarse pass boxed cleanly are read first; when they already name a brand,
  the fine pass is skipped. Without any text-like peak nothing is recognised at all.
- Each line is recognised alone at its own width (the recogniser's cost grows with the
  width; RapidOCR pads a batch to at least 320 px), at most ``MAX_LINES`` per photo.
- No direction classifier: on the evaluation sets (650 synthetic photos, 4 real ones) it
  never changed a brand shown.
- One intra-op thread per session: the worker calls ``read`` from many threads at once,
  and a second thread spins after every call (about 40 ms of CPU each time here).

``pipeline="rapidocr"`` is RapidOCR's own pipeline as it ran before (full resolution,
classifier, batched recognition), kept for comparisons only.

Matching works on a canonical form of both sides (case, accents, punctuation and
spacing removed; characters OCR confuses folded together: 0/o, 1/i/l/|, 5/$/s, 8/b,
rn/m, vv/w), over every line, every run of up to three words in a line, and each
pair of neighbouring lines (a two-line wordmark).
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# file name in a model volume -> file name inside the rapidocr_onnxruntime wheel
OCR_MODEL_FILES = {
    "det.onnx": "ch_PP-OCRv4_det_infer.onnx",
    "rec.onnx": "ch_PP-OCRv4_rec_infer.onnx",
    "cls.onnx": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}


@dataclass(frozen=True)
class BrandResult:
    name: str | None
    confidence: float
    alternatives: list[tuple[str, float]]
    text: list[str]


def _package_models_dir() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).resolve().parent / "models"


def copy_ocr_models(dest: Path) -> list[Path]:
    """Copy the OCR models shipped in the installed rapidocr_onnxruntime into
    ``dest`` as det.onnx, rec.onnx and cls.onnx; returns the written paths."""
    source = _package_models_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for target, shipped in OCR_MODEL_FILES.items():
        src = source / shipped
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing from the installed rapidocr_onnxruntime")
        written.append(Path(shutil.copyfile(src, dest / target)))
    return written


def ocr_versions() -> dict[str, object]:
    """What produced the OCR models and runs them, for a volume's manifest."""
    return {
        "engine": "rapidocr-onnxruntime",
        "rapidocr_onnxruntime": metadata.version("rapidocr-onnxruntime"),
        "onnxruntime": metadata.version("onnxruntime"),
        "models": dict(OCR_MODEL_FILES),
    }


_CONFUSIONS = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "5": "s", "$": "s", "8": "b"})
_NOT_WORD = re.compile(r"[^0-9a-z$|]+")


def normalize(text: str) -> str:
    """Lower case, no accents, words separated by single spaces, no punctuation."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " ".join(_NOT_WORD.sub(" ", text).split())


def canonical(text: str) -> str:
    """``normalize`` with the characters OCR confuses folded together, so that
    "N0RDV1K" and "Nordvik" compare equal."""
    folded = normalize(text).translate(_CONFUSIONS)
    return folded.replace("rn", "m").replace("vv", "w")


def candidates(lines: Sequence[str]) -> list[str]:
    """Strings worth comparing with a brand name: each line, each run of up to three
    of its words, and each pair of neighbouring lines; spaced and unspaced."""
    words_per_line = [canonical(line).split() for line in lines]
    out: set[str] = set()
    for words in words_per_line:
        for n in range(1, min(3, len(words)) + 1):
            for i in range(len(words) - n + 1):
                out.add(" ".join(words[i : i + n]))
        if words:
            out.add(" ".join(words))
    for first, second in zip(words_per_line, words_per_line[1:], strict=False):
        if first and second:
            out.add(" ".join(first[-2:] + second[:2]))
            out.add(first[-1] + " " + second[0])
    out |= {c.replace(" ", "") for c in out}
    return sorted(c for c in out if c)


# --- OCR ------------------------------------------------------------------------------------

COARSE_SIDE = 384  # the coarse pass: the photo's long side at least this many pixels ...
COARSE_MIN_SCALE = 0.5  # ... and at least this fraction of its own resolution
FINE_SIDE = 320  # the fine pass: a region's long side at most this (never enlarged)
REGION_THRESHOLD = 0.1  # text probability that makes a pixel part of a region ...
REGION_PEAK = 0.5  # ... of a region that peaks at least here somewhere
REGION_MIN_AREA = 4  # coarse-map pixels
MAX_REGIONS = 8  # the largest, if the coarse pass saw more
LINE_ASPECT = 2.0  # a coarse box this elongated is a line of text; squarer ones are looked at again
LINE_MIN_HEIGHT = 4.0  # coarse-map pixels
MAX_LINES = 10  # the largest boxes of a photo are read, at most this many
TEXT_SCORE = 0.5  # a recognised line below this score is dropped (RapidOCR's default)
REC_HEIGHT = 48  # the recogniser's input height

Rect = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in photo pixels


def detection_size(height: int, width: int, long_side: float) -> tuple[int, int]:
    """(height, width) the detector sees a height x width image at: scaled so that its
    long side is at most ``long_side`` (never enlarged), each side rounded to a multiple
    of 32, the network's stride."""
    scale = min(1.0, long_side / max(height, width))
    return max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32)


def coarse_side(height: int, width: int) -> float:
    """The long side of the coarse pass for a height x width photo."""
    return max(COARSE_SIDE, COARSE_MIN_SCALE * max(height, width))


def text_regions(prob: np.ndarray, height: int, width: int, *, max_regions: int = MAX_REGIONS) -> list[Rect]:
    """Where a coarse probability map saw something text-like, as rectangles of the
    height x width photo: each connected area above ``REGION_THRESHOLD`` that peaks at
    ``REGION_PEAK`` or more, with a margin (the coarse map may show only part of a line,
    so more along the line than across it), overlapping rectangles merged, the largest
    ``max_regions`` kept."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((prob > REGION_THRESHOLD).astype(np.uint8))
    sx, sy = width / prob.shape[1], height / prob.shape[0]
    rects = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < REGION_MIN_AREA or prob[y : y + h, x : x + w][labels[y : y + h, x : x + w] == i].max() < REGION_PEAK:
            continue
        x0, y0, x1, y1 = x * sx, y * sy, (x + w) * sx, (y + h) * sy
        short = min(x1 - x0, y1 - y0)
        mx, my = 16 + min(64.0, 2 * short), 16 + min(64.0, short)
        rects.append((max(0, int(x0 - mx)), max(0, int(y0 - my)),
                      min(width, math.ceil(x1 + mx)), min(height, math.ceil(y1 + my))))
    rects = merge_overlapping(rects)
    rects.sort(key=lambda r: (r[2] - r[0]) * (r[3] - r[1]), reverse=True)
    return rects[:max_regions]


def merge_overlapping(rects: Iterable[Rect]) -> list[Rect]:
    """The rectangles with every overlapping pair replaced by their bounding rectangle."""
    out = list(rects)
    i = 0
    while i < len(out):
        a = out[i]
        for j in range(i + 1, len(out)):
            b = out[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                del out[j]
                break
        else:
            i += 1  # nothing overlaps out[i] any more; a merge looks at out[i] again
    return out


def box_size(box: np.ndarray) -> tuple[float, float]:
    """(width, height) of a clockwise quadrilateral starting at its top-left corner."""
    return float(np.linalg.norm(box[0] - box[1])), float(np.linalg.norm(box[0] - box[3]))


def is_line(box: np.ndarray, scale: float) -> bool:
    """Whether a coarse box (photo pixels; the coarse map at ``scale`` of the photo) is
    shaped like a line of text rather than a block, and tall enough there to trust."""
    width, height = box_size(box)
    short, long = min(width, height), max(width, height)
    return long >= LINE_ASPECT * short and short * scale >= LINE_MIN_HEIGHT


def reading_order(boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom, then left to right within 10 px (RapidOCR's order, so that the
    lines of a two-line wordmark stay neighbours)."""
    out = sorted(boxes, key=lambda b: (float(b[0][1]), float(b[0][0])))
    for i in range(len(out) - 1):
        for j in range(i, -1, -1):
            if abs(out[j + 1][0][1] - out[j][0][1]) < 10 and out[j + 1][0][0] < out[j][0][0]:
                out[j], out[j + 1] = out[j + 1], out[j]
            else:
                break
    return out


def _clockwise(points: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0])]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1])]
    top_right, bottom_right = right[np.argsort(right[:, 1])]
    return np.array([top_left, top_right, bottom_right, bottom_left], np.float32)


def line_image(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box cut out of the photo and straightened (upright when it is much taller
    than wide), as RapidOCR does."""
    width, height = (int(v) for v in box_size(box))
    width = max(width, int(np.linalg.norm(box[2] - box[3])))
    height = max(height, int(np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    out = cv2.warpPerspective(rgb, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(out) if out.shape[0] >= 1.5 * out.shape[1] else out


def recognition_width(height: int, width: int) -> int:
    """The width of a line image scaled to the recogniser's height: its own, not padded."""
    return max(1, math.ceil(REC_HEIGHT * width / height))


def _network_input(rgb: np.ndarray) -> np.ndarray:
    """NCHW float32 in [-1, 1], channels in OpenCV's BGR order as the models were trained."""
    return (rgb[..., ::-1].astype(np.float32) * (2 / 255.0) - 1.0).transpose(2, 0, 1)[None]


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort  # heavy: imported where used

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Inputs change shape on every call; with the arena each of the worker's threads
    # would keep its largest intermediates for good (RapidOCR turns it off too).
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Stages:
    """Adds the process's CPU seconds per stage to a dict, for measurements; without a
    dict it does nothing."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.into is None:
            yield
            return
        started = time.process_time()
        try:
            yield
        finally:
            self.into[name] = self.into.get(name, 0.0) + time.process_time() - started


class BrandReader:
    """Loads the OCR models once; ``read`` is then called per photo, from any thread."""

    def __init__(
        self,
        ocr_dir: Path,
        brands: Iterable[str],
        *,
        threshold: float = 0.75,
        top_k: int = 3,
        pipeline: str = "two-pass",
        threads: int = 1,
        early_exit: bool = True,
    ) -> None:
        if pipeline not in ("two-pass", "rapidocr"):
            raise ValueError(f"unknown OCR pipeline {pipeline!r}")
        ocr_dir = Path(ocr_dir)
        needed = OCR_MODEL_FILES if pipeline == "rapidocr" else ("det.onnx", "rec.onnx")
        paths = {name: ocr_dir / name for name in needed}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"OCR model files missing: {', '.join(missing)}")
        self.brands = [b.strip() for b in brands if b.strip()]
        if not self.brands:
            raise ValueError("the brand list is empty")
        self._canonical = [canonical(b) for b in self.brands]
        self._compact = [c.replace(" ", "") for c in self._canonical]
        self.threshold = threshold
        self.top_k = top_k
        self.pipeline = pipeline
        self.early_exit = early_exit
        if pipeline == "rapidocr":
            self._rapidocr = _TimedRapidOCR(paths, threads)
            return
        # RapidOCR's post-processing with its default settings, on our own sessions.
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        self._det = _session(paths["det.onnx"], threads)
        self._rec = _session(paths["rec.onnx"], threads)
        self._det_input = self._det.get_inputs()[0].name
        self._rec_input = self._rec.get_inputs()[0].name
        self._boxes_of = DBPostProcess(
            thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6, use_dilation=True, score_mode="fast"
        )
        characters = self._rec.get_modelmeta().custom_metadata_map["character"].splitlines()
        self._decode = CTCLabelDecode(character=characters)

    def read(self, rgb: np.ndarray, *, stages: dict[str, float] | None = None) -> BrandResult:
        """The brand in an RGB uint8 photo; ``stages``, if given, gets the CPU seconds of
        each stage added to it."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
        clock = _Stages(stages)
        if self.pipeline == "rapidocr":
            lines = self._rapidocr(rgb, clock)
            with clock("match"):
                return self.match([text for text, _ in lines], [score for _, score in lines])
        height, width = rgb.shape[:2]
        with clock("detect (coarse)"):
            prob = self._detect(rgb, coarse_side(height, width))
            regions = text_regions(prob, height, width)
            if not regions:  # nothing text-like anywhere: nothing to recognise
                return self.match([])
            scale = prob.shape[1] / width
            line_boxes = [b for b in self._boxes(prob, height, width) if is_line(b, scale)]
        if self.early_exit and line_boxes:
            lines = self._recognize(rgb, line_boxes, clock)
            with clock("match"):
                result = self.match([text for text, _ in lines], [score for _, score in lines])
            if result.name is not None:
                return result
        with clock("detect (fine)"):
            boxes: list[np.ndarray] = []
            for left, top, right, bottom in regions:
                region = rgb[top:bottom, left:right]
                boxes += self._boxes(self._detect(region, FINE_SIDE), bottom - top, right - left, left, top)
        lines = self._recognize(rgb, boxes, clock)
        with clock("match"):
            return self.match([text for text, _ in lines], [score for _, score in lines])

    def _detect(self, rgb: np.ndarray, long_side: float) -> np.ndarray:
        """The detector's text probability map of ``rgb`` seen at ``long_side``."""
        height, width = detection_size(*rgb.shape[:2], long_side)
        if (height, width) != rgb.shape[:2]:
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        return self._det.run(None, {self._det_input: _network_input(rgb)})[0][0, 0]

    def _boxes(self, prob: np.ndarray, height: int, width: int, left: int = 0, top: int = 0) -> list[np.ndarray]:
        """Text boxes of a probability map, in the pixels of the height x width image it
        was computed for, shifted by (left, top); RapidOCR's filter of degenerate ones."""
        out = []
        for points in self._boxes_of(prob[None, None], (height, width))[0]:
            box = _clockwise(np.asarray(points, np.float32))
            box[:, 0] = np.clip(box[:, 0], 0, width - 1).astype(np.int32)
            box[:, 1] = np.clip(box[:, 1], 0, height - 1).astype(np.int32)
            box_width, box_height = box_size(box)
            if int(box_width) > 3 and int(box_height) > 3:
                out.append(box + np.array([left, top], np.float32))
        return out

    def _recognize(self, rgb: np.ndarray, boxes: Sequence[np.ndarray], clock: _Stages) -> list[tuple[str, float]]:
        """Text and score of the largest ``MAX_LINES`` boxes, in reading order."""
        with clock("recognize"):
            largest = sorted(boxes, key=lambda b: box_size(b)[0] * box_size(b)[1], reverse=True)[:MAX_LINES]
            lines = []
            for box in reading_order(largest):
                image = line_image(rgb, box)
                image = cv2.resize(image, (recognition_width(*image.shape[:2]), REC_HEIGHT))
                text, score = self._decode(self._rec.run(None, {self._rec_input: _network_input(image)})[0])[0][:2]
                if score >= TEXT_SCORE:
                    lines.append((str(text), float(score)))
            return lines

    def match(self, lines: Sequence[str], scores: Sequence[float] | None = None) -> BrandResult:
        """Best brands for OCR lines (``scores``: the OCR's confidence per line)."""
        from rapidfuzz import fuzz

        scores = list(scores) if scores is not None else [1.0] * len(lines)
        # Each candidate keeps the OCR confidence of its line; one spanning two
        # neighbouring lines (a two-line wordmark) keeps the lower of the two.
        weights: dict[str, float] = {}
        for index, line in enumerate(lines):
            for cand in candidates([line]):
                weights[cand] = max(weights.get(cand, 0.0), scores[index])
        for index in range(len(lines) - 1):
            pair_conf = min(scores[index], scores[index + 1])
            for cand in candidates(lines[index : index + 2]):
                weights[cand] = max(weights.get(cand, 0.0), pair_conf)

        best = np.zeros(len(self.brands))
        for cand, conf in weights.items():
            weight = 0.75 + 0.25 * conf
            compact = " " not in cand
            for j, target in enumerate(self._compact if compact else self._canonical):
                s = fuzz.ratio(cand, target) / 100.0
                if compact and len(target) >= 6 and len(cand) > len(target):
                    # The brand inside a longer run of letters (OCR ran it together
                    # with a neighbouring word).
                    s = max(s, 0.9 * fuzz.partial_ratio(target, cand) / 100.0)
                best[j] = max(best[j], s * weight)
        order = np.argsort(-best, kind="stable")
        alternatives = [
            (self.brands[i], round(float(best[i]), 4)) for i in order[: self.top_k] if best[i] > 0
        ]
        top = int(order[0])
        name = self.brands[top] if best[top] >= self.threshold else None
        return BrandResult(
            name=name, confidence=float(best[top]), alternatives=alternatives, text=list(lines)
        )


class _TimedRapidOCR:
    """RapidOCR's own pipeline, as ``BrandReader`` ran it before the two passes (for
    comparisons), with the CPU time of its detector, classifier and recogniser."""

    def __init__(self, paths: dict[str, Path], threads: int) -> None:
        from rapidocr_onnxruntime import RapidOCR  # heavy: imported where used

        self._ocr = RapidOCR(
            det_model_path=str(paths["det.onnx"]),
            rec_model_path=str(paths["rec.onnx"]),
            cls_model_path=str(paths["cls.onnx"]),
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
            det_limit_type="max",
            det_limit_side_len=960,
            print_verbose=False,
        )
        self._clock = threading.local()
        for attribute, stage in (("text_det", "detect"), ("text_cls", "classify"), ("text_rec", "recognize")):
            setattr(self._ocr, attribute, self._timed(getattr(self._ocr, attribute), stage))

    def _timed(self, step: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._clock.current(stage):
                return step(*args, **kwargs)

        return timed

    def __call__(self, rgb: np.ndarray, clock: _Stages) -> list[tuple[str, float]]:
        self._clock.current = clock
        result, _ = self._ocr(np.ascontiguousarray(rgb[..., ::-1]))  # RapidOCR takes OpenCV's BGR
        return [(str(text), float(score)) for _box, text, score in (result or [])]
