"""``lemevit-geo demo``: the whole tool offline on a generated georeferenced scene.

Generates a two-date scene with land-cover labels and known changes, trains a tiny segmentation model,
a change model and a scene classifier on the training part of the scene, runs ``segment``, ``change``
and ``classify`` on the full scene through the same functions as the commands, evaluates on the
held-out part, and writes PNG previews.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window, from_bounds

from lemevit_geo.choices import Precision
from lemevit_geo.errors import InputError
from lemevit_geo.outputs import check_output
from lemevit_geo.pipelines.change import change
from lemevit_geo.pipelines.predict import classify, segment
from lemevit_geo.pipelines.scene import CLASSES, COLORS, make_scene
from lemevit_geo.pipelines.train import train

PREVIEW = 1024  # longest side of the PNG previews


def _held_out(path: Path, bounds: list[float]) -> Window:
    with rasterio.open(path) as src:
        win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        return win.intersection(Window(0, 0, src.width, src.height))


def _read(path: Path, window: Window | None = None) -> tuple[np.ndarray, float | None]:
    with rasterio.open(path) as src:
        return src.read(1, window=window), src.nodata


def confusion(pred: np.ndarray, truth: np.ndarray, k: int, valid: np.ndarray) -> np.ndarray:
    """Confusion matrix (truth rows, prediction columns) over the valid pixels."""
    idx = truth[valid].astype(np.int64) * k + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def scores(cm: np.ndarray) -> dict[str, Any]:
    """Overall accuracy, per-class IoU and mean IoU (over classes present in truth or prediction)."""
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"OA": float(tp.sum() / max(cm.sum(), 1)), "mIoU": float(np.nanmean(iou)), "IoU": iou.tolist()}


def evaluate_segmentation(pred: Path, labels: Path, val_bounds: list[float], train_bounds: list[float]) -> dict:
    """Held-out OA/mIoU of ``pred``, next to predicting the training region's majority class everywhere."""
    k = len(CLASSES)
    win = _held_out(labels, val_bounds)
    truth, _ = _read(labels, win)
    got, nodata = _read(pred, win)
    valid = got != nodata if nodata is not None else np.ones_like(got, dtype=bool)
    model = scores(confusion(got, truth, k, valid))
    train_truth, _ = _read(labels, _held_out(labels, train_bounds))
    majority = int(np.bincount(train_truth.ravel(), minlength=k).argmax())
    base = scores(confusion(np.full_like(truth, majority), truth, k, valid))
    return {
        "OA": round(model["OA"], 4),
        "mIoU": round(model["mIoU"], 4),
        "IoU": {c: None if np.isnan(v) else round(v, 4) for c, v in zip(CLASSES, model["IoU"], strict=True)},
        "baseline_class": CLASSES[majority],
        "baseline_OA": round(base["OA"], 4),
        "baseline_mIoU": round(base["mIoU"], 4),
    }


def evaluate_change(pred: Path, labels: Path, val_bounds: list[float]) -> dict:
    """Held-out precision, recall and F1 of the change class."""
    win = _held_out(labels, val_bounds)
    truth, _ = _read(labels, win)
    got, nodata = _read(pred, win)
    valid = got != nodata if nodata is not None else np.ones_like(got, dtype=bool)
    t, p = (truth == 1) & valid, (got == 1) & valid
    tp, fp, fn = int((t & p).sum()), int((~t & p & valid).sum()), int((t & ~p).sum())
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"F1": round(2 * tp / max(2 * tp + fp + fn, 1), 4), "precision": round(precision, 4),
            "recall": round(recall, 4), "changed_pixels": int(t.sum())}  # fmt: skip


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


