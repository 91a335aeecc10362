import io
import json

import numpy as np
import pytest
from PIL import Image

from models_registry import synthetic
from models_registry.synthetic import (
    CATEGORIES,
    ITEMS,
    SEEDS_PER_SPLIT,
    SPLITS,
    generate,
    load_brands,
    render_sample,
    write_split,
)
from workers.runtime.color import NAMED_COLORS


def test_the_same_seed_gives_the_same_bytes():
    first = [s.jpeg for s in generate("train", 2, seed=7)]
    again = [s.jpeg for s in generate("train", 2, seed=7)]
    assert first == again
    assert first[0] != first[1]


def test_train_and_test_draw_from_disjoint_seeds_backgrounds_and_fonts():
    train, test = SPLITS["train"], SPLITS["test"]
    train_seeds = range(train.first_seed, train.first_seed + SEEDS_PER_SPLIT)
    test_seeds = range(test.first_seed, test.first_seed + SEEDS_PER_SPLIT)
    assert train_seeds.stop <= test_seeds.start
    assert not set(train.backgrounds) & set(test.backgrounds)
    assert not set(train.fonts) & set(test.fonts)

    a = next(generate("train", 1))
    b = next(generate("test", 1))
    assert a.seed in train_seeds and b.seed in test_seeds
    assert a.background in train.backgrounds and a.font in train.fonts
    assert b.background in test.backgrounds and b.font in test.fonts
    assert a.jpeg != b.jpeg


def test_labels_are_valid():
    brands = set(load_brands())
    for sample in generate("test", 4, seed=11):
        assert sample.color in NAMED_COLORS
        assert sample.brand in brands
        assert sample.category == ITEMS[sample.item][0]
        assert sample.image.mode == "RGB"
        assert 640 <= max(sample.image.size) <= 1024
        decoded = Image.open(io.BytesIO(sample.jpeg))
        assert decoded.format == "JPEG" and decoded.size == sample.image.size
        assert json.loads(json.dumps(sample.label()))["color"] == sample.color


def test_items_cover_every_marketplace_category():
    from models_registry.taxonomy import CATEGORIES as TAXONOMY

    drawn = {category for category, _ in ITEMS.values()}
    assert drawn <= set(TAXONOMY)
    assert set(CATEGORIES) == drawn
    from tests.models_registry.test_taxonomy import REQUIRED_CATEGORIES

    assert drawn >= REQUIRED_CATEGORIES


def test_the_brand_list_holds_about_forty_distinct_names():
    lines = synthetic.BRANDS_FILE.read_text().splitlines()
    assert lines[0].startswith("#")
    brands = load_brands()
    assert 35 <= len(brands) <= 45
    assert len({b.lower() for b in brands}) == len(brands)
    assert any(" " in b for b in brands) and any(len(b) <= 5 for b in brands)


@pytest.mark.parametrize("font", SPLITS["train"].fonts + SPLITS["test"].fonts)
def test_every_font_renders_without_system_fonts(font):
    mask = synthetic._render_line("Kestrelle", font, 48)
    assert mask.shape[0] > 20 and mask.shape[1] > 100 and mask.max() == 255


def test_the_same_scene_can_be_drawn_without_its_wordmark():
    branded = render_sample("train", 5)
    plain = render_sample("train", 5, wordmark=False)
    assert plain.brand == "" and branded.brand
    assert (plain.item, plain.color, plain.background) == (
        branded.item,
        branded.color,
        branded.background,
    )
    assert not np.array_equal(np.asarray(plain.image), np.asarray(branded.image))


def test_a_seed_outside_the_split_range_is_refused():
    with pytest.raises(ValueError):
        render_sample("train", SPLITS["test"].first_seed)
    with pytest.raises(ValueError):
        next(generate("test", 2, seed=SEEDS_PER_SPLIT - 1))
    with pytest.raises(ValueError):
        next(generate("validation", 1))


def test_write_split_writes_jpegs_and_a_labels_file(tmp_path):
    labels = write_split(tmp_path, "test", 2)
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert Image.open(tmp_path / row["file"]).format == "JPEG"
        assert row["split"] == "test" and row["category"] in CATEGORIES


def test_the_command_line_writes_a_split(tmp_path, capsys):
    assert synthetic.main(["--split", "train", "--count", "1", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.jpg"))) == 1
    assert "labels.jsonl" in capsys.readouterr().out
