"""Detections usable with the defaults (issue 20): the operating threshold chosen on validation data."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from lemevit_geo.bundle import read_config
from lemevit_geo.pipelines.apps.synthetic import Scene, make_scene
from lemevit_geo.pipelines.training.train import train
from lemevit_geo.settings import Hardware, Recipe
from tests.conftest import cli, cli_error, textured_scene, write_raster

TINY = {"fpn_channels": 32, "num_convs": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scene, Path, dict]:
    """A tiny detector trained for 60 steps on a generated scene (fp32: the same on every run; it finds some of
    the validation objects)."""
    tmp = tmp_path_factory.mktemp("calibrated")
    scene = make_scene(tmp / "scene", size=320, seed=5)
    bundle = tmp / "det.safetensors"
    summary = train(
        dataset="custom",
        task="detect",
        images=str(scene.before),
        labels=str(scene.objects),
        out=bundle,
        tile_size=64,
        val_fraction=0.25,
        recipe=Recipe(epochs=3, steps_per_epoch=20, batch_size=4),
        hardware=Hardware(accelerator="cpu", devices=1, precision="fp32"),
        head=TINY,
        progress=False,
    )
    return scene, bundle, summary


def keys(boxes: gpd.GeoDataFrame) -> set[tuple]:
    """Each box as its class, score and corners (rounded to a millimetre)."""
    corners = [tuple(np.round(g.exterior.coords, 3).ravel()) for g in boxes.geometry]
    return set(zip(boxes["class_name"], np.round(boxes["score"], 6), corners, strict=True))


@pytest.mark.slow
def test_training_stores_the_operating_point_and_detect_uses_it(trained: tuple, tmp_path: Path) -> None:
    scene, bundle, summary = trained
    config = read_config(bundle)
    assert config.detect is not None and sorted(config.detect["thresholds"]) == sorted(config.classes)
    stored = config.detect["thresholds"]
    assert all(0.05 < t < 1 for t in stored.values())  # above the head's candidate threshold
    assert summary["score_thresholds"] == {"thresholds": stored, "source": f"bundle: {config.detect['source']}"}
    for record in config.detect["validation"].values():
        assert {"precision", "recall", "F1", "objects", "pooled"} <= set(record)
    overall = config.detect["overall"]
    assert 0 < overall["F1"] <= 1 and summary["validation"]["F1"] == pytest.approx(overall["F1"], abs=1e-4)
    shown = json.loads(cli("bundle", "show", bundle).output)
    assert shown["score_thresholds"]["thresholds"] == stored
    assert shown["score_thresholds"]["source"].startswith("bundle: validation F1 at IoU 0.5")

    def run(name: str, *extra: str) -> tuple[gpd.GeoDataFrame, dict]:
        out = tmp_path / name
        args = [scene.before, "-o", out, "-m", bundle, "--tile-size", 128, "--device", "cpu", *extra, "--json"]
        summary = json.loads(cli("detect", *args).output)
        return gpd.read_file(out), summary

    default, s_default = run("default.gpkg")
    assert s_default["score_thresholds"] == stored and s_default["threshold_source"].startswith("bundle: validation")
    limit = default["class_name"].map(stored).to_numpy()
    assert (default["score"].to_numpy() > limit).all()

    every, s_every = run("every.gpkg", "--score-threshold", "0")
    assert set(s_every["score_thresholds"].values()) == {0.0} and s_every["threshold_source"].startswith("all")
    assert len(every) > len(default) > 0
    assert keys(default) <= keys(every)  # every default box is in the unfiltered file, as it is
    same, _ = run("all.gpkg", "--all-scores")
    assert len(same) == len(every)

    strict = 0.5 * (max(stored.values()) + 1)
    fixed, s_fixed = run("fixed.gpkg", "--score-threshold", str(strict))
    assert set(s_fixed["score_thresholds"].values()) == {round(strict, 4)} and s_fixed["threshold_source"] == (
        "--score-threshold"
    )
    assert (fixed["score"] > strict).all() and len(fixed) == int((every["score"] > strict).sum())


def test_untrained_bundles_say_they_are_uncalibrated(tmp_path: Path) -> None:
    bundle = tmp_path / "init.safetensors"
    cli("bundle", "init", "--task", "detect", "--classes", "car,ship", "--tile-size", "64", "-o", bundle)
    shown = json.loads(cli("bundle", "show", bundle).output)
    assert "detect" not in shown and shown["score_thresholds"]["source"].startswith("bundle: uncalibrated")
    assert shown["score_thresholds"]["thresholds"] == {"car": 0.05, "ship": 0.05}
    src = tmp_path / "scene.tif"
    write_raster(src, textured_scene(64, 64))
    summary = json.loads(cli("detect", src, "-o", tmp_path / "o.gpkg", "-m", bundle, "--json").output)
    assert summary["threshold_source"].startswith("bundle: uncalibrated")
    line = cli_error("detect", src, "-o", tmp_path / "p.gpkg", "-m", bundle, "--all-scores", "--score-threshold", "0.3")
    assert "--all-scores" in line and "--score-threshold" in line
    assert np.isclose(summary["score_thresholds"]["car"], 0.05)
