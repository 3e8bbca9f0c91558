"""benchmarks/realdata.py: the metric, the split choice and the label burning (no downloads)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from rasterio.transform import from_origin

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "realdata.py"
_spec = importlib.util.spec_from_file_location("realdata", _PATH)
realdata = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["realdata"] = realdata
_spec.loader.exec_module(realdata)  # type: ignore[union-attr]


def test_score_skips_unknown_and_counts_nodata_as_wrong() -> None:
    truth = np.array([[0, 0, 1, 255], [1, 2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 0], [1, 2, 255, 2]], np.uint8)
    r = realdata.score(pred, truth, ["a", "b", "c"])
    assert r["pixels"] == 6
    assert r["OA"] == pytest.approx(4 / 6, abs=1e-4)
    # a: tp 1, fn 1 -> 1/2; b: tp 2, fp 1 -> 2/3; c: tp 1, fn 1 (nodata) -> 1/2
    assert r["IoU"] == pytest.approx({"a": 0.5, "b": 0.6667, "c": 0.5}, abs=1e-4)
    assert r["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3, abs=1e-4)


def test_score_averages_only_classes_present() -> None:
    truth = np.zeros((4, 4), np.uint8)
    r = realdata.score(np.zeros((4, 4), np.uint8), truth, ["a", "b"])
    assert r["IoU"]["b"] is None and r["mIoU"] == 1.0


def test_choose_split_keeps_every_class_on_both_sides() -> None:
    labels = np.full((8, 8), 255, np.uint8)
    labels[:4, :] = 0  # class 0 only in the north: a north|south cut would lose it on one side
    labels[4:, :] = 1
    name, train, test = realdata.choose_split(labels, ["a", "b"])
    assert name == "west|east"
    assert (int(train.col_off), int(test.col_off), int(train.width)) == (0, 4, 4)


def test_burn_marks_conflicting_classes_unknown() -> None:
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(
        {"c": ["x", "y", "x"]},
        geometry=[shapely.box(0, 0, 4, 4), shapely.box(2, 0, 6, 4), shapely.box(0, 0, 1, 1)],
        crs="EPSG:32633",
    )
    labels, conflicts = realdata._burn(gdf, "c", ["x", "y"], (4, 8), from_origin(0, 4, 1, 1))
    assert conflicts == 8  # columns 2-3, all four rows: claimed by x and y
    assert (labels[:, :2] == 0).all() and (labels[:, 2:4] == 255).all() and (labels[:, 4:6] == 1).all()
    assert (labels[:, 6:] == 255).all()  # no polygon: unknown, not background


def test_named_runs_are_train_recipes_with_overrides() -> None:
    run = realdata.make_run("today", ["epochs=2", "augment=true", "tile_size=96"], "probe", 0)
    recipe = run.settings()
    assert run.name == "today+probe" and run.tile_size == 96
    assert recipe.epochs == 2 and recipe.augment is True and recipe.schedule.value == "plateau"
    assert recipe.pixel_channels == 0 and recipe.weight_decay == 0.01
    default = realdata.make_run("new", [], "", 0)
    assert default.settings().pixel_channels == 32 and default.epochs * default.steps_per_epoch == 200
    new = realdata.make_run("new", [], "", 1)
    assert new.name == "new_s1" and new.settings() == realdata.make_run("new", [], "", 1).settings()
    for name, spec in realdata.RUNS.items():  # every named run is a valid recipe
        realdata.make_run(name, [], "", 0).settings()
        assert spec.get("pretrain") in (None, *realdata.PRETRAINS)
