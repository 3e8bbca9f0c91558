"""Dense runs (``segment``, ``change``): per-pixel logits over co-registered sources, stitched onto one grid.

:func:`run_dense` resolves a bundle's defaults (tile size, overlap) and the device; :func:`dense_predict`
runs the engine: a :class:`~lemevit_geo.pipelines.inference.engine.TileReader` feeds the model, a
:class:`~lemevit_geo.pipelines.inference.stitch.DenseStitcher` merges the tiles, and a background
:class:`~lemevit_geo.pipelines.inference.stitch.BandWriter` hands finished rows to a
:class:`~lemevit_geo.pipelines.inference.writers.DenseRasterWriter`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.choices import Stitch
from lemevit_geo.errors import InputError
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.inference.engine import Progress, RunStats, Runtime, SourceSpec, TileReader, run_tiles
from lemevit_geo.pipelines.inference.stitch import BandWriter, DenseStitcher
from lemevit_geo.pipelines.inference.tiling import Strip, TileGrid
from lemevit_geo.pipelines.inference.writers import DenseRasterWriter, RowFiles
from lemevit_geo.raster import SourceInfo, check_raster_path, gdal_env
from lemevit_geo.settings import DenseOutputs, Engine, Tiling
from lemevit_geo.vector import check_vector_path


def source_for(info: SourceInfo, config: BundleConfig) -> SourceSpec:
    """Read ``info`` with the bundle's normalisation."""
    return SourceSpec(info, np.asarray(config.mean, dtype=np.float32), np.asarray(config.std, dtype=np.float32))


def check_outputs(paths: Sequence[Path | None], overwrite: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Check every output can be written, is none of the ``inputs``, and that no path is named twice."""
    seen = set()
    for p in paths:
        if p is None:
            continue
        check_output(p, overwrite, inputs)
        if p.resolve() in seen:
            raise InputError(f"{p} is named for two outputs")
        seen.add(p.resolve())


def make_grid(info: SourceInfo, tile_size: int, overlap: int, fit: bool = True) -> TileGrid:
    """The tile grid over ``info``, with grid errors as input errors.

    A tile larger than the scene is shrunk to the smallest multiple of 32 that covers it (the overlap
    with it), so a huge tile size costs no memory on a small scene.
    """
    cover = 32 * -(-max(info.height, info.width) // 32)
    if tile_size > cover:
        overlap = min(overlap, cover // 2)
        tile_size = cover
    try:
        return TileGrid(info.height, info.width, tile_size, overlap, fit=fit)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def run_summary(
    stats: RunStats, runtime: Runtime, grid: TileGrid, info: SourceInfo, seconds: float, outputs: dict[str, Any]
) -> dict[str, Any]:
    """The summary every inference command prints (``--json``)."""
    return {
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


def check_dense_outputs(output: Path, outputs: DenseOutputs, overwrite: bool, inputs: Sequence[str | Path]) -> None:
    """Check the outputs of a dense run before any work: writable, none of the inputs, known formats."""
    check_outputs([output, outputs.probabilities, outputs.vector], overwrite, inputs)
    for raster in (output, outputs.probabilities):
        if raster is not None:
            check_raster_path(raster)
    if outputs.vector is not None:
        check_vector_path(outputs.vector)


def stitch_tiles(
    *,
    sources: Sequence[SourceSpec],
    grid: TileGrid,
    model: torch.nn.Module,
    runtime: Runtime,
    stitch: Stitch,
    num_classes: int,
    files: RowFiles,
    progress: Progress | None = None,
    strip: Strip | None = None,
) -> tuple[RunStats, DenseStitcher]:
    """Run the engine over ``grid`` into ``files``: reader threads, model, stitcher and writer thread.

    With a ``strip`` only its tile rows run (halo first) and only the rows it finishes are written, at their
    rows less the strip's first scene row (the part file holds the strip alone).
    """
    rows = None if strip is None else (strip.halo, strip.stop)
    band_writer = BandWriter(files.write, files.nodata, num_classes, origin=strip.y0 if strip else 0)
    keep = strip.first if strip else None
    stitcher = DenseStitcher(
        grid,
        num_classes,
        stitch,
        band_writer,
        files.nodata,
        files.with_probabilities,
        rows=rows,
        keep=keep,
        device=runtime.device,
    )
    runtime.fit(model, (sum(len(s.info.bands) for s in sources), grid.tile, grid.tile), row=len(grid.xs))
    reader = TileReader(sources, grid, threads=runtime.threads, prefetch=4 * runtime.batch_size, rows=rows)
    stats = run_tiles(iter(reader), model, stitcher, runtime, progress)
    return stats, stitcher


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
    outputs: DenseOutputs = DenseOutputs(),
    overwrite: bool = False,
    vector_skip_classes: Sequence[int] = (),
    progress: Progress | None = None,
    inputs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Run a per-pixel model (already on ``runtime``'s device) over co-registered ``sources`` and write a
    class raster on ``grid_info``'s grid, plus the optional ``outputs``."""
    output = Path(output)
    check_dense_outputs(output, outputs, overwrite, [*inputs, *(s.info.path for s in sources)])
    grid = make_grid(grid_info, tile_size, overlap)
    if progress:
        progress.start(len(grid))
    start = time.perf_counter()
    writer = DenseRasterWriter(grid_info, classes, colors, output, outputs, overwrite, vector_skip_classes)
    with gdal_env([s.info for s in sources], grid.tile), writer as files:
        stats, stitcher = stitch_tiles(
            sources=sources,
            grid=grid,
            model=model,
            runtime=runtime,
            stitch=stitch,
            num_classes=len(classes),
            files=files,
            progress=progress,
        )
        written = files.finish()
    summary = run_summary(stats, runtime, grid, grid_info, time.perf_counter() - start, written)
    summary["class_pixels"] = dict(zip(classes, stitcher.counts.tolist(), strict=True))
    summary["mask"] = [s.mask_plan.describe() for s in sources]
    return summary


def run_dense(
    *,
    net: torch.nn.Module,
    config: BundleConfig,
    sources: Sequence[SourceSpec],
    grid_info: SourceInfo,
    output: str | Path,
    engine: Engine,
    tiling: Tiling,
    outputs: DenseOutputs,
    overwrite: bool,
    vector_skip_classes: Sequence[int] = (),
    progress: Progress | None = None,
    inputs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """:func:`dense_predict` with the bundle's model and defaults on the device ``engine`` names."""
    runtime = Runtime.create(engine)
    tile, overlap = tiling.resolve(config.tile_size)
    return dense_predict(
        sources=sources,
        grid_info=grid_info,
        model=runtime.prepare(net),
        classes=config.classes,
        colors=config.colors,
        output=Path(output),
        runtime=runtime,
        tile_size=tile,
        overlap=overlap,
        stitch=tiling.stitch,
        outputs=outputs,
        overwrite=overwrite,
        vector_skip_classes=vector_skip_classes,
        progress=progress,
        inputs=inputs,
    )
