"""The demo at a small size: every output file is checked."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.windows import from_bounds

from lemevit_geo.errors import LemevitWarning
from tests.conftest import cli


def test_demo_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = json.loads(
            cli("demo", "--out", out, "--size", 384, "--epochs", 1, "--steps-per-epoch", 3, "--json").output
        )
    assert not [w for w in caught if issubclass(w.category, LemevitWarning)]  # a clean scene: no nodata guesses
    assert set(summary["tasks"]) == {"segment", "change", "classify", "detect"}
    seg = summary["tasks"]["segment"]["held_out"]
    assert 0 <= seg["mIoU"] <= 1 and 0 <= seg["baseline_mIoU"] <= 1
    with rasterio.open(out / "data" / "scene_before.tif") as src:
        crs, transform, shape, bounds = src.crs, src.transform, (src.height, src.width), src.bounds
    assert crs.to_epsg() == 32633 and shape == (384, 384)
    footprint = shapely.box(*bounds)
    for name in ("landcover.tif", "change.tif"):
        with rasterio.open(out / "results" / name) as ds:
            assert (ds.crs, ds.transform, (ds.height, ds.width)) == (crs, transform, shape)
            assert ds.colormap(1) and ds.read(1).max() < 255
    with rasterio.open(out / "results" / "scenes.tif") as ds:
        assert ds.crs == crs and ds.transform.a == 64 * transform.a  # one pixel per classify tile (64 px)
    # the held-out figures are those of the files on disk, recomputed here without the tool's metric code
    with rasterio.open(out / "results" / "landcover.tif") as pred, rasterio.open(out / "data" / "labels.tif") as ref:
        window = from_bounds(*seg["bounds"], transform=ref.transform).round_offsets().round_lengths()
        got, truth, nodata = pred.read(1, window=window), ref.read(1, window=window), pred.nodata
    assert 0 < got.shape[1] < 384 // 3  # the eastern strip the models never trained on
    valid = got != nodata
    assert seg["OA"] == pytest.approx((got == truth)[valid].mean(), abs=1e-4)
    ious = {}
    for c, name in enumerate(summary["scene"]["classes"]):
        inter = ((got == c) & (truth == c) & valid).sum()
        union = (((got == c) | (truth == c)) & valid).sum()
        if seg["IoU"][name] is not None:
            ious[name] = inter / union
            assert seg["IoU"][name] == pytest.approx(ious[name], abs=1e-4)
    assert seg["mIoU"] == pytest.approx(np.mean(list(ious.values())), abs=1e-4)
    chg = summary["tasks"]["change"]["held_out"]
    with rasterio.open(out / "results" / "change.tif") as pred, rasterio.open(out / "data" / "change_labels.tif") as r:
        window = from_bounds(*chg["bounds"], transform=r.transform).round_offsets().round_lengths()
        got, truth, nodata = pred.read(1, window=window), r.read(1, window=window), pred.nodata
    tp = ((got == 1) & (truth == 1)).sum()
    fp, fn = ((got == 1) & (truth == 0)).sum(), ((got != 1) & (got != nodata) & (truth == 1)).sum()
    assert chg["changed_pixels"] == (truth == 1).sum()
    if tp:
        assert chg["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-3)
    det = summary["tasks"]["detect"]["held_out"]

    def scored(name: str) -> dict:
        bounds = ",".join(map(str, det["bounds"]))
        return json.loads(
            cli("evaluate", out / "results" / name, out / "data" / "objects.gpkg", "--bounds", bounds, "--json").output
        )

    every, default = scored("objects_all_scores.gpkg"), scored("objects.gpkg")  # mAP of every box; P, R, F1 as drawn
    assert every["mAP"] == pytest.approx(det["mAP"], abs=1e-4)
    assert det["objects"] > 0 and (det["mAP"] is None or 0 <= det["mAP"] <= 1)
    assert default["as_written"] == {k: det[k] for k in ("precision", "recall", "F1", "boxes_per_object")}
    drawn = gpd.read_file(out / "results" / "objects.gpkg")
    limit = drawn["class_name"].map(det["score_thresholds"])
    assert (drawn["score"] > limit).all() and len(drawn) <= len(
        gpd.read_file(out / "results" / "objects_all_scores.gpkg")
    )
    for name in ("landcover.gpkg", "change.gpkg", "scenes.gpkg", "objects.gpkg"):
        gdf = gpd.read_file(out / "results" / name)
        assert gdf.crs.to_epsg() == 32633
        # detected boxes are whole rectangles: an object on the scene's edge may reach past it, its centre not
        shapes = gdf.geometry.centroid if name == "objects.gpkg" else gdf.geometry
        assert all(footprint.buffer(1e-6).contains(g) for g in shapes)
    assert len(gpd.read_file(out / "results" / "landcover.gpkg")) > 0
    objects = gpd.read_file(out / "results" / "objects.gpkg")
    assert {"class_id", "class_name", "score", "angle", "length", "width", "area"} <= set(objects.columns)
    for name, png in summary["previews"].items():
        with Image.open(png) as im:
            if name == "objects":  # the overview, and beside it a crop of the held-out strip at twice full size
                assert im.width > 384 + 16 + 2 * 64 and im.height >= 384 and im.mode == "RGB"
                continue
            assert im.size == ((258, 258) if name == "scenes" else (384, 384)) and im.mode == "RGB"
    assert (
        summary["report"] == str(out / "results" / "report.html") and "leaflet" in Path(summary["report"]).read_text()
    )
    for task in ("segment", "change", "classify", "detect"):
        assert (out / "models" / f"{task}.safetensors").is_file()
    # the same seed gives the same scene
    again = tmp_path / "again"
    from lemevit_geo.pipelines.apps.synthetic import make_scene

    make_scene(again, 384, 0)
    for name in ("scene_before.tif", "labels.tif", "change_labels.tif"):
        with rasterio.open(out / "data" / name) as a, rasterio.open(again / name) as b:
            assert (a.read() == b.read()).all()
    assert gpd.read_file(out / "data" / "objects.gpkg").equals(gpd.read_file(again / "objects.gpkg"))
