"""Detection training data: crops and their targets, augmentation, DOTA through torchgeo, own polygons."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from affine import Affine

from lemevit_geo.errors import InputError, LemevitWarning
from lemevit_geo.pipelines.geometry import box_polygons, pixel_boxes
from lemevit_geo.pipelines.training.datamodules import (
    KEEP_INSIDE,
    DetectionCrops,
    DOTADataModule,
    crop_targets,
    flip_rotate,
    read_dota_annotation,
)
from lemevit_geo.pipelines.training.train_data import Loading, detection_data
from tests.conftest import CRS, GSD, ORIGIN, cli_error, write_raster
from tests.fake_datasets import DOTA_CLASSES, make_dota
from tests.standins import blob_boxes, paint


def test_crop_targets_keep_mostly_inside_boxes_and_ignore_the_rest() -> None:
    boxes = np.array(
        [
            [30, 30, 10, 4, 0.3, 0, 0],  # inside
            [62, 30, 10, 4, 0.0, 0, 0],  # 70 % inside (x 57..67 in a crop ending at 64)
            [66, 30, 10, 4, 0.0, 0, 0],  # 30 % inside: ignored
            [90, 30, 10, 4, 0.0, 0, 0],  # outside
            [20, 20, 6, 6, 0.0, 0, 0],  # difficult
        ],
        dtype=np.float64,
    )[:, :5]
    labels, difficult = np.array([0, 1, 2, 0, 1]), np.array([0, 0, 0, 0, 1], dtype=bool)
    moved, lab, ignore = crop_targets(boxes, labels, difficult, 0, 0, 64)
    assert lab.tolist() == [0, 1, 2, 1] and ignore.tolist() == [False, False, True, True]
    assert KEEP_INSIDE == 0.7
    moved, _, _ = crop_targets(boxes, labels, difficult, 10, 5, 64)
    np.testing.assert_allclose(moved[0, :2], [20, 25])


def test_flips_and_turns_move_the_boxes_with_the_image() -> None:
    objects = [(20.5, 14.0, 18.0, 6.0, 0.4, 0), (44.0, 40.0, 12.0, 7.0, -1.1, 1), (12.0, 48.0, 9.0, 4.0, 0.0, 2)]
    image = paint(64, 64, objects).astype(np.float32)
    boxes = blob_boxes(image)[:, :5]
    for seed in range(8):
        out, moved = flip_rotate(image, boxes, np.random.default_rng(seed))
        found = blob_boxes(out)[:, :5]
        for b in moved:  # every moved box is one of the boxes found in the moved image
            poly = shapely.Polygon(box_polygons(b[None])[0])
            ious = [poly.intersection(q).area / poly.union(q).area for q in map(shapely.Polygon, box_polygons(found))]
            assert max(ious) > 0.99


def test_dota_through_torchgeo_with_difficult_flags(tmp_path: Path) -> None:
    root = make_dota(tmp_path)
    dm = DOTADataModule(str(root), batch_size=2, num_workers=0, tile_size=64)
    dm.setup("fit")
    assert dm.classes == list(DOTA_CLASSES) and dm.head == {"angle_free_classes": [2, 12]}
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) > 2  # one crop per training image; a grid for val
    source = dm.train_dataset.sources[0]
    corners, names, difficult = read_dota_annotation(str(root / "train/annotations/version1.0/P0000.txt"))
    boxes, labels, flags = source.objects()
    assert [DOTA_CLASSES[i] for i in labels] == names and flags.tolist() == difficult.tolist() and difficult.any()
    # quadrilaterals (rectangles rounded to 0.1 px in the file) -> their smallest rotated rectangles
    for quad, box in zip(corners.reshape(-1, 4, 2), boxes, strict=True):
        rect, poly = shapely.Polygon(box_polygons(box[None])[0]), shapely.Polygon(quad)
        assert rect.buffer(1e-3).contains(poly) and rect.area < 1.02 * poly.area
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and len(batch["boxes"]) == 2
    for b, lab, ign in zip(batch["boxes"], batch["labels"], batch["ignore"], strict=True):
        assert b.shape[1] == 5 and len(b) == len(lab) == len(ign)
    # a validation crop of the image without objects has no targets
    empty = [k for k, (src, _, _) in enumerate(dm.val_dataset.crops) if src == 1]
    assert all(len(dm.val_dataset[k]["boxes"]) == 0 for k in empty)


def test_validation_grid_covers_the_region_and_stays_inside() -> None:
    class Source:
        height, width, region = 300, 260, (10, 100, 250, 290)

        def read(self, x0: int, y0: int, size: int) -> np.ndarray:
            return np.zeros((1, size, size), np.float32)

        def objects(self) -> tuple:
            return np.zeros((0, 5)), np.zeros(0, int), np.zeros(0, bool)

    crops = DetectionCrops([Source()], 64, [0.0], [1.0], grid=True).crops
    covered = np.zeros((300, 260), bool)
    for _, x, y in crops:
        assert 10 <= x and x + 64 <= 250 and 100 <= y and y + 64 <= 290
        covered[y : y + 64, x : x + 64] = True
    assert covered[100:290, 10:250].all()


def test_polygons_become_rotated_rectangles_in_pixels() -> None:
    transform = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
    # a rectangle 10 x 4 px at 30 degrees, centred on pixel (40, 25), with an extra vertex on one side
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    px = [
        (40 + 5 * c * sx - 2 * -s * sy, 25 + 5 * s * sx - 2 * c * sy) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    px.insert(1, ((px[0][0] + px[1][0]) / 2, (px[0][1] + px[1][1]) / 2))
    poly = shapely.Polygon([transform * p for p in px])
    box = pixel_boxes(np.array([poly]), transform)[0]
    np.testing.assert_allclose(box[:4], [40, 25, 10, 4], atol=1e-6)
    assert math.degrees(box[4]) == pytest.approx(30, abs=1e-6)


def test_own_detection_data_split_and_refusals(tmp_path: Path) -> None:
    objects = [(30.0 + 40 * (k % 6), 30.0 + 40 * (k // 6), 16.0, 6.0, 0.3 * k, k % 3) for k in range(18)]
    image = write_raster(tmp_path / "scene.tif", paint(128, 256, objects))
    transform = Affine(GSD, 0, ORIGIN[0], 0, -GSD, ORIGIN[1])
    polys = [shapely.Polygon([transform * tuple(p) for p in box_polygons(np.array([o[:5]]))[0]]) for o in objects]
    names = [["car", "truck", "container"][o[5]] for o in objects]
    gpd.GeoDataFrame({"kind": names}, geometry=polys, crs=CRS).to_crs("EPSG:3857").to_file(tmp_path / "objects.gpkg")
    args = dict(
        images=str(image),
        label_column="kind",
        classes=None,
        tile_size=64,
        loading=Loading(batch_size=2, num_workers=0, val_fraction=0.25, length=4),
    )
    data = detection_data(labels=str(tmp_path / "objects.gpkg"), **args)
    assert data.classes == ["car", "container", "truck"] and data.task.value == "detect" and data.bands == 3
    assert data.split["objects"] == 18 and data.split["shared_area"] == 0 and data.overlap == 24
    boxes, labels = data.datamodule.train_dataset.sources[0].objects()[:2]
    np.testing.assert_allclose(np.sort(boxes[:, 2]), 16, atol=1e-3)  # reprojected there and back: the same boxes
    dm = data.datamodule
    assert (
        dm.train_dataset.sources[0].region[2] <= dm.val_dataset.sources[0].region[0]
    )  # the split runs along the longer side: x
    # refusals: nothing in the image; degenerate polygons (empty ones are skipped: see the next test)
    far = shapely.box(0, 0, 10, 10)
    for geoms, message in [
        ([far], "none of its 1 polygons lie in the images"),
        ([shapely.Polygon([(0, 0), (1, 0), (2, 0)])], "degenerate (zero area)"),
    ]:
        gpd.GeoDataFrame({"kind": ["car"] * len(geoms)}, geometry=geoms, crs=CRS).to_file(tmp_path / "bad.gpkg")
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            detection_data(labels=str(tmp_path / "bad.gpkg"), **args)
    torch.manual_seed(0)
    sample = data.datamodule.train_dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["boxes"].shape[1] == 5


def test_detection_training_refuses_bad_labels_and_leaves_nothing(tmp_path: Path) -> None:
    image = write_raster(tmp_path / "scene.tif", paint(96, 96, [(40, 40, 12, 5, 0.2, 0)]))
    gpd.GeoDataFrame({"class": ["car"]}, geometry=[shapely.box(0, 0, 5, 5)], crs=CRS).to_file(tmp_path / "far.gpkg")
    out = tmp_path / "m.safetensors"
    args = ["train", "--dataset", "custom", "--task", "detect", "--images", image, "--out", out, "--tile-size", "64"]
    message = cli_error(*args, "--labels", tmp_path / "far.gpkg")
    assert "none of its 1 polygons lie in the images" in message
    message = cli_error(*args, "--labels", tmp_path / "far.gpkg", "--label-column", "kind")
    assert "has no column 'kind'; name it with --label-column" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far.gpkg", "scene.tif"]


def test_points_become_boxes_and_lines_and_empty_geometries_are_skipped(tmp_path: Path) -> None:
    """Own labels as users have them: footprints (not rectangles), clicked points, and stray lines/empties."""
    image = write_raster(tmp_path / "scene.tif", paint(128, 256, []))
    t = Affine(GSD, 0, ORIGIN[0], 0, -GSD, ORIGIN[1])
    footprint = shapely.Polygon([t * p for p in ((20, 20), (60, 20), (60, 40), (40, 40), (40, 50), (20, 50))])
    points = [shapely.Point(t * (100.0 + 40 * k, 60.0)) for k in range(3)]
    line = shapely.LineString([t * (10, 100), t * (90, 110)])
    geoms = [footprint, *points, line, shapely.Polygon(), None]
    kinds = ["building", "tree", "tree", "car", "road", "tree", "car"]
    gpd.GeoDataFrame({"class": kinds}, geometry=geoms, crs=CRS).to_file(tmp_path / "labels.gpkg")
    args = dict(
        images=str(image),
        labels=str(tmp_path / "labels.gpkg"),
        label_column=None,
        classes=["building", "car", "road", "tree"],
        tile_size=64,
        loading=Loading(batch_size=2, num_workers=0, val_fraction=0.25, length=4),
    )
    with pytest.warns(LemevitWarning) as caught:
        data = detection_data(point_size=3.0, **args)  # 3 m squares: 6 px at 0.5 m
    ours = [w for w in caught if issubclass(w.category, LemevitWarning)]
    assert len(ours) == 1
    assert "skipped 1 line or other non-polygon feature(s) and 2 empty one(s) of 7" in str(ours[0].message)
    assert data.split["objects"] == 4
    assert data.head == {"use_p2": True}  # three of the four objects are under 16 px: the stride-4 level
    sources = [*data.datamodule.train_dataset.sources, *data.datamodule.val_dataset.sources]
    boxes = np.concatenate([s.objects()[0] for s in sources[:1]])
    labels = np.concatenate([s.objects()[1] for s in sources[:1]])
    by_class = {data.classes[c]: boxes[labels == c] for c in np.unique(labels)}
    np.testing.assert_allclose(by_class["building"][0, :4], [40, 35, 40, 30], atol=1e-6)  # its rotated rectangle
    squares = np.concatenate([by_class["tree"], by_class["car"]])
    np.testing.assert_allclose(squares[:, 2:4], 6.0, atol=1e-6)
    np.testing.assert_allclose(np.sort(squares[:, 0]), [100.0, 140.0, 180.0], atol=1e-6)
    np.testing.assert_allclose(squares[:, 1], 60.0, atol=1e-6)
    with pytest.raises(InputError, match="holds points: give `point_size`"):
        detection_data(**args)


def test_point_size_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    image = write_raster(tmp_path / "scene.tif", paint(96, 96, []))
    gpd.GeoDataFrame({"class": ["car"]}, geometry=[shapely.Point(ORIGIN[0] + 5, ORIGIN[1] - 5)], crs=CRS).to_file(
        tmp_path / "points.gpkg"
    )
    args = ["train", "--dataset", "custom", "--images", image, "--labels", tmp_path / "points.gpkg"]
    assert "--point-size applies to own detection labels" in cli_error(*args, "--point-size", "2")
    out = tmp_path / "m.safetensors"
    line = cli_error(*args, "--task", "detect", "--out", out, "--tile-size", "64")
    assert "holds points: give --point-size" in line
    line = cli_error(*args, "--task", "detect", "--out", out, "--point-size", "-1")
    assert "--point-size must be a positive length" in line
