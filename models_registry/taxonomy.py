"""Marketplace taxonomy over the 1000 ImageNet-1k classes predicted by the reference backbone.

``data/imagenet_classes.txt`` holds the class names one per line in index order (the
Keras/pytorch-hub list, ``imagenet_classes.txt`` in the ``pytorch/hub`` repository, with underscores
turned into spaces). Class names are not unique: 264 "Cardigan" is the Welsh corgi dog while 474
"cardigan" is the garment, 134 "crane" is the bird while 517 is the machine, 638/639 are both
"maillot" (leotard, swimsuit). The map below is therefore keyed by index; each entry also carries
its class name, checked against the file.

Every class not listed in ``_SELLABLE`` maps to ``other``: all animals (0-397), vehicles, buildings
and places, weapons, food (924-965), landscapes (970-980), people (981-983) and plants and fungi
(984-998). A few classes that are scenes or contents are mapped to what such a photo shows for sale
(e.g. 967 "espresso" -> the cup, 454 "bookshop" -> books); these carry a comment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CATEGORIES",
    "CATEGORY_LABELS",
    "NUM_CLASSES",
    "TAXONOMY_VERSION",
    "category_matrix",
    "category_of",
    "imagenet_classes",
    "taxonomy_document",
]

TAXONOMY_VERSION = "1"
NUM_CLASSES = 1000
CLASSES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"

CATEGORY_LABELS: dict[str, str] = {
    "tops": "Tops, dresses & outerwear",
    "bottoms": "Bottoms",
    "shoes": "Shoes",
    "bags": "Bags & wallets",
    "accessories": "Accessories & jewellery",
    "watches": "Watches",
    "beauty": "Beauty & personal care",
    "electronics": "Computers & electronics",
    "phones": "Phones",
    "cameras": "Cameras & optics",
    "kitchen_tableware": "Kitchen & tableware",
    "home": "Home, furniture & appliances",
    "baby": "Baby",
    "toys": "Toys & games",
    "books": "Books & stationery",
    "sports": "Sports & outdoors",
    "musical_instruments": "Musical instruments",
    "tools": "Tools & DIY",
    "other": "Other / not a sellable item",
}
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_LABELS)

# category -> ((ImageNet index, class name), ...); everything else is "other"
_SELLABLE: dict[str, tuple[tuple[int, str], ...]] = {
    "tops": (
        (399, "abaya"),
        (400, "academic gown"),
        (411, "apron"),  # worn garment
        (445, "bikini"),
        (459, "brassiere"),
        (474, "cardigan"),  # the garment; 264 'Cardigan' is the corgi dog -> other
        (501, "cloak"),
        (568, "fur coat"),
        (578, "gown"),
        (610, "jersey"),
        (614, "kimono"),
        (617, "lab coat"),
        (638, "maillot"),  # leotard/tights
        (639, "maillot"),  # maillot, tank suit (one-piece swimsuit)
        (697, "pajama"),
        (735, "poncho"),
        (834, "suit"),
        (841, "sweatshirt"),
        (869, "trench coat"),
        (887, "vestment"),
    ),
    "bottoms": (
        (601, "hoopskirt"),
        (608, "jean"),
        (655, "miniskirt"),
        (689, "overskirt"),
        (775, "sarong"),
        (842, "swimming trunks"),
    ),
    "shoes": (
        (502, "clog"),
        (514, "cowboy boot"),
        (630, "Loafer"),
        (770, "running shoe"),
        (774, "sandal"),
        (788, "shoe shop"),  # photos of several shoes
    ),
    "bags": (
        (414, "backpack"),
        (636, "mailbag"),
        (748, "purse"),
        (893, "wallet"),
    ),
    "accessories": (
        (451, "bolo tie"),
        (452, "bonnet"),
        (457, "bow tie"),
        (464, "buckle"),
        (488, "chain"),  # jewellery chains
        (515, "cowboy hat"),
        (552, "feather boa"),
        (584, "hair slide"),
        (591, "handkerchief"),
        (626, "lighter"),
        (643, "mask"),
        (658, "mitten"),
        (667, "mortarboard"),
        (679, "necklace"),
        (796, "ski mask"),
        (806, "sock"),
        (808, "sombrero"),
        (824, "stole"),
        (
            836,
            "sunglass",
        ),  # ImageNet 'sunglass' (burning glass), in practice predicted for sunglasses
        (837, "sunglasses"),
        (879, "umbrella"),
        (906, "Windsor tie"),
    ),
    "watches": (
        (
            409,
            "analog clock",
        ),  # no analog-wristwatch class in ImageNet; wristwatch photos land here or on stopwatch
        (531, "digital watch"),
        (826, "stopwatch"),
    ),
    "beauty": (
        (419, "Band Aid"),
        (551, "face powder"),
        (585, "hair spray"),
        (589, "hand blower"),
        (629, "lipstick"),
        (631, "lotion"),
        (711, "perfume"),
        (720, "pill bottle"),
        (793, "shower cap"),
        (838, "sunscreen"),
        (903, "wig"),
    ),
    "electronics": (
        (481, "cassette"),
        (482, "cassette player"),
        (485, "CD player"),
        (508, "computer keyboard"),
        (527, "desktop computer"),
        (592, "hard disc"),
        (598, "home theater"),
        (605, "iPod"),
        (613, "joystick"),
        (620, "laptop"),
        (632, "loudspeaker"),
        (650, "microphone"),
        (662, "modem"),
        (664, "monitor"),  # computer monitor
        (673, "mouse"),  # computer mouse
        (681, "notebook"),  # notebook computer, not a paper notebook
        (688, "oscilloscope"),
        (713, "photocopier"),
        (742, "printer"),
        (745, "projector"),
        (754, "radio"),
        (761, "remote control"),
        (782, "screen"),  # CRT screen
        (810, "space bar"),
        (848, "tape player"),
        (851, "television"),
        (878, "typewriter keyboard"),
    ),
    "phones": (
        (487, "cellular telephone"),
        (528, "dial telephone"),
        (590, "hand-held computer"),  # PDA / smartphone-like device
        (707, "pay-phone"),  # telephone handset photos
    ),
    "cameras": (
        (447, "binoculars"),
        (622, "lens cap"),
        (633, "loupe"),
        (732, "Polaroid camera"),
        (759, "reflex camera"),
        (872, "tripod"),
    ),
    "kitchen_tableware": (
        (440, "beer bottle"),
        (441, "beer glass"),
        (469, "caldron"),
        (473, "can opener"),
        (499, "cleaver"),
        (503, "cocktail shaker"),
        (504, "coffee mug"),
        (505, "coffeepot"),
        (512, "corkscrew"),
        (521, "Crock Pot"),
        (533, "dishrag"),
        (534, "dishwasher"),
        (544, "Dutch oven"),
        (550, "espresso maker"),
        (567, "frying pan"),
        (572, "goblet"),
        (618, "ladle"),
        (647, "measuring cup"),
        (651, "microwave"),
        (659, "mixing bowl"),
        (666, "mortar"),
        (725, "pitcher"),
        (729, "plate rack"),
        (737, "pop bottle"),
        (760, "refrigerator"),
        (766, "rotisserie"),
        (773, "saltshaker"),
        (809, "soup bowl"),
        (813, "spatula"),
        (828, "strainer"),
        (849, "teapot"),
        (859, "toaster"),
        (868, "tray"),
        (891, "waffle iron"),
        (898, "water bottle"),
        (899, "water jug"),
        (901, "whiskey jug"),
        (907, "wine bottle"),
        (909, "wok"),
        (910, "wooden spoon"),
        (923, "plate"),  # dinner plate
        (966, "red wine"),  # glass of wine: the vessel is the sellable item
        (967, "espresso"),  # cup of espresso: the cup is the item
        (968, "cup"),
        (969, "eggnog"),  # glass of eggnog: the vessel is the item
    ),
    "home": (
        (412, "ashcan"),
        (423, "barber chair"),
        (426, "barometer"),
        (434, "bath towel"),
        (435, "bathtub"),
        (448, "birdhouse"),
        (453, "bookcase"),
        (462, "broom"),
        (463, "bucket"),
        (470, "candle"),
        (492, "chest"),
        (493, "chiffonier"),
        (495, "china cabinet"),
        (496, "Christmas stocking"),
        (526, "desk"),
        (530, "digital clock"),
        (532, "dining table"),
        (539, "doormat"),
        (545, "electric fan"),
        (548, "entertainment center"),
        (553, "file"),  # file cabinet
        (556, "fire screen"),
        (559, "folding chair"),
        (564, "four-poster"),
        (588, "hamper"),
        (604, "hourglass"),
        (606, "iron"),
        (619, "lampshade"),
        (637, "mailbox"),
        (648, "medicine chest"),
        (669, "mosquito net"),
        (674, "mousetrap"),
        (700, "paper towel"),
        (721, "pillow"),
        (731, "plunger"),
        (738, "pot"),  # flowerpot
        (741, "prayer rug"),
        (750, "quilt"),
        (753, "radiator"),
        (756, "rain barrel"),
        (765, "rocking chair"),
        (771, "safe"),
        (772, "safety pin"),
        (778, "scale"),
        (786, "sewing machine"),
        (789, "shoji"),
        (790, "shopping basket"),
        (794, "shower curtain"),
        (804, "soap dispenser"),
        (811, "space heater"),
        (818, "spotlight"),
        (827, "stove"),
        (831, "studio couch"),
        (840, "swab"),  # mop
        (844, "switch"),  # electric switch
        (846, "table lamp"),
        (855, "thimble"),
        (861, "toilet seat"),
        (876, "tub"),
        (882, "vacuum"),
        (883, "vase"),
        (892, "wall clock"),
        (894, "wardrobe"),
        (896, "washbasin"),
        (897, "washer"),
        (904, "window screen"),
        (905, "window shade"),
        (999, "toilet tissue"),
    ),
    "baby": (
        (431, "bassinet"),
        (443, "bib"),
        (516, "cradle"),
        (520, "crib"),
        (529, "diaper"),
        (680, "nipple"),
    ),
    "toys": (
        (398, "abacus"),
        (417, "balloon"),
        (611, "jigsaw puzzle"),
        (719, "piggy bank"),
        (723, "pinwheel"),
        (843, "swing"),
        (850, "teddy"),
        (865, "toyshop"),  # photos of several toys
        (870, "tricycle"),
    ),
    "books": (
        (418, "ballpoint"),
        (446, "binder"),
        (454, "bookshop"),  # shelves/stacks of books
        (549, "envelope"),
        (563, "fountain pen"),
        (623, "letter opener"),
        (624, "library"),  # shelves of books
        (709, "pencil box"),
        (710, "pencil sharpener"),
        (749, "quill"),
        (767, "rubber eraser"),
        (769, "rule"),
        (798, "slide rule"),
        (917, "comic book"),
        (918, "crossword puzzle"),
        (921, "book jacket"),
    ),
    "sports": (
        (416, "balance beam"),
        (422, "barbell"),
        (429, "baseball"),
        (430, "basketball"),
        (433, "bathing cap"),
        (444, "bicycle-built-for-two"),
        (456, "bow"),  # archery bow (457 is the bow tie)
        (472, "canoe"),  # sold as sporting goods
        (518, "crash helmet"),
        (522, "croquet ball"),
        (543, "dumbbell"),
        (560, "football helmet"),
        (574, "golf ball"),
        (602, "horizontal bar"),
        (615, "knee pad"),
        (635, "magnetic compass"),
        (671, "mountain bike"),
        (672, "mountain tent"),
        (693, "paddle"),
        (702, "parallel bars"),
        (722, "ping-pong ball"),
        (736, "pool table"),
        (746, "puck"),
        (747, "punching bag"),
        (752, "racket"),
        (758, "reel"),
        (768, "rugby ball"),
        (795, "ski"),
        (797, "sleeping bag"),
        (801, "snorkel"),
        (805, "soccer ball"),
        (852, "tennis ball"),
        (880, "unicycle"),
        (890, "volleyball"),
        (902, "whistle"),
    ),
    "musical_instruments": (
        (401, "accordion"),
        (402, "acoustic guitar"),
        (420, "banjo"),
        (432, "bassoon"),
        (486, "cello"),
        (494, "chime"),
        (513, "cornet"),
        (541, "drum"),
        (542, "drumstick"),  # drum stick, not food
        (546, "electric guitar"),
        (558, "flute"),
        (566, "French horn"),
        (577, "gong"),
        (579, "grand piano"),
        (593, "harmonica"),
        (594, "harp"),
        (641, "maraca"),
        (642, "marimba"),
        (683, "oboe"),
        (684, "ocarina"),
        (687, "organ"),
        (699, "panpipe"),
        (714, "pick"),  # plectrum (guitar pick)
        (776, "sax"),
        (822, "steel drum"),
        (875, "trombone"),
        (881, "upright"),  # upright piano
        (889, "violin"),
    ),
    "tools": (
        (428, "barrow"),
        (477, "carpenter's kit"),
        (491, "chain saw"),
        (507, "combination lock"),
        (587, "hammer"),
        (596, "hatchet"),
        (600, "hook"),
        (621, "lawn mower"),
        (677, "nail"),
        (695, "padlock"),
        (696, "paintbrush"),
        (726, "plane"),  # carpenter's plane, not an aircraft
        (740, "power drill"),
        (783, "screw"),
        (784, "screwdriver"),
        (792, "shovel"),
    ),
}


@lru_cache(maxsize=1)
def _classes() -> tuple[str, ...]:
    names = tuple(CLASSES_FILE.read_text(encoding="utf-8").splitlines())
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{CLASSES_FILE} has {len(names)} class names, expected {NUM_CLASSES}")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in index order."""
    return list(_classes())


