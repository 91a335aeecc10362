"""Dominant colour of the item in a listing photo, named from a marketplace palette.

Pure numpy and OpenCV: the worker calls this per image next to the network, so it
must stay a few milliseconds of one core and import nothing heavy.

How it works, on a thumbnail of 80 px (long side):
1. The background is modelled from a band of border pixels, twice: as a smooth
   surface (a robust quadratic fit per Lab channel, which follows gradients and
   vignettes) and as a few colour clusters (which follow a two-tone table and wall;
   a cluster counts only if it crowds the border, so an item cut by the frame is
   not taken for background). A pixel close to either is background; being darker
   than the background counts half, so soft shadows stay background.
2. The remaining pixels, weighted towards the centre of the frame, are clustered
   with k-means in CIELAB.
3. Each cluster centre is compared with the palette (CIEDE2000) and turned into a
   soft vote; the votes are summed weighted by cluster share. Two clusters of one
   item (its lit and its shaded side) then add up instead of competing, while the
   wordmark or an occluding hand stays a minority.

Known weakness: a close-up whose item covers most of the border is read as
background, and a small occluder or detail may then be named instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np

# sRGB (IEC 61966-2-1) primaries to CIE XYZ, D65 white.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8 0..255, or float 0..1) of shape (..., 3) to CIELAB (D65), float64."""
    c = np.asarray(rgb)
    c = c.astype(np.float64) / 255.0 if c.dtype == np.uint8 else c.astype(np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of shape (..., 3) to sRGB uint8, clipped to the gamut."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference, broadcasting over leading axes (kL = kC = kH = 1)."""
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]

    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0
    g = 0.5 * (1.0 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0

    dLp = L2 - L1
    dCp = c2p - c1p
    dhp = h2p - h1p
    dhp = np.where(dhp > 180.0, dhp - 360.0, dhp)
    dhp = np.where(dhp < -180.0, dhp + 360.0, dhp)
    chroma_zero = (c1p * c2p) == 0
    dhp = np.where(chroma_zero, 0.0, dhp)
    dHp = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dhp) / 2.0)

    Lp_mean = (L1 + L2) / 2.0
    Cp_mean = (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    hp_mean = np.where(
        np.abs(h1p - h2p) <= 180.0,
        h_sum / 2.0,
        np.where(h_sum < 360.0, (h_sum + 360.0) / 2.0, (h_sum - 360.0) / 2.0),
    )
    hp_mean = np.where(chroma_zero, h_sum, hp_mean)

    t = (
        1.0
        - 0.17 * np.cos(np.radians(hp_mean - 30.0))
        + 0.24 * np.cos(np.radians(2.0 * hp_mean))
        + 0.32 * np.cos(np.radians(3.0 * hp_mean + 6.0))
        - 0.20 * np.cos(np.radians(4.0 * hp_mean - 63.0))
    )
    d_theta = 30.0 * np.exp(-(((hp_mean - 275.0) / 25.0) ** 2))
    r_c = 2.0 * np.sqrt(Cp_mean**7 / (Cp_mean**7 + 25.0**7))
    s_l = 1.0 + 0.015 * (Lp_mean - 50.0) ** 2 / np.sqrt(20.0 + (Lp_mean - 50.0) ** 2)
    s_c = 1.0 + 0.045 * Cp_mean
    s_h = 1.0 + 0.015 * Cp_mean * t
    r_t = -np.sin(np.radians(2.0 * d_theta)) * r_c
    return np.sqrt(
        (dLp / s_l) ** 2 + (dCp / s_c) ** 2 + (dHp / s_h) ** 2 + r_t * (dCp / s_c) * (dHp / s_h)
    )


@dataclass(frozen=True)
class NamedColor:
    name: str
    rgb: tuple[int, int, int]
    lab: tuple[float, float, float]


def _palette(entries: dict[str, tuple[int, int, int]]) -> Mapping[str, NamedColor]:
    return MappingProxyType(
        {
            name: NamedColor(
                name, rgb, tuple(float(v) for v in srgb_to_lab(np.array(rgb, np.uint8)))
            )
            for name, rgb in entries.items()
        }
    )


# Reference sRGB for each marketplace colour name: the colour a seller would call by
# that name in ordinary light, not the CSS keyword (CSS "olive" or "navy" are far
# darker than the garments sold under those names).
NAMED_COLORS: Mapping[str, NamedColor] = _palette(
    {
        "black": (22, 22, 24),
        "gray": (128, 128, 130),
        "white": (242, 242, 240),
        "beige": (220, 200, 160),
        "brown": (115, 72, 40),
        "red": (200, 30, 35),
        "burgundy": (115, 22, 42),
        "pink": (238, 140, 180),
        "orange": (240, 120, 25),
        "yellow": (245, 205, 35),
        "olive": (110, 112, 45),
        "green": (40, 145, 65),
        "turquoise": (35, 185, 175),
        "blue": (35, 95, 200),
        "navy": (28, 38, 88),
        "purple": (115, 55, 150),
    }
)

_NAMES = tuple(NAMED_COLORS)
_PALETTE_LAB = np.array([NAMED_COLORS[n].lab for n in _NAMES])


@dataclass(frozen=True)
class ColorResult:
    name: str
    confidence: float
    alternatives: list[tuple[str, float]]
    rgb: tuple[int, int, int]


def nearest_colors(lab: np.ndarray) -> list[tuple[str, float]]:
    """Every palette name with its CIEDE2000 distance to one Lab colour, nearest first."""
    d = delta_e_2000(np.asarray(lab, dtype=np.float64)[None, :], _PALETTE_LAB)
    return [(_NAMES[i], float(d[i])) for i in np.argsort(d, kind="stable")]


# Tuned on the synthetic train split (models_registry/synthetic.py), never on test.
_THUMB_SIDE = 80
_BORDER_FRACTION = 0.07
_BACKGROUND_DELTA = 13.0  # Lab distance under which a pixel is background
_SHADOW_L_WEIGHT = 0.5  # a pixel darker than the background counts its ΔL at half
_MIN_FOREGROUND = 0.03
_BORDER_CLUSTERS = 4
_MIN_BORDER_RATIO = 0.8
_CLUSTERS = 4
_VOTE_TEMPERATURE = 4.0  # CIEDE2000 units; smaller: sharper votes
_SEED = 20240611
_MAX_POINTS = 2000  # k-means sample; plenty for a colour


def dominant_color(rgb: np.ndarray, *, top_k: int = 3) -> ColorResult:
    """Name the colour of the item in an RGB uint8 photo (H, W, 3)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    lab = srgb_to_lab(_thumbnail(rgb, _THUMB_SIDE))
    h, w = lab.shape[:2]

    mask, border = _foreground_mask(lab)
    yy, xx = np.mgrid[0:h, 0:w]
    ny = (yy + 0.5) / h - 0.5
    nx = (xx + 0.5) / w - 0.5
    center_weight = np.exp(-(nx**2 + ny**2) / (2 * 0.3**2))
    if mask.mean() < _MIN_FOREGROUND:
        # Nothing stands out from the border (the item fills the frame, or matches
        # the background): fall back to the middle of the picture.
        mask = (np.abs(nx) < 0.25) & (np.abs(ny) < 0.25)
        if not mask.any():
            mask = np.ones_like(mask)
    pixels, weights = lab[mask], center_weight[mask]

    centers, shares = _kmeans(pixels, weights, _CLUSTERS, _SEED)
    d = delta_e_2000(centers[:, None, :], _PALETTE_LAB[None, :, :])
    votes = np.exp(-(d - d.min(axis=1, keepdims=True)) / _VOTE_TEMPERATURE)
    votes /= votes.sum(axis=1, keepdims=True)
    scores = shares @ votes
    order = np.argsort(-scores, kind="stable")
    best = int(order[0])

    # Report the colour actually seen: the share-weighted centre of the clusters
    # that voted mostly for the winning name.
    voters = votes.argmax(axis=1) == best
    if not voters.any():
        voters = shares == shares.max()
    seen = (centers[voters] * shares[voters, None]).sum(0) / shares[voters].sum()
    seen_rgb = tuple(int(v) for v in lab_to_srgb(seen))

    alternatives = [(_NAMES[i], round(float(scores[i]), 4)) for i in order[:top_k]]
    return ColorResult(
        name=_NAMES[best],
        confidence=float(np.clip(scores[best], 0.0, 1.0)),
        alternatives=alternatives,
        rgb=seen_rgb,  # type: ignore[arg-type]
    )


def _thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(rgb)
    # Plain subsampling first (cheap), then area averaging from about twice the
    # target size: as smooth as averaging the full image, at a tenth of its cost.
    step = max(1, int(1 / (2 * scale)))
    small = np.ascontiguousarray(rgb[::step, ::step])
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return cv2.resize(small, size, interpolation=cv2.INTER_AREA)


def _foreground_mask(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels unlike the background model, and the border band the model was fitted on."""
    h, w = lab.shape[:2]
    band = max(2, round(_BORDER_FRACTION * min(h, w)))
    border = np.zeros((h, w), dtype=bool)
    border[:band, :] = border[-band:, :] = True
    border[:, :band] = border[:, -band:] = True

    yy, xx = np.mgrid[0:h, 0:w]
    ny, nx = yy / (h - 1) - 0.5, xx / (w - 1) - 0.5
    design = np.stack([np.ones_like(nx), nx, ny, nx * ny, nx**2, ny**2], axis=-1).reshape(-1, 6)
    flat = lab.reshape(-1, 3)
    b_idx = np.flatnonzero(border.ravel())
    b_design, b_lab = design[b_idx], flat[b_idx]

    # Robust surface: refit without the border pixels it explains worst, which are
    # where the item itself touches the frame.
    keep = np.ones(len(b_idx), dtype=bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(b_design[keep], b_lab[keep], rcond=None)
        resid = np.linalg.norm(b_lab - b_design @ coef, axis=1)
        keep = resid <= max(2.5 * np.median(resid), 4.0)
    surface = (design @ coef).reshape(h, w, 3)
    d_surface = _background_distance(lab, surface)

    # Colour clusters of the border are background only if they crowd the border.
    # A colour spread evenly over the picture has as large a share on the band as
    # the band has of the picture (ratio 1); the background, kept out of the middle
    # by the item, has more. An item cut by the frame (a close-up) has clearly less,
    # and must not be taken for background.
    centers, shares = _kmeans(b_lab, np.ones(len(b_lab)), _BORDER_CLUSTERS, _SEED)
    labels = _assign(flat, centers)
    count = np.bincount(labels, minlength=len(centers))
    on_border = np.bincount(labels[b_idx], minlength=len(centers))
    ratio = on_border / np.maximum(count, 1) / border.mean()
    centers = centers[(shares >= 0.08) & (ratio >= _MIN_BORDER_RATIO)]
    if len(centers):
        d_clusters = _background_distance(lab[..., None, :], centers[None, None, :, :]).min(-1)
    else:
        d_clusters = np.full(lab.shape[:2], np.inf)

    distance = np.minimum(d_surface, d_clusters)
    mask = (distance > _BACKGROUND_DELTA).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return mask.astype(bool), border


def _assign(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return (
        (points**2).sum(1)[:, None] - 2 * points @ centers.T + (centers**2).sum(1)[None, :]
    ).argmin(1)


def _background_distance(lab: np.ndarray, background: np.ndarray) -> np.ndarray:
    diff = lab - background
    dl = diff[..., 0]
    dl = np.where(dl < 0, dl * _SHADOW_L_WEIGHT, dl)
    return np.sqrt(dl**2 + diff[..., 1] ** 2 + diff[..., 2] ** 2)


def _kmeans(
    points: np.ndarray, weights: np.ndarray, k: int, seed: int, iterations: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means (k-means++ start, fixed seed). Returns centres and their
    weight shares, largest first; empty clusters are dropped."""
    rng = np.random.default_rng(seed)
    if len(points) > _MAX_POINTS:
        pick = np.sort(rng.choice(len(points), _MAX_POINTS, replace=False))
        points, weights = points[pick], weights[pick]
    n = len(points)
    k = min(k, n)
    p = weights / weights.sum()
    c = points[rng.choice(n, p=p)][None, :]
    d2 = ((points - c[0]) ** 2).sum(1)
    for _ in range(1, k):
        prob = d2 * weights
        if prob.sum() <= 0:
            break
        new = points[rng.choice(n, p=prob / prob.sum())]
        c = np.vstack([c, new])
        d2 = np.minimum(d2, ((points - new) ** 2).sum(1))
    sq = (points**2).sum(1)[:, None]
    for _ in range(iterations):
        labels = (sq - 2 * points @ c.T + (c**2).sum(1)[None, :]).argmin(1)
        mass = np.bincount(labels, weights=weights, minlength=len(c))
        sums = np.stack(
            [
                np.bincount(labels, weights=weights * points[:, j], minlength=len(c))
                for j in range(3)
            ],
            axis=1,
        )
        live = mass > 0
        new = c.copy()
        new[live] = sums[live] / mass[live, None]
        moved = np.abs(new - c).max()
        c = new
        if moved < 1e-2:
            break
    labels = (sq - 2 * points @ c.T + (c**2).sum(1)[None, :]).argmin(1)
    mass = np.bincount(labels, weights=weights, minlength=len(c))
    live = mass > 0
    c, mass = c[live], mass[live]
    order = np.argsort(-mass, kind="stable")
    return c[order], mass[order] / mass.sum()
