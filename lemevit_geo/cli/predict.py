"""Inference commands: ``segment``, ``change``, ``classify`` and ``detect``: parse, call the pipeline, print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lemevit_geo import options as o
from lemevit_geo.cli.app import app
from lemevit_geo.cli.display import report, tile_progress
from lemevit_geo.options import Display, grouped
from lemevit_geo.settings import CLASSIFY_ENGINE, DenseOutputs, Detection, Engine, Tiling

Before = Annotated[Path, typer.Argument(help="Earlier image.", show_default=False)]
After = Annotated[Path, typer.Argument(help="Later image (warped onto the earlier one's grid if needed).")]
GridRaster = Annotated[
    Path | None, typer.Option("--raster", help="Also write a coarse class raster, one pixel per tile.")
]
TopK = Annotated[int, typer.Option("--top-k", help="Classes listed per tile.")]
Objects = Annotated[
    Path, typer.Option("--output", "-o", help="Polygons to write (.gpkg, .parquet, .geojson).", show_default=False)
]


def run_with_progress(pipeline: Callable[..., dict[str, Any]], display: Display, **kwargs: Any) -> None:
    """Run an inference pipeline under a tile progress bar and print its summary."""
    with tile_progress(display) as progress:
        summary = pipeline(progress=progress, **kwargs)
    report(summary, display)


@app.command()
@grouped(engine=Engine(), tiling=Tiling(), outputs=DenseOutputs(), display=Display())
def segment(
    image: o.Image,
    output: o.Output,
    model: o.Model,
    bands: o.Bands = None,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    *,
    engine: Engine,
    tiling: Tiling,
    outputs: DenseOutputs,
    display: Display,
) -> None:
    """Semantic segmentation: a class raster on exactly the scene's grid (and polygons)."""
    from lemevit_geo.pipelines.segment import segment as run

    run_with_progress(
        run,
        display,
        image=image,
        output=output,
        model=model,
        bands=bands,
        overwrite=overwrite,
        allow_pixel_grid=allow_pixel_grid,
        engine=engine,
        tiling=tiling,
        outputs=outputs,
    )


@app.command()
@grouped(engine=Engine(), tiling=Tiling(), outputs=DenseOutputs(), display=Display())
def change(
    before: Before,
    after: After,
    output: o.Output,
    model: o.Model,
    bands: o.Bands = None,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    *,
    engine: Engine,
    tiling: Tiling,
    outputs: DenseOutputs,
    display: Display,
) -> None:
    """Bitemporal change detection: a change raster on the earlier image's grid, over the overlap."""
    from lemevit_geo.pipelines.change import change as run

    run_with_progress(
        run,
        display,
        before=before,
        after=after,
        output=output,
        model=model,
        bands=bands,
        overwrite=overwrite,
        allow_pixel_grid=allow_pixel_grid,
        engine=engine,
        tiling=tiling,
        outputs=outputs,
    )


@app.command()
@grouped(engine=CLASSIFY_ENGINE, display=Display())
def classify(
    image: o.Image,
    output: o.Output,
    model: o.Model,
    bands: o.Bands = None,
    tile_size: o.TileSize = None,
    raster: GridRaster = None,
    top_k: TopK = 3,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    *,
    engine: Engine,
    display: Display,
) -> None:
    """Scene classification per tile: one polygon per tile with its class, probability and top-k."""
    from lemevit_geo.pipelines.classify import classify as run

    run_with_progress(
        run,
        display,
        image=image,
        output=output,
        model=model,
        bands=bands,
        tile_size=tile_size,
        raster=raster,
        top_k=top_k,
        overwrite=overwrite,
        allow_pixel_grid=allow_pixel_grid,
        engine=engine,
    )


@app.command()
@grouped(engine=Engine(), detection=Detection(), display=Display())
def detect(
    image: o.Image,
    output: Objects,
    model: o.Model,
    bands: o.Bands = None,
    tile_size: o.TileSize = None,
    overlap: o.DetectOverlap = None,
    overwrite: o.Overwrite = False,
    allow_pixel_grid: o.AllowPixelGrid = False,
    *,
    engine: Engine,
    detection: Detection,
    display: Display,
) -> None:
    """Oriented object detection: one rotated rectangle per object, in the scene's CRS, merged across tiles."""
    from lemevit_geo.pipelines.detect import detect as run

    run_with_progress(
        run,
        display,
        image=image,
        output=output,
        model=model,
        bands=bands,
        tile_size=tile_size,
        overlap=overlap,
        overwrite=overwrite,
        allow_pixel_grid=allow_pixel_grid,
        engine=engine,
        detection=detection,
    )
