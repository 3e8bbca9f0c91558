"""Overviews for the HTML report: any raster read onto one small north-up grid, in strips, as PNG data URIs.

A report's size does not grow with the scene: every raster is read decimated (rasterio ``out_shape``
reads, which use the file's overviews where it has them) onto an :class:`OverviewGrid` of at most
:data:`MAX_SIDE` pixels a side, a strip of rows at a time, so a 200k px scene costs the same page and
about the same memory as a 2k px one.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine, array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from lemevit_geo.bundle import PALETTE
from lemevit_geo.errors import InputError
from lemevit_geo.raster import MaskPlan, plan_mask

#: Longest side of a report's overviews, in pixels.
MAX_SIDE = 2048
#: Overview rows read per call (bounds the memory of a read, whatever the scene's size).
STRIP_ROWS = 256
#: Percentiles of the valid pixels that the quick-look stretches to 0 and 255, per band.
STRETCH = (2.0, 98.0)


@dataclass(frozen=True)
class OverviewGrid:
    """The grid every layer of a report is drawn on: north-up, in the scene's CRS, at most ``MAX_SIDE`` px.

    Attributes:
        crs: The scene's CRS (``None``: a pixel grid).
        transform: Overview pixel to map coordinates.
        width: Columns.
        height: Rows.
        scale: Scene pixels per overview pixel (1 where the scene is small).
    """

    crs: CRS | None
    transform: Affine
    width: int
    height: int
    scale: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in the scene's CRS."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return (min(west, east), min(south, north), max(west, east), max(south, north))

    @classmethod
    def of_bounds(cls, bounds: Sequence[float], crs: CRS | None, max_side: int = MAX_SIDE) -> OverviewGrid:
        """A grid over ``(minx, miny, maxx, maxy)`` (a vector layer's extent), ``max_side`` px on its longer side."""
        west, south, east, north = bounds
        size = max(east - west, north - south) / max_side
        if not size > 0:
            raise InputError("nothing to draw: the layer's extent is empty")
        width, height = max(1, math.ceil((east - west) / size)), max(1, math.ceil((north - south) / size))
        return cls(crs, Affine(size, 0, west, 0, -size, north), width, height, 1.0)

    @classmethod
    def of(cls, path: str | Path, max_side: int = MAX_SIDE) -> OverviewGrid:
        """The overview grid of the raster at ``path`` (its footprint's north-up bounding box)."""
        with rasterio.open(path) as src:
            corners = [src.transform * xy for xy in ((0, 0), (src.width, 0), (0, src.height), (src.width, src.height))]
            xs, ys = zip(*corners, strict=True)
            north_up = src.transform.b == 0 and src.transform.d == 0 and src.transform.e < 0
            side = max(src.width, src.height)
            crs = src.crs
        scale = max(1.0, side / max_side)
        if north_up:
            width, height = max(1, round(src.width / scale)), max(1, round(src.height / scale))
        else:  # rotated or south-up: the bounding box at the scene's mean pixel size
            size = math.sqrt(abs(src.transform.determinant)) * scale
            width, height = (max(1, math.ceil((max(v) - min(v)) / size)) for v in (xs, ys))
        west, east, south, north = min(xs), max(xs), min(ys), max(ys)
        transform = Affine((east - west) / width, 0, west, 0, -(north - south) / height, north)
        return cls(crs, transform, width, height, scale)


def _same_grid_window(src: Any, grid: OverviewGrid) -> Window | None:
    """The window of ``grid`` in ``src``'s pixels where ``src`` is north-up in the same CRS, else ``None``."""
    t = src.transform
    if src.crs != grid.crs or t.b != 0 or t.d != 0 or t.e >= 0:
        return None
    return from_bounds(*grid.bounds, transform=t)


def _strip(window: Window | None, grid: OverviewGrid, r0: int, r1: int) -> Window:
    """The source window of overview rows ``r0:r1`` (``window``: the whole grid's, in the source's pixels)."""
    if window is None:
        return Window(0, r0, grid.width, r1 - r0)
    per_row = window.height / grid.height
    return Window(window.col_off, window.row_off + r0 * per_row, window.width, (r1 - r0) * per_row)


def _valid(src: Any, plan: MaskPlan, data: np.ndarray, kwargs: dict[str, Any]) -> np.ndarray:
    """Valid pixels of a decimated read (``kwargs``: its window, shape, boundless): the rules of
    :class:`~lemevit_geo.raster.MaskPlan`; a warped raster's own mask marks where it reaches."""
    warped = isinstance(src, WarpedVRT)
    valid = src.read_masks(1, **kwargs) != 0 if warped else np.ones(kwargs["out_shape"], dtype=bool)
    if plan.nodata is not None:
        nodata = np.isnan(data) if np.isnan(plan.nodata) else data == plan.nodata
        valid &= ~nodata.all(axis=0)
    elif plan.alpha is not None:
        valid &= src.read(plan.alpha, fill_value=0, **kwargs) != 0
    elif plan.internal and not warped:
        valid &= src.read_masks(1, **kwargs) != 0
    if plan.finite:
        valid &= np.isfinite(data).all(axis=0)
    return valid


def read_overview(
    path: str | Path,
    grid: OverviewGrid,
    bands: Sequence[int] | None = None,
    resampling: Resampling = Resampling.nearest,
) -> tuple[np.ndarray, np.ndarray]:
    """``bands`` of ``path`` (default: its data bands) on ``grid``: ``(data (B, H, W), valid (H, W))``.

    A raster north-up in the grid's CRS is read decimated, a strip of rows at a time; any other is warped
    onto the grid (``WarpedVRT``). Outside the raster is invalid. A pixel's validity follows the tool's one
    rule (:class:`~lemevit_geo.raster.MaskPlan`: nodata value, alpha band, internal mask, non-finite).
    """
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(rasterio.open(path))
        plan, default = plan_mask(src, bands)
        chosen = list(bands or default)
        window = _same_grid_window(src, grid)
        if window is None:
            vrt = WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height)
            src = stack.enter_context(vrt)
        data = np.zeros((len(chosen), grid.height, grid.width), dtype=src.dtypes[chosen[0] - 1])
        valid = np.zeros((grid.height, grid.width), dtype=bool)
        for r0 in range(0, grid.height, STRIP_ROWS):
            r1 = min(grid.height, r0 + STRIP_ROWS)
            win, shape = _strip(window, grid, r0, r1), (r1 - r0, grid.width)
            inside = _inside(src, win, shape)
            kwargs = {"window": win, "out_shape": shape, "boundless": window is not None and not inside.all()}
            data[:, r0:r1] = src.read(chosen, resampling=resampling, **kwargs)
            valid[r0:r1] = _valid(src, plan, data[:, r0:r1], kwargs) & inside
    return data, valid


