"""One self-contained HTML page: layers, legends and a run summary, with Leaflet inlined.

A :class:`MapReport` collects base images (the input quick-looks, shown one at a time), overlays (class
rasters as images, vectors as GeoJSON with popups) with their legends, and summary rows; :meth:`write`
fills the page template (``lemevit_geo/assets/report/``) with Leaflet's JavaScript and CSS (vendored from
the npm package, ``lemevit_geo/assets/leaflet/``) and the layers as JSON, and writes it atomically. The
map uses Leaflet's ``CRS.Simple`` in the scene's own map coordinates (x east, y north), so overlays and
vectors land exactly where the scene's CRS puts them, whatever that CRS is.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from lemevit_geo.bundle import PALETTE
from lemevit_geo.errors import InputError
from lemevit_geo.outputs import atomic_path, check_output
from lemevit_geo.pipelines.report.overview import (
    OverviewGrid,
    class_colors,
    class_image,
    color_of,
    count_classes,
    image_data_uri,
    quicklook,
)

#: Most features a vector layer draws (the best-scored first); the page states the cap when it applies.
VECTOR_CAP = 10_000
#: Suffixes a report may have.
REPORT_SUFFIXES = (".html", ".htm")


def hex_color(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` as ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def check_report_path(path: Path, overwrite: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse a report path that is not ``.html``, cannot be written, is an input, or exists without ``overwrite``."""
    if Path(path).suffix.lower() not in REPORT_SUFFIXES:
        raise InputError(f"`report` {path} must be named .html")
    check_output(Path(path), overwrite, inputs)


@dataclass
class Legend:
    """A legend: one entry per class with its colour and share (of the scene's valid pixels, or of the objects).

    Attributes:
        title: What the shares are of.
        items: ``{"name", "color", "share", "count"}`` per class.
        note: A line under the entries.
    """

    title: str
    items: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def add(self, name: str, rgb: Sequence[int], count: int | None, total: int | None) -> None:
        share = None if count is None or not total else round(count / total, 6)
        self.items.append({"name": name, "color": hex_color(rgb), "share": share, "count": count})

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "items": self.items, "note": self.note}


def class_legend(path: Path, counts: dict[str, int] | None, title: str) -> Legend:
    """The legend of a class raster: every class it names, with its share of the valid pixels (the run's
    ``counts`` per class name, else counted in the raster, block by block)."""
    names, colors, _ = class_colors(path)
    if counts is None:
        by_value = count_classes(path)
        names = names or {v: f"class {v}" for v in sorted(set(colors) | set(by_value))}
        counts = {name: by_value.get(v, 0) for v, name in names.items()}
    legend = Legend(title)
    total = sum(counts.values())
    for value, name in sorted(names.items()):
        legend.add(name, color_of(colors, value), counts.get(name), total)
    return legend


