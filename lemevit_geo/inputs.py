"""What an input string means and how GDAL opens it: local files, URLs, object stores, STAC Items, areas.

An input is a string a user typed (or a catalogue search returned):

- a local path (``scene.tif``), or anything GDAL opens (``/vsizip/...``, a VRT);
- a URL or object-store key: ``https://`` and ``http://`` read through GDAL's ``/vsicurl/``, ``s3://`` through
  ``/vsis3/``, ``gs://`` through ``/vsigs/``, ``az://`` through ``/vsiaz/`` (credentials from the usual
  environment: ``AWS_*``, ``AWS_NO_SIGN_REQUEST``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``);
  windowed reads fetch only the blocks a tile needs;
- a STAC Item (a ``.json`` file or URL, or an API's ``.../items/ID``), read with pystac: its assets are
  stacked into one VRT on the finest asset's grid (or ``resolution``);
- any of these with options after ``#`` (``scene.tif#bbox=500000,4000000,501000,4001000&bbox_crs=EPSG:32633``):
  ``bbox`` (and ``bbox_crs``, default ``EPSG:4326``) limits the input to the pixels that area touches, on the
  scene's own grid; ``assets`` and ``resolution`` choose a STAC Item's assets and grid; ``sign`` signs hrefs
  (``planetary-computer``) each time the input is opened, so tokens are fresh in every worker. The command line
  writes these options from ``--bbox``, ``--assets``, ... (:func:`with_options`), so jobs, their hashes and
  their messages carry the whole meaning of an input in one string.

:func:`dataset` turns an input into the name GDAL opens: the path itself, a ``/vsi...`` path, or the XML of
a VRT (windows and stacks). Outputs are always local files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from xml.etree import ElementTree as ET

from lemevit_geo.errors import InputError

#: URL schemes and the GDAL virtual file systems that read them.
REMOTE = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}

#: Options an input may carry after ``#``.
OPTIONS = ("bbox", "bbox_crs", "assets", "resolution", "sign")

#: Who signs hrefs before they are read (``sign``): Planetary Computer's SAS tokens (``planetary-computer``).
SIGNERS = ("planetary-computer",)

#: The bbox CRS when none is given: longitude/latitude, as STAC searches use.
DEFAULT_BBOX_CRS = "EPSG:4326"

#: GDAL's network settings for a run (a user's own environment wins): a few retries of a failed request, no
#: directory listing when a file is opened (one request less per file, and none on buckets that forbid
#: listing), and ``/vsicurl/`` only for raster files (a stray sidecar probe of ``.aux.xml`` or ``.msk`` is
#: not sent).
HTTP_SETTINGS = {
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.img,.nc,.h5,.zarr",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}

#: GDAL's names of the data types a VRT band may have.
GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}

#: Common names of the bands a bundle takes by their count, used to pick a STAC Item's assets when
#: ``assets`` is not given.
COMMON_NAMES = {1: ("red",), 3: ("red", "green", "blue"), 4: ("red", "green", "blue", "nir")}


def http_settings() -> dict[str, str]:
    """:data:`HTTP_SETTINGS` less those the user set in the environment."""
    return {k: v for k, v in HTTP_SETTINGS.items() if k not in os.environ}


@dataclass(frozen=True)
class InputSpec:
    """An input string taken apart: the source (path, URL, STAC Item) and the options after ``#``."""

    source: str
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str = DEFAULT_BBOX_CRS
    assets: tuple[str, ...] | None = None
    resolution: float | None = None
    sign: str | None = None

    @classmethod
    def parse(cls, text: str | Path) -> InputSpec:
        """Split ``text`` at its last ``#`` when what follows is options (a file name may hold a ``#``)."""
        text = str(text)
        head, sep, tail = text.rpartition("#")
        pairs = parse_qsl(tail, keep_blank_values=True) if sep else []
        if not pairs or any(k not in OPTIONS for k, _ in pairs):
            return cls(text)
        values = dict(pairs)
        try:
            bbox = tuple(float(v) for v in values["bbox"].split(",")) if "bbox" in values else None
            resolution = float(values["resolution"]) if "resolution" in values else None
        except ValueError:
            raise InputError(f"{text}: `bbox` and `resolution` must be numbers") from None
        if bbox is not None:
            bbox = check_bbox(bbox)
        assets = tuple(a for a in values.get("assets", "").split(",") if a) or None
        sign = check_signer(values.get("sign") or None)
        return cls(head, bbox, values.get("bbox_crs") or DEFAULT_BBOX_CRS, assets, resolution, sign)

    def __str__(self) -> str:
        options: dict[str, str] = {}
        if self.bbox is not None:
            options["bbox"] = ",".join(map(_number, self.bbox))
            if self.bbox_crs != DEFAULT_BBOX_CRS:
                options["bbox_crs"] = self.bbox_crs
        if self.assets:
            options["assets"] = ",".join(self.assets)
        if self.resolution is not None:
            options["resolution"] = _number(self.resolution)
        if self.sign:
            options["sign"] = self.sign
        return f"{self.source}#{urlencode(options, safe=',:')}" if options else self.source


