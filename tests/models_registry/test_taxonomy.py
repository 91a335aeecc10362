import json

import numpy as np
import pytest

from models_registry import taxonomy
from models_registry.taxonomy import (
    CATEGORIES,
    category_matrix,
    category_of,
    imagenet_classes,
    taxonomy_document,
)

REQUIRED_CATEGORIES = {
    "tops",
    "bottoms",
    "shoes",
    "bags",
    "accessories",
    "watches",
    "electronics",
    "phones",
    "cameras",
    "kitchen_tableware",
    "home",
    "toys",
    "books",
    "sports",
    "musical_instruments",
    "other",
}


def index_of(name: str) -> int:
    classes = imagenet_classes()
    assert classes.count(name) == 1, f"{name!r} is not a unique class name"
    return classes.index(name)


def test_it_lists_the_1000_imagenet_classes_in_index_order():
    classes = imagenet_classes()

    assert len(classes) == 1000
    assert classes[0] == "tench"
    assert classes[264] == "Cardigan"
    assert classes[474] == "cardigan"
    assert classes[967] == "espresso"
    assert classes[968] == "cup"
    assert classes[999] == "toilet tissue"
    assert all(name and name == name.strip() for name in classes)


def test_the_only_duplicate_class_names_are_crane_and_maillot():
    classes = imagenet_classes()
    duplicates = {name for name in classes if classes.count(name) > 1}

    assert duplicates == {"crane", "maillot"}
    assert [i for i, n in enumerate(classes) if n == "crane"] == [134, 517]
    assert [i for i, n in enumerate(classes) if n == "maillot"] == [638, 639]


def test_it_offers_the_required_categories_each_with_a_label():
    assert set(CATEGORIES) >= REQUIRED_CATEGORIES
    assert len(set(CATEGORIES)) == len(CATEGORIES)
    assert all(taxonomy.CATEGORY_LABELS[slug].strip() for slug in CATEGORIES)


def test_every_class_maps_to_a_known_category():
    assert all(category_of(i) in CATEGORIES for i in range(1000))


def test_every_category_has_at_least_one_class():
    used = {category_of(i) for i in range(1000)}

    assert used == set(CATEGORIES)


def test_the_curated_map_agrees_with_the_class_names():
    classes = imagenet_classes()

    for category, entries in taxonomy._SELLABLE.items():
        for index, name in entries:
            assert classes[index] == name
            assert category_of(index) == category


def test_the_corgi_is_not_a_top_but_the_cardigan_garment_is():
    assert category_of(264) == "other"
    assert category_of(474) == "tops"


def test_espresso_and_cup_are_kitchen_tableware():
    assert category_of(967) == "kitchen_tableware"
    assert category_of(968) == "kitchen_tableware"
    assert category_of(index_of("coffee mug")) == "kitchen_tableware"


def test_duplicate_names_are_mapped_by_index():
    assert category_of(134) == "other"  # crane, the bird
    assert category_of(517) == "other"  # crane, the machine
    assert category_of(638) == "tops"  # maillot, leotard
    assert category_of(639) == "tops"  # maillot, tank suit


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("digital watch", "watches"),
        ("stopwatch", "watches"),
        ("cellular telephone", "phones"),
        ("dial telephone", "phones"),
        ("laptop", "electronics"),
        ("notebook", "electronics"),  # notebook computer
        ("mouse", "electronics"),  # computer mouse
        ("reflex camera", "cameras"),
        ("running shoe", "shoes"),
        ("Loafer", "shoes"),
        ("jean", "bottoms"),
        ("jersey", "tops"),
        ("sweatshirt", "tops"),
        ("backpack", "bags"),
        ("purse", "bags"),
        ("sunglasses", "accessories"),
        ("necklace", "accessories"),
        ("teddy", "toys"),
        ("book jacket", "books"),
        ("comic book", "books"),
        ("soccer ball", "sports"),
        ("dumbbell", "sports"),
        ("acoustic guitar", "musical_instruments"),
        ("pick", "musical_instruments"),  # plectrum
        ("plane", "tools"),  # carpenter's plane, not an aircraft
        ("brass", "other"),  # memorial plaque, not an instrument
        ("table lamp", "home"),
        ("studio couch", "home"),
        ("lipstick", "beauty"),
        ("crib", "baby"),
    ],
)
def test_it_maps_typical_listing_objects(name, category):
    assert category_of(index_of(name)) == category


@pytest.mark.parametrize(
    ("first", "last", "what"),
    [
        (0, 397, "animals"),
        (924, 965, "food"),
        (970, 980, "landscapes"),
        (984, 998, "plants and fungi"),
    ],
)
def test_animals_food_landscapes_and_plants_are_other(first, last, what):
    assert {category_of(i) for i in range(first, last + 1)} == {"other"}, what


@pytest.mark.parametrize(
    "name", ["airliner", "sports car", "school bus", "container ship", "tractor", "moped"]
)
def test_vehicles_are_other(name):
    assert category_of(index_of(name)) == "other"


def test_it_rejects_an_index_outside_imagenet():
    with pytest.raises(IndexError):
        category_of(1000)
    with pytest.raises(IndexError):
        category_of(-1)


def test_the_category_matrix_turns_class_probabilities_into_category_probabilities():
    matrix = category_matrix()
    probs = np.random.default_rng(0).dirichlet(np.ones(1000), size=5).astype(np.float32)

    category_probs = probs @ matrix

    assert matrix.shape == (1000, len(CATEGORIES))
    assert set(np.unique(matrix)) == {0.0, 1.0}
    np.testing.assert_array_equal(matrix.sum(axis=1), np.ones(1000))
    np.testing.assert_allclose(category_probs.sum(axis=1), 1.0, rtol=1e-5)
    assert all(matrix[i, CATEGORIES.index(category_of(i))] == 1.0 for i in range(1000))


def test_the_taxonomy_document_is_json_and_describes_every_class():
    document = json.loads(json.dumps(taxonomy_document()))

    assert document["version"] == taxonomy.TAXONOMY_VERSION
    assert [c["slug"] for c in document["categories"]] == list(CATEGORIES)
    assert all(c["label"] for c in document["categories"])
    assert len(document["mapping"]) == 1000
    assert document["mapping"][474] == {
        "index": 474,
        "imagenet_class": "cardigan",
        "category": "tops",
    }
    assert document["mapping"][264]["category"] == "other"
