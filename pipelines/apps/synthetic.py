"""A generated, georeferenced two-date scene with land-cover labels, known changes and objects (for the
demo and for tests that need a model to learn something real).

Classes are made of shapes and textures a small model can tell apart: water (smooth, dark, low
near-infrared), vegetation (green, grainy, bright near-infrared), built-up (grey roofs in blocks),
bare soil (brown, mottled) and roads (straight grey lines). The second date adds new buildings on
bare soil and vegetation and clears patches of vegetation. Parked objects at random angles stand on
the land in both dates (so they are no change): cars (small, in a few paints, a dark windscreen),
trucks (long, white with a dark cab) and containers (orange or blue, ribbed); their outlines are the
labels of the detection task (``objects.gpkg``, column ``class_name``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

CLASSES = ["water", "vegetation", "built-up", "bare soil", "road"]
COLORS = [(30, 90, 200), (40, 160, 60), (200, 60, 60), (190, 150, 90), (110, 110, 110)]
CRS = "EPSG:32633"  # UTM zone 33N
ORIGIN = (500_000.0, 5_800_000.0)
GSD = 0.5

# mean reflectance per class and band (R, G, B, NIR) and texture strength
_BASE = np.array([[30, 60, 110, 15], [50, 120, 45, 200], [150, 140, 140, 90], [160, 120, 80, 110], [95, 95, 95, 60]])
_GRAIN = np.array([3, 22, 10, 16, 4])

OBJECT_CLASSES = ["car", "truck", "container"]
OBJECT_COLORS = [(255, 230, 0), (0, 230, 255), (255, 0, 200)]
#: Object size ranges in pixels at 0.5 m (length, width) and paints (R, G, B, NIR) per class.
_OBJECT_SIZES = {0: ((10, 13), (5, 6.5)), 1: ((24, 30), (7, 8.5)), 2: ((17, 21), (7, 8.5))}
_PAINTS = {
    0: [(200, 30, 30, 60), (235, 235, 235, 200), (30, 50, 170, 40), (25, 25, 25, 20)],
    1: [(245, 245, 240, 210), (210, 210, 215, 180)],
    2: [(230, 110, 20, 90), (20, 80, 170, 40)],
}
_OBJECT_SPACING = 80  # one object per this many pixels squared of the scene, on average


@dataclass(frozen=True)
class GeneratedScene:
    """Paths of a generated scene."""

    before: Path
    after: Path
    labels: Path
    labels_after: Path
    change: Path
    objects: Path


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


def _objects(rng: np.random.Generator, lab: np.ndarray) -> list[tuple[float, float, float, float, float, int]]:
    """Rotated rectangles ``(cx, cy, length, width, angle, class)`` on land, a few pixels apart."""
    h, w = lab.shape
    free = lab != 0
    placed = []
    for _ in range(3 * h * w // _OBJECT_SPACING**2):
        c = int(rng.choice(3, p=[0.5, 0.2, 0.3]))
        (l0, l1), (w0, w1) = _OBJECT_SIZES[c]
        length, width, angle = rng.uniform(l0, l1), rng.uniform(w0, w1), rng.uniform(-math.pi / 2, math.pi / 2)
        r = int(math.ceil(math.hypot(length, width) / 2)) + 3
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        if not free[cy - r : cy + r, cx - r : cx + r].all():
            continue
        free[cy - r : cy + r, cx - r : cx + r] = False
        placed.append((cx + 0.5, cy + 0.5, length, width, angle, c))
        if len(placed) >= h * w // _OBJECT_SPACING**2:
            break
    return placed


def _paint_objects(rng: np.random.Generator, images: list[np.ndarray], objects: list[tuple]) -> None:
    """Paint the objects into every image (the same pixels and colours: parked in both dates)."""
    for cx, cy, length, width, angle, c in objects:
        r = int(math.ceil(math.hypot(length, width) / 2)) + 1
        x0, y0 = int(cx) - r, int(cy) - r
        yy, xx = np.mgrid[y0 : y0 + 2 * r, x0 : x0 + 2 * r] + 0.5
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        body = (np.abs(u) < length / 2) & (np.abs(v) < width / 2)
        paint = np.array(_PAINTS[c][int(rng.integers(len(_PAINTS[c])))], dtype=np.float32)
        colour = np.broadcast_to(paint[:, None, None], (4, *body.shape)).copy()
        if c == 0:  # a dark windscreen across the car
            colour[:, (u > length * 0.1) & (u < length * 0.3)] *= 0.35
        elif c == 1:  # a dark cab at the front
            colour[:, u > length * 0.32] *= 0.45
        else:  # ribs across the container
            colour[:, (np.floor(u) % 3) == 0] *= 0.75
        for img in images:
            window = img[:, y0 : y0 + 2 * r, x0 : x0 + 2 * r]
            window[:, body] = np.clip(colour[:, body], 1, 255).astype(np.uint8)


def _write_objects(path: Path, objects: list[tuple]) -> Path:
    """The objects' outlines in map coordinates, with their class."""
    import geopandas as gpd
    import shapely

    from lemevit_geo.pipelines.geometry import box_polygons

    transform = from_origin(*ORIGIN, GSD, GSD)
    boxes = np.array([o[:5] for o in objects], dtype=np.float64).reshape(-1, 5)
    corners = box_polygons(boxes)
    x, y = transform * (corners[..., 0], corners[..., 1])
    names = [OBJECT_CLASSES[o[5]] for o in objects]
    gdf = gpd.GeoDataFrame({"class_name": names}, geometry=shapely.polygons(np.stack([x, y], -1)), crs=CRS)
    gdf.to_file(path, driver="GPKG", layer="objects", engine="pyogrio")
    return path


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
    if bands > 1:  # GDAL's default for 4-band uint8 is RGBA: the NIR band would be flagged as alpha
        profile["photometric"] = "MINISBLACK"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if bands == 1 and data.dtype == np.uint8:
            names = CLASSES if path.name.startswith("labels") else ["no change", "change"]
            colors = COLORS if path.name.startswith("labels") else [(200, 200, 200), (230, 30, 30)]
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colors)})
            dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
        else:
            dst.descriptions = ("red", "green", "blue", "nir")
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    return path


def make_scene(out_dir: Path, size: int = 2048, seed: int = 0) -> GeneratedScene:
    """Write the two dates (4-band uint8), their labels, the change mask and the objects into ``out_dir``.

    The same ``size`` and ``seed`` give the same files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lab = _labels(rng, size)
    lab_after = _changes(rng, lab)
    img = _render(rng, lab)
    img_after = _render(rng, lab_after)
    things = np.random.default_rng([seed, 7])  # its own stream: the land cover stays as it was
    objects = _objects(things, lab_after)
    _paint_objects(things, [img, img_after], objects)
    return GeneratedScene(
        before=_write(out_dir / "scene_before.tif", img),
        after=_write(out_dir / "scene_after.tif", img_after),
        labels=_write(out_dir / "labels.tif", lab[None]),
        labels_after=_write(out_dir / "labels_after.tif", lab_after[None]),
        change=_write(out_dir / "change_labels.tif", (lab != lab_after).astype(np.uint8)[None]),
        objects=_write_objects(out_dir / "objects.gpkg", objects),
    )