def run_demo(
    *,
    out: Path,
    size: int = 2048,
    epochs: int = 3,
    steps_per_epoch: int = 40,
    batch_size: int = 8,
    tile_size: int | None = None,
    device: str = "auto",
    precision: Precision | str = Precision.auto,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns per-task metrics, runtimes and output files."""
    start = time.perf_counter()
    if size < 320:
        raise InputError(f"--size {size} is too small for the demo: use at least 320 px")
    tile_size = tile_size or (128 if size >= 640 else 64)  # the held-out strip must hold a tile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models, results = out / "models", out / "results"
    models.mkdir(exist_ok=True)
    results.mkdir(exist_ok=True)
    outputs = {
        "segment": results / "landcover.tif",
        "segment_vector": results / "landcover.gpkg",
        "change": results / "change.tif",
        "change_vector": results / "change.gpkg",
        "classify": results / "scenes.gpkg",
        "classify_raster": results / "scenes.tif",
    }
    for p in [*outputs.values(), *(models / f"{t}.safetensors" for t in ("segment", "change", "classify"))]:
        check_output(p, overwrite)

    log(f"generating a {size} x {size} px two-date scene (seed {seed})")
    t0 = time.perf_counter()
    scene = make_scene(out / "data", size, seed)
    gen_s = time.perf_counter() - t0
    common = dict(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, tile_size=tile_size,
                  precision=precision, seed=seed, overwrite=True, progress=False)  # fmt: skip
    tasks: dict[str, dict[str, Any]] = {}

    log("training the segmentation model")
    t0 = time.perf_counter()
    seg = train(dataset="custom", images=str(scene.before), labels=str(scene.labels),
                out=models / "segment.safetensors", **common)  # fmt: skip
    train_s = time.perf_counter() - t0
    log("segmenting the scene")
    t0 = time.perf_counter()
    seg_run = segment(image=scene.before, output=outputs["segment"], model=models / "segment.safetensors",
                      vector=outputs["segment_vector"], device=device, precision=precision, overwrite=overwrite,
                      batch_size=batch_size)  # fmt: skip
    metrics = evaluate_segmentation(outputs["segment"], scene.labels, seg["split"]["val_bounds"],
                                    seg["split"]["train_bounds"])  # fmt: skip
    tasks["segment"] = {"metric": f"mIoU {metrics['mIoU']:.3f} (baseline {metrics['baseline_mIoU']:.3f}), "
                        f"OA {metrics['OA']:.3f}", "held_out": metrics, "train_seconds": round(train_s, 1),
                        "predict_seconds": round(time.perf_counter() - t0, 1),
                        "outputs": [str(outputs["segment"]), str(outputs["segment_vector"])]}  # fmt: skip

    log("training the change model")
    t0 = time.perf_counter()
    chg = train(dataset="custom", before=str(scene.before), after=str(scene.after), labels=str(scene.change),
                out=models / "change.safetensors", **common)  # fmt: skip
    train_s = time.perf_counter() - t0
    log("detecting changes")
    t0 = time.perf_counter()
    change(before=scene.before, after=scene.after, output=outputs["change"], model=models / "change.safetensors",
           vector=outputs["change_vector"], device=device, precision=precision, overwrite=overwrite,
           batch_size=batch_size)  # fmt: skip
    cm = evaluate_change(outputs["change"], scene.change, chg["split"]["val_bounds"])
    tasks["change"] = {"metric": f"F1 {cm['F1']:.3f}", "held_out": cm, "train_seconds": round(train_s, 1),
                       "predict_seconds": round(time.perf_counter() - t0, 1),
                       "outputs": [str(outputs["change"]), str(outputs["change_vector"])]}  # fmt: skip

    log("training the scene classifier")
    t0 = time.perf_counter()
    cls_common = {**common, "steps_per_epoch": max(10, steps_per_epoch // 2)}
    cls = train(dataset="custom", task="classify", images=str(scene.before), labels=str(scene.labels),
                out=models / "classify.safetensors", **cls_common)  # fmt: skip
    train_s = time.perf_counter() - t0
    log("classifying tiles")
    t0 = time.perf_counter()
    cls_run = classify(image=scene.before, output=outputs["classify"], model=models / "classify.safetensors",
                       raster=outputs["classify_raster"], device=device, precision=precision,
                       overwrite=overwrite)  # fmt: skip
    tasks["classify"] = {"metric": f"val accuracy {cls['best'] or 0:.3f} (tile majority class)",
                         "held_out": {"val_OA": cls["best"]}, "train_seconds": round(train_s, 1),
                         "predict_seconds": round(time.perf_counter() - t0, 1),
                         "outputs": [str(outputs["classify"]), str(outputs["classify_raster"])]}  # fmt: skip

    log("writing previews")
    previews = {
        "image": preview(scene.before, results / "image_before.png"),
        "image_after": preview(scene.after, results / "image_after.png"),
        "labels": preview(scene.labels, results / "labels.png"),
        "prediction": preview(outputs["segment"], results / "prediction.png"),
        "change_truth": preview(scene.change, results / "change_truth.png"),
        "change": preview(outputs["change"], results / "change.png"),
        "scenes": preview(outputs["classify_raster"], results / "scenes.png"),
    }
    return {
        "out": str(out),
        "scene": {
            "size": size,
            "seed": seed,
            "crs": "EPSG:32633",
            "classes": CLASSES,
            "colors": COLORS,
            "files": [str(p) for p in vars(scene).values()],
            "seconds": round(gen_s, 1),
        },  # fmt: skip
        "tasks": tasks,
        "previews": {k: str(v) for k, v in previews.items()},
        "segment_tiles": seg_run["tiles"],
        "classify_tiles": cls_run["tiles"],
        "seconds": round(time.perf_counter() - start, 1),
    }