def _number(value: float) -> str:
    """A number as the shortest text that reads back as the same float (``500000``, ``0.1``)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def check_signer(name: str | None) -> str | None:
    """``name`` if it is one of :data:`SIGNERS` (or None)."""
    if name is not None and name not in SIGNERS:
        raise InputError(f"`sign` {name!r} is not known; choose {', '.join(SIGNERS)}")
    return name


def check_bbox(values: Sequence[float]) -> tuple[float, float, float, float]:
    """``values`` as ``(minx, miny, maxx, maxy)``, refused unless four finite numbers with min < max."""
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"`bbox` takes four numbers minx,miny,maxx,maxy, got {','.join(map(str, values))}")
    minx, miny, maxx, maxy = (float(v) for v in values)
    if minx >= maxx or miny >= maxy:
        raise InputError(f"`bbox` {minx:g},{miny:g},{maxx:g},{maxy:g} is empty: give minx,miny,maxx,maxy")
    return minx, miny, maxx, maxy


def with_options(
    text: str,
    bbox: Sequence[float] | None = None,
    bbox_crs: str | None = None,
    assets: Sequence[str] | None = None,
    resolution: float | None = None,
    sign: str | None = None,
) -> str:
    """``text`` with the options given here added (those it carries already stay unless given here)."""
    spec = InputSpec.parse(text)
    if sign:
        spec = replace(spec, sign=check_signer(sign))
    if bbox is not None:
        spec = replace(spec, bbox=check_bbox(bbox), bbox_crs=bbox_crs or DEFAULT_BBOX_CRS)
    if assets:
        spec = replace(spec, assets=tuple(assets))
    if resolution is not None:
        spec = replace(spec, resolution=float(resolution))
    return str(spec)


def scheme(source: str) -> str | None:
    """The remote scheme of ``source`` (``https``, ``s3``, ...), or None for a local or GDAL path."""
    name = source.split("://", 1)[0].lower() if "://" in source else ""
    return name if name in REMOTE else None


def is_remote(text: str | Path) -> bool:
    """Whether an input is read over the network (a URL, an object store, or a ``/vsi`` network path)."""
    source = InputSpec.parse(text).source
    return scheme(source) is not None or source.startswith(tuple(REMOTE.values()))


def gdal_path(source: str) -> str:
    """The path GDAL opens for a source: URLs and object-store keys through their ``/vsi`` file systems."""
    name = scheme(source)
    if name is None:
        return source
    rest = source.split("://", 1)[1]
    return f"{REMOTE[name]}{source if name.startswith('http') else rest}"


def local_file(text: str | Path) -> Path | None:
    """The local file an input reads, or None (a URL, an object store, a ``/vsi`` path, a VRT's XML)."""
    source = InputSpec.parse(text).source
    if scheme(source) or source.startswith(("/vsi", "<")):
        return None
    return Path(source)


def stem(text: str | Path) -> str:
    """The name an output per input takes: the file name of the source less its suffix (``a.tif``, ``.../a.tif?
    sig=...`` and ``s3://b/a.tif#bbox=...`` all give ``a``; a STAC API item ``.../items/ID`` gives ``ID``)."""
    source = InputSpec.parse(text).source
    path = urlsplit(source).path if scheme(source) else source
    name = PurePosixPath(unquote(path).rstrip("/")).name or "input"
    return name[: -len(suffix)] if (suffix := PurePosixPath(name).suffix) and len(suffix) <= 8 else name


def is_stac_item(source: str) -> bool:
    """Whether a source names a STAC Item: a ``.json`` file or URL, or an API's ``.../items/ID``."""
    path = urlsplit(source).path if scheme(source) else source
    path = path.lower().rstrip("/")
    return path.endswith((".json", ".geojson")) or (scheme(source) is not None and "/items/" in path)


def check_exists(text: str | Path) -> None:
    """Refuse a local input that does not exist (remote ones are checked when they are opened)."""
    path = local_file(text)
    if path is not None and not str(path).startswith("/vsi") and not path.exists():
        raise InputError(f"{path} does not exist")


def dataset(text: str | Path, bands: int = 0) -> str:
    """The name GDAL opens for an input (a path, a ``/vsi`` path, or a VRT's XML): see the module docstring.
    ``bands`` is the number of bands the model takes (it picks a STAC Item's assets by their common names).
    Resolved once per process, except signed inputs (tokens expire: they are signed at every opening)."""
    text = str(text)
    return _open_name(text, bands) if InputSpec.parse(text).sign else _cached_name(text, bands)


def _open_name(text: str, bands: int) -> str:
    import rasterio

    from lemevit_geo.raster import READ_ERRORS, read_error

    spec = InputSpec.parse(text)
    try:
        with rasterio.Env(**http_settings()):
            if is_stac_item(spec.source):
                from lemevit_geo.stac import item_layers

                layers = item_layers(spec.source, spec.assets, bands, spec.sign)
                return stack_vrt(layers, clip(stack_grid(layers, spec.resolution, spec.source), spec))
            path = gdal_path(sign_href(spec.source, spec.sign))
            if spec.bbox is None:
                return path
            layer = describe_layer(path)
            return stack_vrt([layer], clip(layer.grid, spec))
    except READ_ERRORS as exc:
        raise InputError(f"{spec.source} cannot be read as a raster: {read_error(exc)}") from exc


_cached_name = lru_cache(maxsize=256)(_open_name)


def sign_href(href: str, signer: str | None) -> str:
    """``href`` signed by ``signer`` (``planetary-computer``: a SAS token for Azure Blob Storage hrefs, fetched
    from its token endpoint, ``PC_SDK_SAS_URL``; other hrefs unchanged), or as it is without a signer."""
    if signer is None or scheme(href) is None:
        return href
    try:
        import planetary_computer
    except ImportError:
        raise InputError("`sign` planetary-computer needs its SDK: pip install 'lemevit-geo[pc]'") from None
    try:
        return str(planetary_computer.sign_url(href))
    except Exception as exc:  # requests' errors, a refused token: one line naming the href
        raise InputError(f"{href}: signing with planetary-computer failed: {str(exc).splitlines()[0]}") from exc


@dataclass(frozen=True)
class Grid:
    """A raster grid: size, CRS and geotransform (an :class:`affine.Affine`)."""

    width: int
    height: int
    crs: Any
    transform: Any


@dataclass(frozen=True)
class Layer:
    """One raster a VRT reads bands from: what GDAL said when it was opened.

    Attributes:
        path: The name GDAL opens.
        grid: Its grid.
        bands: Its bands to take, 1-based.
        dtypes: The data type of each of its bands.
        nodata: The nodata value of each of its bands.
        colorinterp: The colour interpretation of each of its bands (GDAL's names: ``Red``, ``Alpha``, ...).
        masked: Whether it has an internal (per-dataset) mask.
        name: What messages call it (an asset key, or the path).
    """

    path: str
    grid: Grid
    bands: tuple[int, ...]
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    colorinterp: tuple[str, ...]
    masked: bool = False
    name: str = ""


def describe_layer(path: str, name: str = "", nodata: float | None = None) -> Layer:
    """Open ``path`` and describe it as a :class:`Layer` of all its bands (``nodata`` when the file has none)."""
    import rasterio
    from rasterio.enums import MaskFlags

    with rasterio.open(path) as src:
        grid = Grid(src.width, src.height, src.crs, src.transform)
        values = tuple(v if v is not None else nodata for v in src.nodatavals)
        flags = src.mask_flag_enums[0]
        masked = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags and MaskFlags.nodata not in flags
        interp = tuple(ci.name.capitalize() for ci in src.colorinterp)
        return Layer(path, grid, tuple(range(1, src.count + 1)), src.dtypes, values, interp, masked, name or path)


def stack_grid(layers: Sequence[Layer], resolution: float | None, where: str) -> Grid:
    """The grid that stacks ``layers``: their common area at the finest layer's pixel size (or ``resolution``,
    in the CRS's units), anchored at the area's top-left corner. The layers must share a CRS and be north-up."""
    first = layers[0].grid
    for layer in layers:
        if layer.grid.crs != first.crs:
            raise InputError(
                f"{where}: assets {layers[0].name} and {layer.name} are in different CRSs "
                f"({first.crs}, {layer.grid.crs}); choose assets of one CRS with `assets`"
            )
        if layer.grid.transform.b or layer.grid.transform.d:
            raise InputError(f"{where}: asset {layer.name} is rotated; only north-up assets can be stacked")
        if set(layer.dtypes) != set(layers[0].dtypes[:1]):
            raise InputError(
                f"{where}: assets {layers[0].name} and {layer.name} differ in data type ({layers[0].dtypes[0]}, "
                f"{', '.join(sorted(set(layer.dtypes)))}); choose assets of one type with `assets`"
            )
    bounds = [_bounds(layer.grid) for layer in layers]
    left, bottom = max(b[0] for b in bounds), max(b[1] for b in bounds)
    right, top = min(b[2] for b in bounds), min(b[3] for b in bounds)
    finest = min(layers, key=lambda layer: abs(layer.grid.transform.a)).grid.transform
    xres, yres = (resolution, resolution) if resolution else (abs(finest.a), abs(finest.e))
    width, height = round((right - left) / xres), round((top - bottom) / yres)
    if width < 1 or height < 1:
        raise InputError(f"{where}: the assets {', '.join(x.name for x in layers)} do not overlap")
    from affine import Affine

    return Grid(width, height, first.crs, Affine(xres, 0.0, left, 0.0, -yres, top))


def _bounds(grid: Grid) -> tuple[float, float, float, float]:
    t = grid.transform
    xs = (t.c, t.c + t.a * grid.width)
    ys = (t.f, t.f + t.e * grid.height)
    return min(xs), min(ys), max(xs), max(ys)


def clip(grid: Grid, spec: InputSpec) -> Grid:
    """``grid`` cut to the pixels ``spec.bbox`` touches (every pixel the area reaches into, whole), on the same
    pixel lattice: the transform is the scene's, shifted to the window's corner. Without a bbox, ``grid``."""
    if spec.bbox is None:
        return grid
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    bbox = spec.bbox
    if grid.crs is not None:
        try:
            bbox = transform_bounds(spec.bbox_crs, grid.crs, *bbox, densify_pts=21)
        except Exception as exc:  # an unknown CRS name: rasterio's CRSError, pyproj's errors
            raise InputError(f"`bbox_crs` {spec.bbox_crs!r} cannot be used: {exc}") from exc
    window = from_bounds(*bbox, transform=grid.transform)
    # whole pixels the area reaches into; a bbox on pixel edges (to 1e-6 px) takes no neighbour
    col0 = max(0, math.floor(round(window.col_off, 6)))
    row0 = max(0, math.floor(round(window.row_off, 6)))
    col1 = min(grid.width, math.ceil(round(window.col_off + window.width, 6)))
    row1 = min(grid.height, math.ceil(round(window.row_off + window.height, 6)))
    if col1 <= col0 or row1 <= row0:
        area = ",".join(f"{v:g}" for v in spec.bbox)
        raise InputError(f"{spec.source}: `bbox` {area} ({spec.bbox_crs}) does not overlap the scene")
    from affine import Affine

    return Grid(col1 - col0, row1 - row0, grid.crs, grid.transform * Affine.translation(col0, row0))


def _rect(tag: str, x: float, y: float, w: float, h: float) -> ET.Element:
    def text(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    return ET.Element(tag, xOff=text(x), yOff=text(y), xSize=text(w), ySize=text(h))


def _source(layer: Layer, band: str, grid: Grid, tag: str = "SimpleSource") -> ET.Element:
    """A VRT source reading ``band`` of ``layer`` over the whole of ``grid`` (its pixels in the layer's)."""
    t, g = layer.grid.transform, grid.transform
    x0, y0 = (g.c - t.c) / t.a, (g.f - t.f) / t.e
    w, h = grid.width * g.a / t.a, grid.height * g.e / t.e
    same = all(abs(v - round(v)) < 1e-9 for v in (x0, y0, w, h))
    x0, y0, w, h = (float(round(v)) if same else v for v in (x0, y0, w, h))
    source = ET.Element(tag)
    if not (w == grid.width and h == grid.height):
        source.set("resampling", "nearest")
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = layer.path
    ET.SubElement(source, "SourceBand").text = band
    source.append(_rect("SrcRect", x0, y0, w, h))
    source.append(_rect("DstRect", 0, 0, grid.width, grid.height))
    return source


def stack_vrt(layers: Sequence[Layer], grid: Grid) -> str:
    """The XML of a VRT on ``grid`` holding the chosen bands of ``layers`` in order, with their nodata values
    and colour interpretation, and the first layer's internal mask (so nodata, alpha and masks mean what they
    meant in the files). Where ``grid`` is a window of a layer's own grid its pixels are copied as they are."""
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    if grid.crs is not None:
        ET.SubElement(root, "SRS").text = grid.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in grid.transform.to_gdal())
    index = 0
    for layer in layers:
        for band in layer.bands:
            index += 1
            node = ET.SubElement(root, "VRTRasterBand", dataType=GDAL_TYPES[layer.dtypes[band - 1]], band=str(index))
            if layer.nodata[band - 1] is not None:
                ET.SubElement(node, "NoDataValue").text = repr(float(layer.nodata[band - 1]))
            ET.SubElement(node, "ColorInterp").text = layer.colorinterp[band - 1]
            node.append(_source(layer, str(band), grid))
    if layers[0].masked:
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        mask.append(_source(layers[0], "mask,1", grid))
    return ET.tostring(root, encoding="unicode")
