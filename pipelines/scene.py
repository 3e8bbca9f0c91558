"""A generated, georeferenced two-date scene with land-cover labels and known changes (for the demo
and for tests that need a model to learn something real).

Classes are made of shapes and textures a small model can tell apart: water (smooth, dark, low
near-infrared), vegetation (green, grainy, bright near-infrared), built-up (grey roofs in blocks),
bare soil (brown, mottled) and roads (straight grey lines). The second date adds new buildings on
bare soil and vegetation and clears patches of vegetation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

CLASSES = ["water", "vegetation", "built-up", "bare soil", "road"]
COLORS = [(30, 90, 200), (40, 160, 60), (200, 60, 60), (190, 150, 90), (110, 110, 110)]
CRS = "EPSG:32633"  # UTM zone 33N
ORIGIN = (500_000.0, 5_800_000.0)
GSD = 0.5

# mean reflectance per class and band (R, G, B, NIR) and texture strength
_BASE = np.array([[30, 60, 110, 15], [50, 120, 45, 200], [150, 140, 140, 90], [160, 120, 80, 110], [95, 95, 95, 60]])
_GRAIN = np.array([3, 22, 10, 16, 4])


@dataclass(frozen=True)
class Scene:
    """Paths of a generated scene."""

    before: Path
    after: Path
    labels: Path
    labels_after: Path
    change: Path


def _smooth(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1): random values on a coarse grid, bicubically upsampled."""
    coarse = torch.from_numpy(rng.random((1, 1, h // cell + 3, w // cell + 3)).astype(np.float32))
    up = torch.nn.functional.interpolate(coarse, scale_factor=cell, mode="bicubic", align_corners=False)
    return up[0, 0, :h, :w].numpy()


def _labels(rng: np.random.Generator, size: int) -> np.ndarray:
    h = w = size
    lab = np.where(_smooth(rng, h, w, 96) > 0.5, 1, 3).astype(np.uint8)  # vegetation / bare soil
    yy, xx = np.mgrid[:h, :w]
    # a meandering river and a few lakes
    river = np.abs(yy - (0.3 * h + 0.08 * h * np.sin(xx / (0.12 * w)))) < 0.02 * h + 4
    lab[river] = 0
    for _ in range(max(1, size // 1000)):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(size // 30, size // 12)
        lab[((yy - cy) / r) ** 2 + ((xx - cx) / (1.4 * r)) ** 2 < 1] = 0
    # town districts: blocks of buildings separated by streets
    for _ in range(max(2, size // 600)):
        cy, cx = rng.integers(h // 6, h), rng.integers(0, w - w // 6)
        dh, dw = rng.integers(size // 10, size // 5, size=2)
        for by in range(cy, min(h, cy + dh), 40):
            for bx in range(cx, min(w, cx + dw), 40):
                bh, bw = rng.integers(14, 30, size=2)
                lab[by : by + bh, bx : bx + bw] = 2
    # roads: a few straight lines across the scene
    for _ in range(max(2, size // 700)):
        if rng.random() < 0.5:
            y = rng.integers(0, h)
            lab[max(0, y - 4) : y + 4, :] = 4
        else:
            x = rng.integers(0, w)
            lab[:, max(0, x - 4) : x + 4] = 4
    return lab


def _render(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    h, w = lab.shape
    img = _BASE[lab].transpose(2, 0, 1).astype(np.float32)
    grain = rng.normal(size=(4, h, w)).astype(np.float32) * _GRAIN[lab][None]
    mottle = (_smooth(rng, h, w, 16)[None] - 0.5) * 40
    img += grain + mottle * (lab == 3)[None] + mottle * 0.5 * (lab == 1)[None]
    roofs = (((np.arange(h)[:, None] // 6) + (np.arange(w)[None] // 6)) % 2) * 18.0  # tiled roofs
    img += roofs[None] * (lab == 2)[None]
    img += rng.normal(size=(4, h, w)).astype(np.float32) * 3  # sensor noise
    return np.clip(img, 1, 255).astype(np.uint8)


def _changes(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """Second-date labels: new buildings on open land, cleared vegetation."""
    h, w = lab.shape
    after = lab.copy()
    size = min(h, w)
    for _ in range(max(3, size // 50)):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        bh, bw = rng.integers(16, 36, size=2)
        patch = after[y : y + bh, x : x + bw]
        patch[(patch == 1) | (patch == 3)] = 2
    for _ in range(max(2, size // 150)):
        y, x = rng.integers(0, h - 80), rng.integers(0, w - 80)
        ch, cw = rng.integers(30, 80, size=2)
        patch = after[y : y + ch, x : x + cw]
        patch[patch == 1] = 3
    return after


def _write(path: Path, data: np.ndarray, **extra: object) -> Path:
    bands, h, w = data.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=bands,
        dtype=data.dtype.name,
        crs=CRS,
        transform=from_origin(*ORIGIN, GSD, GSD),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        **extra,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if bands == 1 and data.dtype == np.uint8:
            names = CLASSES if path.name.startswith("labels") else ["no change", "change"]
            colors = COLORS if path.name.startswith("labels") else [(200, 200, 200), (230, 30, 30)]
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colors)})
            dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
        else:
            dst.descriptions = ("red", "green", "blue", "nir")
    return path


def make_scene(out_dir: Path, size: int = 2048, seed: int = 0) -> Scene:
    """Write the two dates (4-band uint8), their labels and the change mask into ``out_dir``.

    The same ``size`` and ``seed`` give the same files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lab = _labels(rng, size)
    lab_after = _changes(rng, lab)
    img = _render(rng, lab)
    img_after = _render(rng, lab_after)
    return Scene(
        before=_write(out_dir / "scene_before.tif", img),
        after=_write(out_dir / "scene_after.tif", img_after),
        labels=_write(out_dir / "labels.tif", lab[None]),
        labels_after=_write(out_dir / "labels_after.tif", lab_after[None]),
        change=_write(out_dir / "change_labels.tif", (lab != lab_after).astype(np.uint8)[None]),
    )
