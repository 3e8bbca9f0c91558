"""``detect``: oriented objects in a scene of any size, as polygons in the scene's CRS.

The engine reads tiles ahead and runs the detector on them in batches (score threshold, then rotated NMS
per class, within each tile); :class:`~lemevit_geo.pipelines.inference.boxes.BoxMerger` merges the boxes across
tiles (ownership of the centre, cut boxes giving way, exact rotated IoU near seams) in a background
thread and hands every finished tile row to a :class:`~lemevit_geo.vector.VectorStream`: the device does
not wait for merging and writing, and memory stays bounded whatever the scene size and the number of
objects.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.choices import Stitch, Task
from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.geometry import box_features
from lemevit_geo.pipelines.inference import plan as planning
from lemevit_geo.pipelines.inference.boxes import BoxMerger
from lemevit_geo.pipelines.inference.dense import run_summary
from lemevit_geo.pipelines.inference.engine import BackgroundSink, Progress, Runtime, TileReader, eager_model, run_tiles
from lemevit_geo.pipelines.inference.tiling import Strip, TileGrid, strips
from lemevit_geo.raster import SourceInfo, gdal_env
from lemevit_geo.settings import Detection, Engine, Tiling
from lemevit_geo.vector import VectorStream


def configure_detector(net: torch.nn.Module, config: BundleConfig, detection: Detection) -> dict[str, Any]:
    """Set the detector's thresholds from ``detection`` (the bundle's where not given); return the settings
    in force: the score threshold per class and its source, and the indices of the classes to keep
    (``None``: all).

    By default each class's score threshold is the bundle's (the operating point chosen on validation data,
    see :meth:`~lemevit_geo.bundle.BundleConfig.score_thresholds`); ``score_threshold`` sets one for every
    class, and 0 (or ``all_scores``) keeps every box the detector reports (above its candidate threshold, the
    head's ``score_threshold``, 0.05 by default: the boxes of an mAP). A score threshold above the candidate
    threshold is applied after merging across tiles: the detector keeps using the candidate threshold, so
    weaker whole views of objects still win over stronger fragments of them, and every threshold keeps a
    subset of the boxes that 0 keeps.
    """
    if detection.all_scores or detection.score_threshold == 0:
        scores, source = dict.fromkeys(config.classes, 0.0), "all scores (--score-threshold 0)"
    elif detection.score_threshold is not None:
        scores, source = dict.fromkeys(config.classes, float(detection.score_threshold)), "--score-threshold"
    else:
        calibrated = config.score_thresholds()
        scores, source = calibrated["thresholds"], calibrated["source"]
    lowest = min(scores.values())
    if lowest > 0:  # a threshold below the candidate threshold lowers it
        net.score_threshold = min(lowest, float(net.score_threshold))
    for name in ("iou_threshold", "max_detections"):
        value = getattr(detection, name)
        if value is not None:
            setattr(net, name, value)
    net.pre_nms_top_k = max(int(net.pre_nms_top_k), int(net.max_detections))
    return {
        "score_thresholds": {c: round(float(v), 4) for c, v in scores.items()},
        "threshold_source": source,
        "iou_threshold": float(net.iou_threshold),
        "max_detections": int(net.max_detections),
        "keep": kept_classes(config, detection),
    }


def kept_classes(config: BundleConfig, detection: Detection) -> list[int] | None:
    """Indices of the classes ``detection`` keeps (``None``: all); unknown names are refused."""
    if detection.classes is None:
        return None
    unknown = [c for c in detection.classes if c not in config.classes]
    if unknown:
        raise InputError(f"`classes` names {', '.join(unknown)}, not in the model's {', '.join(config.classes)}")
    return sorted(config.classes.index(c) for c in detection.classes)


def plan_detect(
    *,
    image: str | Path,
    output: str | Path,
    model: planning.ModelArg,
    bands: Sequence[int] | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    overwrite: bool = False,
    allow_pixel_grid: bool = False,
    engine: Engine = Engine(),
    detection: Detection = Detection(),
    defer_existing: bool = False,
) -> planning.Plan:
    """Plan ``detect`` of ``image`` with the detection bundle ``model`` (a path, or a loaded ``(model, config)``
    pair): the scene inspected, the tile grid laid out, the classes to keep and the output checked.

    ``tile_size`` and ``overlap`` default to the bundle's (the overlap to at least the largest object it
    was trained for, so each object lies whole in the tile that owns its centre).
    """
    config = planning.bundle_config(model, Task.detect)
    found = planning.scene_sources([image], config, bands, allow_pixel_grid)
    tile, overlap = Tiling(tile_size=tile_size, overlap=overlap).resolve(config.tile_size, config.overlap)
    grid = planning.make_grid(found.info, tile, overlap)
    kept_classes(config, detection)
    asked = dict(bands=bands, overwrite=overwrite, allow_pixel_grid=allow_pixel_grid, engine=engine)
    fields = dict(task=Task.detect, model=model, config=config, inputs=[image], output=output, **asked)
    return planning.planned(
        found, grid, defer_existing=defer_existing, stitch=Stitch.crop, detection=detection, **fields
    )


def detect(*, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Oriented objects of ``image`` found by the detection bundle ``model``, written to ``output`` as
    polygons in the scene's CRS (GeoPackage, GeoParquet or GeoJSON by extension), in this process;
    ``options`` are those of :func:`plan_detect`.

    Columns: ``class_id``, ``class_name``, ``score``, ``angle`` (degrees counter-clockwise from east, of the
    longer side, in [0, 180)), ``length``, ``width`` and ``area`` in CRS units. Returns the run's summary.
    """
    plan = plan_detect(**options)
    net, config = plan.load()
    if progress:
        progress.start(len(plan.grid))
    runtime = Runtime.create(plan.engine)
    model = runtime.prepare(net)
    inputs = plan.files_read
    return detect_scene(
        plan.info, plan.grid, model, config, plan.output, plan.overwrite, inputs, runtime, plan.detection, progress
    )


