"""Raster helpers: opening and checking inputs, and the profile and metadata of outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetWriter

from lemevit_geo.errors import InputError

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")

#: GDAL's block cache during a run. It defaults to 5 % of RAM; tiles stream through once, so a small
#: cache bounds memory without slowing reads.
RUN_CACHE_BYTES = 64 << 20


def gdal_env() -> rasterio.Env:
    """The GDAL settings of a run, scoped to it (a user's own ``GDAL_CACHEMAX`` wins)."""
    options = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": RUN_CACHE_BYTES}
    return rasterio.Env(**options)


@dataclass(frozen=True)
class SourceInfo:
    """What the engine needs to know about an input raster (opened and checked once)."""

    path: str
    width: int
    height: int
    crs: CRS | None
    transform: Affine
    bands: tuple[int, ...]
    dtype: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def inspect_source(
    path: str | Path, bands: Sequence[int] | None, expected_bands: int, allow_pixel_grid: bool = False
) -> SourceInfo:
    """Open ``path`` once, check it can be used, and describe it.

    Raises:
        InputError: missing file, not a raster, corrupt data, no CRS/geotransform (unless
            ``allow_pixel_grid``), unsupported dtype, or a band count other than ``expected_bands``.
    """
    path = str(path)
    if not Path(path).exists() and "://" not in path and not path.startswith("/vsi"):
        raise InputError(f"{path} does not exist")
    try:
        with rasterio.open(path) as src:
            if not allow_pixel_grid and (src.crs is None or src.transform == Affine.identity()):
                raise InputError(
                    f"{path} has no CRS or geotransform, so outputs could not be placed on a map; "
                    "pass `allow_pixel_grid` to work in pixel coordinates"
                )
            chosen = tuple(bands) if bands else tuple(range(1, src.count + 1))
            if max(chosen) > src.count:
                raise InputError(f"{path} has {src.count} bands; `bands` asked for band {max(chosen)}")
            if len(chosen) != expected_bands:
                raise InputError(
                    f"{path}: {len(chosen)} input bands ({','.join(map(str, chosen))}) but the model takes "
                    f"{expected_bands}; choose them with `bands`"
                )
            dtype = src.dtypes[chosen[0] - 1]
            if dtype not in SUPPORTED_DTYPES:
                raise InputError(f"{path}: data type {dtype} is not supported ({', '.join(SUPPORTED_DTYPES)})")
            # a corrupt or truncated file usually opens: read one block of the last band row to be sure
            src.read(chosen[0], window=((src.height - 1, src.height), (0, min(src.width, 256))))
            return SourceInfo(path, src.width, src.height, src.crs, src.transform, chosen, dtype)
    except RasterioIOError as exc:
        msg = str(exc).splitlines()[0]
        raise InputError(f"{path} cannot be read as a raster: {msg}") from exc


def class_dtype(num_classes: int) -> tuple[str, int]:
    """Output dtype and nodata value for a class raster: nodata is never a class value."""
    if num_classes < 255:
        return "uint8", 255
    return "uint16", 65535


def output_profile(info: SourceInfo, count: int, dtype: str, nodata: float | None, block: int = 256) -> dict[str, Any]:
    """Profile of a tiled, compressed GeoTIFF on ``info``'s grid."""
    width, height = info.width, info.height
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs=info.crs,
        transform=info.transform,
        nodata=nodata,
        compress="deflate",
        tiled=True,
        blockxsize=block,
        blockysize=block,
        BIGTIFF="IF_SAFER",
    )
    if dtype in ("uint8", "uint16"):
        profile["predictor"] = 2
    return profile


def write_class_metadata(
    dst: DatasetWriter, classes: Sequence[str], colors: Sequence[tuple[int, int, int]], band: int = 1
) -> None:
    """Colour table, band description and class-name tags (``CLASS_<value>=<name>``)."""
    if dst.dtypes[band - 1] == "uint8":
        dst.write_colormap(band, {i: (*c, 255) for i, c in enumerate(colors)})
    dst.set_band_description(band, "class")
    dst.update_tags(band, **{f"CLASS_{i}": name for i, name in enumerate(classes)})


def write_category_names(path: Path, classes: Sequence[str]) -> None:
    """Write GDAL category names to the PAM sidecar (``<file>.aux.xml``), which QGIS shows as the legend."""
    from xml.sax.saxutils import escape

    cats = "".join(f"<Category>{escape(c)}</Category>" for c in classes)
    xml = f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{cats}</CategoryNames></PAMRasterBand></PAMDataset>\n'
    Path(f"{path}.aux.xml").write_text(xml)


def normalise(data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(band, H, W) raw values to float32 ``(x - mean) / std``."""
    out = data.astype(np.float32)
    out -= mean[:, None, None]
    out /= std[:, None, None]
    return out
