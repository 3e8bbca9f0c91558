"""Polygons from class rasters, window by window, merged across window seams; vector writing."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize, shapes
from rasterio.windows import Window
from shapely.geometry import shape

from lemevit_geo.errors import InputError, LemevitWarning, OutputError
from lemevit_geo.outputs import atomic_path, check_output, temporary_sibling

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".parquet": "parquet"}


def check_vector_path(path: Path) -> None:
    """Refuse a vector output whose extension names no supported format."""
    if path.suffix.lower() not in DRIVERS:
        raise OutputError(f"{path}: vector outputs are .gpkg, .parquet or .geojson")


def polygonize(
    class_path: str | Path,
    confidence_path: str | Path,
    classes: Sequence[str],
    window: int = 2048,
    min_area: float = 0.0,
    simplify: float = 0.0,
    skip_classes: Sequence[int] = (),
) -> gpd.GeoDataFrame:
    """Polygons of the class regions of a written class raster.

    The raster is read ``window`` x ``window`` pixels at a time; pieces that touch a window seam are
    unioned with their neighbours at the end, so a region crossing seams is one polygon. Each
    polygon carries its class, area (in CRS units) and the mean probability of its class from the
    confidence raster (uint8, 0..254). ``simplify`` (CRS units) simplifies the polygons as a
    coverage, so neighbours keep sharing their edges.
    """
    done: list[tuple[int, shapely.Geometry, float, int]] = []
    seam: dict[int, list[tuple[shapely.Geometry, float, int]]] = defaultdict(list)
    with rasterio.open(class_path) as src, rasterio.open(confidence_path) as conf_src:
        crs = src.crs
        for value, geom, total, count, at_seam in _window_pieces(src, conf_src, window, skip_classes):
            if at_seam:
                seam[value].append((geom, total, count))
            else:
                done.append((value, geom, total, count))
    for value, recs in seam.items():
        done.extend(_merge(value, recs))
    gdf = gpd.GeoDataFrame(
        {
            "class_id": [d[0] for d in done],
            "class_name": [classes[d[0]] if d[0] < len(classes) else str(d[0]) for d in done],
            "mean_prob": [d[2] / max(d[3], 1) / 254.0 for d in done],
        },
        geometry=[d[1] for d in done],
        crs=crs,
    )
    if simplify > 0 and len(gdf):
        gdf.geometry = shapely.coverage_simplify(gdf.geometry.values, simplify)
    gdf["area"] = gdf.geometry.area
    if min_area > 0:
        gdf = gdf[gdf["area"] >= min_area]
    return gdf.sort_values(["class_id", "area"], ascending=[True, False], ignore_index=True)[
        ["class_id", "class_name", "area", "mean_prob", "geometry"]
    ]


def _window_pieces(
    src: rasterio.io.DatasetReader, conf_src: rasterio.io.DatasetReader, window: int, skip_classes: Sequence[int]
) -> Iterator[tuple[int, shapely.Geometry, float, int, bool]]:
    """Polygons of each window: class, geometry, confidence sum, pixel count, and whether it reaches a seam."""
    for row in range(0, src.height, window):
        for col in range(0, src.width, window):
            win = Window(col, row, min(window, src.width - col), min(window, src.height - row))
            cls = src.read(1, window=win)
            valid = cls != src.nodata
            for c in skip_classes:
                valid &= cls != c
            if not valid.any():
                continue
            conf = conf_src.read(1, window=win).astype(np.float64)
            tr = src.window_transform(win)
            pieces = [(shape(g), int(v)) for g, v in shapes(cls, mask=valid, transform=tr, connectivity=4)]
            ids = rasterize(
                ((g, i + 1) for i, (g, _) in enumerate(pieces)), out_shape=cls.shape, transform=tr, dtype="int32"
            )
            sums = np.bincount(ids.ravel(), weights=conf.ravel(), minlength=len(pieces) + 1)
            counts = np.bincount(ids.ravel(), minlength=len(pieces) + 1)
            # the window's inner edges: pieces reaching them may continue next door
            inner = (row > 0, col > 0, row + win.height < src.height, col + win.width < src.width)
            for i, (geom, value) in enumerate(pieces):
                yield value, geom, float(sums[i + 1]), int(counts[i + 1]), _touches_seam(geom, tr, win, inner)


def _touches_seam(geom: shapely.Geometry, tr: rasterio.Affine, win: Window, inner: tuple[bool, ...]) -> bool:
    """True if ``geom`` reaches a window edge that is not the scene edge."""
    minx, miny, maxx, maxy = geom.bounds
    inv = ~tr
    cols, rows = zip(*(inv @ (x, y) for x, y in ((minx, miny), (maxx, maxy))), strict=True)
    r0, r1, c0, c1 = min(rows), max(rows), min(cols), max(cols)
    top, left, bottom, right = inner
    eps = 1e-6
    return (
        (top and r0 <= eps)
        or (left and c0 <= eps)
        or (bottom and r1 >= win.height - eps)
        or (right and c1 >= win.width - eps)
    )


def _merge(
    value: int, recs: list[tuple[shapely.Geometry, float, int]]
) -> list[tuple[int, shapely.Geometry, float, int]]:
    """Union the seam pieces of one class and add up their probability sums and pixel counts."""
    parts = list(shapely.get_parts(shapely.union_all([r[0] for r in recs])))
    tree = shapely.STRtree(parts)
    points = shapely.point_on_surface([r[0] for r in recs])
    which = tree.query(points, predicate="within")
    sums, counts = np.zeros(len(parts)), np.zeros(len(parts), dtype=np.int64)
    for piece, part in zip(*which, strict=True):
        sums[part] += recs[piece][1]
        counts[part] += recs[piece][2]
    return [(value, p, float(s), int(n)) for p, s, n in zip(parts, sums, counts, strict=True)]


def write_vector(gdf: gpd.GeoDataFrame, path: Path, overwrite: bool) -> Path:
    """Write polygons atomically: GeoPackage, GeoParquet or GeoJSON by extension."""
    check_vector_path(path)
    driver = DRIVERS[path.suffix.lower()]
    with atomic_path(path, overwrite) as tmp:
        if driver == "parquet":
            gdf.to_parquet(tmp)
        else:
            gdf.to_file(tmp, driver=driver, layer=path.stem, engine="pyogrio")
    return path


class VectorStream:
    """A vector file written in parts, in bounded memory (GeoPackage, GeoParquet or GeoJSON by extension).

    Parts are appended to a hidden GeoPackage beside the target as they come; :meth:`finish` streams the
    layer in batches into the target's format under a temporary name and renames it into place. On an
    error (or without :meth:`finish`) nothing is left behind. Use as a context manager.

    Args:
        path: The target file.
        overwrite: Replace an existing target.
        template: An empty frame with the columns, their types and the CRS (written when no part comes).
        geometry_type: The layer's geometry type.
        inputs: Files the target must not be (the run's inputs).
    """

    def __init__(
        self,
        path: Path,
        overwrite: bool,
        template: gpd.GeoDataFrame,
        geometry_type: str = "Polygon",
        inputs: Sequence[str | Path] = (),
    ) -> None:
        self.path, self.overwrite, self.inputs = Path(path), overwrite, list(inputs)
        check_vector_path(self.path)
        check_output(self.path, overwrite, self.inputs)
        self.template, self.geometry_type = template, geometry_type
        self.stage = temporary_sibling(self.path.with_suffix(".gpkg"))
        self.count = 0

    def __enter__(self) -> VectorStream:
        return self

    def append(self, part: gpd.GeoDataFrame) -> None:
        """Add features (with the template's columns)."""
        if len(part):
            self._write(part)

    def _write(self, frame: gpd.GeoDataFrame) -> None:
        import pyogrio

        append = self.stage.exists()
        pyogrio.write_dataframe(
            frame, self.stage, layer=self.path.stem, driver="GPKG", append=append, geometry_type=self.geometry_type
        )
        self.count += len(frame)

    def finish(self) -> Path:
        """Publish the file under its name."""
        if not self.stage.exists():
            self._write(self.template)
        driver = DRIVERS[self.path.suffix.lower()]
        with atomic_path(self.path, self.overwrite, self.inputs) as tmp:
            if driver == "GPKG":
                os.replace(self.stage, tmp)
            elif driver == "parquet":
                _gpkg_to_parquet(self.stage, tmp)
            else:
                _gpkg_to(self.stage, tmp, driver, self.geometry_type)
        return self.path

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.stage.unlink()


def _gpkg_to(stage: Path, target: Path, driver: str, geometry_type: str) -> None:
    """Stream a GeoPackage layer into another OGR format."""
    import pyogrio

    with pyogrio.open_arrow(stage, use_pyarrow=True, batch_size=16384) as (meta, reader):
        pyogrio.write_arrow(
            reader,
            target,
            driver=driver,
            layer=target.stem,
            geometry_name=meta["geometry_name"],
            geometry_type=geometry_type,
            crs=meta["crs"],
        )


def _gpkg_to_parquet(stage: Path, target: Path) -> None:
    """Stream a GeoPackage layer into GeoParquet 1.0 (WKB geometry column ``geometry``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyogrio
    from pyproj import CRS

    with pyogrio.open_arrow(stage, use_pyarrow=True, batch_size=16384) as (meta, reader):
        geom = meta["geometry_name"]
        crs = CRS(meta["crs"]).to_json_dict() if meta["crs"] else None
        column: dict[str, Any] = {"encoding": "WKB", "geometry_types": [meta["geometry_type"]], "crs": crs}
        geo = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column}}
        fields = [pa.field("geometry", pa.binary()) if f.name == geom else f for f in reader.schema]
        schema = pa.schema(fields, metadata={b"geo": json.dumps(geo).encode()})
        with pq.ParquetWriter(target, schema) as writer:
            for batch in reader:
                arrays = [c.cast(f.type) if c.type != f.type else c for c, f in zip(batch.columns, fields, strict=True)]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))


#: Class columns tried, in order, when none is named.
CLASS_COLUMNS = ("class_name", "class")


def repair_polygons(geoms: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """``geoms`` with invalid geometries (a self-intersecting "bow-tie", a ring that touches itself) made valid by
    ``shapely.make_valid`` (polygonal parts kept, collapsed parts dropped; one that collapses whole is left as it
    is, to be refused as degenerate), and how many were repaired; a warning names the count and the first rows."""
    present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    invalid = present & ~shapely.is_valid(geoms)
    if not invalid.any():
        return geoms, 0
    fixed = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
    invalid[np.flatnonzero(invalid)[shapely.is_empty(fixed)]] = False  # collapsed (zero area): refused as such
    if not invalid.any():
        return geoms, 0
    geoms = np.array(geoms, dtype=object)
    geoms[invalid] = fixed[~shapely.is_empty(fixed)]
    rows = ", ".join(str(i) for i in np.flatnonzero(invalid)[:5])
    warnings.warn(
        f"{path}: {int(invalid.sum())} invalid (self-intersecting) polygon(s) repaired with shapely.make_valid "
        f"(rows {rows})",
        LemevitWarning,
        stacklevel=3,
    )
    return geoms, int(invalid.sum())


def points_to_squares(geoms: np.ndarray, size: float) -> np.ndarray:
    """Points (and multipoints: their centroid) as axis-aligned squares of side ``size``; other geometries as
    they are."""
    if not size > 0:
        raise InputError(f"`point_size` must be a positive length in map units, got {size}")
    point = np.isin(shapely.get_type_id(geoms), [0, 4]) & ~shapely.is_empty(geoms)
    out = np.array(geoms, dtype=object)
    centres = shapely.centroid(out[point])
    out[point] = shapely.buffer(centres, size / 2, cap_style="square")
    return out


def _object_geometries(gdf: gpd.GeoDataFrame, path: Path, crs: Any, point_size: float | None) -> gpd.GeoDataFrame:
    """Object labels as polygons: lines and empty geometries skipped (one warning), points as squares of side
    ``point_size`` in ``crs`` units (refused without it)."""
    gdf = _skip_other(gdf, path)
    if point_size is None:
        if np.isin(shapely.get_type_id(gdf.geometry.values), [0, 4]).any():
            raise InputError(f"{path} holds points: give `point_size`, the side of the box around each (map units)")
        return gdf
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    return gdf.set_geometry(points_to_squares(gdf.geometry.values, point_size))


def _skip_other(gdf: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """``gdf`` without its lines, other non-area non-point geometries and empty ones, and one warning counting
    them."""
    geoms = gdf.geometry.values
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    other = ~empty & ~np.isin(shapely.get_type_id(geoms), [0, 3, 4, 6])
    if empty.any() or other.any():
        warnings.warn(
            f"{path}: skipped {int(other.sum())} line or other non-polygon feature(s) and {int(empty.sum())} empty "
            f"one(s) of {len(gdf)}",
            LemevitWarning,
            stacklevel=3,
        )
    return gdf[~empty & ~other]


def _check_labelled_polygons(gdf: gpd.GeoDataFrame, name: str, path: Path) -> None:
    """Refuse features without a class in column ``name``, and geometries that are not polygons, empty or of zero
    area, naming the first rows at fault."""
    geoms = gdf.geometry.values
    bad = [
        ("has no class", gdf[name].isna().to_numpy()),
        ("is not a polygon", ~np.isin(shapely.get_type_id(geoms), [3, 6]) & ~shapely.is_missing(geoms)),
        ("is empty", shapely.is_missing(geoms) | shapely.is_empty(geoms)),
        ("is degenerate (zero area)", ~(shapely.area(geoms) > 0)),
    ]
    for problem, rows in bad:
        if rows.any():
            first = ", ".join(str(i) for i in np.flatnonzero(rows)[:5])
            message = f"{int(rows.sum())} feature(s) whose geometry {problem} (rows {first})"
            if problem == "has no class":
                message = f"{int(rows.sum())} feature(s) without a class in {name!r} (rows {first})"
            raise InputError(f"{path}: {message}; fix or remove them")


def read_polygons(
    path: str | Path,
    column: str | None,
    crs: Any = None,
    what: str = "labels",
    allow_empty: bool = False,
    point_size: float | None = None,
    skip_other: bool = False,
) -> gpd.GeoDataFrame:
    """Labelled polygons of a vector file, checked, in ``crs`` (reprojected when the file has another CRS).

    The class column is ``column``, else the first of :data:`CLASS_COLUMNS` the file has; it is returned as
    strings in column ``class``. Refused with one clear line: a file that cannot be read, a missing class
    column, a file without features (unless ``allow_empty``), features without a class, geometries that are
    not polygons, and empty or degenerate (zero-area) polygons, naming the first rows at fault.

    With ``point_size`` points become squares of that side in ``crs`` units (centred on them, axis-aligned);
    with ``skip_other`` (or ``point_size``: object labels) lines, other geometries and empty ones are counted
    and left out with one warning, and points without ``point_size`` are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        gdf = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    except Exception as exc:  # GDAL/pyarrow raise many types for unreadable files
        first = str(exc).splitlines()[0].split("; It might help")[0]  # GDAL's hint about driver prefixes
        raise InputError(f"{path} cannot be read as a vector file: {first}") from exc
    geoms, repaired = repair_polygons(gdf.geometry.values, path)  # bow-ties made valid: result.attrs["repaired"]
    gdf = gdf.set_geometry(geoms)
    name = column or next((c for c in CLASS_COLUMNS if c in gdf.columns), None)
    if name is None or name not in gdf.columns:
        wanted = f"column {column!r}" if column else f"class column ({' or '.join(CLASS_COLUMNS)})"
        raise InputError(f"{path} has no {wanted}; name it with `label_column` (columns: {', '.join(gdf.columns)})")
    if not len(gdf) and not allow_empty:
        raise InputError(f"{path} holds no polygons")
    if skip_other or point_size is not None:
        gdf = _object_geometries(gdf, path, crs, point_size)
    _check_labelled_polygons(gdf, name, path)
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    if crs is not None and gdf.crs is None:
        warnings.warn(f"{path} has no CRS: its coordinates are taken to be in {crs}", LemevitWarning, stacklevel=2)
    out = gpd.GeoDataFrame({"class": gdf[name].astype(str).to_numpy()}, geometry=gdf.geometry.values, crs=gdf.crs)
    out.attrs["repaired"] = repaired
    for extra in ("difficult", "score"):
        if extra in gdf.columns and extra != name:
            out[extra] = gdf[extra].to_numpy()
    return out
