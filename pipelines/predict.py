"""Inference pipelines: ``segment`` (class raster, probabilities, polygons) and ``classify`` (scene
labels per tile). Both run the shared engine; the CLI calls them with keyword arguments."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from typing_extensions import TypedDict, Unpack

from lemevit_geo.bundle import BundleConfig, load_bundle
from lemevit_geo.choices import Precision, Stitch, Task
from lemevit_geo.device import precision_name, resolve_device, resolve_precision
from lemevit_geo.errors import InputError
from lemevit_geo.outputs import atomic_path, check_output, temporary_sibling
from lemevit_geo.pipelines.engine import RunStats, SourceSpec, TileData, TileReader, run_tiles
from lemevit_geo.pipelines.stitch import PROB_SCALE, Band, BandWriter, DenseStitcher, softmax
from lemevit_geo.pipelines.tiling import TileGrid
from lemevit_geo.raster import (
    SourceInfo,
    class_dtype,
    inspect_source,
    output_profile,
    write_category_names,
    write_class_metadata,
)
from lemevit_geo.vector import check_vector_path, polygonize, write_vector

Progress = Callable[[int], None]


@dataclass
class Runtime:
    """Device-side settings of a run."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int
    threads: int

    @classmethod
    def create(cls, device: str, precision: Precision | str, batch_size: int, threads: int) -> Runtime:
        dev = resolve_device(device)
        if batch_size < 1:
            raise InputError("--batch-size must be at least 1")
        return cls(dev, resolve_precision(precision, dev), batch_size, max(1, threads))

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=torch.channels_last).eval()

    def summary(self) -> dict[str, Any]:
        return {"device": str(self.device), "precision": precision_name(self.dtype), "batch_size": self.batch_size}


def sources_for(info: SourceInfo, config: BundleConfig) -> SourceSpec:
    return SourceSpec(info, np.asarray(config.mean, dtype=np.float32), np.asarray(config.std, dtype=np.float32))


def _check_outputs(paths: Sequence[Path | None], overwrite: bool) -> None:
    seen = set()
    for p in paths:
        if p is None:
            continue
        check_output(p, overwrite)
        if p.resolve() in seen:
            raise InputError(f"{p} is named for two outputs")
        seen.add(p.resolve())