@dataclass
class MapReport:
    """The layers and summary of one report page, on one :class:`OverviewGrid`.

    Attributes:
        title: The page's heading.
        grid: Where every image layer is drawn (the scene's footprint, at most a few thousand px).
        bases: Input quick-looks (one shown at a time: a toggle between dates).
        overlays: Class rasters and vector layers, each with its legend.
        summary: ``(label, value)`` rows of the run-summary panel.
        details: The full run summary (shown as JSON, folded).
    """

    title: str
    grid: OverviewGrid
    bases: list[dict[str, Any]] = field(default_factory=list)
    overlays: list[dict[str, Any]] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add_base(self, name: str, image: str | Path) -> np.ndarray:
        """Add the quick-look of ``image`` as a base layer; returns its RGBA overview."""
        rgba = quicklook(image, self.grid)
        self.bases.append({"name": name, "url": image_data_uri(rgba), "source": str(image)})
        return rgba

    def add_classes(
        self,
        name: str,
        raster: str | Path,
        counts: dict[str, int] | None = None,
        transparent: Sequence[int] = (),
        opacity: float = 0.6,
        visible: bool = True,
    ) -> np.ndarray:
        """Add a class raster (its colour table; ``transparent`` classes see-through) with its legend; returns
        the overview's class values (-1: nodata)."""
        url, values = class_image(raster, self.grid, transparent)
        legend = class_legend(Path(raster), counts, "share of the valid pixels")
        layer = {"type": "image", "name": name, "url": url, "opacity": opacity, "legend": legend.to_dict()}
        self.overlays.append({**layer, "visible": visible, "source": str(raster)})
        return values

    def add_vectors(
        self,
        name: str,
        path: str | Path | gpd.GeoDataFrame,
        colors: dict[str, Sequence[int]] | None = None,
        fill: float = 0.15,
        cap: int = VECTOR_CAP,
        visible: bool = True,
        min_score: float | None = None,
    ) -> int:
        """Add the polygons of ``path`` (a file or a frame) coloured by ``class_name`` (``colors``; default: the
        tool's palette by ``class_id``): those scored at least ``min_score`` (all: ``None``), at most ``cap``
        (the best-scored); the legend counts what is drawn, its note what is not. Returns the number drawn."""
        gdf = read_vectors(path, self.grid)
        colors = colors or palette_colors(gdf)
        shown, note = select_features(gdf, cap, min_score)
        legend = Legend("share of the objects drawn" if "score" in gdf.columns else "share of the features", note=note)
        counts = shown["class_name"].value_counts() if "class_name" in shown.columns else {}
        for cls, rgb in colors.items():
            legend.add(cls, rgb, int(counts.get(cls, 0)), len(shown))
        total = len(gdf)
        self.overlays.append(
            {
                "type": "vector",
                "name": name,
                "geojson": feature_collection(shown, self.grid),
                "colors": {c: hex_color(v) for c, v in colors.items()},
                "fill": fill,
                "total": total,
                "cap": cap,
                "legend": legend.to_dict(),
                "visible": visible,
                "source": str(path) if isinstance(path, str | Path) else "",
            }
        )
        return len(shown)

    def render(self) -> str:
        """The page's HTML."""
        data = {
            "title": self.title,
            "crs": self.grid.crs.to_string() if self.grid.crs else "pixel grid",
            "bounds": list(self.grid.bounds),
            "native_pixel": abs(self.grid.transform.a) / self.grid.scale,
            "overview": f"{self.grid.width} x {self.grid.height} px"
            + (f" (1:{self.grid.scale:.3g} of the scene)" if self.grid.scale > 1 else " (full resolution)"),
            "bases": self.bases,
            "overlays": self.overlays,
            "summary": [list(row) for row in self.summary],
            "details": self.details,
        }
        return render_page(self.title, data)

    def write(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the page atomically to ``path``."""
        path = Path(path)
        with atomic_path(path, overwrite) as tmp:
            tmp.write_text(self.render(), encoding="utf-8")
        return path


def select_features(gdf: gpd.GeoDataFrame, cap: int, min_score: float | None) -> tuple[gpd.GeoDataFrame, str]:
    """The features a layer draws (scored at least ``min_score``, then the ``cap`` best-ranked by ``score`` or
    ``probability``) and a note saying what was left out (empty: nothing)."""
    total = len(gdf)
    rank = next((c for c in ("score", "probability") if c in gdf.columns), None)
    notes = []
    if min_score is not None and rank == "score":
        gdf = gdf[gdf["score"] >= min_score]
        notes.append(f"score at least {min_score:g}")
    if len(gdf) > cap:
        gdf = gdf.sort_values(rank, ascending=False, kind="stable") if rank else gdf
        notes.append(f"the {cap:,} {'best-scored' if rank else 'first'} (the cap)")
    shown = gdf.iloc[:cap]
    if len(shown) == total:
        return shown, ""
    return shown, f"{len(shown):,} of {total:,} features drawn: {', then '.join(notes)}; the file holds all"


def palette_colors(gdf: gpd.GeoDataFrame) -> dict[str, Sequence[int]]:
    """Colours of the classes of a vector output (``class_id``, ``class_name``) from the tool's palette."""
    if "class_name" not in gdf.columns:
        return {}
    ids = gdf["class_id"] if "class_id" in gdf.columns else gdf["class_name"].astype("category").cat.codes
    pairs = sorted({(int(i), str(n)) for i, n in zip(ids, gdf["class_name"], strict=True)})
    return {name: PALETTE[i % len(PALETTE)] for i, name in pairs}


def read_vectors(path: str | Path | gpd.GeoDataFrame, grid: OverviewGrid | None) -> gpd.GeoDataFrame:
    """A vector output (or a frame) in the grid's CRS (as it is without a grid)."""
    if isinstance(path, gpd.GeoDataFrame):
        gdf = path
    else:
        path = Path(path)
        gdf = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    if grid is not None and grid.crs is not None and gdf.crs is not None and gdf.crs != grid.crs:
        gdf = gdf.to_crs(grid.crs)
    return gdf


def feature_collection(gdf: gpd.GeoDataFrame, grid: OverviewGrid) -> dict[str, Any]:
    """GeoJSON of ``gdf`` in map coordinates, rounded to a tenth of a scene pixel; properties as JSON values."""
    pixel = abs(grid.transform.a) / max(grid.scale, 1.0)
    decimals = max(0, int(np.ceil(-np.log10(pixel / 10)))) if pixel > 0 else 6
    geoms = shapely.transform(gdf.geometry.values, lambda xy: np.round(xy, decimals))
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    records = json.loads(gdf[columns].to_json(orient="records", double_precision=6)) if columns else [{}] * len(gdf)
    features = [
        {"type": "Feature", "properties": props, "geometry": json.loads(shapely.to_geojson(geom))}
        for props, geom in zip(records, geoms, strict=True)
    ]
    return {"type": "FeatureCollection", "features": features}


def _asset(*parts: str) -> bytes:
    return resources.files("lemevit_geo").joinpath("assets", *parts).read_bytes()


def leaflet_css() -> str:
    """Leaflet's CSS with the images it names inlined as data URIs (nothing is fetched)."""
    css = _asset("leaflet", "leaflet.css").decode("utf-8")

    def inline(match: re.Match[str]) -> str:
        png = base64.b64encode(_asset("leaflet", "images", match.group(1))).decode("ascii")
        return f"url(data:image/png;base64,{png})"

    return re.sub(r"url\(images/([\w.-]+\.png)\)", inline, css)


def leaflet_js() -> str:
    """Leaflet's JavaScript (licence header kept), without the source-map comment (no file to fetch)."""
    return re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", _asset("leaflet", "leaflet.js").decode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with non-finite numbers as ``None`` and what JSON lacks (paths, numpy scalars) as strings or
    numbers, so a summary always makes a page."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def render_page(title: str, data: dict[str, Any]) -> str:
    """The template filled with Leaflet, the report's own script and style, and ``data`` as JSON."""
    import html

    payload = json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")  # no </script
    parts = {
        "{{TITLE}}": html.escape(title),
        "{{LEAFLET_CSS}}": leaflet_css(),
        "{{REPORT_CSS}}": _asset("report", "report.css").decode("utf-8"),
        "{{LEAFLET_JS}}": leaflet_js().replace("</script", "<\\/script"),
        "{{REPORT_JS}}": _asset("report", "report.js").decode("utf-8"),
        "{{DATA}}": payload,
    }
    page = _asset("report", "template.html").decode("utf-8")
    return re.sub("|".join(re.escape(k) for k in parts), lambda m: parts[m.group(0)], page)
