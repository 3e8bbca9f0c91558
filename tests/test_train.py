"""Training: torchgeo datasets (fake, in their on-disk layouts), own rasters, resume, errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.windows
import torch
from rasterio.warp import Resampling, calculate_default_transform, reproject

from lemevit_geo.bundle import read_config
from lemevit_geo.pipelines.apps.synthetic import CLASSES, COLORS, make_scene
from lemevit_geo.pipelines.training.train_data import Loading, custom_data
from tests.conftest import SceneFiles, cli, cli_main, cli_subprocess, textured_scene, write_raster
from tests.fake_datasets import FAKE_DATASETS

EXPECTED = {  # task, bands, classes
    "potsdam": ("segment", 4, 6),
    "vaihingen": ("segment", 3, 6),
    "loveda": ("segment", 3, 8),
    "levircd": ("change", 3, 2),
    "oscd": ("change", 13, 2),
    "ucmerced": ("classify", 3, 21),
    "resisc45": ("classify", 3, 45),
    "millionaid": ("classify", 3, 51),
    "dota": ("detect", 3, 15),
}


@pytest.mark.parametrize("name", sorted(FAKE_DATASETS))
def test_torchgeo_dataset_trains_and_its_bundle_runs(tmp_path: Path, name: str) -> None:
    root = FAKE_DATASETS[name](tmp_path / "data")
    bundle = tmp_path / f"{name}.safetensors"
    summary = json.loads(
        cli(
            "train",
            "--dataset",
            name,
            "--root",
            root,
            "--out",
            bundle,
            "--fast-dev-run",
            "--batch-size",
            2,
            "--tile-size",
            64,
            "--json",
        ).output
    )
    task, bands, n_classes = EXPECTED[name]
    config = read_config(bundle)
    assert (config.task.value, config.bands) == (task, bands)
    if name != "millionaid":
        assert len(config.classes) == n_classes
    assert summary["global_steps"] == 1 and len(config.mean) == bands
    scene = write_raster(tmp_path / "scene.tif", textured_scene(96, 130, bands=bands))
    if task == "segment":
        cli("segment", scene, "-o", tmp_path / "out.tif", "-m", bundle, "-q")
    elif task == "change":
        cli("change", scene, scene, "-o", tmp_path / "out.tif", "-m", bundle, "-q")
    elif task == "detect":
        assert config.head["angle_free_classes"] == [2, 12] and 0 < config.overlap <= 32
        cli("detect", scene, "-o", tmp_path / "out.gpkg", "-m", bundle, "-q")
    else:
        cli("classify", scene, "-o", tmp_path / "out.gpkg", "-m", bundle, "-q")
    out = tmp_path / ("out.gpkg" if task in ("classify", "detect") else "out.tif")
    assert out.exists()
    if task not in ("classify", "detect"):
        with rasterio.open(out) as ds:
            assert (ds.width, ds.height) == (130, 96) and ds.read(1).max() < len(config.classes)


def test_own_segmentation_bundle_maps_its_scene(
    tmp_path: Path, synthetic_scene: SceneFiles, trained_bundle: Callable[[str], tuple[Path, dict]]
) -> None:
    bundle, summary = trained_bundle("segment")
    assert summary["epochs"] == 1 and summary["split"]["shared_area"] == 0.0
    out = tmp_path / "landcover.tif"
    cli("segment", synthetic_scene.before, "-o", out, "-m", bundle, "-q")
    with rasterio.open(out) as got, rasterio.open(synthetic_scene.labels) as ref:
        assert (got.crs, got.transform, got.shape) == (ref.crs, ref.transform, ref.shape)
        assert got.read(1).max() < len(CLASSES) and got.tags(1)["CLASS_0"] == CLASSES[0]


def _scene_with_reprojected_labels(tmp: Path) -> tuple[Path, Path]:
    scene = make_scene(tmp / "scene", size=384, seed=1)
    labels = tmp / "labels_3857.tif"
    with rasterio.open(scene.labels) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        arr = np.full((1, h, w), 255, dtype=np.uint8)
        reproject(
            src.read(),
            arr,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:3857",
            resampling=Resampling.nearest,
            dst_nodata=255,
        )
        tags, cmap = src.tags(1), src.colormap(1)
    with rasterio.open(
        labels,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="uint8",
        crs="EPSG:3857",
        transform=transform,
        nodata=255,
    ) as dst:
        dst.write(arr)
        dst.update_tags(1, **tags)
        dst.write_colormap(1, cmap)
    return scene.before, labels


def test_own_rasters_with_labels_in_another_crs(tmp_path: Path) -> None:
    image, labels = _scene_with_reprojected_labels(tmp_path)
    data = custom_data(
        images=str(image),
        labels=str(labels),
        label_column=None,
        classes=None,
        tile_size=64,
        loading=Loading(batch_size=4, num_workers=0, val_fraction=0.25, length=16),
        work_dir=tmp_path,
    )
    assert data.classes == CLASSES and data.colors == COLORS and data.ignore_index == 255 and data.bands == 4
    assert data.split["shared_area"] == 0.0 and data.split["val_fraction"] == pytest.approx(0.25, abs=0.01)
    # every training tile lies in the training region, every validation tile in the validation region
    dm = data.datamodule
    for loader, roi, other in [
        (dm.train_dataloader(), dm.train_roi, dm.val_roi),
        (dm.val_dataloader(), dm.val_roi, dm.train_roi),
    ]:
        import shapely

        for query in loader.sampler:
            x, y = query[0], query[1]
            box = shapely.box(x.start, y.start, x.stop, y.stop)
            assert roi.buffer(1e-6).contains(box) and box.intersection(other).area == 0
    with rasterio.open(image) as src:  # statistics come from the training region only
        win = rasterio.windows.from_bounds(*data.split["train_bounds"], transform=src.transform)
        raw = src.read(window=win.round_offsets().round_lengths()).reshape(4, -1).astype(float)
    assert np.allclose(data.mean, raw.mean(1), rtol=0.12) and np.allclose(data.std, raw.std(1), rtol=0.25)
    # the command: trains, reports the split, and writes a bundle with the classes and statistics
    bundle = tmp_path / "own.safetensors"
    summary = json.loads(
        cli(
            "train",
            "--dataset",
            "custom",
            "--images",
            image,
            "--labels",
            labels,
            "--out",
            bundle,
            "--epochs",
            1,
            "--steps-per-epoch",
            2,
            "--batch-size",
            4,
            "--tile-size",
            64,
            "--val-fraction",
            0.25,
            "--json",
        ).output
    )
    config = read_config(bundle)
    assert config.classes == CLASSES and config.colors == COLORS and config.gsd == 0.5 and config.tile_size == 64
    assert config.mean == pytest.approx(summary["normalisation"]["mean"], rel=1e-3)
    assert summary["split"]["shared_area"] == 0.0 and summary["epochs"] == 1
    rows = list(csv.DictReader(open(summary["metrics_csv"])))
    assert len(rows) == 1 and {"val_mIoU", "val_OA", "train_loss"} <= set(rows[0])
    assert Path(summary["best_checkpoint"]).is_file()


def test_own_change_data_and_vector_labels(
    tmp_path: Path, synthetic_scene: SceneFiles, trained_bundle: Callable[[str], tuple[Path, dict]]
) -> None:
    import geopandas as gpd
    import shapely

    scene = synthetic_scene
    bundle, _ = trained_bundle("change")
    config = read_config(bundle)
    assert config.task.value == "change" and config.classes == ["no change", "change"] and config.bands == 4
    # vector labels with a class-name column
    with rasterio.open(scene.before) as src:
        b = src.bounds
    polys = gpd.GeoDataFrame(
        {"kind": ["wood", "field"]},
        crs="EPSG:32633",
        geometry=[
            shapely.box(b.left, b.bottom, b.left + 60, b.top),
            shapely.box(b.left + 60, b.bottom, b.right, b.top),
        ],
    )
    polys.to_file(tmp_path / "labels.gpkg")
    seg = tmp_path / "vec.safetensors"
    cli(
        "train",
        "--dataset",
        "custom",
        "--images",
        scene.before,
        "--labels",
        tmp_path / "labels.gpkg",
        "--label-column",
        "kind",
        "--out",
        seg,
        "--epochs",
        1,
        "--steps-per-epoch",
        2,
        "--batch-size",
        2,
        "--tile-size",
        64,
        "--val-fraction",
        0.3,
        "-q",
    )
    assert read_config(seg).classes == ["field", "wood"]


def test_own_detection_training_and_its_bundle_runs(
    tmp_path: Path, synthetic_scene: SceneFiles, trained_bundle: Callable[[str], tuple[Path, dict]]
) -> None:
    scene = synthetic_scene
    bundle, summary = trained_bundle("detect")
    config = read_config(bundle)
    assert config.task.value == "detect" and config.classes == ["car", "container", "truck"] and config.bands == 4
    assert config.overlap == summary["overlap"] == 32  # trucks up to 30 px long, capped at half the tile
    assert summary["split"]["objects"] > 0 and summary["monitor"] == "val_mAP"
    rows = list(csv.DictReader(open(summary["metrics_csv"])))
    assert {"val_mAP", "val_mAP_07", "val_AP_car", "train_loss_box"} <= set(rows[0])
    out = tmp_path / "objects.parquet"
    cli("detect", scene.before, "-o", out, "-m", bundle, "--tile-size", "128", "-q")
    assert gpd.read_parquet(out).crs.to_epsg() == 32633
    result = json.loads(cli("evaluate", out, scene.objects, "--json").output)
    assert result["task"] == "detect" and 0 <= (result["mAP"] or 0) <= 1


def test_resume_continues_to_the_same_epoch_count(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=3)
    args = [
        "train",
        "--dataset",
        "custom",
        "--images",
        scene.before,
        "--labels",
        scene.labels,
        "--steps-per-epoch",
        2,
        "--batch-size",
        2,
        "--tile-size",
        64,
        "--val-fraction",
        0.3,
        "--json",
    ]
    full = json.loads(cli(*args, "--out", tmp_path / "full.safetensors", "--epochs", 2).output)
    cli(*args, "--out", tmp_path / "part.safetensors", "--epochs", 1)
    resumed = json.loads(cli(*args, "--out", tmp_path / "part.safetensors", "--epochs", 2, "--resume").output)
    assert full["epochs"] == resumed["epochs"] == 2
    assert full["global_steps"] == resumed["global_steps"] == 4
    rows = list(csv.DictReader(open(resumed["metrics_csv"])))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(r["train_loss"] and r["train_mIoU"] and r["val_mIoU"] for r in rows)  # complete across the resume
    # each row holds its own epoch's metrics (torchgeo >= 0.9 logs them in the module's epoch-end hooks, which
    # Lightning runs after the callbacks' hooks of the same name): the best checkpoint's row has the best score
    full_rows = list(csv.DictReader(open(full["metrics_csv"])))
    best_epoch = torch.load(full["best_checkpoint"], map_location="cpu", weights_only=False)["epoch"]
    assert float(full_rows[best_epoch]["val_mIoU"]) == pytest.approx(full["best"], abs=1e-4)
    assert max(float(r["val_mIoU"]) for r in full_rows) == pytest.approx(full["best"], abs=1e-4)


def test_training_errors_are_clear(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli_main("train", "--dataset", "potsdam", "--root", empty, "--out", tmp_path / "m.safetensors")
    assert r.returncode == 1 and "4_Ortho_RGBIR" in r.stderr and "isprs" in r.stderr.lower()
    a = write_raster(tmp_path / "a.tif", textured_scene(64, 64))
    far = write_raster(
        tmp_path / "far.tif",
        np.zeros((1, 64, 64), dtype=np.uint8),
        transform=rasterio.transform.from_origin(0, 0, 1, 1),
    )
    r = cli_main("train", "--dataset", "custom", "--images", a, "--labels", far, "--out", tmp_path / "x.safetensors")
    assert r.returncode == 1 and "do not overlap" in r.stderr, r.stderr


@pytest.mark.slow
def test_learning_beats_the_majority_baseline(tmp_path: Path) -> None:
    """A few CPU minutes of training reach a held-out mIoU far above predicting the majority class."""
    from lemevit_geo.pipelines.apps.demo import evaluate_segmentation

    scene = make_scene(tmp_path / "scene", size=1024, seed=4)
    bundle = tmp_path / "seg.safetensors"
    summary = json.loads(
        cli(
            "train",
            "--dataset",
            "custom",
            "--images",
            scene.before,
            "--labels",
            scene.labels,
            "--out",
            bundle,
            "--epochs",
            3,
            "--steps-per-epoch",
            40,
            "--batch-size",
            8,
            "--tile-size",
            128,
            "--json",
        ).output
    )
    cli("segment", scene.before, "-o", tmp_path / "pred.tif", "-m", bundle, "-q")
    metrics = evaluate_segmentation(
        tmp_path / "pred.tif", scene.labels, summary["split"]["val_bounds"], summary["split"]["train_bounds"]
    )
    print(metrics)
    assert metrics["mIoU"] > metrics["baseline_mIoU"] + 0.3


def _labels(tmp: Path, values: np.ndarray, nodata: float | None, dtype: str = "int16") -> Path:
    return write_raster(tmp / f"labels_{dtype}.tif", values.astype(dtype)[None], nodata=nodata)


def test_label_values_are_checked_and_nodata_is_ignored(tmp_path: Path) -> None:
    image = write_raster(tmp_path / "image.tif", textured_scene(128, 128))
    values = np.tile(np.arange(128) // 43, (128, 1))  # classes 0, 1, 2 in stripes
    for bad, message in [(-3, "labels hold the value -3"), (300, "labels hold the value 300")]:
        wrong = values.copy()
        wrong[:5, :5] = bad
        labels = _labels(tmp_path, wrong, nodata=-1)
        out = tmp_path / "m.safetensors"
        r = cli_main("train", "--dataset", "custom", "--images", image, "--labels", labels, "--out", out)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists() and not (tmp_path / "m.train").exists()  # nothing left of a failed run
    unlabelled = values.copy()
    unlabelled[:, :30] = -1  # int16 labels with nodata -1: unlabelled, never a class
    labels = _labels(tmp_path, unlabelled, nodata=-1)
    data = custom_data(
        images=str(image),
        labels=str(labels),
        label_column=None,
        classes=None,
        tile_size=64,
        # val_fraction: a training strip wider than one tile (torchgeo 0.10 samples none in exactly one)
        loading=Loading(batch_size=2, num_workers=0, val_fraction=0.4, length=2),
        work_dir=tmp_path,
    )
    assert data.classes == ["class_0", "class_1", "class_2"] and data.ignore_index == 255
    batch = next(iter(data.datamodule.train_dataloader()))
    mask = data.datamodule.on_after_batch_transfer(batch, 0)["mask"]
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255} and (mask == 255).any()


def test_scene_labels_ignore_tiles_without_labels() -> None:
    import torch

    from lemevit_geo.pipelines.training.datamodules import IGNORE, scene_label

    mask = torch.full((3, 8, 8), IGNORE)
    mask[1, :2] = 4
    mask[2, :] = 1
    mask[2, :1] = 3
    assert scene_label(mask).tolist() == [IGNORE, 4, 1]


def test_task_modules_keep_true_hyperparameters_and_freeze_what_is_asked() -> None:
    from lemevit_geo.pipelines.training.tasks import ChangeModule, ClassificationModule, SegmentationModule

    change = ChangeModule(in_channels=3, num_classes=2, freeze_backbone=True)
    assert change.hparams["model"] == "bit" and change.hparams["arch"] == "tiny"
    assert not any(p.requires_grad for p in change.model.encoder.parameters())
    assert all(p.requires_grad for p in change.model.decoder.parameters())
    seg = SegmentationModule(in_channels=4, num_classes=3, freeze_decoder=True)
    assert seg.hparams["model"] == "upernet" and seg.hparams["in_channels"] == 4
    assert not any(p.requires_grad for p in seg.model.decoder.parameters())
    assert all(p.requires_grad for p in seg.model.encoder.parameters())
    assert all(p.requires_grad for p in seg.model.segmentation_head.parameters())
    cls = ClassificationModule(num_classes=5, freeze_backbone=True)
    trainable = {n for n, p in cls.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="no decoder"):
        ClassificationModule(num_classes=5, freeze_decoder=True)


def test_training_prints_our_lines_only(tmp_path: Path, synthetic_scene: SceneFiles) -> None:
    scene = synthetic_scene
    r = cli_subprocess(
        "train",
        "--dataset",
        "custom",
        "--images",
        scene.before,
        "--labels",
        scene.labels,
        "--out",
        tmp_path / "m.safetensors",
        "--fast-dev-run",
        "--batch-size",
        2,
        "--tile-size",
        64,
        "--val-fraction",
        0.3,
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no Lightning tips (litlogger), no library warnings


def test_demo_trains_on_the_device_it_was_given() -> None:
    from lemevit_geo.pipelines.apps.demo import lightning_devices

    assert lightning_devices("cpu") == {"accelerator": "cpu", "devices": 1}
    assert lightning_devices("cuda:1") == {"accelerator": "gpu", "devices": [1]}
    assert lightning_devices("auto") == {}


@pytest.mark.slow
def test_detection_learns_the_scene_objects(tmp_path: Path) -> None:
    """A tiny detector trained for a few CPU minutes finds the held-out objects of a generated scene.

    Chance is about 0: boxes at random places, sizes and angles almost never overlap an object by IoU 0.5.
    """
    from lemevit_geo.pipelines.apps.demo import DEMO_DETECTOR, DETECT_TILE
    from lemevit_geo.pipelines.apps.evaluate import evaluate
    from lemevit_geo.pipelines.inference.detect import detect
    from lemevit_geo.pipelines.training.train import train
    from lemevit_geo.settings import Detection, Engine, Hardware, Recipe

    scene = make_scene(tmp_path / "scene", size=1024, seed=4)
    summary = train(
        dataset="custom",
        task="detect",
        images=str(scene.before),
        labels=str(scene.objects),
        out=tmp_path / "det.safetensors",
        tile_size=128,
        recipe=Recipe(epochs=3, steps_per_epoch=40, batch_size=8),
        hardware=Hardware(accelerator="cpu", devices=1),
        head=DEMO_DETECTOR,
        progress=False,
    )
    out = tmp_path / "objects.gpkg"
    every = Detection(all_scores=True)  # mAP ranks every box, not only those the calibrated default keeps
    detect(
        image=scene.before,
        output=out,
        model=tmp_path / "det.safetensors",
        tile_size=DETECT_TILE,
        engine=Engine(),
        detection=every,
    )
    result = evaluate(prediction=out, reference=scene.objects, bounds=summary["split"]["val_bounds"])
    print({k: result[k] for k in ("mAP", "mAP_07", "AP", "num_reference")}, "val_mAP", summary["best"])
    assert result["mAP"] > 0.4
