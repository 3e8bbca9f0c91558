"""``lemevit-geo demo``: the whole tool offline on a generated georeferenced scene.

Generates a two-date scene with land-cover labels, known changes and parked objects, trains a tiny
segmentation model, a change model, a scene classifier and an oriented object detector on the training
part of the scene, runs ``segment``, ``change``, ``classify`` and ``detect`` on the full scene through the
same functions as the commands, scores the held-out part with the functions of ``evaluate``, and writes
PNG previews and a map report (``results/report.html``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window, from_bounds

from lemevit_geo.errors import InputError
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.apps.evaluate import evaluate_change, evaluate_classes, evaluate_detections
from lemevit_geo.pipelines.apps.synthetic import (
    CLASSES,
    COLORS,
    OBJECT_CLASSES,
    OBJECT_COLORS,
    GeneratedScene,
    make_scene,
)
from lemevit_geo.pipelines.inference.change import change
from lemevit_geo.pipelines.inference.classify import classify
from lemevit_geo.pipelines.inference.detect import detect
from lemevit_geo.pipelines.inference.segment import segment
from lemevit_geo.pipelines.metrics import confusion_matrix, segmentation_scores
from lemevit_geo.pipelines.report.overview import OverviewGrid
from lemevit_geo.pipelines.report.page import MapReport
from lemevit_geo.pipelines.report.runs import metric_rows
from lemevit_geo.pipelines.training.train import train
from lemevit_geo.settings import DenseOutputs, Detection, Engine, Hardware, Recipe

PREVIEW = 1024  # longest side of the PNG previews
#: The demo's detector: a narrow FPN and head, enough for its objects, quick to train on a CPU.
DEMO_DETECTOR = {"fpn_channels": 64, "num_convs": 2}
#: ``detect`` runs the demo's detector (trained on the demo's tile size) on 256 px tiles: it is fully
#: convolutional, and fewer, larger tiles mean less overlap to compute twice.
DETECT_TILE = 256


def demo_report(
    *,
    path: str | Path,
    before: Path,
    after: Path,
    results: Path,
    tasks: dict[str, dict[str, Any]],
    overwrite: bool = False,
) -> Path:
    """The demo's page: both dates, the land-cover, change, tile-class and object layers of ``results``, and
    each task's held-out score (``tasks``: the demo's summary per task)."""
    grid = OverviewGrid.of(results / "landcover.tif")
    report = MapReport("lemevit-geo demo", grid, details=tasks)
    report.add_base(f"before: {before.name}", before)
    report.add_base(f"after: {after.name}", after)
    report.add_classes("land cover", results / "landcover.tif", opacity=0.55)
    report.add_classes("change", results / "change.tif", transparent=(0,), opacity=0.8, visible=False)
    scene_colors = dict(zip(CLASSES, COLORS, strict=True))
    report.add_vectors("tile classes", results / "scenes.gpkg", scene_colors, fill=0.4, visible=False)
    objects = dict(zip(OBJECT_CLASSES, OBJECT_COLORS, strict=True))
    report.add_vectors("objects", results / "objects.gpkg", objects)
    report.summary = [("command", "lemevit-geo demo")]
    for task, result in tasks.items():
        seconds = f"train {result['train_seconds']} s, predict {result['predict_seconds']} s"
        report.summary.append((task, f"{result['metric']} ({seconds})"))
        report.summary += [(f"{task} {k}", v) for k, v in metric_rows(result.get("held_out")) if k != "bounds"]
    return report.write(path, overwrite)


def _held_out(path: Path, bounds: list[float]) -> Window:
    with rasterio.open(path) as src:
        win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        return win.intersection(Window(0, 0, src.width, src.height))


def _read(path: Path, window: Window | None = None) -> tuple[np.ndarray, float | None]:
    with rasterio.open(path) as src:
        return src.read(1, window=window), src.nodata


def evaluate_segmentation(pred: Path, labels: Path, val_bounds: list[float], train_bounds: list[float]) -> dict:
    """Held-out OA/mIoU of ``pred``, next to predicting the training region's majority class everywhere."""
    k = len(CLASSES)
    model = evaluate_classes(pred, labels, bounds=tuple(val_bounds))
    truth, _ = _read(labels, _held_out(labels, val_bounds))
    got, nodata = _read(pred, _held_out(labels, val_bounds))
    valid = got != nodata if nodata is not None else np.ones_like(got, dtype=bool)
    train_truth, _ = _read(labels, _held_out(labels, train_bounds))
    majority = int(np.bincount(train_truth.ravel(), minlength=k).argmax())
    base = segmentation_scores(confusion_matrix(np.full_like(truth, majority), truth, k, valid))
    return {
        "OA": round(model["OA"], 4),
        "mIoU": round(model["mIoU"], 4),
        "IoU": {c: None if v is None else round(v, 4) for c, v in model["IoU"].items()},
        "baseline_class": CLASSES[majority],
        "baseline_OA": round(base["OA"], 4),
        "baseline_mIoU": round(base["mIoU"], 4),
    }


