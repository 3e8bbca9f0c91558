"""The merge of a scale-out job: its part files become the outputs, in one process, in bounded memory.

Dense parts are replayed: the bands each part's stitcher handed on (recorded in its sidecar: first row,
height, column chunks) are read back from the part file and handed to the same background writer, block
regrouping and :class:`~lemevit_geo.pipelines.inference.writers.DenseRasterWriter` in the same order as a
single-process run, so GDAL receives the same writes and the merged GeoTIFF has the same bytes. COG,
category names and polygons are then made from the merged raster as in a single-process run. Memory is
one tile row of the scene, as in a run. ``classify`` parts are tile tables, concatenated in grid order;
a ``detect`` scene is one part, its boxes written in the output's format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.inference.classify import write_grid_raster
from lemevit_geo.pipelines.inference.stitch import CHUNK, Band, BandWriter, Piece
from lemevit_geo.pipelines.inference.tiling import TileGrid
from lemevit_geo.pipelines.inference.writers import DenseRasterWriter, read_piece
from lemevit_geo.pipelines.scaleout.jobs import Job
from lemevit_geo.raster import READ_ERRORS, gdal_env, read_error
from lemevit_geo.vector import write_vector

#: How a part that cannot be read is made again.
RERUN = "remove it and run the {} command again (it runs the missing parts)"


@contextlib.contextmanager
def _gdal_failure(job: Job, index: int, what: str) -> Iterator[None]:
    """GDAL's errors on part ``index`` as one line: the file, ``what`` failed and why, and how to make it again."""
    try:
        yield
    except READ_ERRORS as exc:
        raise InputError(f"{job.part_file(index)}: {what}: {read_error(exc)}; {RERUN.format(job.task.value)}") from exc


def _replay(job: Job, index: int, sidecar: dict[str, Any], writer: BandWriter) -> None:
    """Hand the bands of part ``index`` to ``writer`` as its stitcher had handed them on."""
    width, k, y0 = job.grid.width, len(job.classes), job.strips[index].y0
    probabilities = job.outputs.probabilities is not None

    def read(part: rasterio.DatasetReader, row: int, height: int, chunk: int) -> Piece:
        x = chunk * CHUNK
        with _gdal_failure(job, index, "reading the part failed"):
            piece = read_piece(part, row - y0, height, x, min(CHUNK, width - x), k, probabilities)
        return piece

    with _gdal_failure(job, index, "the part cannot be opened"):
        part = rasterio.open(job.part_file(index))
    with part:
        for row, height, chunks in sidecar["bands"]:
            writer.put(Band(row, height, {i: read(part, row, height, i) for i in chunks}))


def merge_dense(job: Job, sidecars: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write the outputs of a ``segment`` or ``change`` job from its parts; return what was written."""
    writer = DenseRasterWriter(
        job.grid.info(), job.classes, job.colors, job.output, job.outputs, job.overwrite, job.vector_skip
    )
    with gdal_env(), writer as files:
        bands = BandWriter(files.write, files.nodata, len(job.classes))
        try:
            for index, sidecar in enumerate(sidecars):
                _replay(job, index, sidecar, bands)
        except BaseException:  # a failed read or a signal: the writer leaves GDAL before the files close
            bands.abort()
            raise
        bands.close()
        return files.finish()


def _tables(job: Job, sidecars: Sequence[dict[str, Any]]) -> gpd.GeoDataFrame:
    """The polygons of every part of a vector job (``classify``, ``detect``), in part order."""
    tables, rerun = [], RERUN.format(job.task.value)
    for index in range(len(sidecars)):
        try:
            tables.append(gpd.read_parquet(job.part_file(index)))
        except (OSError, ValueError) as exc:
            raise InputError(f"{job.part_file(index)}: reading the part failed: {exc}; {rerun}") from exc
    filled = [t for t in tables if len(t)] or tables[:1]
    return gpd.GeoDataFrame(pd.concat(filled, ignore_index=True), crs=tables[0].crs)


def merge_classify(job: Job, sidecars: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write the tile polygons (and the coarse raster) of a ``classify`` job from its parts."""
    table = _tables(job, sidecars)
    written: dict[str, Any] = {"vector": str(write_vector(table, job.output, job.overwrite))}
    if job.raster is not None:
        grid = TileGrid(job.grid.height, job.grid.width, job.tile, 0, fit=False)
        shape = (len(grid.ys), len(grid.xs))
        write_grid_raster(job.raster, table, job.classes, job.colors, job.grid.info(), shape, job.tile, job.overwrite)
        written["raster"] = str(job.raster)
    return written


def merge_detect(job: Job, sidecars: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write the boxes of a ``detect`` job (one part per scene) in the output's format."""
    return {"vector": str(write_vector(_tables(job, sidecars), job.output, job.overwrite))}


#: How the parts of each task become its outputs.
MERGERS: dict[Task, Callable[[Job, Sequence[dict[str, Any]]], dict[str, Any]]] = {
    Task.segment: merge_dense,
    Task.change: merge_dense,
    Task.classify: merge_classify,
    Task.detect: merge_detect,
}


def merge_job(job: Job, sidecars: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of ``job`` from its finished parts (their sidecars, in part order); return what was written."""
    return MERGERS[job.task](job, sidecars)


#: The sidecar key that counts what each task found per class (dense tasks: ``class_pixels`` arrays).
COUNT_KEYS = {Task.classify: "class_tiles", Task.detect: "class_objects"}


def counts(job: Job, sidecars: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Pixels per class (dense), tiles per class (``classify``) or objects per class (``detect``), summed over
    the parts."""
    if job.task in COUNT_KEYS:
        key = COUNT_KEYS[job.task]
        return {c: sum(s[key][c] for s in sidecars) for c in job.classes if c in sidecars[0][key]}
    total = np.sum([s["class_pixels"] for s in sidecars], axis=0)
    return dict(zip(job.classes, (int(v) for v in total), strict=True))