def detect_scene(
    info: SourceInfo,
    grid: TileGrid,
    model: torch.nn.Module,
    config: BundleConfig,
    output: Path,
    overwrite: bool,
    inputs: Sequence[str | Path],
    runtime: Runtime,
    detection: Detection,
    progress: Progress | None = None,
    strip: Strip | None = None,
) -> dict[str, Any]:
    """Run the detector ``model`` (prepared for ``runtime``) over ``grid`` of the checked source ``info`` and write
    the merged boxes to ``output`` (the detector's thresholds are set from ``detection``); the run's summary.

    With a ``strip`` (a scale-out part) the tile rows of :func:`box_rows` run and only the objects whose centre
    lies in the strip's scene rows are written."""
    settings = configure_detector(eager_model(model), config, detection)
    classes: Counter[str] = Counter()

    def write(rows: np.ndarray) -> None:
        part = box_features(rows, info.transform, config.classes, info.crs)
        classes.update(part["class_name"])
        stream.append(part)

    template = box_features(np.zeros((0, 7)), info.transform, config.classes, info.crs)
    with VectorStream(output, overwrite, template, inputs=inputs) as stream:
        start = time.perf_counter()
        thresholds = [settings["score_thresholds"][c] for c in config.classes]
        calibrated = config.score_thresholds()["thresholds"]
        rows = None if strip is None else box_rows(grid, strip)
        own = None if strip is None else (strip.y0, strip.y1)
        join = [calibrated[c] for c in config.classes]
        merger = BoxMerger(grid, write, settings["iou_threshold"], settings["keep"], thresholds, rows, own, join)
        runtime.fit(model, (len(info.bands), grid.tile, grid.tile), row=len(grid.xs))
        prefetch = 4 * runtime.batch_size
        source = planning.source_for(info, config)
        reader = TileReader([source], grid, threads=runtime.threads, prefetch=prefetch, rows=rows)
        with gdal_env([info], grid.tile):
            stats = run_tiles(iter(reader), model, BackgroundSink(merger), runtime, progress)
        written = {"vector": str(stream.finish())}
    summary = run_summary(stats, runtime, grid, info, time.perf_counter() - start, written)
    summary["mask"] = [info.mask.describe()]
    if strip is not None:
        summary["strip_tiles"] = box_part_tiles(grid, strip, merger.rows_run)
    return {**summary, **box_summary(merger, classes, config, settings)}


def box_summary(
    merger: BoxMerger, found: Counter[str], config: BundleConfig, settings: dict[str, Any]
) -> dict[str, Any]:
    """What ``detect`` adds to the run summary: objects (per class), merging counts and the settings used."""
    kept = [c for i, c in enumerate(config.classes) if settings["keep"] is None or i in settings["keep"]]
    return {
        "objects": merger.counts["written"],
        "class_objects": {c: found[c] for c in kept},
        "boxes_found": merger.counts["found"],
        "merged_across_tiles": merger.counts["merged"],
        "partial_boxes": merger.counts["partial"],
        "bundle_overlap": config.overlap,
        **{k: v for k, v in settings.items() if k != "keep"},
    }


#: Strips run the halo of :func:`box_rows` (off only in the negative control of the identity test).
BOX_HALO = True


def box_rows(grid: TileGrid, strip: Strip) -> tuple[int, int]:
    """The tile rows ``[start, stop)`` a ``detect`` strip runs so that its objects are merged as in one run.

    The strip owns the objects whose centre lies in its scene rows ``[y0, y1)``. Objects reach up to the
    overlap (the bundle's: the largest object trained on) beyond their centre, and the boxes that decide
    their fate as far again: the halo is every tile row reaching within twice the overlap of the strip's
    rows, and one more on each side, so the merger's state when it reaches them is that of one run. (Boxes
    much larger than the overlap, as an untrained model reports, can reach beyond the halo.)
    """
    if not BOX_HALO:
        return strip.first, strip.stop
    ys, reach = grid.ys, 2 * max(grid.overlap, 1)
    start = next(q for q, y in enumerate(ys) if y + grid.tile > strip.y0 - reach)
    stop = max(q for q, y in enumerate(ys) if y < strip.y1 + reach) + 1
    return max(0, start - 1), min(len(ys), stop + 1)


def box_strips(grid: TileGrid, count: int) -> list[Strip]:
    """``count`` strips of tile rows for ``detect`` (fewer if the grid has fewer tile rows), each owning the
    scene rows its tile rows own, with the upper halo of :func:`box_rows` as ``halo``."""
    return [replace(s, halo=box_rows(grid, s)[0]) for s in strips(grid, count, Stitch.crop)]


def box_part_tiles(grid: TileGrid, strip: Strip, rows_run: list[int]) -> dict[str, int]:
    """The tile counts of a ``detect`` part (the tile row of each tile it ran given): its own tile rows', and
    the halo rows' it ran besides."""
    start, stop = box_rows(grid, strip)
    tiles = (strip.stop - strip.first) * len(grid.xs)
    own = sum(strip.first <= r < strip.stop for r in rows_run)
    return {
        "tiles": tiles,
        "tiles_run": own,
        "tiles_skipped_nodata": tiles - own,
        "halo_tiles": (stop - start) * len(grid.xs) - tiles,
        "halo_tiles_run": len(rows_run) - own,
    }
