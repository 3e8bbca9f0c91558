"""One part of a scale-out job, run where an executor puts it: this process, a Ray task, a Dask worker.

:func:`run_part` loads the bundle once per worker process (kept by path, SHA-256 and device), opens the
inputs itself through GDAL, runs the streaming engine over the part's strip of tile rows (halo first) and
writes the part file and then its sidecar, both atomically. Logits never leave the worker. Failures are
our own errors with one clear line, as in a single-process run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import geopandas as gpd
import torch

from lemevit_geo.bundle import BundleConfig, load_bundle
from lemevit_geo.choices import Task
from lemevit_geo.device import precision_name
from lemevit_geo.errors import GDAL_ERRORS, BundleError, InputError
from lemevit_geo.outputs import atomic_path
from lemevit_geo.pipelines.inference.change import change_sources
from lemevit_geo.pipelines.inference.classify import classify_tiles
from lemevit_geo.pipelines.inference.dense import stitch_tiles
from lemevit_geo.pipelines.inference.detect import detect_scene
from lemevit_geo.pipelines.inference.engine import Progress, Runtime, eager_model
from lemevit_geo.pipelines.inference.plan import Sources, make_grid, scene_sources
from lemevit_geo.pipelines.inference.tiling import TileGrid
from lemevit_geo.pipelines.inference.writers import PartRasterWriter
from lemevit_geo.pipelines.scaleout.jobs import FORMAT, FORMAT_VERSION, Job, file_sha256, plain, write_json
from lemevit_geo.raster import gdal_env

#: How each task finds its sources and output grid (in the worker, as its planner did in the driver).
SOURCES: dict[Task, Callable[[Sequence[str], BundleConfig, Sequence[int] | None, bool], Sources]] = {
    Task.segment: scene_sources,
    Task.change: change_sources,
    Task.classify: scene_sources,
    Task.detect: scene_sources,
}

_models: dict[tuple[str, str, str], tuple[torch.nn.Module, BundleConfig]] = {}
_models_lock = threading.Lock()


def worker_model(job: Job, runtime: Runtime) -> tuple[torch.nn.Module, BundleConfig]:
    """The job's model on ``runtime``'s device, loaded once per process (the last bundle used is kept).

    The bundle is checked against the SHA-256 the driver planned with, so a worker that sees another file
    under the same path (a stale copy on one machine) fails instead of computing something else.
    """
    key = (os.path.realpath(job.model), job.bundle_sha, str(runtime.device))
    with _models_lock:
        if key not in _models:
            if file_sha256(job.model) != job.bundle_sha:
                raise BundleError(
                    f"{job.model} on {socket.gethostname()} is not the bundle the run was planned with: "
                    "give every machine the same file"
                )
            net, config = load_bundle(job.model, job.task)
            _models.clear()
            _models[key] = (runtime.prepare(net), config)
        return _models[key]


def job_sources(job: Job, config: BundleConfig) -> tuple[Sources, TileGrid]:
    """The inputs of ``job`` inspected again in the worker, and its tile grid; refused if the inputs changed."""
    found = SOURCES[job.task](job.inputs, config, job.bands, job.allow_pixel_grid)
    grid = make_grid(found.info, job.tile, job.overlap, fit=job.task is not Task.classify)
    if (grid.height, grid.width, grid.tile) != (job.grid.height, job.grid.width, job.tile):
        raise InputError(f"{job.name} changed since the run was planned: run the command again")
    return found, grid


def dense_part(
    job: Job, index: int, net: torch.nn.Module, config: BundleConfig, runtime: Runtime, progress: Progress | None
) -> dict[str, Any]:
    """Run strip ``index`` of a ``segment`` or ``change`` job into its part file; the sidecar's counts."""
    found, grid = job_sources(job, config)
    strip, path, k = job.strips[index], job.part_file(index), len(job.classes)
    files_for = PartRasterWriter(found.info, strip, k, job.outputs.probabilities is not None, path)
    with gdal_env([s.info for s in found.sources], grid.tile), files_for as files:
        stats, stitcher = stitch_tiles(
            sources=found.sources,
            grid=grid,
            model=net,
            runtime=runtime,
            stitch=job.stitch,
            num_classes=k,
            files=files,
            progress=progress,
            strip=strip,
        )
        files.finish()
    halo_tiles = (strip.first - strip.halo) * len(grid.xs)
    tiles, tiles_run = stats.tiles - halo_tiles, stats.tiles_run - stitcher.halo_tiles_run
    return {
        "bands": stitcher.layout,
        "class_pixels": stitcher.counts.tolist(),
        "tiles": tiles,
        "tiles_run": tiles_run,
        "tiles_skipped_nodata": tiles - tiles_run,
        "halo_tiles": halo_tiles,
        "halo_tiles_run": stitcher.halo_tiles_run,
    }


