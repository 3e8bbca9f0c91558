"""``evaluate``: class rasters, change rasters and detections against references, on the prediction's grid."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from lemevit_geo.pipelines.apps.evaluate import evaluate
from lemevit_geo.pipelines.metrics import confusion_matrix, segmentation_scores
from tests.conftest import CRS, GSD, ORIGIN, cli, cli_error

NAMES = ["water", "forest", "urban"]


def class_raster(path: Path, arr: np.ndarray, names: list[str], transform=None, crs: str = CRS, nodata=255) -> Path:
    transform = transform or from_origin(*ORIGIN, GSD, GSD)
    h, w = arr.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(arr[None])
        dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
    return path


def blocky(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    return np.kron(rng.integers(0, k, (h // 8 + 1, w // 8 + 1)), np.ones((8, 8), int))[:h, :w].astype(np.uint8)


def test_class_raster_scores_on_the_prediction_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = blocky(rng, 120, 150, 3)
    pred = truth.copy()
    flip = rng.random(truth.shape) < 0.2
    pred[flip] = (pred[flip] + 1) % 3
    pred[:10] = 255  # prediction nodata
    p = class_raster(tmp_path / "pred.tif", pred, NAMES)
    # the reference: larger, shifted by whole pixels, classes named in another order, with nodata
    big = np.full((140, 170), 255, dtype=np.uint8)
    order = [2, 0, 1]  # reference value v is class NAMES[order[v]]
    remap = np.array([order.index(c) for c in range(3)], dtype=np.uint8)
    big[5:125, 12:162] = remap[truth]
    big[5:25, 12:40] = 255
    r = class_raster(
        tmp_path / "ref.tif",
        big,
        [NAMES[i] for i in order],
        transform=from_origin(ORIGIN[0] - 12 * GSD, ORIGIN[1] + 5 * GSD, GSD, GSD),
    )
    got = evaluate(prediction=p, reference=r)
    valid = pred != 255
    valid[:20, :28] = False
    want = segmentation_scores(confusion_matrix(pred, truth, 3, valid))
    assert got["task"] == "segment" and got["classes_matched_by"] == "name"
    assert got["OA"] == pytest.approx(want["OA"]) and got["mIoU"] == pytest.approx(want["mIoU"])
    assert got["pixels"] == valid.sum()
    # a bounded area: the lower half
    x0, y0 = ORIGIN
    half = evaluate(prediction=p, reference=r, bounds=[x0, y0 - 120 * GSD, x0 + 150 * GSD, y0 - 60 * GSD])
    lower = np.zeros_like(valid)
    lower[60:] = True
    assert half["pixels"] == (valid & lower).sum()
    # another CRS: the reference is warped (nearest) onto the prediction's grid
    with rasterio.open(r) as src:
        from rasterio.warp import calculate_default_transform, reproject

        t, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        warped = np.full((h, w), 255, dtype=np.uint8)
        reproject(
            src.read(1),
            warped,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=t,
            dst_crs="EPSG:3857",
            src_nodata=255,
            dst_nodata=255,
        )
    r2 = class_raster(tmp_path / "ref3857.tif", warped, [NAMES[i] for i in order], transform=t, crs="EPSG:3857")
    assert evaluate(prediction=p, reference=r2)["OA"] == pytest.approx(want["OA"], abs=0.03)


def test_change_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = (blocky(rng, 64, 64, 5) == 0).astype(np.uint8)
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.1] ^= 1
    p = class_raster(tmp_path / "change.tif", pred, ["no change", "change"])
    r = class_raster(tmp_path / "mask.tif", truth, ["no change", "change"])
    got = evaluate(prediction=p, reference=r)
    tp, fp, fn = (
        ((truth == 1) & (pred == 1)).sum(),
        ((truth == 0) & (pred == 1)).sum(),
        ((truth == 1) & (pred == 0)).sum(),
    )
    assert got["task"] == "change" and got["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["precision"] == pytest.approx(tp / (tp + fp)) and got["changed_pixels"] == tp + fn


def rect(cx: float, cy: float, w: float, h: float) -> shapely.Polygon:
    return shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def test_detections_against_reference_polygons_in_another_crs(tmp_path: Path) -> None:
    x0, y0 = ORIGIN
    truths = [rect(x0 + 10 * k, y0 - 10, 6, 3) for k in range(1, 6)]
    dets = gpd.GeoDataFrame(
        {"class_name": ["car"] * 4 + ["truck"], "score": [0.9, 0.8, 0.7, 0.6, 0.95]},
        geometry=[truths[0], truths[1], rect(x0 + 500, y0 - 500, 6, 3), truths[3], truths[4]],
        crs=CRS,
    )
    dets.to_file(tmp_path / "dets.gpkg")
    ref = gpd.GeoDataFrame(
        {"kind": ["car"] * 4 + ["truck"], "difficult": [0, 0, 0, 1, 0]}, geometry=truths, crs=CRS
    ).to_crs("EPSG:4326")
    ref.to_file(tmp_path / "ref.geojson")
    got = evaluate(prediction=tmp_path / "dets.gpkg", reference=tmp_path / "ref.geojson", label_column="kind")
    # car: hits at ranks 1 and 2, a false positive at 3, the 4th matches a difficult object (ignored);
    # 3 cars count, 2 found: precision 1, 1 at recall 1/3, 2/3 -> AP 2/3
    assert got["task"] == "detect" and got["AP"]["car"] == pytest.approx(2 / 3, abs=1e-6)
    assert got["AP"]["truck"] == pytest.approx(1.0) and got["mAP"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    assert got["num_reference"] == {"car": 3, "truck": 1} and got["difficult"] == 1
    assert got["AP_07"]["car"] == pytest.approx(7 / 11, abs=1e-6)  # 11-point: 1 at recall 0, 0.1, .., 0.6; 0 after
    # an area around the first two objects only
    part = evaluate(
        prediction=tmp_path / "dets.gpkg",
        reference=tmp_path / "ref.geojson",
        label_column="kind",
        bounds=[x0, y0 - 20, x0 + 25, y0],
    )
    assert part["AP"]["car"] == pytest.approx(1.0) and part["num_reference"]["car"] == 2


def test_evaluate_command_and_bad_inputs(tmp_path: Path) -> None:
    x0, y0 = ORIGIN
    gpd.GeoDataFrame({"class_name": ["car"], "score": [0.9]}, geometry=[rect(x0 + 5, y0 - 5, 4, 2)], crs=CRS).to_file(
        tmp_path / "d.gpkg"
    )
    gpd.GeoDataFrame({"class": ["car"]}, geometry=[rect(x0 + 5, y0 - 5, 4, 2)], crs=CRS).to_file(tmp_path / "r.gpkg")
    out = json.loads(cli("evaluate", tmp_path / "d.gpkg", tmp_path / "r.gpkg", "--json").output)
    assert out["mAP"] == pytest.approx(1.0)
    table = cli("evaluate", tmp_path / "d.gpkg", tmp_path / "r.gpkg").output
    assert "car" in table and "1.0000" in table
    empty = gpd.GeoDataFrame({"class_name": [], "score": []}, geometry=gpd.GeoSeries([], crs=CRS), crs=CRS)
    empty.to_file(tmp_path / "none.gpkg")  # a detector that found nothing scores 0, it is no error
    out = json.loads(cli("evaluate", tmp_path / "none.gpkg", tmp_path / "r.gpkg", "--json").output)
    assert out["mAP"] == 0.0 and out["num_detections"] == {"car": 0}
    gpd.GeoDataFrame({"other": ["car"]}, geometry=[rect(x0, y0, 4, 2)], crs=CRS).to_file(tmp_path / "nocls.gpkg")
    gpd.GeoDataFrame({"class": ["car", "car"]}, geometry=[rect(x0, y0, 4, 2), shapely.Polygon()], crs=CRS).to_file(
        tmp_path / "empty.gpkg"
    )
    line = shapely.Polygon([(x0, y0), (x0 + 1, y0), (x0 + 2, y0)])
    gpd.GeoDataFrame({"class": ["car"]}, geometry=[line], crs=CRS).to_file(tmp_path / "flat.gpkg")
    cases = [
        ([tmp_path / "d.gpkg", tmp_path / "missing.gpkg"], "does not exist"),
        ([tmp_path / "d.gpkg", tmp_path / "nocls.gpkg"], "has no class column (class_name or class)"),
        ([tmp_path / "d.gpkg", tmp_path / "empty.gpkg"], "is empty (rows 1)"),
        ([tmp_path / "d.gpkg", tmp_path / "flat.gpkg"], "degenerate"),
        ([tmp_path / "d.gpkg", tmp_path / "r.gpkg", "--iou", "1.5"], "--iou"),
        ([tmp_path / "d.gpkg", tmp_path / "r.gpkg", "--bounds", "1,2,3"], "--bounds"),
        ([tmp_path / "d.gpkg", tmp_path / "r.gpkg", "--task", "segment"], "is a vector file"),
    ]
    for args, message in cases:
        assert message in cli_error("evaluate", *args)
