"""Evaluation metrics shared by training, ``evaluate`` and the demo (numpy and shapely only).

- Oriented detection: DOTA-style average precision (Xia et al., "DOTA: A Large-scale Dataset for Object
  Detection in Aerial Images", CVPR 2018; the PASCAL VOC protocol of Everingham et al. 2010 on polygons):
  exact polygon IoU, a detection is a true positive when its best-overlapping ground truth of its class
  in its image overlaps it by more than ``iou`` and was not matched before (a second detection of the
  same object is a false positive); difficult ground truths are neither true positives nor misses, and a
  detection whose best match is a difficult ground truth is neither a true nor a false positive. AP is
  VOC2007's 11-point interpolation or the area under the monotone precision envelope (all points).
- Segmentation: confusion matrix, overall accuracy, per-class IoU and mean IoU.
- Change: precision, recall, F1 and IoU of the change class.

Rotated boxes ``(cx, cy, w, h, angle)`` are those of :mod:`lemevit_geo.pipelines.geometry`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from lemevit_geo.pipelines.geometry import box_polygons

__all__ = [
    "average_precision",
    "best_matches",
    "best_f1",
    "binary_scores",
    "change_scores",
    "confusion_from_pairs",
    "confusion_matrix",
    "detection_ap",
    "operating_points",
    "polygon_iou",
    "rows_to_detections",
    "segmentation_scores",
    "split_pairs",
    "value_pairs",
]


# ---------------------------------------------------------------------------------------------- detection


def _geometry(record: Mapping[str, Any]) -> Polygon:
    """A record's polygon: ``polygon`` (a shapely polygon or multipolygon, ``(K, 2)`` corners or DOTA's flat 8
    numbers) or ``box`` ``(cx, cy, w, h, angle)``."""
    if "polygon" in record:
        poly = record["polygon"]
        if isinstance(poly, shapely.Geometry):
            return poly
        return Polygon(np.asarray(poly, dtype=np.float64).reshape(-1, 2))
    if "box" in record:
        return Polygon(box_polygons(np.asarray(record["box"]))[0])
    raise KeyError("a detection or ground truth needs a 'polygon' or a 'box'")


def polygon_iou(a: Sequence[Polygon], b: Sequence[Polygon]) -> np.ndarray:
    """Exact IoU ``(len(a), len(b))`` of polygons; pairs whose bounding boxes miss are not intersected."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    out = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return out
    ba, bb = shapely.bounds(a), shapely.bounds(b)
    meet = (ba[:, None, 0] < bb[None, :, 2]) & (bb[None, :, 0] < ba[:, None, 2])
    meet &= (ba[:, None, 1] < bb[None, :, 3]) & (bb[None, :, 1] < ba[:, None, 3])
    i, j = np.nonzero(meet)
    if len(i):
        inter = shapely.area(shapely.intersection(a[i], b[j]))
        union = shapely.area(a[i]) + shapely.area(b[j]) - inter
        out[i, j] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return out


