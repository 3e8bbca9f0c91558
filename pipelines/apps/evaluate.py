"""``evaluate``: score an output against reference labels, with the metrics of :mod:`lemevit_geo.pipelines.metrics`
(the ones training validation and the demo report).

- A class raster against a label raster: confusion matrix, overall accuracy, per-class IoU and mean IoU.
- A change raster against a change mask: precision, recall, F1 and IoU of the change class.
- Detections (polygons with ``class_name`` and ``score``) against reference polygons: DOTA-style AP per
  class and its mean at an IoU threshold, all-point and VOC07 11-point, on exact polygon IoU.

Rasters are compared on the prediction's grid, block by block (bounded memory): the reference is read
through a nearest-neighbour ``WarpedVRT`` when its grid differs, and pixels that are nodata in either are
ignored. Reference polygons are reprojected to the prediction's CRS. ``bounds`` (in the prediction's CRS)
limits the scoring to an area: pixels inside it, objects whose centroid lies inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from lemevit_geo.bundle import CHANGE_CLASSES
from lemevit_geo.choices import Task
from lemevit_geo.errors import InputError
from lemevit_geo.pipelines.metrics import binary_scores, confusion_matrix, detection_ap, segmentation_scores
from lemevit_geo.raster import READ_ERRORS, read_error
from lemevit_geo.vector import DRIVERS, read_polygons

Bounds = tuple[float, float, float, float]
#: Pixels per side of the blocks rasters are compared in.
BLOCK = 1024


def _class_names(src: rasterio.io.DatasetReader) -> list[str]:
    """Class names from ``CLASS_<n>`` tags (as our outputs and the demo's labels carry), in value order."""
    tags = {int(k[6:]): v for k, v in src.tags(1).items() if k.startswith("CLASS_") and k[6:].isdigit()}
    return [tags[i] for i in range(len(tags))] if tags and set(tags) == set(range(len(tags))) else []


def guess_task(prediction: Path) -> Task:
    """What a prediction file holds: detections (a vector file), a change raster (classes ``no change,
    change``) or a class raster."""
    if prediction.suffix.lower() in DRIVERS or prediction.suffix.lower() in (".shp", ".fgb"):
        return Task.detect
    try:
        with rasterio.open(prediction) as src:
            return Task.change if _class_names(src) == CHANGE_CLASSES else Task.segment
    except READ_ERRORS as exc:
        raise InputError(f"{prediction} cannot be read as a raster: {read_error(exc)}") from exc


def _window(src: rasterio.io.DatasetReader, bounds: Bounds | None) -> Window:
    """The prediction's window to score: ``bounds`` (rounded to whole pixels) or everything."""
    full = Window(0, 0, src.width, src.height)
    if bounds is None:
        return full
    win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
    try:
        return win.intersection(full)
    except rasterio.errors.WindowError as exc:
        raise InputError(f"`bounds` {list(bounds)} do not overlap the prediction") from exc


@contextlib.contextmanager
def _aligned(reference: Path, like: rasterio.io.DatasetReader) -> Iterator[Any]:
    """The reference on the prediction's grid: itself when the grids agree, else a nearest-neighbour warp."""
    with rasterio.open(reference) as ref:
        same = ref.crs == like.crs and ref.transform == like.transform and ref.shape == like.shape
        if same:
            yield ref
            return
        if ref.crs is None or like.crs is None:
            raise InputError(f"{reference} and the prediction lie on different grids and one has no CRS to align them")
        extra: dict[str, Any] = {"nodata": ref.nodata} if ref.nodata is not None else {"add_alpha": True}
        with WarpedVRT(
            ref,
            crs=like.crs,
            transform=like.transform,
            width=like.width,
            height=like.height,
            resampling=Resampling.nearest,
            **extra,
        ) as vrt:
            yield vrt


def _blocks(prediction: Path, reference: Path, bounds: Bounds | None) -> Iterator[tuple[np.ndarray, ...]]:
    """Prediction and reference values, block by block over the scored window, with their valid mask."""
    with rasterio.open(prediction) as src, _aligned(reference, src) as ref:
        win = _window(src, bounds)
        for row in range(int(win.row_off), int(win.row_off + win.height), BLOCK):
            for col in range(int(win.col_off), int(win.col_off + win.width), BLOCK):
                block = Window(
                    col, row, min(BLOCK, win.col_off + win.width - col), min(BLOCK, win.row_off + win.height - row)
                )
                pred = src.read(1, window=block, masked=True)
                truth = ref.read(1, window=block, masked=True)
                valid = ~np.ma.getmaskarray(pred) & ~np.ma.getmaskarray(truth)
                yield np.ma.getdata(pred), np.ma.getdata(truth), valid


def _reference_lookup(prediction: Path, reference: Path) -> tuple[list[str], np.ndarray | None]:
    """The prediction's class names, and a lookup from reference values to prediction classes when both
    name their classes (matched by name; unnamed reference values are ignored), else ``None`` (values)."""
    with rasterio.open(prediction) as p, rasterio.open(reference) as r:
        names, ref_names = _class_names(p), _class_names(r)
        if not names:  # not one of our outputs: the values found name the classes
            top = max(
                [int(b.max()) for _, w in p.block_windows(1) if (b := p.read(1, window=w, masked=True)).count()] + [1]
            )
            names = [f"class_{i}" for i in range(top + 1)]
    if not ref_names or ref_names == names or not set(ref_names) & set(names):
        return names, None
    lookup = np.full(65536, -1, dtype=np.int64)
    for value, name in enumerate(ref_names):
        lookup[value] = names.index(name) if name in names else -1
    return names, lookup


def evaluate_classes(prediction: Path, reference: Path, bounds: Bounds | None = None) -> dict[str, Any]:
    """Overall accuracy, per-class IoU, mean IoU and the confusion matrix of a class raster."""
    names, lookup = _reference_lookup(prediction, reference)
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    for pred, truth, valid in _blocks(prediction, reference, bounds):
        truth = truth.astype(np.int64)
        if lookup is not None:
            truth = np.where((truth >= 0) & (truth < len(lookup)), lookup[np.clip(truth, 0, len(lookup) - 1)], -1)
        valid &= pred.astype(np.int64) < k
        cm += confusion_matrix(pred, truth, k, valid)
    scores = segmentation_scores(cm)
    return {
        "task": Task.segment.value,
        "pixels": int(cm.sum()),
        "OA": scores["OA"],
        "mIoU": scores["mIoU"],
        "IoU": {c: clean(v) for c, v in zip(names, scores["IoU"], strict=True)},
        "classes_matched_by": "value" if lookup is None else "name",
        "confusion_matrix": {"classes": names, "rows_reference_columns_prediction": cm.tolist()},
    }


def evaluate_change(prediction: Path, reference: Path, bounds: Bounds | None = None) -> dict[str, Any]:
    """Precision, recall, F1 and IoU of the change class (1) of a change raster against a change mask."""
    tp = fp = fn = pixels = 0
    for pred, truth, valid in _blocks(prediction, reference, bounds):
        valid &= truth <= 1  # other reference values are unlabelled
        t, p = (truth == 1) & valid, (pred == 1) & valid
        tp, fp, fn = tp + int((t & p).sum()), fp + int((~t & p).sum()), fn + int((t & ~p).sum())
        pixels += int(valid.sum())
    return {"task": Task.change.value, "pixels": pixels, **binary_scores(tp, fp, fn), "changed_pixels": tp + fn}


def clean(value: float) -> float | None:
    """NaN (a class without reference objects) as ``None``, for JSON."""
    return None if np.isnan(value) else value


def _inside(gdf: Any, bounds: Bounds | None) -> Any:
    if bounds is None:
        return gdf
    return gdf[shapely.contains_xy(shapely.box(*bounds), *shapely.get_coordinates(gdf.geometry.centroid.values).T)]


def evaluate_detections(
    prediction: Path, reference: Path, iou: float = 0.5, label_column: str | None = None, bounds: Bounds | None = None
) -> dict[str, Any]:
    """DOTA-style AP per class and mAP (all-point and VOC07) of detections against reference polygons.

    The detections need ``class_name`` and ``score``; the reference's class column is ``label_column``
    (default ``class_name`` or ``class``), its optional ``difficult`` column marks objects that count
    neither as hits nor as misses.
    """
    if not 0 < iou < 1:
        raise InputError(f"`iou` must lie between 0 and 1, got {iou}")
    dets = read_polygons(prediction, "class_name", what="prediction", allow_empty=True)
    if "score" not in dets.columns:
        raise InputError(f"{prediction} has no `score` column: is it a detection output?")
    refs = _inside(read_polygons(reference, label_column, crs=dets.crs, what="reference", allow_empty=True), bounds)
    dets = _inside(dets, bounds)
    difficult = refs["difficult"].astype(bool).to_numpy() if "difficult" in refs.columns else np.zeros(len(refs), bool)
    records = [
        {"image": 0, "class": c, "score": float(s), "polygon": g}
        for c, s, g in zip(dets["class"], dets["score"], dets.geometry, strict=True)
    ]
    truths = [
        {"image": 0, "class": c, "polygon": g, "difficult": bool(d)}
        for c, g, d in zip(refs["class"], refs.geometry, difficult, strict=True)
    ]
    classes = sorted(set(refs["class"]) | set(dets["class"]))
    result = detection_ap(records, truths, classes, iou=iou)
    voc07 = detection_ap(records, truths, classes, iou=iou, use_07=True)
    return {
        "task": Task.detect.value,
        "iou": iou,
        "mAP": clean(result["mAP"]),
        "mAP_07": clean(voc07["mAP"]),
        "AP": {c: clean(result["AP"][c]) for c in classes},
        "AP_07": {c: clean(voc07["AP"][c]) for c in classes},
        "num_reference": result["num_gt"],
        "num_detections": result["num_det"],
        "recall": {c: clean(result["recall"][c]) for c in classes},
        "difficult": int(difficult.sum()),
        "as_written": detection_counts(result),
    }


def detection_counts(result: dict[str, Any]) -> dict[str, Any]:
    """Precision, recall and F1 of all the detections of a :func:`detection_ap` result taken as they are (the
    operating point of a file written at its score threshold), and boxes per reference object."""
    tp, fp, gt = (sum(result[k].values()) for k in ("tp", "fp", "num_gt"))
    scores = binary_scores(tp, fp, gt - tp)
    return {
        **{k: round(scores[k], 4) for k in ("precision", "recall", "F1")},
        "boxes_per_object": round((tp + fp) / gt, 4) if gt else None,
    }


def evaluate(
    *,
    prediction: str | Path,
    reference: str | Path,
    task: Task | str | None = None,
    iou: float = 0.5,
    label_column: str | None = None,
    bounds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Score ``prediction`` (a class raster, a change raster or detections) against ``reference``.

    ``task`` says what the prediction is (default: guessed from the file, see :func:`guess_task`).
    Returns the scores as a summary dict (``task`` names which).
    """
    prediction, reference = Path(prediction), Path(reference)
    for path, what in ((prediction, "prediction"), (reference, "reference")):
        if not path.is_file():
            raise InputError(f"{what} {path} does not exist")
    if bounds is not None and (len(bounds) != 4 or bounds[0] >= bounds[2] or bounds[1] >= bounds[3]):
        raise InputError(f"`bounds` needs minx,miny,maxx,maxy with min < max, got {list(bounds)}")
    box = None if bounds is None else (float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3]))
    task = Task(task) if task else guess_task(prediction)
    if task == Task.detect:
        scores = evaluate_detections(prediction, reference, iou, label_column, box)
    elif task in (Task.segment, Task.change):
        _check_raster(prediction)
        _check_raster(reference)
        run = evaluate_change if task == Task.change else evaluate_classes
        try:
            scores = run(prediction, reference, box)
        except READ_ERRORS as exc:
            raise InputError(f"reading {prediction} or {reference} failed: {read_error(exc)}") from exc
    else:
        raise InputError("`task` classify cannot be evaluated here: evaluate scores segment, change and detect outputs")
    return {"prediction": str(prediction), "reference": str(reference), **scores}


def _check_raster(path: Path) -> None:
    try:
        with rasterio.open(path):
            pass
    except READ_ERRORS as exc:
        raise InputError(f"{path} cannot be read as a raster: {read_error(exc)}") from exc
