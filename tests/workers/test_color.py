import numpy as np
import pytest
from PIL import Image, ImageDraw

from workers.runtime.color import (
    NAMED_COLORS,
    ColorResult,
    delta_e_2000,
    dominant_color,
    lab_to_srgb,
    srgb_to_lab,
)


def _photo(item_rgb, background, shape="tshirt", size=(640, 480), shading=0.0):
    """An item silhouette on a background: a colour (plain) or a (wall, table) pair."""
    w, h = size
    image = Image.new("RGB", size, background if isinstance(background[0], int) else background[0])
    draw = ImageDraw.Draw(image)
    if not isinstance(background[0], int):
        draw.rectangle([0, int(h * 0.6), w, h], fill=background[1])
    mask = Image.new("L", size, 0)
    md = ImageDraw.Draw(mask)
    if shape == "tshirt":
        pts = [
            (0.28, 0.17),
            (0.40, 0.08),
            (0.60, 0.08),
            (0.72, 0.17),
            (0.92, 0.36),
            (0.82, 0.47),
            (0.73, 0.39),
            (0.73, 0.95),
            (0.27, 0.95),
            (0.27, 0.39),
            (0.18, 0.47),
            (0.08, 0.36),
        ]
        md.polygon([(x * w * 0.6 + w * 0.2, y * h) for x, y in pts], fill=255)
    else:  # mug: body and handle
        md.rectangle([w * 0.35, h * 0.3, w * 0.6, h * 0.8], fill=255)
        md.ellipse([w * 0.35, h * 0.75, w * 0.6, h * 0.85], fill=255)
        md.arc([w * 0.54, h * 0.4, w * 0.7, h * 0.65], 0, 360, fill=255, width=14)
    item = np.zeros((h, w, 3), np.float32) + np.array(item_rgb, np.float32)
    if shading:
        item *= 1.0 + shading * (np.linspace(-0.5, 0.5, w)[None, :, None])
    photo = np.asarray(image, np.float32)
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    return np.clip(photo * (1 - alpha) + item * alpha, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "rgb, lab",
    [
        ((255, 255, 255), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
        ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
        ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
        ((128, 128, 128), (53.5850, 0.0, 0.0)),
    ],
)
def test_srgb_converts_to_the_reference_cielab_values(rgb, lab):
    assert srgb_to_lab(np.array(rgb, np.uint8)) == pytest.approx(lab, abs=0.01)


def test_lab_converts_back_to_the_same_srgb():
    rgb = np.random.default_rng(0).integers(0, 256, (500, 3)).astype(np.uint8)
    assert np.array_equal(lab_to_srgb(srgb_to_lab(rgb)), rgb)


@pytest.mark.parametrize(
    "lab1, lab2, expected",  # Sharma, Wu and Dalal (2005), test data pairs 1, 7, 17, 25
    [
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ],
)
def test_ciede2000_matches_the_published_test_pairs(lab1, lab2, expected):
    assert float(delta_e_2000(np.array(lab1), np.array(lab2))) == pytest.approx(expected, abs=1e-4)


def test_the_palette_has_the_marketplace_color_names_in_lab():
    required = {
        "black",
        "white",
        "gray",
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "navy",
        "purple",
        "pink",
        "brown",
        "beige",
    }
    assert required <= set(NAMED_COLORS)
    for name, color in NAMED_COLORS.items():
        assert color.name == name
        assert color.lab == pytest.approx(tuple(srgb_to_lab(np.array(color.rgb, np.uint8))))


@pytest.mark.parametrize("name", sorted(NAMED_COLORS))
def test_each_palette_color_is_named_as_itself(name):
    rgb = NAMED_COLORS[name].rgb
    background = (40, 40, 40) if NAMED_COLORS[name].lab[0] > 50 else (235, 235, 235)
    assert dominant_color(_photo(rgb, background)).name == name


def test_it_finds_the_item_color_not_the_background():
    photo = _photo((200, 30, 35), (245, 245, 245), shading=0.3)
    result = dominant_color(photo)
    assert result.name == "red"
    assert result.confidence > 0.5


def test_a_white_mug_on_a_dark_table_is_white():
    photo = _photo((240, 240, 238), ((70, 62, 58), (60, 40, 25)), shape="mug")
    assert dominant_color(photo).name == "white"


def test_a_navy_item_is_navy_or_blue_in_its_alternatives():
    photo = _photo((28, 38, 88), (225, 220, 210), shading=0.2)
    result = dominant_color(photo)
    names = [name for name, _ in result.alternatives]
    assert result.name in {"navy", "blue"}
    assert "navy" in names


def test_alternatives_are_ranked_and_start_with_the_answer():
    result = dominant_color(_photo((240, 120, 25), (200, 220, 236)))
    assert isinstance(result, ColorResult)
    assert result.alternatives[0][0] == result.name
    scores = [score for _, score in result.alternatives]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 <= result.confidence <= 1.0
    assert len(result.rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in result.rgb)


def test_it_is_deterministic():
    rng = np.random.default_rng(3)
    photo = np.clip(
        _photo((115, 55, 150), (190, 206, 186)) + rng.normal(0, 6, (480, 640, 3)), 0, 255
    )
    photo = photo.astype(np.uint8)
    first = dominant_color(photo)
    assert all(dominant_color(photo.copy()) == first for _ in range(3))


def test_a_photo_that_is_all_item_is_named_by_its_middle():
    photo = np.full((300, 400, 3), (40, 145, 65), np.uint8)
    assert dominant_color(photo).name == "green"


def test_it_refuses_an_array_that_is_not_rgb():
    with pytest.raises(ValueError):
        dominant_color(np.zeros((10, 10), np.uint8))