def best_matches(a: Sequence[Polygon], b: Sequence[Polygon]) -> tuple[np.ndarray, np.ndarray]:
    """For each polygon of ``a``, the index of the polygon of ``b`` it overlaps most (by IoU; -1 for none)
    and that IoU. Only pairs that intersect are measured (a spatial index finds them), so a whole scene of
    objects takes memory in proportion to the pairs that meet, not to ``len(a) * len(b)``."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    best, best_iou = np.full(len(a), -1), np.zeros(len(a))
    if not len(a) or not len(b):
        return best, best_iou
    i, j = shapely.STRtree(b).query(a, predicate="intersects")
    if not len(i):
        return best, best_iou
    inter = shapely.area(shapely.intersection(a[i], b[j]))
    union = shapely.area(a[i]) + shapely.area(b[j]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    order = np.lexsort((j, -iou, i))  # per detection: highest IoU first, then the lowest index (as argmax)
    i, j, iou = i[order], j[order], iou[order]
    first = np.r_[True, i[1:] != i[:-1]]
    hit = first & (iou > 0)
    best[i[hit]], best_iou[i[hit]] = j[hit], iou[hit]
    return best, best_iou


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07: bool = False) -> float:
    """AP from a ranked list's cumulative ``recall`` and ``precision``.

    ``use_07``: VOC2007's 11-point interpolation, the mean over ``t = 0, 0.1, ..., 1`` of the highest
    precision at a recall of at least ``t`` (0 where there is none). Otherwise the area under the
    precision envelope (precision made non-increasing in recall), summed where recall changes.
    """
    recall, precision = np.asarray(recall, dtype=float), np.asarray(precision, dtype=float)
    if use_07:
        return float(
            np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)])
        )
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _by_class(
    detections: Iterable[Mapping[str, Any]], ground_truths: Iterable[Mapping[str, Any]]
) -> tuple[dict[Hashable, list[Mapping[str, Any]]], dict[Hashable, dict[Hashable, list[Mapping[str, Any]]]]]:
    """The detections by class, and the ground truths by class and then image."""
    dets: dict[Hashable, list[Mapping[str, Any]]] = defaultdict(list)
    for d in detections:
        dets[d["class"]].append(d)
    gts: dict[Hashable, dict[Hashable, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for g in ground_truths:
        gts[g["class"]][g["image"]].append(g)
    return dets, gts


def _ranked_matches(
    detections: Sequence[Mapping[str, Any]], per_image: Mapping[Hashable, list[Mapping[str, Any]]], iou: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """One class's detections ranked by score, matched greedily to its ground truths (``per_image``).

    Returns the ranked scores and true-positive flags (1 a first match, 0 a miss or a duplicate), leaving out
    the detections matched to a difficult ground truth, and the number of ground truths that are not difficult.
    """
    polys = {im: [_geometry(g) for g in recs] for im, recs in per_image.items()}
    difficult = {im: np.array([bool(g.get("difficult", False)) for g in recs]) for im, recs in per_image.items()}
    npos = int(sum((~f).sum() for f in difficult.values()))
    ranked = sorted(detections, key=lambda d: -float(d["score"]))
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for k, d in enumerate(ranked):
        rows[d["image"]].append(k)
    best = np.full(len(ranked), -1)
    best_iou = np.zeros(len(ranked))
    for im, ks in rows.items():
        if polys.get(im):
            best[ks], best_iou[ks] = best_matches([_geometry(ranked[k]) for k in ks], polys[im])
    scores, tp = [], []
    matched = {im: np.zeros(len(p), dtype=bool) for im, p in polys.items()}
    for k, d in enumerate(ranked):
        j = best[k]
        hit = j >= 0 and best_iou[k] > iou
        if hit and difficult[d["image"]][j]:
            continue  # matched to a difficult object: neither true nor false positive
        first = hit and not matched[d["image"]][j]
        if first:
            matched[d["image"]][j] = True
        scores.append(float(d["score"]))
        tp.append(int(first))  # a miss or a duplicate is a false positive
    return np.asarray(scores, dtype=float), np.asarray(tp, dtype=np.int64), npos


def detection_ap(
    detections: Iterable[Mapping[str, Any]],
    ground_truths: Iterable[Mapping[str, Any]],
    classes: Sequence[Hashable],
    iou: float = 0.5,
    use_07: bool = False,
) -> dict[str, Any]:
    """DOTA-style AP per class and its mean (see the module docstring).

    Args:
        detections: Records with ``image`` (any hashable id), ``class``, ``score`` and ``polygon`` or
            ``box``.
        ground_truths: Records with ``image``, ``class``, ``polygon`` or ``box`` and optionally
            ``difficult`` (default False).
        classes: The classes to evaluate (compared with the records' ``class`` by equality).
        iou: A detection matches a ground truth when their IoU is greater than this.
        use_07: VOC2007 11-point AP instead of the all-point AP.

    Returns:
        ``mAP`` (mean over the classes with at least one ground truth that is not difficult; NaN if
        there is none), ``AP`` per class (NaN without such ground truths), ``num_gt`` (not difficult) and
        ``num_det`` per class, ``recall`` per class (the recall of all its detections), and ``tp`` and ``fp``
        per class: its detections that found an object first, and those that found none or a found one
        (matches to difficult objects count as neither).
    """
    dets, gts = _by_class(detections, ground_truths)
    ap, num_gt, num_det, recall, hits, misses = {}, {}, {}, {}, {}, {}
    for c in classes:
        scores, tp, npos = _ranked_matches(dets.get(c, []), gts.get(c, {}), iou)
        num_gt[c], num_det[c] = npos, len(dets.get(c, []))
        hits[c], misses[c] = int(tp.sum()), int(len(tp) - tp.sum())
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        if npos == 0:
            ap[c], recall[c] = float("nan"), float("nan")
            continue
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
        ap[c] = average_precision(rec, prec, use_07) if len(rec) else 0.0
        recall[c] = float(rec[-1]) if len(rec) else 0.0
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {
        "mAP": float(np.mean(valid)) if valid else float("nan"),
        "AP": ap,
        "num_gt": num_gt,
        "num_det": num_det,
        "recall": recall,
        "tp": hits,
        "fp": misses,
    }


def best_f1(scores: np.ndarray, tp: np.ndarray, npos: int, floor: float = 0.0) -> dict[str, Any] | None:
    """The score threshold of a ranked list (``scores`` descending, ``tp`` flags, ``npos`` objects) whose kept
    detections (``score > threshold``) have the highest F1, with their precision, recall and F1.

    Cuts fall only between distinct scores, at the midpoint (below the last score: midway to ``floor``).
    ``None`` when no cut finds an object."""
    if npos == 0 or not tp.any():
        return None
    ctp = np.cumsum(tp)
    kept = np.arange(1, len(tp) + 1)
    f1 = 2 * ctp / (kept + npos)
    cut = np.r_[scores[1:] < scores[:-1], True]  # keeping the first k + 1 separates them from the rest
    k = int(np.argmax(np.where(cut, f1, -1.0)))
    below = scores[k + 1] if k + 1 < len(scores) else floor
    return {
        "threshold": float((scores[k] + below) / 2),
        "precision": float(ctp[k] / kept[k]),
        "recall": float(ctp[k] / npos),
        "F1": float(f1[k]),
        "objects": int(npos),
    }


def operating_points(
    detections: Iterable[Mapping[str, Any]],
    ground_truths: Iterable[Mapping[str, Any]],
    classes: Sequence[Hashable],
    iou: float = 0.5,
    floor: float = 0.0,
) -> dict[str, Any] | None:
    """Per class, the score threshold that maximises F1 at ``iou`` (DOTA matching, as :func:`detection_ap`)
    with its precision, recall and F1 (:func:`best_f1`); a class without objects or hits takes the threshold
    of all classes pooled. ``None`` when no detection finds any object.

    Returns ``classes`` (class to its point, ``pooled`` True where it took the pooled threshold), ``pooled``
    and ``overall``: precision, recall and F1 of all classes together at these thresholds."""
    dets, gts = _by_class(detections, ground_truths)
    ranked = [_ranked_matches(dets.get(c, []), gts.get(c, {}), iou) for c in classes]
    scores = np.concatenate([r[0] for r in ranked]) if ranked else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    flags = np.concatenate([r[1] for r in ranked])[order] if ranked else np.zeros(0, np.int64)
    pooled = best_f1(scores[order], flags, sum(r[2] for r in ranked), floor)
    if pooled is None:
        return None
    points, totals = {}, np.zeros(3, dtype=np.int64)
    for c, (sc, hits, npos) in zip(classes, ranked, strict=True):
        own = best_f1(sc, hits, npos, floor)
        threshold = own["threshold"] if own else pooled["threshold"]
        counts = np.array([hits[sc > threshold].sum(), (sc > threshold).sum(), npos])  # hits, kept, objects
        totals += counts
        points[c] = {"threshold": threshold, **_scores_at(*counts), "objects": int(npos), "pooled": own is None}
    return {"classes": points, "pooled": pooled, "overall": _scores_at(*totals)}


def _scores_at(hits: int, kept: int, objects: int) -> dict[str, float]:
    """Precision, recall and F1 of ``kept`` detections of which ``hits`` found one of ``objects`` (0 where a ratio
    has nothing to count)."""
    scores = binary_scores(int(hits), int(kept - hits), int(objects - hits))
    return {k: float(scores[k]) for k in ("precision", "recall", "F1")}


def rows_to_detections(rows: np.ndarray, image: Hashable, classes: Sequence[Hashable] | None = None) -> list[dict]:
    """Detection records from a detector's output rows ``(M, 7)`` ``[cx, cy, w, h, angle, score, class]``
    of one image, skipping padding rows (class < 0 or score <= 0). ``classes`` maps indices to names."""
    out = []
    for r in np.asarray(rows, dtype=np.float64).reshape(-1, 7):
        if r[6] < 0 or r[5] <= 0:
            continue
        c = int(r[6])
        name = classes[c] if classes is not None else c
        out.append({"image": image, "class": name, "score": float(r[5]), "box": r[:5].copy()})
    return out


# ------------------------------------------------------------------------------------ segmentation, change


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """Confusion matrix ``(K, K)`` (truth rows, prediction columns) over the valid pixels.

    Pixels where ``valid`` is False or the truth is outside ``[0, num_classes)`` (an ignore value such as
    255) are skipped. A prediction outside that range is an error.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    keep = (truth >= 0) & (truth < num_classes)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    p, t = pred[keep].astype(np.int64), truth[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted classes must lie in [0, {num_classes}), got {p.min()}..{p.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def value_pairs(truth: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(truth, prediction)`` integer value pairs of the valid pixels, as 64-bit keys (truth in the
    high 32 bits; :func:`confusion_from_pairs` decodes them), and their pixel counts. A confusion matrix of any
    raster values, whose size is the number of pairs present, not the largest value."""
    keys = (truth[valid].astype(np.int64) << 32) | (pred[valid].astype(np.int64) & 0xFFFFFFFF)
    return np.unique(keys, return_counts=True)


def split_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The truth and prediction values of :func:`value_pairs`' keys (the high and the low 32 bits, signed)."""
    keys = np.asarray(keys, dtype=np.int64)
    return keys >> 32, (keys << 32) >> 32


def confusion_from_pairs(
    keys: np.ndarray, counts: np.ndarray, truth_index: Mapping[int, int], pred_index: Mapping[int, int], k: int
) -> tuple[np.ndarray, int, int]:
    """Confusion matrix ``(k, k)`` (truth rows, prediction columns) from :func:`value_pairs`' keys and counts,
    with raster values mapped to class indices; also the pixels whose truth, and those whose prediction, is
    not a key of its mapping (values outside the known classes: counted, never made classes)."""
    truth, pred = split_pairs(keys)
    t = np.array([truth_index.get(v, -1) for v in truth.tolist()], dtype=np.int64)
    p = np.array([pred_index.get(v, -1) for v in pred.tolist()], dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    keep = (t >= 0) & (p >= 0)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (t[keep], p[keep]), counts[keep])
    return cm, int(counts[t < 0].sum()), int(counts[(p < 0) & (t >= 0)].sum())


def segmentation_scores(cm: np.ndarray) -> dict[str, Any]:
    """Overall accuracy ``OA``, per-class ``IoU`` (NaN for a class absent from truth and prediction) and
    ``mIoU`` (the mean over the other classes) of a confusion matrix."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return {"OA": float(tp.sum() / max(cm.sum(), 1)), "mIoU": miou, "IoU": iou.tolist()}


def change_scores(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, positive: int = 1
) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the class ``positive`` (change) over the valid pixels (0 where a
    ratio has nothing to count)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    keep = np.ones(pred.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    t, p = (truth == positive) & keep, (pred == positive) & keep
    return binary_scores(int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum()))


def binary_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 and IoU from true positive, false positive and false negative counts (0 where
    a ratio has nothing to count)."""
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "F1": 2 * tp / max(2 * tp + fp + fn, 1),
        "IoU": tp / max(tp + fp + fn, 1),
    }
