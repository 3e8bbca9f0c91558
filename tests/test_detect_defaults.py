"""Detections usable with the defaults (issue 20): the operating threshold chosen on validation data, strips of
one scene."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from affine import Affine

from lemevit_geo.bundle import build_model, read_config, save_bundle
from lemevit_geo.pipelines.apps.synthetic import GeneratedScene, make_scene
from lemevit_geo.pipelines.geometry import box_polygons
from lemevit_geo.pipelines.inference import detect as detect_module
from lemevit_geo.pipelines.inference.detect import detect, plan_detect
from lemevit_geo.pipelines.inference.engine import Runtime
from lemevit_geo.pipelines.scaleout.jobs import plan_job
from lemevit_geo.pipelines.scaleout.merge import merge_job
from lemevit_geo.pipelines.scaleout.parts import detect_part
from lemevit_geo.pipelines.training.train import train
from lemevit_geo.settings import Detection, Engine, Hardware, Recipe
from tests.conftest import CRS, GSD, ORIGIN, cli, cli_error, textured_scene, write_raster
from tests.standins import BlobDetector, add, blob_config, paint, random_objects

TINY = {"fpn_channels": 32, "num_convs": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedScene, Path, dict]:
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


# -- strips of one scene ----------------------------------------------------------------------------------


def strip_scene(tmp: Path) -> tuple[Path, Path]:
    """A painted scene of 330 x 150 px (six tile rows of 64 px, overlap 16) with objects everywhere, bars longer
    than the overlap among them (their pieces are joined across tile rows), and the stand-in detector's
    bundle (a real bundle file: parts load it by path)."""
    rng = np.random.default_rng(11)
    objects: list[tuple[float, ...]] = []
    for cy in (40.0, 88.0, 136.0, 184.0, 232.0, 280.0):  # vertical bars across the tile rows' seams
        add(objects, (20.0 + cy / 3, cy, 36.0, 4.0, np.pi / 2, 1))
    for obj in random_objects(rng, 330, 150, 70, sizes=(3, 12)):
        add(objects, obj)
    scene = write_raster(tmp / "strips.tif", paint(330, 150, objects))
    config = blob_config(64, 16)
    config.head = {"fpn_channels": 16, "num_convs": 1}
    bundle = save_bundle(tmp / "blob.safetensors", build_model(config), config)
    return scene, bundle


def strip_run(scene: Path, bundle: Path, out: Path, parts: int) -> tuple[gpd.GeoDataFrame, dict]:
    """``detect`` of ``scene`` in ``parts`` strips through the job planner, the parts and the merge, with the
    stand-in detector in place of the bundle's network."""
    plan = plan_detect(image=scene, output=out, model=bundle, detection=Detection(score_threshold=0.05))
    job = plan_job(plan, parts)
    job.parts_dir.mkdir()
    runtime, config = Runtime(torch.device("cpu"), torch.float32, 3, 2), read_config(bundle)
    sidecars = [detect_part(job, i, BlobDetector(), config, runtime, None) for i in range(job.count)]
    merge_job(job, sidecars)
    return sorted_boxes(gpd.read_file(out)), {"job": job, "sidecars": sidecars}


def sorted_boxes(boxes: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Boxes in a fixed order: by centre, then class and score."""
    centre = boxes.geometry.centroid
    order = np.lexsort((boxes["score"], boxes["class_id"], np.round(centre.x, 6), np.round(centre.y, 6)))
    return boxes.iloc[order].reset_index(drop=True)


def single_run(scene: Path, bundle: Path, out: Path) -> gpd.GeoDataFrame:
    model = (BlobDetector(), read_config(bundle))
    engine = Engine(device="cpu", precision="fp32", batch_size=3, threads=2)
    detect(image=scene, output=out, model=model, engine=engine, detection=Detection(score_threshold=0.05))
    return sorted_boxes(gpd.read_file(out))


def test_strips_give_the_boxes_of_one_run(tmp_path: Path) -> None:
    scene, bundle = strip_scene(tmp_path)
    want = single_run(scene, bundle, tmp_path / "single.gpkg")
    assert len(want) > 40 and (want["length"] > 8).sum() >= 6  # bars longer than the overlap (16 px = 8 m)
    for parts in (2, 3, 6):
        got, run = strip_run(scene, bundle, tmp_path / f"parts{parts}.gpkg", parts)
        strips = run["job"].strips
        assert len(strips) == parts and strips[0].y0 == 0 and strips[-1].y1 == 330
        assert all(a.y1 == b.y0 for a, b in zip(strips, strips[1:], strict=False))  # the rows are shared out
        assert sum(s["halo_tiles_run"] for s in run["sidecars"]) > 0
        assert sum(s["objects"] for s in run["sidecars"]) == len(want)
        assert got.drop(columns="geometry").equals(want.drop(columns="geometry")), parts
        assert got.geometry.geom_equals_exact(want.geometry, 1e-9).all(), parts


def test_strips_without_the_halo_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The negative control: without the halo rows, objects across the strips' seams come out otherwise."""
    scene, bundle = strip_scene(tmp_path)
    want = single_run(scene, bundle, tmp_path / "single.gpkg")
    monkeypatch.setattr(detect_module, "BOX_HALO", False)
    got, run = strip_run(scene, bundle, tmp_path / "nohalo.gpkg", 3)
    assert sum(s["halo_tiles_run"] for s in run["sidecars"]) == 0
    assert keys(got) != keys(want)


# -- defaults that fit a real scene -----------------------------------------------------------------------


@pytest.mark.slow
def test_default_detection_training_fits_its_tile_to_the_validation_strip(tmp_path: Path) -> None:
    """A 1224 x 1860 px scene (a Landsat strip's size) trains with the default options: the default tile
    (1024 px) is capped to the 372 px validation strip."""
    rng = np.random.default_rng(2)
    objects = random_objects(rng, 1224, 1860, 120, sizes=(6, 20))
    image = write_raster(tmp_path / "strip.tif", paint(1224, 1860, objects))
    t = Affine(GSD, 0, ORIGIN[0], 0, -GSD, ORIGIN[1])
    corners = box_polygons(np.array([o[:5] for o in objects]))
    polys = [shapely.Polygon([t * tuple(p) for p in c]) for c in corners]
    names = [["car", "truck", "container"][int(o[5])] for o in objects]
    gpd.GeoDataFrame({"class": names}, geometry=polys, crs=CRS).to_file(tmp_path / "objects.gpkg")
    out = tmp_path / "det.safetensors"
    args = [
        "train",
        "--dataset",
        "custom",
        "--task",
        "detect",
        "--images",
        image,
        "--labels",
        tmp_path / "objects.gpkg",
    ]
    summary = json.loads(cli(*args, "--out", out, "--fast-dev-run", "--json").output)
    assert summary["tile_size"] == 352 and read_config(out).tile_size == 352
    val = summary["split"]["val_bounds"]
    assert (val[2] - val[0]) / GSD == pytest.approx(372) and summary["split"]["val_crops"] >= 3
