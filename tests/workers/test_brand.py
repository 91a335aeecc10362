import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from models_registry.synthetic import load_brands, render_sample
from workers.runtime import brand
from workers.runtime.brand import (
    OCR_MODEL_FILES,
    BrandReader,
    BrandResult,
    canonical,
    coarse_side,
    copy_ocr_models,
    detection_size,
    is_line,
    line_image,
    merge_overlapping,
    ocr_versions,
    reading_order,
    recognition_width,
    text_regions,
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


def test_the_two_passes_need_no_direction_classifier_but_rapidocr_does(ocr_dir, tmp_path):
    for name in ("det.onnx", "rec.onnx"):
        shutil.copyfile(ocr_dir / name, tmp_path / name)
    assert BrandReader(tmp_path, ["Nordvik"]).pipeline == "two-pass"
    with pytest.raises(FileNotFoundError, match="cls.onnx"):
        BrandReader(tmp_path, ["Nordvik"], pipeline="rapidocr")
    with pytest.raises(ValueError, match="unknown OCR pipeline"):
        BrandReader(ocr_dir, ["Nordvik"], pipeline="tesseract")


# --- the two detection passes -----------------------------------------------------------------


def _square(box: list[tuple[float, float]]) -> np.ndarray:
    return np.array(box, np.float32)


def test_the_detector_sees_a_photo_at_most_at_the_long_side_asked_in_multiples_of_32():
    assert detection_size(768, 1024, 512) == (384, 512)
    assert detection_size(600, 400, 384) == (384, 256)
    assert detection_size(300, 451, 384) == (256, 384)  # 255.4 rounds to 256
    assert detection_size(300, 451, 1000) == (288, 448)  # never enlarged, only rounded
    assert detection_size(10, 2000, 320) == (32, 320)  # at least one stride


def test_the_coarse_pass_keeps_at_least_half_of_a_large_photos_resolution():
    assert coarse_side(480, 640) == brand.COARSE_SIDE
    assert coarse_side(768, 1024) == 512  # a 16 px wordmark is still 8 px
    assert coarse_side(1024, 700) == 512


def test_a_region_is_where_the_text_probability_peaks_with_a_margin_in_photo_pixels():
    prob = np.zeros((100, 200), np.float32)
    prob[40:50, 20:60] = 0.2  # a faint area that peaks ...
    prob[44:46, 30:40] = 0.9  # ... here
    prob[80:90, 150:160] = 0.3  # faint everywhere: no peak, no region
    prob[5, 5] = 0.95  # a speck
    (region,) = text_regions(prob, 400, 800)  # the photo is 4x the map
    left, top, right, bottom = region
    # the area is x 80..240, y 160..200 in the photo; its short side of 40 px gives a
    # margin of 16 + min(64, 2 x 40) along the line and 16 + min(64, 40) across it
    assert (left, top, right, bottom) == (0, 104, 320, 256)


def test_regions_are_clipped_to_the_photo_and_the_largest_are_kept():
    prob = np.zeros((100, 100), np.float32)
    prob[0:4, 0:4] = 1.0  # photo 0..40: margins 80 and 56, clipped at the corner
    prob[50:70, 50:90] = 1.0  # photo x 500..900, y 500..700: margins 80 and 80
    prob[90:92, 10:12] = 1.0  # photo 100..120 x 900..920: margins 56 and 36
    assert text_regions(prob, 1000, 1000) == [(420, 420, 980, 780), (44, 864, 176, 956), (0, 0, 120, 96)]
    assert text_regions(prob, 1000, 1000, max_regions=2) == [(420, 420, 980, 780), (44, 864, 176, 956)]


def test_overlapping_rectangles_merge_also_through_a_chain():
    merged = merge_overlapping([(0, 0, 10, 10), (20, 0, 30, 10), (8, 0, 22, 5), (40, 40, 50, 50)])
    assert sorted(merged) == [(0, 0, 30, 10), (40, 40, 50, 50)]
    assert merge_overlapping([(0, 0, 10, 10), (10, 0, 20, 10)]) == [(0, 0, 10, 10), (10, 0, 20, 10)]  # touching
    assert merge_overlapping([]) == []


def test_a_line_is_elongated_and_tall_enough_in_the_coarse_map():
    line = _square([(0, 0), (100, 0), (100, 20), (0, 20)])
    assert is_line(line, scale=0.5)
    assert not is_line(line, scale=0.1)  # 2 px tall at the coarse scale: not to be trusted
    block = _square([(0, 0), (100, 0), (100, 80), (0, 80)])
    assert not is_line(block, scale=1.0)  # an item the detector took for a sign
    upright = _square([(0, 0), (20, 0), (20, 100), (0, 100)])
    assert is_line(upright, scale=0.5)


def test_boxes_are_read_top_to_bottom_and_left_to_right_within_a_line():
    def at(x, y):
        return _square([(x, y), (x + 10, y), (x + 10, y + 5), (x, y + 5)])

    boxes = [at(50, 100), at(200, 12), at(10, 10), at(0, 60)]
    assert [tuple(b[0]) for b in reading_order(boxes)] == [(10, 10), (200, 12), (0, 60), (50, 100)]


def test_a_line_is_recognised_at_its_own_width_and_straightened_when_upright():
    assert recognition_width(24, 120) == 240
    assert recognition_width(96, 10) == 5
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[50:150, 90:110] = 255
    tall = line_image(rgb, _square([(90, 50), (110, 50), (110, 150), (90, 150)]))
    assert tall.shape[:2] == (20, 100)
    wide = line_image(rgb, _square([(40, 90), (160, 90), (160, 110), (40, 110)]))
    assert wide.shape[:2] == (20, 120)


def test_it_reads_the_brand_of_a_held_out_synthetic_photo_and_none_without_its_wordmark(reader):
    sample = render_sample("test", 1_000_002)
    assert reader.read(np.asarray(sample.image)).name == sample.brand
    blank = render_sample("test", 1_000_002, wordmark=False)
    assert reader.read(np.asarray(blank.image)).name is None


def test_a_photo_without_text_costs_one_coarse_detection_and_nothing_else(reader):
    stages: dict[str, float] = {}
    result = reader.read(np.full((480, 640, 3), 200, np.uint8), stages=stages)
    assert result.name is None and result.text == []
    assert list(stages) == ["detect (coarse)"]


def test_a_wordmark_read_in_the_coarse_pass_skips_the_fine_pass(reader):
    stages: dict[str, float] = {}
    assert reader.read(_mug_with("KESTRELLE"), stages=stages).name == "Kestrelle"
    assert "detect (fine)" not in stages and "recognize" in stages


@pytest.mark.parametrize(
    ("split", "seed"),
    [
        ("train", 72),  # the coarse pass takes the teddy bear with the wordmark for one block of text
        ("test", 1_000_025),  # a 16 px wordmark, too small to box at the coarse scale
    ],
)
def test_the_fine_pass_reads_what_the_coarse_pass_could_not_box(reader, split, seed):
    sample = render_sample(split, seed)
    stages: dict[str, float] = {}
    assert reader.read(np.asarray(sample.image), stages=stages).name == sample.brand
    assert "detect (fine)" in stages


def test_without_the_early_exit_the_fine_pass_reads_the_same_brand(ocr_dir):
    thorough = BrandReader(ocr_dir, load_brands(), early_exit=False)
    stages: dict[str, float] = {}
    assert thorough.read(_mug_with("KESTRELLE"), stages=stages).name == "Kestrelle"
    assert "detect (fine)" in stages


def test_threads_reading_at_once_get_what_one_thread_gets(reader):
    photos = [np.asarray(render_sample("train", seed).image) for seed in (3, 5)] + [_mug_with("NORDVIK")]
    alone = [reader.read(photo) for photo in photos]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(reader.read, photos * 4))
    assert together == alone * 4


def test_rapidocr_as_before_reads_the_brand_too_with_its_stages_timed(ocr_dir):
    before = BrandReader(ocr_dir, load_brands(), pipeline="rapidocr", threads=2)
    stages: dict[str, float] = {}
    result = before.read(_mug_with("KESTRELLE"), stages=stages)
    assert result.name == "Kestrelle"
    assert {"detect", "classify", "recognize", "match"} <= set(stages)