def dense_predict(
    *,
    sources: Sequence[SourceSpec],
    grid_info: SourceInfo,
    model: torch.nn.Module,
    classes: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    output: Path,
    runtime: Runtime,
    tile_size: int,
    overlap: int,
    stitch: Stitch,
    probabilities: Path | None = None,
    vector: Path | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    vector_skip_classes: Sequence[int] = (),
    cog: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run a per-pixel model over co-registered ``sources`` and write a class raster on ``grid_info``'s
    grid (plus optional probabilities and polygons). Shared by ``segment`` and ``change``."""
    _check_outputs([output, probabilities, vector], overwrite)
    if vector is not None:
        check_vector_path(vector)
    try:
        grid = TileGrid(grid_info.height, grid_info.width, tile_size, overlap, fit=True)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if on_start:
        on_start(len(grid))
    k = len(classes)
    dtype, nodata = class_dtype(k)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out_tmp = stack.enter_context(atomic_path(output, overwrite))
        tiff = temporary_sibling(output) if cog else out_tmp
        stack.callback(lambda: tiff.unlink(missing_ok=True) if cog else None)
        prob_tmp = stack.enter_context(atomic_path(probabilities, overwrite)) if probabilities else None
        conf_tmp = temporary_sibling(output.with_suffix(".conf.tif"))
        stack.callback(lambda: conf_tmp.unlink(missing_ok=True))

        dst = stack.enter_context(rasterio.open(tiff, "w", **output_profile(grid_info, 1, dtype, nodata)))
        write_class_metadata(dst, classes, colors)
        conf_dst = stack.enter_context(rasterio.open(conf_tmp, "w", **output_profile(grid_info, 1, "uint8", 255)))
        prob_dst = None
        if prob_tmp is not None:
            prob_dst = stack.enter_context(rasterio.open(prob_tmp, "w", **output_profile(grid_info, k, "uint8", 255)))
            prob_dst.scales = (1.0 / PROB_SCALE,) * k
            for i, name in enumerate(classes):
                prob_dst.set_band_description(i + 1, f"p({name})")

        def write(band: Band) -> None:
            win = ((band.row, band.row + band.classes.shape[0]), (0, grid_info.width))
            dst.write(band.classes, 1, window=win)
            conf_dst.write(band.confidence, 1, window=win)
            if prob_dst is not None and band.probs is not None:
                prob_dst.write(band.probs, window=win)

        stitcher = DenseStitcher(grid, k, stitch, BandWriter(write), nodata, prob_dst is not None)
        reader = TileReader(sources, grid, threads=runtime.threads, prefetch=4 * runtime.batch_size)
        stats = run_tiles(iter(reader), model, stitcher, runtime.device, runtime.dtype, runtime.batch_size, progress)
        for ds in (dst, conf_dst, prob_dst):
            if ds is not None:
                ds.close()
        if cog:
            rasterio.shutil.copy(tiff, out_tmp, driver="COG", compress="DEFLATE", predictor=2, blocksize=512)
        write_category_names(out_tmp, classes)
        outputs = {"raster": str(output)}
        if probabilities:
            outputs["probabilities"] = str(probabilities)
        if vector is not None:
            gdf = polygonize(out_tmp, conf_tmp, classes, min_area=min_area, simplify=simplify,
                             skip_classes=vector_skip_classes)  # fmt: skip
            write_vector(gdf, vector, overwrite)
            outputs["vector"] = str(vector)
            outputs["polygons"] = len(gdf)
    seconds = time.perf_counter() - start
    return _summary(
        stats, runtime, grid, grid_info, seconds, outputs, dict(zip(classes, stitcher.counts.tolist(), strict=True))
    )


def _summary(
    stats: RunStats,
    runtime: Runtime,
    grid: TileGrid,
    info: SourceInfo,
    seconds: float,
    outputs: dict[str, Any],
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    out = {
        "tiles": stats.tiles,
        "tiles_run": stats.tiles_run,
        "tiles_skipped_nodata": stats.tiles_skipped,
        "tile_size": grid.tile,
        "overlap": grid.overlap,
        "width": info.width,
        "height": info.height,
        "seconds": round(seconds, 3),
        "megapixels_per_s": round(info.width * info.height / 1e6 / max(seconds, 1e-9), 3),
        **runtime.summary(),
        "outputs": outputs,
    }
    if counts is not None:
        out["class_pixels"] = counts
    return out


class DenseOptions(TypedDict, total=False):
    """Options of the dense commands (``segment``, ``change``); see :func:`dense_predict`."""

    tile_size: int | None
    overlap: int | None
    stitch: Stitch | str
    batch_size: int
    device: str
    precision: Precision | str
    threads: int
    probabilities: str | Path | None
    vector: str | Path | None
    min_area: float
    simplify: float
    cog: bool
    overwrite: bool
    progress: Progress | None
    on_start: Callable[[int], None] | None


def run_dense(
    *,
    net: torch.nn.Module,
    config: BundleConfig,
    sources: Sequence[SourceSpec],
    grid_info: SourceInfo,
    output: str | Path,
    vector_skip_classes: Sequence[int] = (),
    **options: Unpack[DenseOptions],
) -> dict[str, Any]:
    """Resolve the dense options (defaults from the bundle: tile size; overlap tile/8) and run them."""
    o = options
    runtime = Runtime.create(o.get("device", "auto"), o.get("precision", Precision.auto), o.get("batch_size", 4),
                             o.get("threads", 2))  # fmt: skip
    tile = o.get("tile_size") or config.tile_size
    overlap = o.get("overlap")
    probabilities, vector = o.get("probabilities"), o.get("vector")
    return dense_predict(
        sources=sources,
        grid_info=grid_info,
        model=runtime.prepare(net),
        classes=config.classes,
        colors=config.colors,
        output=Path(output),
        runtime=runtime,
        tile_size=tile,
        overlap=tile // 8 if overlap is None else overlap,
        stitch=Stitch(o.get("stitch", Stitch.blend)),
        probabilities=Path(probabilities) if probabilities else None,
        vector=Path(vector) if vector else None,
        min_area=o.get("min_area", 0.0),
        simplify=o.get("simplify", 0.0),
        vector_skip_classes=vector_skip_classes,
        cog=o.get("cog", False),
        overwrite=o.get("overwrite", False),
        progress=o.get("progress"),
        on_start=o.get("on_start"),
    )


def segment(
    *,
    image: str | Path,
    output: str | Path,
    model: str | Path,
    bands: Sequence[int] | None = None,
    allow_pixel_grid: bool = False,
    **options: Unpack[DenseOptions],
) -> dict[str, Any]:
    """Semantic segmentation of a scene into a class raster on exactly its grid."""
    net, config = load_bundle(model, Task.segment)
    info = inspect_source(image, bands, config.bands, allow_pixel_grid)
    return run_dense(net=net, config=config, sources=[sources_for(info, config)], grid_info=info, output=output,
                     **options)  # fmt: skip


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


def classify(
    *,
    image: str | Path,
    output: str | Path,
    model: str | Path,
    bands: Sequence[int] | None = None,
    tile_size: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    precision: Precision | str = Precision.auto,
    threads: int = 2,
    raster: str | Path | None = None,
    top_k: int = 3,
    overwrite: bool = False,
    allow_pixel_grid: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Scene classes per tile: one polygon per tile with class, probability and top-k; optionally a
    coarse class raster with one pixel per tile."""
    import geopandas as gpd
    import shapely

    net, config = load_bundle(model, Task.classify)
    info = inspect_source(image, bands, config.bands, allow_pixel_grid)
    runtime = Runtime.create(device, precision, batch_size, threads)
    output, raster = Path(output), Path(raster) if raster else None
    _check_outputs([output, raster], overwrite)
    check_vector_path(output)
    try:
        grid = TileGrid(info.height, info.width, tile_size or config.tile_size, 0, fit=False)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if on_start:
        on_start(len(grid))
    start = time.perf_counter()
    sink = TileLabels()
    reader = TileReader([sources_for(info, config)], grid, threads=runtime.threads, prefetch=2 * batch_size)
    stats = run_tiles(iter(reader), runtime.prepare(net), sink, runtime.device, runtime.dtype, batch_size, progress)

    k = max(1, min(top_k, config.num_classes))
    rows, geoms = [], []
    t = info.transform
    for item, probs in sink.records:
        tile = item.tile
        h, w = tile.clipped(info.height, info.width)
        x0, y0 = t @ (tile.x, tile.y)
        x1, y1 = t @ (tile.x + w, tile.y + h)
        geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
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
    gdf = gpd.GeoDataFrame(rows, geometry=geoms, crs=info.crs)
    write_vector(gdf, output, overwrite)
    outputs: dict[str, Any] = {"vector": str(output)}
    if raster is not None:
        dtype, nodata = class_dtype(config.num_classes)
        grid_out = SourceInfo(
            str(raster), len(grid.xs), len(grid.ys), info.crs, info.transform @ Affine.scale(grid.tile), (1,), dtype
        )
        arr = np.full((len(grid.ys), len(grid.xs)), nodata, dtype=dtype)
        for row in rows:
            arr[row["row"], row["col"]] = row["class_id"]
        with atomic_path(raster, overwrite) as tmp:
            with rasterio.open(tmp, "w", **output_profile(grid_out, 1, dtype, nodata)) as dst:
                dst.write(arr, 1)
                write_class_metadata(dst, config.classes, config.colors)
            write_category_names(tmp, config.classes)
        outputs["raster"] = str(raster)
    seconds = time.perf_counter() - start
    counts = {c: 0 for c in config.classes}
    for row in rows:
        counts[row["class_name"]] += 1
    summary = _summary(stats, runtime, grid, info, seconds, outputs)
    summary["class_tiles"] = counts
    return summary
