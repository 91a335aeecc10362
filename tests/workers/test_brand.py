from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from models_registry.synthetic import load_brands, render_sample
from workers.runtime.brand import (
    OCR_MODEL_FILES,
    BrandReader,
    BrandResult,
    canonical,
    copy_ocr_models,
    ocr_versions,
)


@pytest.fixture(scope="module")
def ocr_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ocr")
    copy_ocr_models(directory)
    return directory


@pytest.fixture(scope="module")
def reader(ocr_dir) -> BrandReader:
    return BrandReader(ocr_dir, load_brands())


def _mug_with(text: str | None) -> np.ndarray:
    image = Image.new("RGB", (640, 480), (236, 233, 226))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([170, 110, 470, 400], 20, fill=(35, 95, 200))
    draw.arc([430, 180, 540, 330], 0, 360, fill=(35, 95, 200), width=22)
    if text:
        draw.text(
            (320, 255), text, fill=(250, 250, 250), font=ImageFont.load_default(46), anchor="mm"
        )
    return np.asarray(image)


def test_copy_ocr_models_writes_the_three_shipped_models(ocr_dir):
    import rapidocr_onnxruntime

    shipped = Path(rapidocr_onnxruntime.__file__).parent / "models"
    for name, original in OCR_MODEL_FILES.items():
        assert (ocr_dir / name).read_bytes() == (shipped / original).read_bytes()
    assert sorted(p.name for p in ocr_dir.iterdir()) == ["cls.onnx", "det.onnx", "rec.onnx"]


def test_ocr_versions_names_the_engine_and_its_version():
    versions = ocr_versions()
    assert versions["engine"] == "rapidocr-onnxruntime"
    assert versions["rapidocr_onnxruntime"] == "1.4.4"
    assert set(versions["models"]) == set(OCR_MODEL_FILES)


def test_it_reads_the_brand_on_a_wordmark(reader):
    result = reader.read(_mug_with("KESTRELLE"))
    assert isinstance(result, BrandResult)
    assert result.name == "Kestrelle"
    assert result.confidence > 0.9
    assert result.alternatives[0][0] == "Kestrelle"
    assert any("KESTRELLE" in line.upper() for line in result.text)


def test_it_reads_the_brand_in_a_synthetic_listing_photo(reader):
    sample = render_sample("train", 3)
    assert reader.read(np.asarray(sample.image)).name == sample.brand


def test_an_image_with_no_text_returns_no_brand(reader):
    result = reader.read(_mug_with(None))
    assert result.name is None  # the OCR may still see a letter in the handle's "D"
    assert result.confidence < reader.threshold


def test_ocr_confusions_are_folded_before_matching(reader):
    assert canonical("N0RDV1K") == canonical("Nordvik")
    assert canonical("5ORRELBY") == canonical("sorrelby")
    assert canonical("Ta rnby  Works!") == canonical("ta rnby works")
    assert reader.match(["N0RDV1K"]).name == "Nordvik"
    assert reader.match(["ZEPHR1NE"]).name == "Zephrine"


def test_a_two_line_wordmark_is_matched_across_neighbouring_lines(reader):
    result = reader.match(["MAREN", "HOLT"], [0.99, 0.98])
    assert result.name == "Maren Holt"


def test_a_brand_inside_a_longer_line_is_found(reader):
    assert reader.match(["new kestrelle collection"]).name == "Kestrelle"
    assert reader.match(["BRINDLECROFTLONDON"]).name == "Brindlecroft"


def test_unrelated_text_matches_no_brand(reader):
    result = reader.match(["hello world", "100% COTTON", "SIZE M", "12,99"])
    assert result.name is None
    assert 0.0 <= result.confidence < reader.threshold


def test_it_refuses_a_directory_without_the_models(tmp_path):
    with pytest.raises(FileNotFoundError):
        BrandReader(tmp_path, ["Nordvik"])
