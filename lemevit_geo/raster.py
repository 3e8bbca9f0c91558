"""Raster helpers: opening and checking inputs, and the profile and metadata of outputs."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from lemevit_geo.errors import GDAL_ERRORS, InputError, LemevitWarning, OutputError

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")

#: What GDAL raises on a failed read: rasterio's errors and GDAL's own (CPLE_*).
READ_ERRORS = (RasterioError, CPLE_BaseError)

#: GDAL's block cache during a run, at least. It defaults to 5 % of RAM; tiles stream through once, so a small
#: cache bounds memory without slowing reads.
RUN_CACHE_BYTES = 64 << 20
#: GDAL's block cache during a run, at most (a tile row of a very wide, deep scene).
MAX_RUN_CACHE_BYTES = 1 << 30


def tile_row_bytes(sources: Sequence[SourceInfo], tile: int, block: int = 256) -> int:
    """Bytes of the blocks that one tile row of every source touches: the full width, ``tile`` rows and a block
    row more (a tile row rarely starts on a block boundary), all bands read."""
    total = 0
    for info in sources:
        total += info.width * (tile + block) * len(info.bands) * np.dtype(info.dtype).itemsize
    return total


def gdal_env(sources: Sequence[SourceInfo] = (), tile: int = 0) -> rasterio.Env:
    """The GDAL settings of a run, scoped to it (a user's own ``GDAL_CACHEMAX`` wins): a block cache that holds a
    tile row of blocks of every source (:func:`tile_row_bytes`, so blocks shared by neighbouring tiles are read
    and decoded once), between :data:`RUN_CACHE_BYTES` and :data:`MAX_RUN_CACHE_BYTES`."""
    from lemevit_geo.inputs import http_settings

    options: dict[str, Any] = dict(http_settings())  # network inputs: retries, no directory listing
    if "GDAL_CACHEMAX" not in os.environ:
        row = tile_row_bytes(sources, tile) if sources and tile else 0
        options["GDAL_CACHEMAX"] = int(min(MAX_RUN_CACHE_BYTES, max(RUN_CACHE_BYTES, row)))
    return rasterio.Env(**options)


def decode_threads(readers: int) -> int:
    """Threads each of ``readers`` reader threads may use to decompress a window's blocks (GeoTIFF, GDAL 3.6+):
    the cores the readers leave free, shared out (1 where there are as many readers as cores)."""
    from lemevit_geo.device import available_cores

    return max(1, available_cores() // max(1, readers))


def open_source(path: str, threads: int = 1) -> Any:
    """Open a raster to read; a GeoTIFF with ``threads`` > 1 decompresses a read's blocks in that many threads
    (the ``NUM_THREADS`` open option: reading only, so written files do not depend on it)."""
    if threads > 1 and str(path).lower().endswith((".tif", ".tiff")):
        return rasterio.open(path, NUM_THREADS=str(threads))
    return rasterio.open(path)


@dataclass(frozen=True)
class MaskPlan:
    """Where a source's nodata comes from, decided once from its mask flags and colour interpretation.

    A pixel is nodata where the source's nodata value is found in every selected band (GDAL's rule), where
    its alpha band is 0, where its internal mask is 0, or (float data) where any selected band is not finite.

    Attributes:
        source: What the mask is, for reports (``nodata value 0``, ``alpha band 4``, ``internal mask``, ``none``).
        nodata: The nodata value of the selected bands, if the mask comes from it.
        alpha: The alpha band whose zeros are nodata, if the mask comes from it.
        internal: Whether the mask is the dataset's internal mask.
        finite: Whether non-finite values are nodata (float data).
    """

    source: str
    nodata: float | None = None
    alpha: int | None = None
    internal: bool = False
    finite: bool = False

    def describe(self) -> str:
        return self.source + (" + non-finite values" if self.finite else "")

    def valid(self, src: Any, data: np.ndarray, window: Window) -> np.ndarray:
        """The valid pixels of ``data`` (selected bands, read from ``src`` in ``window``)."""
        valid = np.ones(data.shape[1:], dtype=bool)
        if self.nodata is not None:
            nodata = np.isnan(data) if np.isnan(self.nodata) else data == self.nodata
            valid &= ~nodata.all(axis=0)
        elif self.alpha is not None:
            valid &= src.read(self.alpha, window=window) != 0
        elif self.internal:
            valid &= src.read_masks(1, window=window) != 0
        if self.finite:
            valid &= np.isfinite(data).all(axis=0)
        return valid


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
    mask: MaskPlan = MaskPlan("none")
    #: What messages call the source (the input as given) when ``path`` is what GDAL opens (a VRT's XML, a
    #: ``/vsicurl/`` path); empty: ``path``.
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.path

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def _looks_like_data(src: Any, band: int, samples: int = 4) -> bool:
    """True if an alpha band holds values other than 0 and 255 in a few windows spread over the raster."""
    size = 256
    for r in np.linspace(0, max(0, src.height - size), samples).astype(int):
        for c in np.linspace(0, max(0, src.width - size), samples).astype(int):
            values = np.unique(src.read(band, window=Window(int(c), int(r), size, size)))
            if np.setdiff1d(values, [0, 255]).size:
                return True
    return False


def plan_mask(src: Any, bands: Sequence[int] | None, label: str = "") -> tuple[MaskPlan, tuple[int, ...]]:
    """The mask of ``src`` and the bands to read (all but a real alpha band when ``bands`` is not given).

    GDAL's order: a nodata value, else an alpha band, else an internal mask. An alpha band that holds
    values other than 0 and 255 is data that GDAL mistook for transparency (a 4-band RGB + NIR file
    written with default options): it is not used as a mask, with a warning. Messages call the source
    ``label`` (default: its name).
    """
    name = label or src.name
    finite = np.dtype(src.dtypes[0]).kind == "f"
    alphas = [i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha]
    chosen = tuple(bands) if bands else None
    first = (chosen or (1,))[0]
    if max(chosen or (1,)) > src.count:
        raise InputError(f"{name} has {src.count} bands; `bands` asked for band {max(chosen or (1,))}")
    if src.nodatavals[first - 1] is not None:
        default = tuple(range(1, src.count + 1))
        nodata = src.nodatavals[first - 1]
        return MaskPlan(f"nodata value {nodata:g}", nodata=nodata, finite=finite), chosen or default
    for alpha in alphas:
        if _looks_like_data(src, alpha):
            warnings.warn(
                f"{name}: band {alpha} is flagged as alpha but holds values other than 0 and 255, so it is "
                "read as data, not as a mask",
                LemevitWarning,
                stacklevel=2,
            )
            continue
        if chosen and alpha in chosen:
            raise InputError(f"{name}: band {alpha} is the alpha (transparency) band; choose data bands with `bands`")
        data_bands = tuple(b for b in range(1, src.count + 1) if b != alpha)
        return MaskPlan(f"alpha band {alpha}", alpha=alpha, finite=finite), chosen or data_bands
    all_bands = chosen or tuple(range(1, src.count + 1))
    if (
        MaskFlags.per_dataset in src.mask_flag_enums[first - 1]
        and MaskFlags.alpha not in src.mask_flag_enums[first - 1]
    ):
        return MaskPlan("internal mask", internal=True, finite=finite), all_bands
    return MaskPlan("none", finite=finite), all_bands


def false_alpha(src: Any, mask: MaskPlan) -> bool:
    """True if ``src`` has a band flagged as alpha that its mask plan does not use as the mask (it holds values
    other than 0 and 255, or a nodata value comes first): the band is data."""
    return mask.alpha is None and ColorInterp.alpha in src.colorinterp


def data_bands_vrt(src: Any) -> str:
    """A VRT (XML text, which GDAL opens as a file name) of every band of ``src`` with no band flagged as alpha
    (the nodata value kept).

    GDAL's warper uses a band flagged as alpha as the source's transparency (it weights resampling by it and
    refuses to add an alpha band of its own); a "false alpha" that holds data must be warped as data instead.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    if src.crs is not None:
        ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in src.transform.to_gdal())
    for band in src.indexes:
        gdal_type = rasterio.dtypes.typename_fwd[rasterio.dtypes.dtype_rev[src.dtypes[band - 1]]]
        vrt_band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(band))
        ET.SubElement(vrt_band, "ColorInterp").text = "Undefined"
        if src.nodatavals[band - 1] is not None:
            ET.SubElement(vrt_band, "NoDataValue").text = repr(float(src.nodatavals[band - 1]))
        source = ET.SubElement(vrt_band, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = src.name
        ET.SubElement(source, "SourceBand").text = str(band)
    return ET.tostring(root, encoding="unicode")


def read_error(exc: BaseException) -> str:
    """The most telling line of a GDAL error (GDAL often ends with "See previous exception"), with the
    root cause GDAL logged before it, if any."""
    messages = []
    while exc is not None:
        messages.extend(line for line in str(exc).splitlines() if line.strip())
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    useful = [m for m in messages if "previous exception" not in m.lower()]
    message = (useful or messages or ["unknown error"])[0]
    logged = [m for m in dict.fromkeys(GDAL_ERRORS.messages) if m not in message]
    GDAL_ERRORS.messages.clear()
    return f"{message} ({'; '.join(logged)})" if logged else message


def inspect_source(
    path: str | Path, bands: Sequence[int] | None, expected_bands: int, allow_pixel_grid: bool = False
) -> SourceInfo:
    """Open ``path`` once, check it can be used, and describe it (bands, dtype, grid, mask).

    ``path`` is any input :mod:`lemevit_geo.inputs` knows (a file, a URL, an object-store key, a STAC Item,
    with an area): the returned ``SourceInfo.path`` is what GDAL opens, its ``name`` the input as given.

    Raises:
        InputError: missing file, not a raster, corrupt data, no CRS/geotransform (unless
            ``allow_pixel_grid``), unsupported dtype, or a band count other than ``expected_bands``.
    """
    from lemevit_geo.inputs import check_exists, dataset, http_settings

    path = str(path)
    check_exists(path)
    opened = dataset(path, expected_bands)
    try:
        with rasterio.Env(**http_settings()), rasterio.open(opened) as src:
            if not allow_pixel_grid and (src.crs is None or src.transform == Affine.identity()):
                raise InputError(
                    f"{path} has no CRS or geotransform, so outputs could not be placed on a map; "
                    "pass `allow_pixel_grid` to work in pixel coordinates"
                )
            mask, chosen = plan_mask(src, bands, path)
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
            info = SourceInfo(opened, src.width, src.height, src.crs, src.transform, chosen, dtype, mask)
            return info if opened == path else dataclasses.replace(info, name=path)
    except READ_ERRORS as exc:
        raise InputError(f"{path} cannot be read as a raster: {read_error(exc)}") from exc


def check_raster_path(path: Path) -> None:
    """Refuse a raster output whose name does not say GeoTIFF (we write GeoTIFF, or COG, only)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise OutputError(f"{path}: raster outputs are GeoTIFFs; name them .tif or .tiff")


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
