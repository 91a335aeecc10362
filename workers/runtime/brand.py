"""Brand from the wordmark in a listing photo: OCR, then fuzzy matching to a brand list.

OCR is RapidOCR (PP-OCRv4 detection and recognition, PP-OCR mobile angle classifier)
on ONNX Runtime. The three ONNX files are shipped inside the ``rapidocr_onnxruntime``
wheel; the model-volume builder copies them into the version directory with
``copy_ocr_models`` so a volume is self-contained, and ``BrandReader`` loads them
from there. Nothing is downloaded, ever.

Matching works on a canonical form of both sides (case, accents, punctuation and
spacing removed; characters OCR confuses folded together: 0/o, 1/i/l/|, 5/$/s, 8/b,
rn/m, vv/w), over every line, every run of up to three words in a line, and each
pair of neighbouring lines (a two-line wordmark).
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

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


class BrandReader:
    """Loads the OCR models once; ``read`` is then called per photo."""

    def __init__(
        self,
        ocr_dir: Path,
        brands: Iterable[str],
        *,
        threads: int = 2,
        threshold: float = 0.75,
        det_limit_side_len: int = 960,
        top_k: int = 3,
    ) -> None:
        from rapidocr_onnxruntime import RapidOCR  # heavy: imported where used

        ocr_dir = Path(ocr_dir)
        paths = {name: ocr_dir / name for name in OCR_MODEL_FILES}
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
        self._ocr = RapidOCR(
            det_model_path=str(paths["det.onnx"]),
            rec_model_path=str(paths["rec.onnx"]),
            cls_model_path=str(paths["cls.onnx"]),
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
            det_limit_type="max",
            det_limit_side_len=det_limit_side_len,
            print_verbose=False,
        )

    def ocr(self, rgb: np.ndarray) -> list[tuple[str, float]]:
        """Text lines the OCR reads in an RGB uint8 image, top to bottom, with scores."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # RapidOCR takes arrays as OpenCV BGR
        result, _ = self._ocr(bgr)
        return [(str(text), float(score)) for _box, text, score in (result or [])]

    def read(self, rgb: np.ndarray) -> BrandResult:
        lines = self.ocr(rgb)
        return self.match([text for text, _ in lines], [score for _, score in lines])

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