def _inside(src: Any, window: Window, shape: tuple[int, int]) -> np.ndarray:
    """Overview pixels of a strip whose centre falls inside ``src`` (a boundless read fills the rest)."""
    rows = window.row_off + (np.arange(shape[0]) + 0.5) * window.height / shape[0]
    cols = window.col_off + (np.arange(shape[1]) + 0.5) * window.width / shape[1]
    return ((rows >= 0) & (rows < src.height))[:, None] & ((cols >= 0) & (cols < src.width))[None, :]


def display_bands(path: str | Path) -> list[int]:
    """The bands a quick-look shows: red, green, blue by colour interpretation, else the first three data
    bands (one band: grey)."""
    with rasterio.open(path) as src:
        _, data_bands = plan_mask(src, None)
        interp = {ci: i + 1 for i, ci in enumerate(src.colorinterp) if i + 1 in data_bands}
    rgb = [interp.get(c) for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    if all(rgb):
        return [int(b) for b in rgb if b]
    return list(data_bands[:3]) if len(data_bands) >= 3 else [data_bands[0]]


def stretch(data: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float] = STRETCH) -> np.ndarray:
    """``data`` (B, H, W) as RGBA uint8 (H, W, 4): each band stretched linearly from its low to its high
    percentile over the valid pixels; invalid pixels transparent."""
    rgba = np.zeros((*valid.shape, 4), dtype=np.uint8)
    for i, band in enumerate(data if len(data) == 3 else [data[0]] * 3):
        values = band[valid].astype(np.float64)
        if values.size:
            low, high = np.percentile(values, percentiles)
            scaled = (band.astype(np.float64) - low) / max(high - low, 1e-12)
            rgba[..., i] = np.clip(np.nan_to_num(scaled) * 255 + 0.5, 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba


def quicklook(path: str | Path, grid: OverviewGrid) -> np.ndarray:
    """The input image on ``grid`` as a stretched RGBA quick-look (averaged down, so textures stay readable)."""
    data, valid = read_overview(path, grid, display_bands(path), Resampling.average)
    return stretch(data, valid)


def color_of(colors: dict[int, tuple[int, int, int]], value: int) -> tuple[int, int, int]:
    """The colour of class ``value``: the raster's colour table, else the tool's palette."""
    return colors.get(value) or PALETTE[value % len(PALETTE)]


def class_colors(path: str | Path) -> tuple[dict[int, str], dict[int, tuple[int, int, int]], float | None]:
    """Class names (``CLASS_<n>`` tags), colours (the colour table) and nodata of a class raster."""
    with rasterio.open(path) as src:
        tags = src.tags(1)
        try:
            table = src.colormap(1)
        except ValueError:
            table = {}
        nodata = src.nodata
    names = {int(k[6:]): v for k, v in tags.items() if k.startswith("CLASS_") and k[6:].isdigit()}
    return names, {int(k): tuple(v[:3]) for k, v in table.items()}, nodata


def count_classes(path: str | Path) -> dict[int, int]:
    """Exact pixels per class value of a class raster (nodata left out), read block by block."""
    counts: np.ndarray = np.zeros(0, dtype=np.int64)
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            block = src.read(1, window=window).ravel()
            if src.nodata is not None:
                block = block[block != src.nodata]
            found = np.bincount(block.astype(np.int64), minlength=len(counts))
            found[: len(counts)] += counts
            counts = found
    return {int(v): int(n) for v, n in enumerate(counts) if n}


def class_image(path: str | Path, grid: OverviewGrid, transparent: Sequence[int] = ()) -> tuple[str, np.ndarray]:
    """A class raster on ``grid`` (the most frequent class per overview pixel) as a palette PNG data URI in its
    colour table, nodata and the ``transparent`` classes see-through; also the class values ``(H, W)``
    (-1: nodata)."""
    _, colors, _ = class_colors(path)
    data, valid = read_overview(path, grid, [1], Resampling.mode)
    values = np.where(valid, data[0].astype(np.int64), -1)
    present = [int(v) for v in np.unique(values) if v >= 0]
    if len(present) > 255:
        raise InputError(f"{path} holds {len(present)} classes; a report draws at most 255")
    palette = np.zeros((256, 4), dtype=np.uint8)  # index 0: nodata; class k: index 1 + its rank
    index = np.zeros(values.shape, dtype=np.uint8)
    for rank, value in enumerate(present, start=1):
        palette[rank] = (*color_of(colors, value), 0 if value in transparent else 255)
        index[values == value] = rank
    return palette_png(index, palette), values


def palette_png(index: np.ndarray, palette: np.ndarray) -> str:
    """An (H, W) uint8 image of palette indices and its (256, 4) RGBA palette as a PNG data URI."""
    from PIL import Image

    image = Image.fromarray(index, "L").convert("P")
    image.putpalette(palette.tobytes(), rawmode="RGBA")
    return _data_uri(image)


def image_data_uri(rgba: np.ndarray) -> str:
    """An (H, W, 4) uint8 quick-look as a data URI: JPEG where every pixel is opaque (a fifth of a PNG's size for
    imagery), else PNG with its transparency."""
    from PIL import Image

    if (rgba[..., 3] == 255).all():
        return _data_uri(Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB"), "JPEG", quality=88)
    return _data_uri(Image.fromarray(rgba, "RGBA"), "PNG", compress_level=3)


def _data_uri(image: Any, kind: str = "PNG", **options: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
