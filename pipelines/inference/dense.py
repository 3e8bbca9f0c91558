"""Dense runs (``segment``, ``change``): per-pixel logits over co-registered sources, stitched onto one grid.

:func:`plan_dense` resolves a bundle's defaults (tile size, overlap) into a plan, :func:`run_dense` executes
it on the device the plan names, and :func:`write_dense` runs the engine: a
:class:`~lemevit_geo.pipelines.inference.engine.TileReader` feeds the model, a
:class:`~lemevit_geo.pipelines.inference.stitch.DenseStitcher` merges the tiles, and a background
:class:`~lemevit_geo.pipelines.inference.stitch.BandWriter` hands finished rows to a
:class:`~lemevit_geo.pipelines.inference.writers.DenseRasterWriter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

import torch

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.choices import Stitch, Task
from lemevit_geo.pipelines.inference.engine import Progress, RunStats, Runtime, SourceSpec, TileReader, run_tiles
from lemevit_geo.pipelines.inference.plan import (
    ModelArg,
    Plan,
    Sources,
    bundle_config,
    check_formats,
    check_outputs,
    make_grid,
    planned,
)
from lemevit_geo.pipelines.inference.stitch import BandWriter, DenseStitcher
from lemevit_geo.pipelines.inference.tiling import Strip, TileGrid
from lemevit_geo.pipelines.inference.writers import DenseRasterWriter, RowFiles
from lemevit_geo.raster import SourceInfo, gdal_env
from lemevit_geo.settings import DenseOutputs, Engine, Tiling


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


def write_dense(
    sources: Sequence[SourceSpec],
    grid: TileGrid,
    model: torch.nn.Module,
    runtime: Runtime,
    stitch: Stitch,
    writer: DenseRasterWriter,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``grid`` of the co-registered ``sources`` into ``writer``'s files; the run's summary."""
    if progress:
        progress.start(len(grid))
    start = time.perf_counter()
    with gdal_env([s.info for s in sources], grid.tile), writer as files:
        stats, stitcher = stitch_tiles(
            sources=sources,
            grid=grid,
            model=model,
            runtime=runtime,
            stitch=stitch,
            num_classes=len(writer.classes),
            files=files,
            progress=progress,
        )
        written = files.finish()
    summary = run_summary(stats, runtime, grid, writer.grid, time.perf_counter() - start, written)
    summary["class_pixels"] = dict(zip(writer.classes, stitcher.counts.tolist(), strict=True))
    summary["mask"] = [s.mask_plan.describe() for s in sources]
    return summary


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
    """Run a per-pixel model (already on ``runtime``'s device, no bundle needed) over co-registered ``sources``
    and write a class raster on ``grid_info``'s grid, plus the optional ``outputs``.

    The commands plan with :func:`plan_dense` and run with :func:`run_dense`; this is the same engine for a
    model of one's own (tests, benchmarks).
    """
    output = Path(output)
    rasters = [output, outputs.probabilities]
    check_outputs([*rasters, outputs.vector], overwrite, [*inputs, *(s.info.path for s in sources)])
    check_formats(rasters, [outputs.vector])
    grid = make_grid(grid_info, tile_size, overlap)
    writer = DenseRasterWriter(grid_info, classes, colors, output, outputs, overwrite, vector_skip_classes)
    return write_dense(sources, grid, model, runtime, stitch, writer, progress)


FindSources = Callable[[Sequence[str | Path], BundleConfig, Sequence[int] | None, bool], Sources]


class DenseOptions(TypedDict, total=False):
    """The keywords of :func:`~.segment.plan_segment` and :func:`~.change.plan_change` after their inputs;
    :data:`DENSE_DEFAULTS` holds those a caller may leave out."""

    output: Required[str | Path]
    model: Required[ModelArg]
    bands: Sequence[int] | None
    overwrite: bool
    allow_pixel_grid: bool
    engine: Engine
    tiling: Tiling
    outputs: DenseOutputs
    defer_existing: bool


DENSE_DEFAULTS: dict[str, Any] = dict(
    bands=None,
    overwrite=False,
    allow_pixel_grid=False,
    engine=Engine(),
    tiling=Tiling(),
    outputs=DenseOutputs(),
    defer_existing=False,
)


def plan_dense(
    task: Task,
    inputs: Sequence[str | Path],
    find: FindSources,
    vector_skip: tuple[int, ...] = (),
    **options: Unpack[DenseOptions],
) -> Plan:
    """The plan of a ``segment`` or ``change`` run of ``inputs``, inspected by ``find``: the bundle's config
    checked for ``task``, its tile size and an eighth of it as overlap unless ``options['tiling']`` says
    otherwise, the outputs checked (or left to scale-out with ``defer_existing``, see
    :func:`~.plan.check_plan_outputs`); no polygons are made of the classes in ``vector_skip``."""
    asked = {**DENSE_DEFAULTS, **options}
    tiling, defer_existing = asked.pop("tiling"), asked.pop("defer_existing")
    config = bundle_config(asked["model"], task)
    found = find(inputs, config, asked["bands"], asked["allow_pixel_grid"])
    tile, overlap = tiling.resolve(config.tile_size)
    grid = make_grid(found.info, tile, overlap)
    fields = dict(task=task, config=config, inputs=list(inputs), vector_skip=vector_skip, **asked)
    return planned(found, grid, defer_existing=defer_existing, stitch=tiling.stitch, **fields)


def run_dense(plan: Plan, progress: Progress | None = None) -> dict[str, Any]:
    """Execute a ``segment`` or ``change`` plan in this process: load the model onto the device ``plan.engine``
    names, run it over the plan's grid and write the outputs; the run's summary (with what planning found)."""
    net, config = plan.load()
    runtime = Runtime.create(plan.engine)
    writer = DenseRasterWriter(
        plan.info, config.classes, config.colors, plan.output, plan.outputs, plan.overwrite, plan.vector_skip
    )
    summary = write_dense(plan.sources, plan.grid, runtime.prepare(net), runtime, plan.stitch, writer, progress)
    return {**summary, **plan.report}