def classify_part(
    job: Job, index: int, net: torch.nn.Module, config: BundleConfig, runtime: Runtime, progress: Progress | None
) -> dict[str, Any]:
    """Classify the tiles of strip ``index`` into a GeoParquet part file; the sidecar's counts."""
    found, grid = job_sources(job, config)
    strip = job.strips[index]
    table, stats = classify_tiles(
        found.info, grid, net, config, runtime, job.top_k, progress, (strip.first, strip.stop)
    )
    with atomic_path(job.part_file(index), overwrite=True) as tmp:
        gpd.GeoDataFrame(table).to_parquet(tmp)
    return {
        "class_tiles": {c: int((table["class_name"] == c).sum()) for c in config.classes},
        "tiles": stats.tiles,
        "tiles_run": stats.tiles_run,
        "tiles_skipped_nodata": stats.tiles_skipped,
        "halo_tiles": 0,
        "halo_tiles_run": 0,
    }


def detect_part(
    job: Job, index: int, net: torch.nn.Module, config: BundleConfig, runtime: Runtime, progress: Progress | None
) -> dict[str, Any]:
    """Detect the objects of strip ``index`` of the job's scene (with its halo rows) into a GeoParquet part file."""
    found, grid = job_sources(job, config)
    detector = eager_model(net)
    names = ("score_threshold", "iou_threshold", "max_detections", "pre_nms_top_k")
    thresholds = {k: getattr(detector, k) for k in names}
    try:  # the cached model serves later jobs with the bundle's thresholds
        inputs = [*job.inputs, job.model]
        part = job.part_file(index)
        strip = job.strips[index]
        summary = detect_scene(
            found.info, grid, net, config, part, True, inputs, runtime, job.detection, progress, strip
        )
    finally:
        for name, value in thresholds.items():
            setattr(detector, name, value)
    return {
        "class_objects": summary["class_objects"],
        **{k: summary[k] for k in ("objects", "boxes_found", "merged_across_tiles", "partial_boxes")},
        **summary["strip_tiles"],
    }


#: What runs a part of each task in a worker.
PART_RUNNERS: dict[Task, Callable[..., dict[str, Any]]] = {
    Task.segment: dense_part,
    Task.change: dense_part,
    Task.classify: classify_part,
    Task.detect: detect_part,
}


def run_part(job: Job, index: int, progress: Progress | None = None) -> dict[str, Any]:
    """Run part ``index`` of ``job``: write its part file, then its sidecar; return the sidecar."""
    if GDAL_ERRORS not in logging.getLogger("rasterio").handlers:  # GDAL's root causes go into our messages
        logging.getLogger("rasterio").addHandler(GDAL_ERRORS)
    start = time.perf_counter()
    runtime = Runtime.create(job.engine)
    net, config = worker_model(job, runtime)
    counts = PART_RUNNERS[job.task](job, index, net, config, runtime, progress)
    path = job.part_file(index)
    sidecar = plain(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "parts_hash": job.parts_hash,
            "index": index,
            "count": job.count,
            "file": path.name,
            "file_size": path.stat().st_size,
            "file_sha256": file_sha256(path),
            "strip": job.strips[index],
            **counts,
            "seconds": round(time.perf_counter() - start, 3),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(runtime.device),
            "precision": precision_name(runtime.dtype),
            "torch_threads": torch.get_num_threads(),
        }
    )
    write_json(job.sidecar(index), sidecar)
    return sidecar
