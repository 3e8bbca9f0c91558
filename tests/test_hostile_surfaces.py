"""Hostile use of the newer surfaces (issue 19): `evaluate`, `pretrain`, `train` on own data (also detection
labels), `detect` and the help screens. Each case: the exit code, the single stderr line, no leftovers, and
nothing outside the named output changed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from lemevit_geo.pipelines.apps.synthetic import make_scene
from tests.conftest import CRS, GSD, ORIGIN, cli_main, textured_scene, write_raster


def one_line_error(r: subprocess.CompletedProcess, message: str, code: int = 1) -> str:
    """Assert ``r`` failed with ``code`` and one stderr line holding ``message``; return the line."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size and modification time (to see what a run changed)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# -- help ------------------------------------------------------------------------------------------------------


def test_help_lists_commands_in_a_users_order_and_flags_as_flags() -> None:
    r = cli_main("--help")
    assert r.returncode == 0
    names = re.findall(r"^│ (\w+) ", r.stdout, flags=re.M)
    assert [n for n in names if n not in ("debug", "help")] == [
        "segment",
        "change",
        "classify",
        "detect",
        "evaluate",
        "train",
        "pretrain",
        "merge",
        "bundle",
        "demo",
        "info",
    ]
    assert "<bool>" not in r.stdout
    for command in (["segment"], ["train"], ["evaluate"], ["pretrain"], ["bundle", "init"], ["detect"]):
        r = cli_main(*command, "--help")
        assert r.returncode == 0 and "<bool>" not in r.stdout, (command, r.stdout)
        assert "--overwrite" in r.stdout or command == ["evaluate"]
    r = cli_main("segment", "--help")
    assert re.search(r"--tile-size\s+<int>", r.stdout)  # options that take a value keep their type
    assert re.search(r"--cog\s+Write a Cloud", r.stdout)  # a flag: no type between the flag and its help


# -- train: own data implies the custom dataset ----------------------------------------------------------