def evaluate_held_out_change(pred: Path, labels: Path, val_bounds: list[float]) -> dict:
    """Held-out precision, recall and F1 of the change class."""
    m = evaluate_change(pred, labels, bounds=tuple(val_bounds))
    return {**{k: round(m[k], 4) for k in ("F1", "precision", "recall")}, "changed_pixels": m["changed_pixels"]}


def _decimated(path: Path, bands: list[int]) -> tuple[np.ndarray, Any]:
    with rasterio.open(path) as src:
        side = max(src.width, src.height)
        # large rasters are decimated to PREVIEW px; coarse ones (the tile grid) blown up to >= 256 px
        scale = side / PREVIEW if side > PREVIEW else 1 / math.ceil(256 / side) if side < 256 else 1.0
        shape = (len(bands), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        nearest = rasterio.enums.Resampling.nearest
        return src.read(bands, out_shape=shape, resampling=nearest), src.colormap(1) if src.count == 1 else None


def preview(path: Path, png: Path) -> Path:
    """A PNG of a raster (RGB of an image; its colour table for a class raster), at most PREVIEW px."""
    from PIL import Image

    with rasterio.open(path) as src:
        count = src.count
    if count >= 3:
        arr, _ = _decimated(path, [1, 2, 3])
        Image.fromarray(np.moveaxis(arr, 0, -1)).save(png)
    else:
        arr, cmap = _decimated(path, [1])
        lut = np.zeros((256, 3), dtype=np.uint8)
        for value, rgba in (cmap or {}).items():
            if value < 256:
                lut[value] = rgba[:3]
        Image.fromarray(lut[arr[0]]).save(png)
    return png


@dataclass(frozen=True)
class DemoRun:
    """What every task of the demo shares: folders, scene, training recipe, hardware and engine."""

    models: Path
    results: Path
    scene: GeneratedScene
    recipe: Recipe
    hardware: Hardware
    engine: Engine
    tile_size: int
    overwrite: bool
    log: Callable[[str], None]

    def train(self, name: str, recipe: Recipe | None = None, **data: Any) -> tuple[dict[str, Any], Path, float]:
        """Train the demo's ``name`` model on the scene; returns the summary, the bundle and the seconds."""
        self.log(f"training the {name} model")
        bundle = self.models / f"{name}.safetensors"
        start = time.perf_counter()
        summary = train(
            dataset="custom",
            out=bundle,
            tile_size=self.tile_size,
            recipe=recipe or self.recipe,
            hardware=self.hardware,
            overwrite=True,
            progress=False,
            **data,
        )
        return summary, bundle, time.perf_counter() - start


def lightning_devices(device: str) -> dict[str, Any]:
    """Lightning's accelerator and devices for one of our device names (``auto``, ``cpu``, ``cuda:N``)."""
    if device == "auto":
        return {}
    if device == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    index = device.partition(":")[2]
    return {"accelerator": "gpu", "devices": [int(index)] if index else 1}


def _task(metric: str, held_out: dict[str, Any], train_s: float, predict_s: float, outputs: list[Path]) -> dict:
    return {
        "metric": metric,
        "held_out": held_out,
        "train_seconds": round(train_s, 1),
        "predict_seconds": round(predict_s, 1),
        "outputs": [str(p) for p in outputs],
    }


def _segment(run: DemoRun) -> dict[str, Any]:
    summary, bundle, train_s = run.train("segment", images=str(run.scene.before), labels=str(run.scene.labels))
    run.log("segmenting the scene")
    raster, vector = run.results / "landcover.tif", run.results / "landcover.gpkg"
    t0 = time.perf_counter()
    segment(
        image=run.scene.before,
        output=raster,
        model=bundle,
        engine=run.engine,
        outputs=DenseOutputs(vector=vector),
        overwrite=run.overwrite,
    )
    split = summary["split"]
    m = evaluate_segmentation(raster, run.scene.labels, split["val_bounds"], split["train_bounds"])
    m["bounds"] = split["val_bounds"]
    metric = f"mIoU {m['mIoU']:.3f} (baseline {m['baseline_mIoU']:.3f}), OA {m['OA']:.3f}"
    return _task(metric, m, train_s, time.perf_counter() - t0, [raster, vector])


def _change(run: DemoRun) -> dict[str, Any]:
    scene = run.scene
    summary, bundle, train_s = run.train(
        "change", before=str(scene.before), after=str(scene.after), labels=str(scene.change)
    )
    run.log("detecting changes")
    raster, vector = run.results / "change.tif", run.results / "change.gpkg"
    t0 = time.perf_counter()
    change(
        before=scene.before,
        after=scene.after,
        output=raster,
        model=bundle,
        engine=run.engine,
        outputs=DenseOutputs(vector=vector),
        overwrite=run.overwrite,
    )
    m = evaluate_held_out_change(raster, scene.change, summary["split"]["val_bounds"])
    m["bounds"] = summary["split"]["val_bounds"]
    return _task(f"F1 {m['F1']:.3f}", m, train_s, time.perf_counter() - t0, [raster, vector])


def _classify(run: DemoRun) -> dict[str, Any]:
    recipe = replace(run.recipe, steps_per_epoch=max(10, run.recipe.steps_per_epoch // 2))
    summary, bundle, train_s = run.train(
        "classify", recipe=recipe, task="classify", images=str(run.scene.before), labels=str(run.scene.labels)
    )
    run.log("classifying tiles")
    vector, raster = run.results / "scenes.gpkg", run.results / "scenes.tif"
    t0 = time.perf_counter()
    classify(
        image=run.scene.before, output=vector, model=bundle, raster=raster, engine=run.engine, overwrite=run.overwrite
    )
    metric = f"val accuracy {summary['best'] or 0:.3f} (tile majority class)"
    return _task(metric, {"val_OA": summary["best"]}, train_s, time.perf_counter() - t0, [vector, raster])


def _detect(run: DemoRun) -> dict[str, Any]:
    """Train the detector; ``detect`` with the defaults (the thresholds chosen on validation) and with every
    score (for mAP); score both on the held-out strip."""
    scene = run.scene
    summary, bundle, train_s = run.train(
        "detect", task="detect", images=str(scene.before), labels=str(scene.objects), head=DEMO_DETECTOR
    )
    run.log("detecting objects")
    vector, every = run.results / "objects.gpkg", run.results / "objects_all_scores.gpkg"
    t0 = time.perf_counter()
    found = detect(
        image=scene.before,
        output=vector,
        model=bundle,
        tile_size=DETECT_TILE,
        engine=run.engine,
        overwrite=run.overwrite,
    )
    predict_s = time.perf_counter() - t0
    detect(
        image=scene.before,
        output=every,
        model=bundle,
        tile_size=DETECT_TILE,
        engine=run.engine,
        detection=Detection(all_scores=True),
        overwrite=run.overwrite,
    )
    bounds = tuple(summary["split"]["val_bounds"])
    m = evaluate_detections(every, scene.objects, bounds=bounds)
    default = evaluate_detections(vector, scene.objects, bounds=bounds)
    held = {
        "mAP": None if m["mAP"] is None else round(m["mAP"], 4),
        "mAP_07": None if m["mAP_07"] is None else round(m["mAP_07"], 4),
        "AP": {c: None if v is None else round(v, 4) for c, v in m["AP"].items()},
        **default["as_written"],
        "objects": sum(m["num_reference"].values()),
        "objects_found_in_scene": found["objects"],
        "score_thresholds": found["score_thresholds"],
        "threshold_source": found["threshold_source"],
        "bounds": summary["split"]["val_bounds"],
    }
    metric = (
        f"mAP@0.5 {held['mAP'] or 0:.3f} (VOC07 {held['mAP_07'] or 0:.3f}) over {held['objects']} objects; "
        f"at the default threshold P {held['precision']:.3f} R {held['recall']:.3f} F1 {held['F1']:.3f}, "
        f"{held['boxes_per_object'] or 0:.2f} boxes per object"
    )
    return _task(metric, held, train_s, predict_s, [vector, every])


def _draw_boxes(canvas: Any, vector: Path, to_pixel: Any, width: int) -> None:
    """Outline the boxes of ``vector`` on the PIL image ``canvas`` in their class colours (``to_pixel`` maps map
    coordinates to the canvas)."""
    import geopandas as gpd
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    objects = gpd.read_file(vector)
    for name, geom in zip(objects["class_name"], objects.geometry, strict=True):
        pixels = [tuple(to_pixel * xy) for xy in np.asarray(geom.exterior.coords)]
        colour = OBJECT_COLORS[OBJECT_CLASSES.index(name)] if name in OBJECT_CLASSES else (255, 255, 255)
        draw.line([*pixels, pixels[0]], fill=colour, width=width)


def boxes_preview(image: Path, vector: Path, png: Path, detail: list[float] | None = None, side: int = 384) -> Path:
    """A PNG of the image (at most PREVIEW px) with the detected boxes outlined in their class colours; with
    ``detail`` (map bounds, e.g. the held-out strip) beside it a ``side`` px crop of that area at full
    resolution (where it holds the most boxes), shown twice as large, where each object and its box are
    visible."""
    from affine import Affine
    from PIL import Image

    arr, _ = _decimated(image, [1, 2, 3])
    overview = Image.fromarray(np.moveaxis(arr, 0, -1))
    with rasterio.open(image) as src:
        inverse, scale = ~src.transform, overview.width / src.width
        _draw_boxes(overview, vector, Affine.scale(scale) * inverse, 1)
        if detail is None:
            overview.save(png)
            return png
        win = _held_out(image, detail)
        x0, y0 = _busiest(win, side, vector, inverse)
        crop_win = Window(x0, y0, min(side, src.width - x0), min(side, src.height - y0))
        crop = src.read([1, 2, 3], window=crop_win)
    zoom = 2
    crop_img = Image.fromarray(np.moveaxis(crop, 0, -1)).resize((crop_win.width * zoom, crop_win.height * zoom))
    _draw_boxes(crop_img, vector, Affine.scale(zoom) * Affine.translation(-x0, -y0) * inverse, 2)
    canvas = Image.new("RGB", (overview.width + 16 + crop_img.width, max(overview.height, crop_img.height)), "white")
    canvas.paste(overview, (0, 0))
    canvas.paste(crop_img, (overview.width + 16, 0))
    _draw_boxes_frame(canvas, crop_win, scale)
    canvas.save(png)
    return png


def _busiest(area: Window, side: int, vector: Path, to_pixel: Any) -> tuple[int, int]:
    """The top-left corner of the ``side`` px window inside ``area`` (steps of a quarter side) that holds the
    most box centres of ``vector``."""
    import geopandas as gpd

    centres = gpd.read_file(vector).geometry.centroid
    px = np.array([to_pixel * (p.x, p.y) for p in centres]).reshape(-1, 2)
    step = max(1, side // 4)
    xs = range(int(area.col_off), max(int(area.col_off), int(area.col_off + area.width - side)) + 1, step)
    ys = range(int(area.row_off), max(int(area.row_off), int(area.row_off + area.height - side)) + 1, step)

    def count(x: int, y: int) -> int:
        return int(((px[:, 0] >= x) & (px[:, 0] < x + side) & (px[:, 1] >= y) & (px[:, 1] < y + side)).sum())

    return max(((x, y) for y in ys for x in xs), key=lambda xy: count(*xy))


def _draw_boxes_frame(canvas: Any, window: Window, scale: float) -> None:
    """Mark on the overview (the left of ``canvas``) where the full-resolution crop ``window`` lies."""
    from PIL import ImageDraw

    x0, y0 = window.col_off * scale, window.row_off * scale
    x1, y1 = (window.col_off + window.width) * scale, (window.row_off + window.height) * scale
    ImageDraw.Draw(canvas).rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=2)


def _previews(scene: GeneratedScene, results: Path, held_out: list[float] | None = None) -> dict[str, str]:
    pairs = {
        "image": (scene.before, "image_before.png"),
        "image_after": (scene.after, "image_after.png"),
        "labels": (scene.labels, "labels.png"),
        "prediction": (results / "landcover.tif", "prediction.png"),
        "change_truth": (scene.change, "change_truth.png"),
        "change": (results / "change.tif", "change.png"),
        "scenes": (results / "scenes.tif", "scenes.png"),
    }
    out = {name: str(preview(path, results / png)) for name, (path, png) in pairs.items()}
    objects = boxes_preview(scene.before, results / "objects.gpkg", results / "objects.png", held_out)
    out["objects"] = str(objects)
    return out


OUTPUTS = (
    "landcover.tif",
    "landcover.gpkg",
    "change.tif",
    "change.gpkg",
    "scenes.gpkg",
    "scenes.tif",
    "objects.gpkg",
    "report.html",
    "objects_all_scores.gpkg",
)
TASKS = ("segment", "change", "classify", "detect")


def _folders(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """The demo's ``models`` and ``results`` folders in ``out``, made; every output checked (``overwrite``)."""
    models, results = out / "models", out / "results"
    for folder in (models, results):
        folder.mkdir(parents=True, exist_ok=True)
    bundles = [models / f"{task}.safetensors" for task in TASKS]
    for path in [*(results / name for name in OUTPUTS), *bundles]:
        check_output(path, overwrite)
    return models, results


def run_demo(
    *,
    out: Path,
    size: int = 2048,
    epochs: int = 3,
    steps_per_epoch: int = 40,
    batch_size: int = 8,
    tile_size: int | None = None,
    engine: Engine = Engine(),
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns per-task metrics, runtimes and output files."""
    start = time.perf_counter()
    if size < 320:
        raise InputError(f"`size` {size} is too small for the demo: use at least 320 px")
    out = Path(out)
    models, results = _folders(out, overwrite)
    log(f"generating a {size} x {size} px two-date scene with objects (seed {seed})")
    t0 = time.perf_counter()
    scene = make_scene(out / "data", size, seed)
    gen_s = time.perf_counter() - t0
    run = DemoRun(
        models=models,
        results=results,
        scene=scene,
        recipe=Recipe(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, seed=seed),
        hardware=Hardware(precision=engine.precision, **lightning_devices(engine.device)),
        engine=replace(engine, batch_size=batch_size),
        tile_size=tile_size or (128 if size >= 640 else 64),  # the held-out strip must hold a tile
        overwrite=overwrite,
        log=log,
    )
    tasks = {"segment": _segment(run), "change": _change(run), "classify": _classify(run), "detect": _detect(run)}
    log("writing previews and the map report")
    previews = _previews(scene, results)
    page = dict(before=scene.before, after=scene.after, results=results, tasks=tasks, overwrite=overwrite)
    report = demo_report(path=results / "report.html", **page)
    log("writing previews")
    previews = _previews(scene, results, tasks["detect"]["held_out"]["bounds"])
    return {
        "out": str(out),
        "scene": {
            "size": size,
            "seed": seed,
            "crs": "EPSG:32633",
            "classes": CLASSES,
            "colors": COLORS,
            "object_classes": OBJECT_CLASSES,
            "files": [str(p) for p in vars(scene).values()],
            "seconds": round(gen_s, 1),
        },
        "tasks": tasks,
        "previews": previews,
        "report": str(report),
        "seconds": round(time.perf_counter() - start, 1),
    }
