"""Shared metrics: DOTA-style detection AP on polygons, segmentation and change scores."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from lemevit_geo.pipelines.geometry import box_polygons
from lemevit_geo.pipelines.metrics import (
    average_precision,
    change_scores,
    confusion_matrix,
    detection_ap,
    polygon_iou,
    rows_to_detections,
    segmentation_scores,
)


def square(x: float, y: float, side: float = 10.0) -> list[float]:
    """DOTA's flat polygon: 8 numbers, clockwise on screen."""
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def test_module_imports_no_torch() -> None:
    code = "import sys, lemevit_geo.pipelines.metrics; print(any(m.startswith('torch') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_box_polygons_and_exact_iou() -> None:
    corners = box_polygons(np.array([[5.0, 5.0, 10.0, 10.0, 0.0], [5.0, 5.0, 10.0, 10.0, math.pi / 4]]))
    np.testing.assert_allclose(corners[0], [[0, 0], [10, 0], [10, 10], [0, 10]])
    from shapely.geometry import Polygon

    a, b = Polygon(corners[0]), Polygon(corners[1])
    inter = a.intersection(b).area
    iou = polygon_iou([a], [b, Polygon(np.reshape(square(100, 100), (4, 2)))])
    np.testing.assert_allclose(iou, [[inter / (200 - inter), 0.0]])
    assert polygon_iou([], [a]).shape == (0, 1)


def test_perfect_detections_give_ap_one() -> None:
    gts = [
        {"image": "a", "class": "car", "polygon": square(0, 0)},
        {"image": "a", "class": "ship", "box": [50, 50, 30, 8, 0.7]},
        {"image": "b", "class": "car", "box": [20, 20, 12, 6, -1.3]},
    ]
    dets = [{**g, "score": 0.9 - 0.1 * i} for i, g in enumerate(gts)]
    for use_07 in (False, True):
        result = detection_ap(dets, gts, ["car", "ship"], use_07=use_07)
        assert result["mAP"] == pytest.approx(1.0) and result["AP"] == {"car": 1.0, "ship": 1.0}
    # the same box under another name (h, w, angle + 90 degrees) is a perfect match too
    other = [{**gts[2], "box": [20, 20, 6, 12, -1.3 + math.pi / 2], "score": 1.0}]
    assert detection_ap(other, gts[2:], ["car"])["mAP"] == pytest.approx(1.0)


def hand_case() -> tuple[list[dict], list[dict]]:
    """Four cars that count and one difficult one; ranked detections TP, FP (duplicate), ignored, TP, FP."""
    gts = [
        {"image": "a", "class": "car", "polygon": square(0, 0)},
        {"image": "a", "class": "car", "polygon": square(50, 0)},
        {"image": "b", "class": "car", "polygon": square(0, 0)},
        {"image": "b", "class": "car", "polygon": square(50, 0)},
        {"image": "b", "class": "car", "polygon": square(100, 0), "difficult": True},
    ]
    dets = [
        {"image": "a", "class": "car", "score": 0.9, "polygon": square(1, 0)},  # TP (IoU 0.82)
        {"image": "a", "class": "car", "score": 0.8, "polygon": square(0, 1)},  # duplicate: FP
        {"image": "b", "class": "car", "score": 0.75, "polygon": square(100, 0)},  # difficult: ignored
        {"image": "b", "class": "car", "score": 0.7, "polygon": square(3, 0)},  # TP (IoU 0.54)
        {"image": "a", "class": "ship", "score": 0.65, "polygon": square(50, 0)},  # another class
        {"image": "b", "class": "car", "score": 0.6, "polygon": square(54, 0)},  # IoU 0.43: FP
        {"image": "c", "class": "car", "score": 0.1, "polygon": square(0, 0)},  # image without cars: FP
    ]
    return dets, gts


def test_hand_computed_ap() -> None:
    dets, gts = hand_case()
    # ranked: TP, FP, TP, FP, FP over 4 cars: recall .25 .25 .5 .5 .5, precision 1 .5 .667 .5 .4
    all_points = detection_ap(dets, gts, ["car"])
    assert all_points["AP"]["car"] == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)
    eleven = detection_ap(dets, gts, ["car"], use_07=True)
    assert eleven["AP"]["car"] == pytest.approx((3 * 1 + 3 * 2 / 3) / 11)
    assert all_points["num_gt"] == {"car": 4} and all_points["num_det"] == {"car": 6}
    assert all_points["recall"]["car"] == pytest.approx(0.5)
    # a class with no ground truth: NaN, and left out of the mean
    both = detection_ap(dets, gts, ["car", "ship"])
    assert math.isnan(both["AP"]["ship"]) and both["mAP"] == pytest.approx(all_points["mAP"])
    assert math.isnan(detection_ap([], [], ["car"])["mAP"])
    # the IoU threshold is strict: a stricter threshold drops the IoU 0.54 match
    strict = detection_ap(dets, gts, ["car"], iou=0.6)
    assert strict["recall"]["car"] == pytest.approx(0.25)


def test_difficult_objects_are_neither_hits_nor_misses() -> None:
    dets, gts = hand_case()
    without_difficult_det = [d for d in dets if d["score"] != 0.75]
    assert detection_ap(without_difficult_det, gts, ["car"])["AP"] == detection_ap(dets, gts, ["car"])["AP"]
    # marking the fifth car difficult=False makes it a miss without its detection, a hit with it
    plain = [{**g, "difficult": False} for g in gts]
    assert detection_ap(without_difficult_det, plain, ["car"])["recall"]["car"] == pytest.approx(2 / 5)
    assert detection_ap(dets, plain, ["car"])["recall"]["car"] == pytest.approx(3 / 5)