def test_train_on_own_data_needs_no_dataset(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=5)
    out = tmp_path / "m.safetensors"
    args = ["--images", scene.before, "--labels", scene.labels, "--out", out, "--fast-dev-run", "--batch-size", 2]
    r = cli_main("train", *args, "--tile-size", 64, "--val-fraction", 0.3, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["dataset"] == "custom" and out.is_file()


def test_train_asks_for_a_dataset_only_without_own_data(tmp_path: Path) -> None:
    r = cli_main("train", "--out", tmp_path / "m.safetensors")
    assert r.returncode == 2 and "--dataset" in r.stderr and "--images" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_own_data_with_a_torchgeo_dataset(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=128, seed=5)
    before = listing(tmp_path)
    r = cli_main("train", "--dataset", "potsdam", "--root", tmp_path, "--images", scene.before, "--out", tmp_path / "m")
    one_line_error(r, "--images give own data, which --dataset potsdam does not read")
    assert listing(tmp_path) == before


# -- evaluate: class rasters -----------------------------------------------------------------------------


def class_raster(path: Path, data: np.ndarray, names: list[str] | None = None, **kwargs: object) -> Path:
    """A one-band class raster (values ``data``), its classes named by ``CLASS_<n>`` tags when ``names``."""
    write_raster(path, data[None], **kwargs)
    if names:
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
    return path


def three_classes(dtype: str = "uint8") -> np.ndarray:
    """A 64 x 64 raster of classes 0, 1, 2 in vertical stripes."""
    return (np.arange(64)[None, :].repeat(64, 0) // 22).astype(dtype)


def test_evaluate_refuses_a_reference_that_does_not_overlap(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["a", "b", "c"], nodata=255)
    far = from_origin(ORIGIN[0] + 1000, ORIGIN[1], GSD, GSD)
    ref = class_raster(tmp_path / "ref.tif", three_classes(), ["a", "b", "c"], nodata=255, transform=far)
    before = listing(tmp_path)
    one_line_error(cli_main("evaluate", pred, ref), "share no valid pixel")
    assert listing(tmp_path) == before


def test_evaluate_refuses_reference_codes_outside_the_models_classes(tmp_path: Path) -> None:
    """CORINE codes 111 / 211 / 311 against classes 0-2: nothing can be scored, so nothing is."""
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["urban", "farmland", "forest"], nodata=255)
    corine = np.choose(three_classes(), [111, 211, 311]).astype("uint16")
    ref = class_raster(tmp_path / "corine.tif", corine)
    before = listing(tmp_path)
    line = one_line_error(cli_main("evaluate", pred, ref, "--json"), "no value of")
    assert "111, 211, 311" in line and "urban" in line
    assert listing(tmp_path) == before


def test_evaluate_warns_when_class_names_share_no_name(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["water", "forest", "urban"], nodata=255)
    ref = class_raster(tmp_path / "ref.tif", three_classes(), ["Wasser", "Wald", "Stadt"], nodata=255)
    r = cli_main("evaluate", pred, ref, "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "share no name" in lines[0]
    assert "matched by value" in lines[0]
    summary = json.loads(r.stdout)
    assert summary["classes_matched_by"] == "value" and summary["OA"] == 1.0


def test_evaluate_matches_shared_names_and_counts_other_reference_classes(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["water", "forest", "urban"], nodata=255)
    # the reference lists its classes in another order and has one the model does not know
    ref_values = np.choose(three_classes(), [1, 0, 3]).astype("uint8")  # water=1, forest=0, urban -> clouds (3)
    ref = class_raster(tmp_path / "ref.tif", ref_values, ["forest", "water", "urban", "clouds"], nodata=255)
    summary = json.loads(cli_main("evaluate", pred, ref, "--json").stdout)
    assert summary["classes_matched_by"] == "name"
    assert summary["IoU"]["water"] == 1.0 and summary["IoU"]["forest"] == 1.0
    assert summary["reference_outside_classes"] == int((three_classes() == 2).sum())


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_evaluate_a_huge_value_builds_no_huge_matrix(tmp_path: Path, named: bool) -> None:
    """One pixel of 60000 once built a 60001 x 60001 matrix (28 GB); it is a count (named classes) or one more
    class (unnamed rasters: every value present is a class)."""
    values = three_classes("uint16")
    values[5, 5] = 60000
    pred = class_raster(tmp_path / "pred.tif", values, ["a", "b", "c"] if named else None)
    ref = class_raster(tmp_path / "ref.tif", three_classes(), ["a", "b", "c"] if named else None)
    r = cli_main("evaluate", pred, ref, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    matrix = summary["confusion_matrix"]["rows_reference_columns_prediction"]
    if named:
        assert len(matrix) == 3 and summary["prediction_outside_classes"] == 1
        assert summary["pixels"] == 64 * 64 - 1 and summary["OA"] == 1.0
    else:
        assert summary["confusion_matrix"]["classes"] == ["class_0", "class_1", "class_2", "class_60000"]
        assert summary["pixels"] == 64 * 64 and matrix[0][3] == 1


def test_evaluate_refuses_a_probability_raster(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pred = write_raster(tmp_path / "probs.tif", rng.random((1, 64, 64), dtype=np.float32))
    ref = class_raster(tmp_path / "ref.tif", three_classes(), ["a", "b", "c"], nodata=255)
    one_line_error(cli_main("evaluate", pred, ref, "--task", "segment"), "not whole numbers")


def test_evaluate_change_refuses_a_mask_without_0_or_1(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "change.tif", (three_classes() > 1).astype("uint8"), ["no change", "change"])
    ref = class_raster(tmp_path / "truth.tif", np.full((64, 64), 7, "uint8"))
    one_line_error(cli_main("evaluate", pred, ref), "holds no 0 (no change) or 1 (change)")


def test_evaluate_bounds_outside_the_raster(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["a", "b", "c"], nodata=255)
    r = cli_main("evaluate", pred, pred, "--bounds", "0,0,10,10")
    one_line_error(r, "--bounds [0.0, 0.0, 10.0, 10.0] do not overlap the prediction")


# -- evaluate: detections --------------------------------------------------------------------------------


def polygons(path: Path, geoms: list, classes: list[str], **columns: list) -> Path:
    gpd.GeoDataFrame({"class_name": classes, **columns}, geometry=geoms, crs=CRS).to_file(path)
    return path


def detections(tmp: Path) -> Path:
    x, y = ORIGIN
    boxes = [shapely.box(x, y - 5, x + 10, y), shapely.box(x + 20, y - 25, x + 30, y - 20)]
    return polygons(tmp / "dets.gpkg", boxes, ["car", "car"], score=[0.9, 0.8])


def test_evaluate_repairs_a_bow_tie_reference_polygon(tmp_path: Path) -> None:
    x, y = ORIGIN
    bow_tie = shapely.Polygon([(x + 20, y - 25), (x + 30, y - 19), (x + 30, y - 25), (x + 20, y - 20)])
    assert not bow_tie.is_valid
    ref = polygons(tmp_path / "ref.gpkg", [shapely.box(x, y - 5, x + 10, y), bow_tie], ["car", "car"])
    r = cli_main("evaluate", detections(tmp_path), ref, "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "1 invalid (self-intersecting) polygon(s) repaired" in lines[0] and "rows 1" in lines[0]
    summary = json.loads(r.stdout)
    assert summary["repaired_reference_polygons"] == 1 and summary["num_reference"] == {"car": 2}


def test_evaluate_refuses_an_empty_reference(tmp_path: Path) -> None:
    empty = polygons(tmp_path / "empty.gpkg", [], [])
    one_line_error(cli_main("evaluate", detections(tmp_path), empty), "holds no reference objects")


def test_evaluate_refuses_bounds_away_from_the_reference_objects(tmp_path: Path) -> None:
    dets = detections(tmp_path)
    line = one_line_error(cli_main("evaluate", dets, dets, "--bounds", "0,0,10,10"), "no reference object of")
    assert "--bounds" in line and "350000" in line


# -- pretrain: inputs checked before training ------------------------------------------------------------

PRETRAIN_FAST = ["--epochs", 1, "--steps-per-epoch", 1, "--batch-size", 2, "--tile-size", 64]


def test_pretrain_refuses_images_of_different_band_counts(tmp_path: Path) -> None:
    four = make_scene(tmp_path / "scene", size=128, seed=1).before
    three = write_raster(tmp_path / "rgb.tif", textured_scene(128, 128, bands=3))
    before = listing(tmp_path)
    r = cli_main("pretrain", "--images", four, "--images", three, "-o", tmp_path / "b.safetensors", *PRETRAIN_FAST)
    line = one_line_error(r, "the images differ in band count")
    assert f"{four} has 4 bands, {three} has 3" in line
    assert listing(tmp_path) == before  # no backbone, no run folder


def truncated(path: Path) -> Path:
    """A GeoTIFF cut in half (opens, fails to read its last blocks)."""
    write_raster(path, textured_scene(256, 256, bands=4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_pretrain_refuses_an_unreadable_image_up_front(tmp_path: Path) -> None:
    good = make_scene(tmp_path / "scene", size=128, seed=1).before
    bad = truncated(tmp_path / "cut.tif")
    before = listing(tmp_path)
    r = cli_main("pretrain", "--images", good, "--images", bad, "-o", tmp_path / "b.safetensors", *PRETRAIN_FAST)
    line = one_line_error(r, f"{bad} cannot be read as a raster")
    assert "--skip-unreadable" in line
    assert listing(tmp_path) == before
    r = cli_main("pretrain", "--images", good, "--images", tmp_path / "nope.tif", "-o", tmp_path / "b.safetensors")
    one_line_error(r, "image " + str(tmp_path / "nope.tif") + " does not exist")


def test_pretrain_skips_unreadable_images_when_asked(tmp_path: Path) -> None:
    good = make_scene(tmp_path / "scene", size=128, seed=1).before
    bad = truncated(tmp_path / "cut.tif")
    out = tmp_path / "b.safetensors"
    r = cli_main(
        "pretrain", "--images", good, "--images", bad, "-o", out, *PRETRAIN_FAST, "--skip-unreadable", "--json"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"warning: skipped 1 unreadable image(s): {bad}"
    summary = json.loads(r.stdout)
    assert summary["images"] == 1 and summary["skipped_unreadable"] == [str(bad)] and out.is_file()


# -- twenty more hostile cases: detect -------------------------------------------------------------------


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("det") / "det.safetensors"
    r = cli_main(
        "bundle", "init", "--task", "detect", "--bands", 3, "--tile-size", 64, "--classes", "car,truck", "-o", path
    )
    assert r.returncode == 0, r.stderr
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--score-threshold", "1.5"], "--score-threshold must be at least 0 and below 1, got 1.5"),
        (["--iou-threshold", "2"], "--iou-threshold must lie between 0 and 1"),
        (["--max-detections", "0"], "--max-detections must be at least 1, got 0"),
        (["--classes", "plane"], "--classes names plane, not in the model's car, truck"),
        (["--overlap", "200"], "--overlap 200 must be less than the tile size 64"),
        (["--tile-size", "100"], "--tile-size 100 is not a positive multiple of 32"),
        (["--bands", "1,2"], "2 input bands (1,2) but the model takes 3"),
    ],
)
def test_detect_refuses_bad_options_in_one_line(
    tmp_path: Path, det_bundle: Path, options: list[str], message: str
) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(96, 96))
    before = listing(tmp_path)
    r = cli_main("detect", scene, "-o", tmp_path / "objects.gpkg", "-m", det_bundle, *options)
    one_line_error(r, message)
    assert r.stderr.startswith("error: ")  # no empty line before it (Rich's progress bar, off a terminal)
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("objects.tif", "vector outputs are .gpkg, .parquet or .geojson"),
        ("objects.shp", "vector outputs are .gpkg, .parquet or .geojson"),
        ("scene.tif", "is one of the inputs"),  # the one check of every command comes first
        ("missing/objects.gpkg", "output directory"),
    ],
)
def test_detect_refuses_bad_outputs(tmp_path: Path, det_bundle: Path, name: str, message: str) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(96, 96))
    before = listing(tmp_path)
    one_line_error(cli_main("detect", scene, "-o", tmp_path / name, "-m", det_bundle), message)
    assert listing(tmp_path) == before


def test_detect_with_a_segmentation_bundle(tmp_path: Path, seg_bundle: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", textured_scene(96, 96))
    one_line_error(cli_main("detect", scene, "-o", tmp_path / "o.gpkg", "-m", seg_bundle), "is a segment model")


# -- twenty more hostile cases: evaluate -----------------------------------------------------------------


def test_evaluate_a_raster_against_polygons_and_back(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["a", "b", "c"], nodata=255)
    dets = detections(tmp_path)
    one_line_error(cli_main("evaluate", pred, dets), f"reference {dets} is a vector file")
    one_line_error(cli_main("evaluate", dets, pred), f"{pred} is not a vector file")


def test_evaluate_refuses_an_image_as_reference(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["a", "b", "c"], nodata=255)
    image = write_raster(tmp_path / "image.tif", textured_scene(64, 64, bands=4))
    one_line_error(cli_main("evaluate", pred, image), f"reference {image} has 4 bands")


def test_evaluate_task_change_on_a_class_raster(tmp_path: Path) -> None:
    pred = class_raster(tmp_path / "pred.tif", three_classes(), ["a", "b", "c"], nodata=255)
    mask = class_raster(tmp_path / "mask.tif", (three_classes() > 0).astype("uint8"))
    one_line_error(cli_main("evaluate", pred, mask, "--task", "change"), "is a class raster (a, b, c), not a change")


def test_evaluate_a_reference_that_is_not_a_vector_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a geopackage")
    line = one_line_error(cli_main("evaluate", detections(tmp_path), junk), "cannot be read as a vector file")
    assert "It might help" not in line


def test_evaluate_reference_polygons_without_a_crs(tmp_path: Path) -> None:
    x, y = ORIGIN
    ref = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame({"class_name": ["car"]}, geometry=[shapely.box(x, y - 5, x + 10, y)]).to_file(ref)
    r = cli_main("evaluate", detections(tmp_path), ref, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"warning: {ref} has no CRS: its coordinates are taken to be in {CRS}"
    assert json.loads(r.stdout)["recall"]["car"] == 1.0


# -- twenty more hostile cases: pretrain -----------------------------------------------------------------


def test_pretrain_output_must_be_safetensors(tmp_path: Path) -> None:
    image = write_raster(tmp_path / "a.tif", textured_scene(128, 128))
    before = listing(tmp_path)
    one_line_error(cli_main("pretrain", "--images", image, "-o", tmp_path / "b.tif"), "name it .safetensors")
    one_line_error(cli_main("train", "--images", image, "--labels", image, "-o", tmp_path / "m.pt"), ".safetensors")
    assert listing(tmp_path) == before


def test_pretrain_refuses_an_image_without_georeferencing(tmp_path: Path) -> None:
    image = write_raster(tmp_path / "nocrs.tif", textured_scene(128, 128), crs=None)
    before = listing(tmp_path)
    r = cli_main("pretrain", "--images", image, "-o", tmp_path / "b.safetensors", *PRETRAIN_FAST)
    one_line_error(r, f"{image} has no CRS or geotransform")
    assert listing(tmp_path) == before


def test_pretrain_on_an_image_smaller_than_a_tile(tmp_path: Path) -> None:
    image = write_raster(tmp_path / "small.tif", textured_scene(20, 20))
    before = listing(tmp_path)
    r = cli_main("pretrain", "--images", image, "-o", tmp_path / "b.safetensors")
    one_line_error(r, "the images span 20 px at most, less than a tile of 32 px")
    assert listing(tmp_path) == before


def test_pretrain_images_names_a_folder(tmp_path: Path) -> None:
    r = cli_main("pretrain", "--images", tmp_path, "-o", tmp_path / "b.safetensors")
    one_line_error(r, f"image {tmp_path} is not a file")
    assert list(tmp_path.iterdir()) == []


# -- twenty more hostile cases: train on own detection labels --------------------------------------------


def bow_tie_labels(tmp: Path, scene_objects: Path) -> Path:
    """The scene's object polygons with the first one drawn as a bow-tie (its corners in the wrong order)."""
    objects = gpd.read_file(scene_objects)
    x0, y0, x1, y1 = objects.geometry.iloc[0].bounds
    objects.loc[0, "geometry"] = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not objects.geometry.iloc[0].is_valid
    objects.to_file(tmp / "bowtie.gpkg")
    return tmp / "bowtie.gpkg"


def own_detection_data(image: Path, labels: Path) -> Any:
    """The training data ``train --task detect`` reads from ``image`` and ``labels`` (64 px crops)."""
    from lemevit_geo.pipelines.training.train_data import Loading, detection_data

    return detection_data(
        images=str(image),
        labels=str(labels),
        label_column=None,
        classes=None,
        tile_size=64,
        loading=Loading(batch_size=2, num_workers=0, val_fraction=0.3, length=4),
    )


def test_detection_labels_with_a_bow_tie_are_repaired_and_counted(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=3)
    labels = bow_tie_labels(tmp_path, scene.objects)
    with pytest.warns(UserWarning, match=r"1 invalid \(self-intersecting\) polygon\(s\) repaired .*rows 0"):
        data = own_detection_data(scene.before, labels)
    assert data.split["repaired_polygons"] == 1 and data.split["objects"] == len(gpd.read_file(labels))


def test_detection_labels_without_a_crs_are_taken_in_the_images_crs(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=3)
    objects = gpd.read_file(scene.objects)
    objects.set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.gpkg")
    with pytest.warns(UserWarning, match="has no CRS: its coordinates are taken to be in EPSG:32633"):
        data = own_detection_data(scene.before, tmp_path / "nocrs.gpkg")
    assert data.split["objects"] == len(objects)


@pytest.mark.parametrize(
    ("labels", "extra", "message"),
    [
        ("empty", [], "holds no polygons"),
        ("raster", [], "cannot be read as a vector file"),
        ("objects", ["--label-column", "nope"], "has no column 'nope'; name it with --label-column"),
        ("objects", ["--classes", "car"], "has classes not in --classes"),
        ("objects", ["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
        ("objects", ["--before", "x.tif"], "detection training takes --images and --labels"),
    ],
)
def test_train_detect_refuses_bad_labels_in_one_line(
    tmp_path: Path, labels: str, extra: list[str], message: str
) -> None:
    scene = make_scene(tmp_path / "scene", size=128, seed=3)
    files = {"objects": scene.objects, "raster": scene.labels, "empty": tmp_path / "empty.gpkg"}
    gpd.read_file(scene.objects).iloc[:0].to_file(files["empty"])
    before = listing(tmp_path)
    args = ["--task", "detect", "--images", scene.before, "--labels", files[labels], *extra]
    r = cli_main("train", *args, "-o", tmp_path / "m.safetensors", "--fast-dev-run", "--tile-size", 64)
    one_line_error(r, message)
    assert listing(tmp_path) == before


@pytest.mark.slow
def test_train_detect_with_a_bow_tie_label_through_the_cli(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=3)
    labels = bow_tie_labels(tmp_path, scene.objects)
    out = tmp_path / "m.safetensors"
    args = ["--task", "detect", "--images", scene.before, "--labels", labels, "-o", out, "--fast-dev-run"]
    r = cli_main("train", *args, "--batch-size", 2, "--tile-size", 64, "--val-fraction", 0.3, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"warning: {labels}: 1 invalid (self-intersecting) polygon(s) repaired with " + (
        "shapely.make_valid (rows 0)"
    )
    assert json.loads(r.stdout)["split"]["repaired_polygons"] == 1 and out.is_file()


def test_confusion_from_value_pairs_counts_values_outside_the_classes() -> None:
    from lemevit_geo.pipelines.metrics import confusion_from_pairs, split_pairs, value_pairs

    truth = np.array([[0, 1, 2, 111, 1]])
    pred = np.array([[0, 1, 60000, -3, 1]])
    keys, counts = value_pairs(truth, pred, np.ones_like(truth, dtype=bool))
    t, p = split_pairs(keys)
    assert sorted(zip(t.tolist(), p.tolist(), counts.tolist(), strict=True)) == [
        (0, 0, 1),
        (1, 1, 2),
        (2, 60000, 1),
        (111, -3, 1),
    ]
    index = {0: 0, 1: 1, 2: 2}
    cm, truth_outside, pred_outside = confusion_from_pairs(keys, counts, index, index, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 0]] and (truth_outside, pred_outside) == (1, 1)
