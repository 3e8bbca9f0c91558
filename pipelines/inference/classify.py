"""``classify``: scene classes per tile, as one polygon per tile (and optionally a coarse class raster)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from affine import Affine

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.choices import Stitch, Task
from lemevit_geo.outputs import atomic_path
from lemevit_geo.pipelines.inference import plan as planning
from lemevit_geo.pipelines.inference.dense import run_summary
from lemevit_geo.pipelines.inference.engine import Progress, RunStats, Runtime, TileData, TileReader, run_tiles
from lemevit_geo.pipelines.inference.stitch import softmax
from lemevit_geo.pipelines.inference.tiling import Tile, TileGrid
from lemevit_geo.raster import (
    SourceInfo,
    class_dtype,
    gdal_env,
    output_profile,
    write_category_names,
    write_class_metadata,
)
from lemevit_geo.settings import CLASSIFY_ENGINE, Engine, check_tile_size
from lemevit_geo.vector import write_vector


class TileLabels:
    """Sink for per-tile class logits ``(K,)``: keeps one record per tile (small: one row per tile)."""

    def __init__(self) -> None:
        self.records: list[tuple[TileData, np.ndarray]] = []

    def add(self, item: TileData, output: np.ndarray) -> None:
        self.records.append((item, softmax(output.astype(np.float64))))

    def skip(self, item: TileData) -> None:
        """Tiles without valid pixels get no label."""

    def close(self) -> None:
        """Nothing is buffered."""


def tile_footprint(transform: Affine, tile: Tile, height: int, width: int) -> shapely.Polygon:
    """The part of ``tile`` inside the scene, in map coordinates (all four corners: grids may be rotated)."""
    h, w = tile.clipped(height, width)
    corners = [(tile.x, tile.y), (tile.x + w, tile.y), (tile.x + w, tile.y + h), (tile.x, tile.y + h)]
    return shapely.Polygon([transform @ c for c in corners])


def tile_table(sink: TileLabels, config: BundleConfig, info: SourceInfo, top_k: int) -> gpd.GeoDataFrame:
    """One row per classified tile: grid position, class, probability, top-k, valid share, footprint."""
    k = max(1, min(top_k, config.num_classes))
    rows, geoms = [], []
    for item, probs in sink.records:
        tile = item.tile
        h, w = tile.clipped(info.height, info.width)
        order = np.argsort(-probs)[:k]
        rows.append(
            {
                "row": tile.row,
                "col": tile.col,
                "class_id": int(order[0]),
                "class_name": config.classes[order[0]],
                "probability": float(probs[order[0]]),
                "top_k": ", ".join(f"{config.classes[i]} {probs[i]:.3f}" for i in order),
                "valid_fraction": float(item.valid[:h, :w].mean()),
            }
        )
        geoms.append(tile_footprint(info.transform, tile, info.height, info.width))
    columns = ["row", "col", "class_id", "class_name", "probability", "top_k", "valid_fraction"]
    return gpd.GeoDataFrame(rows, columns=columns, geometry=geoms, crs=info.crs)


def write_grid_raster(
    path: Path,
    table: gpd.GeoDataFrame,
    classes: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    info: SourceInfo,
    shape: tuple[int, int],
    tile: int,
    overwrite: bool,
) -> None:
    """The tile classes as a coarse raster, one pixel per tile, aligned to the scene."""
    dtype, nodata = class_dtype(len(classes))
    rows, cols = shape
    grid = SourceInfo(str(path), cols, rows, info.crs, info.transform @ Affine.scale(tile), (1,), dtype)
    arr = np.full(shape, nodata, dtype=dtype)
    arr[table["row"].to_numpy(int), table["col"].to_numpy(int)] = table["class_id"].to_numpy()
    with atomic_path(path, overwrite) as tmp:
        with rasterio.open(tmp, "w", **output_profile(grid, 1, dtype, nodata)) as dst:
            dst.write(arr, 1)
            write_class_metadata(dst, classes, colors)
        write_category_names(tmp, classes)


def classify_tiles(
    info: SourceInfo,
    grid: TileGrid,
    net: torch.nn.Module,
    config: BundleConfig,
    runtime: Runtime,
    top_k: int,
    progress: Progress | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[gpd.GeoDataFrame, RunStats]:
    """Run the model (on ``runtime``'s device) over the tiles of ``grid`` (tile rows ``rows`` if given): the
    tile table and the run's counts."""
    sink = TileLabels()
    source = planning.source_for(info, config)
    runtime.fit(net, (len(info.bands), grid.tile, grid.tile), row=len(grid.xs))
    reader = TileReader([source], grid, threads=runtime.threads, prefetch=2 * runtime.batch_size, rows=rows)
    with gdal_env([info], grid.tile):
        stats = run_tiles(iter(reader), net, sink, runtime, progress)
    return tile_table(sink, config, info, top_k), stats


def plan_classify(
    *,
    image: str | Path,
    output: str | Path,
    model: planning.ModelArg,
    bands: Sequence[int] | None = None,
    tile_size: int | None = None,
    raster: str | Path | None = None,
    top_k: int = 3,
    overwrite: bool = False,
    allow_pixel_grid: bool = False,
    engine: Engine = CLASSIFY_ENGINE,
    defer_existing: bool = False,
) -> planning.Plan:
    """Plan ``classify`` of ``image`` with the classification bundle ``model`` (a path, or a loaded
    ``(model, config)`` pair): tiles of ``tile_size`` (default: the bundle's) on a regular grid without
    overlap (edge tiles padded and masked), the outputs checked."""
    config = planning.bundle_config(model, Task.classify)
    found = planning.scene_sources([image], config, bands, allow_pixel_grid)
    check_tile_size(tile_size)
    grid = planning.make_grid(found.info, tile_size or config.tile_size, 0, fit=False)
    asked = dict(bands=bands, overwrite=overwrite, allow_pixel_grid=allow_pixel_grid, engine=engine, top_k=top_k)
    fields = dict(task=Task.classify, model=model, config=config, inputs=[image], output=output, **asked)
    raster = Path(raster) if raster else None
    return planning.planned(found, grid, defer_existing=defer_existing, stitch=Stitch.crop, raster=raster, **fields)


def classify(*, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Scene classes per tile of ``image`` with the classification bundle ``model``, in this process;
    ``options`` are those of :func:`plan_classify`. Returns the run's summary."""
    plan = plan_classify(**options)
    net, config = plan.load()
    runtime = Runtime.create(plan.engine)
    info, grid = plan.info, plan.grid
    if progress:
        progress.start(len(grid))
    start = time.perf_counter()
    table, stats = classify_tiles(info, grid, runtime.prepare(net), config, runtime, plan.top_k, progress)
    written: dict[str, Any] = {"vector": str(write_vector(table, plan.output, plan.overwrite))}
    if plan.raster is not None:
        shape = (len(grid.ys), len(grid.xs))
        write_grid_raster(plan.raster, table, config.classes, config.colors, info, shape, grid.tile, plan.overwrite)
        written["raster"] = str(plan.raster)
    summary = run_summary(stats, runtime, grid, info, time.perf_counter() - start, written)
    summary["class_tiles"] = {c: int((table["class_name"] == c).sum()) for c in config.classes}
    return {**summary, **plan.report}