def test_duplicates_are_false_positives() -> None:
    gts = [{"image": 0, "class": 0, "box": [20, 20, 10, 4, 0.3]}]
    dets = [{"image": 0, "class": 0, "box": [20, 20, 10, 4, 0.3], "score": s} for s in (0.9, 0.8, 0.7)]
    result = detection_ap(dets, gts, [0])
    assert result["AP"][0] == pytest.approx(1.0)  # the first is ranked first: recall 1 at precision 1
    assert result["num_det"][0] == 3 and result["recall"][0] == 1.0
    # ranked: a stray box (FP), the object (TP), two duplicates (FP): precision 0.5 at recall 1
    stray = {"image": 0, "class": 0, "box": [80, 80, 5, 5, 0], "score": 0.95}
    assert detection_ap([*dets, stray], gts, [0])["AP"][0] == pytest.approx(0.5)
    assert detection_ap([*dets, stray], gts, [0], use_07=True)["AP"][0] == pytest.approx(0.5)


def test_average_precision_formulas() -> None:
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert average_precision(rec, prec) == pytest.approx(0.75)
    assert average_precision(rec, prec, use_07=True) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_rows_to_detections_skips_padding() -> None:
    rows = np.zeros((4, 7), dtype=np.float32)
    rows[:, 6] = -1
    rows[0] = [10, 10, 8, 4, 0.2, 0.9, 1]
    rows[1] = [30, 10, 8, 4, 0.2, 0.4, 0]
    dets = rows_to_detections(rows, "tile-3", classes=["plane", "ship"])
    assert [(d["class"], d["image"]) for d in dets] == [("ship", "tile-3"), ("plane", "tile-3")]
    assert [d["score"] for d in dets] == pytest.approx([0.9, 0.4])
    np.testing.assert_allclose(dets[0]["box"], [10, 10, 8, 4, 0.2], rtol=1e-6)


def test_segmentation_scores() -> None:
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, truth, 4)
    assert cm.sum() == 7  # 255 is skipped
    np.testing.assert_array_equal(cm[:3, :3], [[2, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = segmentation_scores(cm)
    assert s["OA"] == pytest.approx(5 / 7)
    np.testing.assert_allclose(s["IoU"][:3], [2 / 4, 2 / 3, 1 / 2])
    assert math.isnan(s["IoU"][3]) and s["mIoU"] == pytest.approx(np.mean([2 / 4, 2 / 3, 1 / 2]))
    valid = np.ones_like(truth, dtype=bool)
    valid[0, 1] = False
    assert confusion_matrix(pred, truth, 4, valid).sum() == 6
    with pytest.raises(ValueError, match="predicted classes"):
        confusion_matrix(pred + 5, truth, 4)


def test_change_scores() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    pred = np.array([1, 1, 0, 1, 0, 0, 1, 1])
    valid = np.array([True] * 7 + [False])
    s = change_scores(pred, truth, valid)
    # tp 3, fp 1, fn 1
    assert s == pytest.approx({"precision": 0.75, "recall": 0.75, "F1": 0.75, "IoU": 0.6})
    assert change_scores(np.zeros(4), np.zeros(4)) == {"precision": 0.0, "recall": 0.0, "F1": 0.0, "IoU": 0.0}


def test_operating_points_maximise_f1_per_class_and_pool_the_rest() -> None:
    """Class 0: hits at 0.9 and 0.4, misses at 0.6 and 0.1: F1 is best keeping the first three (P 2/3, R 1),
    cut midway between 0.4 and 0.1. Class 1 has no hit: it takes the pooled threshold (its miss at 0.3 and
    class 0's ranking: best keeping 0.9, 0.6, 0.4, cut at 0.35)."""
    from lemevit_geo.pipelines.metrics import operating_points

    def rec(c: int, x: float, score: float | None = None) -> dict:
        r = {"image": 0, "class": c, "box": np.array([x, x, 8.0, 4.0, 0.0])}
        return r if score is None else {**r, "score": score}

    truths = [rec(0, 10), rec(0, 40), rec(1, 70)]
    dets = [rec(0, 10, 0.9), rec(0, 25, 0.6), rec(0, 40, 0.4), rec(0, 55, 0.1), rec(1, 90, 0.3)]
    points = operating_points(dets, truths, [0, 1], floor=0.05)
    first, second = points["classes"][0], points["classes"][1]
    assert first["threshold"] == pytest.approx(0.25) and not first["pooled"]
    assert (first["precision"], first["recall"], first["F1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert second["threshold"] == pytest.approx(0.35) and second["pooled"] and second["F1"] == 0
    assert points["pooled"]["F1"] == pytest.approx(2 / 3)
    # all classes at their thresholds: 2 hits among 3 kept boxes, 3 objects
    assert (points["overall"]["precision"], points["overall"]["recall"]) == pytest.approx((2 / 3, 2 / 3))
    assert detection_ap(dets, truths, [0, 1])["tp"] == {0: 2, 1: 0}
    assert operating_points(dets[3:], truths[:1], [0, 1]) is None  # nothing found: no operating point
    # the last cut keeps everything: midway to the floor
    assert operating_points(dets[:1], truths[:1], [0], floor=0.1)["classes"][0]["threshold"] == pytest.approx(0.5)
