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
import warnings
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
from lemevit_geo.errors import InputError, LemevitWarning
from lemevit_geo.pipelines.metrics import (
    binary_scores,
    confusion_from_pairs,
    detection_ap,
    segmentation_scores,
    split_pairs,
    value_pairs,
)
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


#: Distinct (reference, prediction) value pairs a class raster comparison may hold; more is not a class raster.
MAX_PAIRS = 1 << 16


def _class_map(src: rasterio.io.DatasetReader) -> dict[int, str]:
    """Value -> class name from ``CLASS_<n>`` tags (empty when the raster names no classes)."""
    return dict(enumerate(_class_names(src)))


def _pair_counts(prediction: Path, reference: Path, bounds: Bounds | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (reference, prediction) value pairs over the valid pixels, with their counts, read block by
    block (memory: the pairs present, whatever the values)."""
    keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for pred, truth, valid in _blocks(prediction, reference, bounds):
        for values, path in ((pred, prediction), (truth, reference)):
            if values.dtype.kind == "f" and not np.array_equal(values[valid], np.round(values[valid])):
                raise InputError(f"{path} holds values that are not whole numbers: score class rasters")
        k, c = value_pairs(truth, pred, valid)
        keys, inverse = np.unique(np.concatenate([keys, k]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([counts, c]), minlength=len(keys)).astype(np.int64)
        if len(keys) > MAX_PAIRS:
            raise InputError(
                f"{prediction} and {reference} hold more than {MAX_PAIRS} distinct pairs of values: score class "
                "rasters (one value per class)"
            )
    return keys, counts


def _match_classes(
    prediction: Path, reference: Path, keys: np.ndarray
) -> tuple[list[str], dict[int, int], dict[int, int], str]:
    """The classes scored (names), the class index of each prediction and reference value, and how the classes
    were matched. A prediction that names its classes (our outputs) defines them, matched to a reference that
    names its own by name; else the reference's named classes; else every value either raster holds is a
    class, matched by value."""
    with rasterio.open(prediction) as p, rasterio.open(reference) as r:
        pred_names, ref_names = _class_map(p), _class_map(r)
    if not pred_names and ref_names:  # the reference's legend: prediction values matched to it by value
        names = [ref_names[v] for v in sorted(ref_names)]
        return names, dict(zip(sorted(ref_names), range(len(names)), strict=True)), {v: v for v in ref_names}, "value"
    if pred_names:
        names = [pred_names[v] for v in sorted(pred_names)]
        pred_index = {v: v for v in pred_names}
        shared = set(names) & set(ref_names.values())
        if shared:
            ref_index = {v: names.index(n) for v, n in ref_names.items() if n in names}
            return names, pred_index, ref_index, "name"
        if ref_names:
            warnings.warn(
                f"the class names of {prediction} ({', '.join(names)}) and {reference} "
                f"({', '.join(ref_names.values())}) share no name: classes matched by value (0 = {names[0]})",
                LemevitWarning,
                stacklevel=2,
            )
        return names, pred_index, dict(pred_index), "value"
    values = sorted(set(np.concatenate(split_pairs(keys)).tolist()))
    index = {v: i for i, v in enumerate(values)}
    return [ref_names.get(v, f"class_{v}") for v in values], index, index, "value"


def _nothing_scored(prediction: Path, reference: Path, keys: np.ndarray, names: list[str], by: str) -> InputError:
    """Why no pixel could be scored, as the error to raise."""
    if not len(keys):
        return InputError(
            f"{prediction} and {reference} share no valid pixel (they do not overlap, or one is nodata where the "
            "other has data): nothing to score"
        )
    truth, pred = split_pairs(keys)
    held, predicted = (", ".join(str(v) for v in np.unique(values)[:8].tolist()) for values in (truth, pred))
    return InputError(
        f"no value of {reference} ({held}) matches a class of {prediction} ({predicted}: {', '.join(names[:8])}; "
        f"matched by {by}): recode the reference, or name its classes with CLASS_<n> tags"
    )


def evaluate_classes(prediction: Path, reference: Path, bounds: Bounds | None = None) -> dict[str, Any]:
    """Overall accuracy, per-class IoU, mean IoU and the confusion matrix of a class raster.

    The matrix is built over the classes (:func:`_match_classes`), never over the largest value; pixels whose
    value lies outside the classes are counted (``reference_outside_classes``, ``prediction_outside_classes``)
    and not scored. A comparison where no pixel can be scored is refused.
    """
    keys, counts = _pair_counts(prediction, reference, bounds)
    names, pred_index, ref_index, by = _match_classes(prediction, reference, keys)
    cm, ref_outside, pred_outside = confusion_from_pairs(keys, counts, ref_index, pred_index, len(names))
    ref_values, pred_values = (set(values.tolist()) for values in split_pairs(keys))
    if not cm.sum() or (len(ref_values) > 1 and not ref_values & pred_values):  # codes of another legend
        raise _nothing_scored(prediction, reference, keys, names, by)
    scores = segmentation_scores(cm)
    return {
        "task": Task.segment.value,
        "pixels": int(cm.sum()),
        "OA": scores["OA"],
        "mIoU": scores["mIoU"],
        "IoU": {c: clean(v) for c, v in zip(names, scores["IoU"], strict=True)},
        "classes_matched_by": by,
        "reference_outside_classes": ref_outside,
        "prediction_outside_classes": pred_outside,
        "confusion_matrix": {"classes": names, "rows_reference_columns_prediction": cm.tolist()},
    }


def evaluate_change(prediction: Path, reference: Path, bounds: Bounds | None = None) -> dict[str, Any]:
    """Precision, recall, F1 and IoU of the change class (1) of a change raster against a change mask."""
    tp = fp = fn = pixels = overlap = 0
    for pred, truth, valid in _blocks(prediction, reference, bounds):
        overlap += int(valid.sum())
        valid &= truth <= 1  # other reference values are unlabelled
        t, p = (truth == 1) & valid, (pred == 1) & valid
        tp, fp, fn = tp + int((t & p).sum()), fp + int((~t & p).sum()), fn + int((t & ~p).sum())
        pixels += int(valid.sum())
    if not pixels:
        raise (
            _nothing_scored(prediction, reference, np.zeros(0, np.int64), [], "value")
            if not overlap
            else InputError(
                f"{reference} holds no 0 (no change) or 1 (change) where {prediction} has data: nothing to score; "
                "a change mask marks change with 1"
            )
        )
    return {"task": Task.change.value, "pixels": pixels, **binary_scores(tp, fp, fn), "changed_pixels": tp + fn}


def clean(value: float) -> float | None:
    """NaN (a class without reference objects) as ``None``, for JSON."""
    return None if np.isnan(value) else value


def _inside(gdf: Any, bounds: Bounds | None) -> Any:
    if bounds is None:
        return gdf
    return gdf[shapely.contains_xy(shapely.box(*bounds), *shapely.get_coordinates(gdf.geometry.centroid.values).T)]


def _scored_objects(refs: Any, dets: Any, reference: Path, bounds: Bounds | None) -> tuple[Any, Any]:
    """The reference objects and detections inside ``bounds``; refused when no reference object is left (an empty
    reference, or ``bounds`` away from it): AP over no objects is no score."""
    inside = _inside(refs, bounds)
    if len(inside):
        return inside, _inside(dets, bounds)
    if not len(refs):
        raise InputError(f"{reference} holds no reference objects: nothing to score the detections against")
    extent = ", ".join(f"{v:.6g}" for v in refs.total_bounds)
    raise InputError(
        f"no reference object of {reference} has its centre inside `bounds` {list(bounds or ())} (the objects "
        f"lie within {extent}, in the prediction's CRS): nothing to score"
    )


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
    refs = read_polygons(reference, label_column, crs=dets.crs, what="reference", allow_empty=True)
    repaired = refs.attrs.get("repaired", 0)
    refs, dets = _scored_objects(refs, dets, reference, bounds)
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
        "repaired_reference_polygons": repaired,
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
        for path in (prediction, reference):
            if not _is_vector(path):
                raise InputError(f"{path} is not a vector file: detections are scored against reference polygons")
        scores = evaluate_detections(prediction, reference, iou, label_column, box)
    elif task in (Task.segment, Task.change):
        _check_raster(prediction, "prediction", task)
        _check_raster(reference, "reference", task)
        run = evaluate_change if task == Task.change else evaluate_classes
        try:
            scores = run(prediction, reference, box)
        except READ_ERRORS as exc:
            raise InputError(f"reading {prediction} or {reference} failed: {read_error(exc)}") from exc
    else:
        raise InputError("`task` classify cannot be evaluated here: evaluate scores segment, change and detect outputs")
    return {"prediction": str(prediction), "reference": str(reference), **scores}


def _is_vector(path: Path) -> bool:
    """Whether ``path`` names a vector file (by its extension)."""
    return path.suffix.lower() in DRIVERS or path.suffix.lower() in (".shp", ".fgb")


def _check_raster(path: Path, what: str, task: Task) -> None:
    """Refuse what cannot be compared pixel by pixel: a vector file, an unreadable or multi-band raster, and (for
    ``change``) a prediction whose classes are not those of a change raster."""
    if _is_vector(path):
        raise InputError(
            f"{what} {path} is a vector file: {task.value} outputs are scored against label rasters (rasterize "
            "the polygons onto the prediction's grid first)"
        )
    try:
        with rasterio.open(path) as src:
            count, names = src.count, _class_names(src)
    except READ_ERRORS as exc:
        raise InputError(f"{path} cannot be read as a raster: {read_error(exc)}") from exc
    if count != 1:
        raise InputError(f"{what} {path} has {count} bands: a class raster or label raster has one")
    if task == Task.change and what == "prediction" and names and names != CHANGE_CLASSES:
        raise InputError(f"{path} is a class raster ({', '.join(names)}), not a change raster: leave out `task`")