@lru_cache(maxsize=1)
def _index_to_category() -> tuple[str, ...]:
    names = _classes()
    table = ["other"] * NUM_CLASSES
    assigned: dict[int, str] = {}
    for category, entries in _SELLABLE.items():
        if category not in CATEGORY_LABELS:
            raise ValueError(f"unknown category {category!r} in the ImageNet map")
        for index, name in entries:
            if names[index] != name:
                raise ValueError(
                    f"ImageNet class {index} is {names[index]!r}, the map says {name!r}"
                )
            if index in assigned:
                raise ValueError(
                    f"ImageNet class {index} mapped to both {assigned[index]} and {category}"
                )
            assigned[index] = category
            table[index] = category
    return tuple(table)


def category_of(index: int) -> str:
    """The marketplace category slug of ImageNet class ``index`` (0..999)."""
    if not 0 <= int(index) < NUM_CLASSES:
        raise IndexError(f"ImageNet class index {index} is out of range")
    return _index_to_category()[int(index)]


def category_matrix() -> np.ndarray:
    """float32 (1000, len(CATEGORIES)) one-hot rows, so that ``probs @ category_matrix()`` gives
    per-category probabilities in ``CATEGORIES`` order."""
    matrix = np.zeros((NUM_CLASSES, len(CATEGORIES)), dtype=np.float32)
    column = {slug: j for j, slug in enumerate(CATEGORIES)}
    for index, category in enumerate(_index_to_category()):
        matrix[index, column[category]] = 1.0
    return matrix


def taxonomy_document() -> dict:
    """JSON-able description of the taxonomy, to be stored in the model volume."""
    names = _classes()
    return {
        "version": TAXONOMY_VERSION,
        "source": "ImageNet-1k classes, in the index order of the Keras/pytorch-hub class list",
        "categories": [{"slug": slug, "label": CATEGORY_LABELS[slug]} for slug in CATEGORIES],
        "mapping": [
            {"index": index, "imagenet_class": names[index], "category": category}
            for index, category in enumerate(_index_to_category())
        ],
    }
