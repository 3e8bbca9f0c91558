"""``detect``: boxes merged across tile seams exactly once, map geometry, outputs, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from lemevit_geo.choices import Precision
from lemevit_geo.pipelines.geometry import EDGE_MARGIN, box_features
from lemevit_geo.pipelines.inference.boxes import CUT, FOREIGN, OWNED, BoxMerger
from lemevit_geo.pipelines.inference.detect import detect
from lemevit_geo.pipelines.inference.engine import TileData
from lemevit_geo.pipelines.inference.tiling import TileGrid, ownership
from lemevit_geo.settings import Detection, Engine
from tests.conftest import CRS, GSD, ORIGIN, cli, cli_error, cli_subprocess, write_raster
from tests.standins import CLASSES, BlobDetector, add, blob_boxes, blob_config, paint, random_objects

ENGINE = Engine(device="cpu", precision=Precision.fp32, batch_size=3, threads=2)


def seam_scene(height: int, width: int, tile: int, overlap: int, seed: int = 0) -> list[tuple[float, ...]]:
    """Objects on the seams of the grid: across an ownership boundary, across a tile edge, on a corner of
    four tiles (centre on both boundaries), plus random ones. Every object's extent along x and y stays
    below the overlap less the edge margins, so some tile sees it whole."""
    grid = TileGrid(height, width, tile, overlap)
    (_, bx), (_, by) = ownership(grid.xs, tile, width)[0], ownership(grid.ys, tile, height)[0]
    limit = overlap - 2 * EDGE_MARGIN - 2  # pixel squares add up to a pixel on each side

    def fit(cx: float, cy: float, w: float, h: float, a: float, c: int) -> tuple[float, ...]:
        extent = max(w * abs(math.cos(a)) + h * abs(math.sin(a)), w * abs(math.sin(a)) + h * abs(math.cos(a)))
        k = min(1.0, limit / extent)
        return (cx, cy, w * k, h * k, a, c)

    placed: list[tuple[float, ...]] = []
    add(placed, fit(bx, tile / 3, limit, limit * 0.6, 0.0, 0))  # centred on the boundary of columns 0 and 1
    add(placed, fit(bx + 0.5, by - 0.25, limit, limit * 0.5, 0.6, 1))  # on the corner of four tiles
    add(placed, fit(grid.xs[1] + 1.0, by + tile / 2, limit, limit * 0.5, 0.0, 2))  # across tile 1's left edge
    add(placed, fit(tile - 1.0, 2 * tile / 3, limit * 0.8, limit * 0.5, -0.4, 1))  # across tile 0's right edge
    rng = np.random.default_rng(seed)
    for obj in random_objects(rng, height, width, 60, sizes=(3, limit)):
        add(placed, fit(*obj))
    return placed


def run_detect(tmp: Path, image: np.ndarray, tile: int, overlap: int, name: str = "boxes.gpkg", **kw) -> tuple:
    src = write_raster(tmp / "scene.tif", image)
    out = tmp / name
    summary = detect(
        image=src,
        output=out,
        model=(BlobDetector(), blob_config(tile, overlap)),
        engine=kw.pop("engine", ENGINE),
        overwrite=True,
        **kw,
    )
    gdf = gpd.read_parquet(out) if out.suffix == ".parquet" else gpd.read_file(out)
    return gdf, summary


def match(got: gpd.GeoDataFrame, want: gpd.GeoDataFrame) -> np.ndarray:
    """For each wanted polygon, the number of output polygons of its class that it overlaps with IoU > 0.99."""
    counts = np.zeros(len(want), dtype=int)
    for k, (geom, cls) in enumerate(zip(want.geometry, want["class_id"], strict=True)):
        same = got[got["class_id"] == cls]
        inter = shapely.area(shapely.intersection(same.geometry.values, geom))
        iou = inter / (shapely.area(same.geometry.values) + geom.area - inter)
        counts[k] = int((iou > 0.99).sum())
    return counts


@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (64, 24), (96, 32), (128, 20)])
def test_every_object_once_with_its_full_extent(tmp_path: Path, tile: int, overlap: int) -> None:
    height, width = 230, 300
    objects = seam_scene(height, width, tile, overlap)
    image = paint(height, width, objects)
    gdf, summary = run_detect(tmp_path, image, tile, overlap)
    transform = rasterio.transform.from_origin(*ORIGIN, GSD, GSD)
    want = box_features(blob_boxes(image), transform, CLASSES, CRS)
    assert len(want) == len(objects)
    assert (match(gdf, want) == 1).all() and len(gdf) == len(want)
    assert summary["objects"] == len(want) and summary["partial_boxes"] == 0
    assert summary["merged_across_tiles"] > 0  # seams were crossed: other tiles' copies were merged away
    # the seam objects: every one once, whole (its area equals the painted rectangle's pixel footprint)
    np.testing.assert_allclose(np.sort(gdf["area"]), np.sort(want["area"]), rtol=1e-5)  # float32 boxes
    assert gdf.crs.to_string() == CRS and list(gdf.columns[:-1]) == [
        "class_id",
        "class_name",
        "score",
        "angle",
        "length",
        "width",
        "area",
    ]


def test_tiles_of_every_order_and_thread_count_give_the_same_file(tmp_path: Path) -> None:
    objects = seam_scene(200, 200, 64, 16, seed=3)
    image = paint(200, 200, objects)
    a, _ = run_detect(tmp_path, image, 64, 16, "a.gpkg")
    b, _ = run_detect(tmp_path, image, 64, 16, "b.gpkg", engine=Engine(device="cpu", batch_size=7, threads=1))
    assert a.equals(b)


def test_objects_larger_than_the_overlap_fall_back_to_partial_boxes(tmp_path: Path) -> None:
    # bars longer than the overlap: no tile sees them whole; their pieces are joined into one partial box
    bars = [(56.0, 30.0, 40.0, 6.0, 0.0, 1), (80.0, 70.0, 90.0, 4.0, 0.0, 2), (24.0, 12.0, 30.0, 4.0, 0.0, 0)]
    image = paint(150, 200, bars)  # the second spans three tiles; the third lies whole in one tile
    gdf, summary = run_detect(tmp_path, image, 64, 16)
    assert len(gdf) == 3 and summary["partial_boxes"] == 2
    for cx, cy, w, h, _, _ in bars:
        hit = gdf[gdf.contains(shapely.Point(ORIGIN[0] + cx * GSD, ORIGIN[1] - cy * GSD))]
        assert len(hit) == 1 and hit["area"].iloc[0] == pytest.approx(w * h * GSD * GSD, rel=1e-5)


def _tile_data(grid: TileGrid, index: int, valid: np.ndarray | None = None) -> TileData:
    tile = grid.tiles()[index]
    return TileData(tile, None, np.ones((tile.size, tile.size), dtype=bool) if valid is None else valid)


def test_tiers_nodata_classes_and_bounded_pool() -> None:
    grid = TileGrid(64, 160, 64, 16)  # columns at 0, 48, 96; boundaries at 56 and 104
    written: list[np.ndarray] = []
    merger = BoxMerger(grid, written.append, iou_threshold=0.1, keep_classes=[0, 1])
    rows = np.array(
        [
            [20, 30, 10, 6, 0, 0.9, 0],  # owned, alone: final at once
            [58, 30, 4, 4, 0, 0.8, 1],  # centre 58 > 56: a neighbour's
            [63, 40, 4, 4, 0, 0.7, 0],  # reaches the inner right edge: cut
            [30, 10, 6, 6, 0, 0.6, 2],  # class not kept
            [10, 50, 6, 6, 0, 0.5, 0],  # centre on nodata
            [0, 0, 0, 0, 0, 0.0, -1],  # padding
        ]
    )
    valid = np.ones((64, 64), dtype=bool)
    valid[45:, :20] = False
    boxes = merger._tile_boxes(_tile_data(grid, 0, valid), rows)
    assert boxes.tier.tolist() == [OWNED, FOREIGN, CUT]
    merger.add(_tile_data(grid, 0, valid), rows)
    assert len(merger.pending) == 2  # the two near the seam wait for the neighbour
    merger.add(_tile_data(grid, 1), np.array([[10, 30, 4, 4, 0, 0.85, 1], [15, 40, 4, 4, 0, 0.4, 0]]))
    merger.skip(_tile_data(grid, 2))
    merger.close()
    out = np.concatenate(written)
    assert len(out) == 3  # the cut box and the foreign copy gave way to tile 1's owned boxes
    assert sorted(out[:, 5].tolist()) == [0.4, 0.85, 0.9]
    assert merger.counts == {"found": 5, "written": 3, "merged": 2, "partial": 0}


def _objects_in_map(gdf: gpd.GeoDataFrame, transform: Affine, rects: list[tuple[int, int, int, int]]) -> None:
    """Each pixel rectangle (col0, row0, cols, rows) is one output polygon whose corners are the transformed
    pixel corners (in map units)."""
    assert len(gdf) == len(rects)
    for c0, r0, w, h in rects:
        want = shapely.Polygon([transform * p for p in [(c0, r0), (c0 + w, r0), (c0 + w, r0 + h), (c0, r0 + h)]])
        hits = [g for g in gdf.geometry if g.intersection(want).area > 0.5 * want.area]
        assert len(hits) == 1
        assert hits[0].symmetric_difference(want).area < 1e-4 * want.area
        got_corners = sorted(map(tuple, np.round(np.asarray(hits[0].exterior.coords)[:4], 2)))
        want_corners = sorted(map(tuple, np.round(np.asarray(want.exterior.coords)[:4], 2)))
        np.testing.assert_allclose(got_corners, want_corners, atol=1e-3)  # 1 mm: the stand-in works in float32


@pytest.mark.parametrize(
    "transform",
    [
        Affine(0.5, 0, 350_000.0, 0, -0.5, 5_600_000.0),  # north-up, square pixels
        Affine(0.5, 0, 350_000.0, 0, -2.0, 5_600_000.0),  # north-up, non-square pixels
        Affine.translation(350_000.0, 5_600_000.0) * Affine.rotation(30) * Affine.scale(0.5, -0.75),  # rotated
    ],
    ids=["north-up", "non-square", "rotated"],
)
def test_polygons_land_at_their_map_coordinates(tmp_path: Path, transform: Affine) -> None:
    rects = [(10, 8, 20, 6), (52, 40, 6, 18), (90, 10, 12, 10), (44, 60, 16, 8)]  # the last crosses a seam
    objects = [(c0 + w / 2, r0 + h / 2, w, h, 0.0, k % 3) for k, (c0, r0, w, h) in enumerate(rects)]
    image = paint(96, 128, objects)
    src = write_raster(tmp_path / "scene.tif", image, transform=transform)
    out = tmp_path / "boxes.gpkg"
    detect(image=src, output=out, model=(BlobDetector(), blob_config(64, 16)), engine=ENGINE)
    gdf = gpd.read_file(out)
    assert gdf.crs.to_string() == CRS
    _objects_in_map(gdf, transform, rects)
    # measures in map terms: the pixel sides mapped through the transform
    for (_, _, w, h), (_, row) in zip(rects, _by_position(gdf, transform, rects), strict=True):
        u = np.hypot(transform.a, transform.d) * w  # the pixel x side in map units
        v = np.hypot(transform.b, transform.e) * h
        long_vec = (transform.a, transform.d) if u >= v else (transform.b, transform.e)
        assert row["length"] == pytest.approx(max(u, v)) and row["width"] == pytest.approx(min(u, v))
        assert row["area"] == pytest.approx(u * v) and row["area"] == pytest.approx(row.geometry.area)
        assert row["angle"] == pytest.approx(math.degrees(math.atan2(long_vec[1], long_vec[0])) % 180, abs=1e-4)
        assert row.geometry.exterior.is_ccw


def _by_position(gdf: gpd.GeoDataFrame, transform: Affine, rects: list[tuple[int, int, int, int]]) -> list:
    rows = []
    for c0, r0, w, h in rects:
        centre = shapely.Point(transform * (c0 + w / 2, r0 + h / 2))
        rows.append(next((i, r) for i, r in gdf.iterrows() if r.geometry.contains(centre)))
    return rows


def test_north_up_angles_are_counter_clockwise_from_east() -> None:
    transform = Affine(1, 0, 0, 0, -1, 0)
    rows = np.array(
        [
            [10, 10, 8, 2, 0.0, 0.9, 0],  # along the pixel x axis: east
            [10, 10, 8, 2, math.pi / 2, 0.9, 0],  # along +row, i.e. south: 90
            [10, 10, 8, 2, -math.pi / 4, 0.9, 0],  # up and right on screen: north-east, 45
            [10, 10, 8, 2, math.pi / 4, 0.9, 0],  # down and right: south-east, 135
        ]
    )
    gdf = box_features(rows, transform, ["a"], None)
    np.testing.assert_allclose(gdf["angle"], [0, 90, 45, 135], atol=1e-9)
    np.testing.assert_allclose(gdf["length"], 8) and np.testing.assert_allclose(gdf["width"], 2)


@pytest.mark.parametrize("suffix", [".parquet", ".geojson"])
def test_formats_classes_and_thresholds(tmp_path: Path, suffix: str) -> None:
    objects = seam_scene(150, 180, 64, 16, seed=5)
    image = paint(150, 180, objects)
    everything, _ = run_detect(tmp_path, image, 64, 16, f"all{suffix}")
    assert everything.crs.to_string() == CRS and len(everything) == len(objects)
    trucks, summary = run_detect(tmp_path, image, 64, 16, f"t{suffix}", detection=Detection(classes=("truck",)))
    assert set(trucks["class_name"]) == {"truck"} and len(trucks) == (everything["class_name"] == "truck").sum()
    assert summary["class_objects"] == {"truck": len(trucks)}
    strict, _ = run_detect(tmp_path, image, 64, 16, f"s{suffix}", detection=Detection(score_threshold=0.8))
    assert (strict["score"] > 0.8).all() and len(strict) == (everything["score"] > 0.8).sum()
    empty, summary = run_detect(tmp_path, np.zeros((3, 80, 80), np.uint8), 64, 16, f"e{suffix}")
    assert len(empty) == 0 and summary["objects"] == 0


def test_nodata_tiles_are_skipped_and_memory_bounded_rows(tmp_path: Path) -> None:
    objects = seam_scene(200, 260, 64, 16, seed=7)
    image = paint(200, 260, objects)
    image[:, :, 200:] = 0
    src = write_raster(tmp_path / "nd.tif", image, nodata=0)
    sizes: list[int] = []

    class Probe(BoxMerger):
        def _finish_row(self, limit: float) -> None:
            super()._finish_row(limit)
            sizes.append(len(self.pending))

    import lemevit_geo.pipelines.inference.detect as module

    original = module.BoxMerger
    module.BoxMerger = Probe  # type: ignore[misc]
    try:
        summary = detect(image=src, output=tmp_path / "o.gpkg", model=(BlobDetector(), blob_config(64, 16)))
    finally:
        module.BoxMerger = original  # type: ignore[misc]
    assert summary["tiles_skipped_nodata"] > 0
    assert len(sizes) == len(TileGrid(200, 260, 64, 16).ys) and sizes[-1] == 0
    gdf = gpd.read_file(tmp_path / "o.gpkg")
    assert (gdf.geometry.bounds["maxx"] <= ORIGIN[0] + 200 * GSD + 1e-6).all()


def test_detect_command_and_bad_inputs(tmp_path: Path, seg_bundle: Path) -> None:
    from lemevit_geo.bundle import build_model, save_bundle

    config = blob_config(64, 16)
    config.classes = ["car", "truck"]
    config.colors = config.colors[:2]
    config.head = {"fpn_channels": 32, "num_convs": 1}
    small = tmp_path / "small.safetensors"
    save_bundle(small, build_model(config), config)
    src = write_raster(tmp_path / "scene.tif", paint(100, 120, [(40, 40, 10, 5, 0.3, 0)]))
    out = tmp_path / "objects.gpkg"
    summary = json.loads(cli("detect", src, "-o", out, "-m", small, "--score-threshold", "0.3", "--json").output)
    assert summary["overlap"] == 16 and set(summary["score_thresholds"].values()) == {0.3}
    assert summary["threshold_source"] == "--score-threshold" and Path(summary["outputs"]["vector"]) == out
    assert gpd.read_file(out).crs.to_string() == CRS
    existing = tmp_path / "exists.gpkg"
    existing.write_bytes(b"keep")
    cases = [
        ([src, "-o", existing, "-m", small], "--overwrite"),
        ([src, "-o", tmp_path / "o.shp", "-m", small], ".gpkg, .parquet or .geojson"),
        ([src, "-o", tmp_path / "x.gpkg", "-m", small, "--classes", "boat"], "--classes names boat"),
        ([src, "-o", tmp_path / "x.gpkg", "-m", small, "--overlap", "64"], "must be less than the tile size"),
        ([src, "-o", tmp_path / "x.gpkg", "-m", small, "--score-threshold", "1.5"], "--score-threshold"),
        ([src, "-o", tmp_path / "x.gpkg", "-m", small, "--bands", "1,2"], "model takes 3"),
        ([tmp_path / "missing.tif", "-o", tmp_path / "x.gpkg", "-m", small], "does not exist"),
    ]
    for args, message in cases:
        assert message in cli_error("detect", *args)
    # the whole path as users meet it: one line on stderr, exit code 1
    r = cli_subprocess("detect", src, "-o", tmp_path / "x.gpkg", "-m", seg_bundle)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "is a segment model; this command needs a detect model" in r.stderr
    assert existing.read_bytes() == b"keep" and not (tmp_path / "x.gpkg").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failing_run_leaves_nothing_behind(tmp_path: Path) -> None:
    class Failing(BlobDetector):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.calls == 2:
                raise RuntimeError("device lost")
            return super().forward(x)

    src = write_raster(tmp_path / "scene.tif", paint(200, 200, seam_scene(200, 200, 64, 16)))
    with pytest.raises(RuntimeError, match="device lost"):
        detect(image=src, output=tmp_path / "o.gpkg", model=(Failing(), blob_config(64, 16)), engine=ENGINE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
