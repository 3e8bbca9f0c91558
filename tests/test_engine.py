"""The tiling engine: exact stitching, nodata, bounded buffers, atomic outputs, polygons across seams."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from lemevit_geo.choices import Stitch
from lemevit_geo.pipelines.dense import dense_predict
from lemevit_geo.pipelines.engine import Runtime, SourceSpec
from lemevit_geo.pipelines.tiling import TileGrid, ownership, tile_offsets
from lemevit_geo.raster import inspect_source
from lemevit_geo.settings import DenseOutputs
from tests.conftest import GSD, ORIGIN, textured_scene, write_raster

MEAN = np.array([120.0, 110.0, 100.0], dtype=np.float32)
STD = np.array([60.0, 50.0, 40.0], dtype=np.float32)
CLASSES = ["a", "b", "c", "d"]
COLORS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (90, 90, 90)]


def pixel_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, len(CLASSES), kernel_size=1).eval()


def whole_scene(model: torch.nn.Module, data: np.ndarray) -> np.ndarray:
    x = (data.astype(np.float32) - MEAN[:, None, None]) / STD[:, None, None]
    with torch.no_grad():
        return model(torch.from_numpy(x)[None])[0].argmax(0).numpy().astype(np.uint8)


def run_dense(
    tmp: Path,
    src: Path,
    model: torch.nn.Module,
    name: str,
    *,
    tile_size: int,
    overlap: int,
    stitch: Stitch,
    batch_size: int = 3,
    threads: int = 2,
    **outputs: Path,
) -> tuple[Path, dict]:
    info = inspect_source(src, None, 3)
    out = tmp / f"{name}.tif"
    summary = dense_predict(
        sources=[SourceSpec(info, MEAN, STD)],
        grid_info=info,
        model=model,
        classes=CLASSES,
        colors=COLORS,
        output=out,
        runtime=Runtime(torch.device("cpu"), torch.float32, batch_size, threads),
        tile_size=tile_size,
        overlap=overlap,
        stitch=stitch,
        outputs=DenseOutputs(**outputs),
    )
    return out, summary


def test_tile_offsets_cover_edges_and_ownership_partitions() -> None:
    assert tile_offsets(100, 128, 96, fit=True) == [0]
    assert tile_offsets(300, 128, 96, fit=True) == [0, 96, 172]
    assert tile_offsets(300, 128, 96, fit=False) == [0, 96, 192]
    for size, tile, overlap in [(300, 128, 32), (1000, 256, 64), (257, 64, 0), (97, 32, 16)]:
        offs = tile_offsets(size, tile, tile - overlap, fit=True)
        owned = ownership(offs, tile, size)
        assert owned[0][0] == 0 and owned[-1][1] == size
        for (a0, a1), (b0, _), off in zip(owned, owned[1:], offs, strict=False):
            assert a1 == b0 and off <= a0 < a1 <= off + tile
    with pytest.raises(ValueError, match="multiple of 32"):
        TileGrid(100, 100, 100, 0)


@pytest.mark.parametrize("stitch", [Stitch.crop, Stitch.blend])
@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(333, 517, 128, 32), (200, 301, 64, 0), (97, 61, 128, 16), (450, 450, 96, 40)],
)
def test_tiled_output_equals_whole_scene_output(
    tmp_path: Path, stitch: Stitch, height: int, width: int, tile: int, overlap: int
) -> None:
    data = textured_scene(height, width)
    src = write_raster(tmp_path / "scene.tif", data)
    model = pixel_model()
    out, summary = run_dense(tmp_path, src, model, "out", tile_size=tile, overlap=overlap, stitch=stitch)
    with rasterio.open(out) as ds:
        got = ds.read(1)
        assert (ds.width, ds.height, ds.crs.to_string()) == (width, height, "EPSG:32632")
        assert ds.transform == rasterio.transform.from_origin(*ORIGIN, GSD, GSD)
        assert ds.nodata == 255
        assert ds.colormap(1)[2] == (255, 0, 0, 255)
        assert ds.tags(1)["CLASS_1"] == "b"
        assert ds.profile["tiled"] and ds.compression.value == "DEFLATE"
    np.testing.assert_array_equal(got, whole_scene(model, data))
    assert sum(summary["class_pixels"].values()) == height * width
    assert list(tmp_path.glob(".*partial*")) == []


@pytest.mark.parametrize("stitch", [Stitch.crop, Stitch.blend])
def test_masked_pixels_are_nodata_and_carry_no_weight(tmp_path: Path, stitch: Stitch) -> None:
    data = textured_scene(300, 300)
    data[:, 100:140, :] = 0  # a nodata stripe through several tiles
    data[:, 200:, 250:] = 0
    src = write_raster(tmp_path / "scene.tif", data, nodata=0)
    model = pixel_model(1)
    out, _ = run_dense(
        tmp_path, src, model, "out", tile_size=64, overlap=16, stitch=stitch, probabilities=tmp_path / "p.tif"
    )
    expected = whole_scene(model, data)
    nodata = (data == 0).all(axis=0)
    expected[nodata] = 255
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), expected)
    with rasterio.open(tmp_path / "p.tif") as ds:
        probs = ds.read()
        assert ds.count == 4 and ds.nodata == 255 and ds.scales[0] == pytest.approx(1 / 254)
    assert (probs[:, nodata] == 255).all()
    total = probs[:, ~nodata].astype(int).sum(axis=0)
    assert np.abs(total - 254).max() <= 2


def test_empty_windows_are_skipped(tmp_path: Path) -> None:
    data = textured_scene(512, 512)
    yy, xx = np.mgrid[:512, :512]
    footprint = np.abs(yy - 256) + np.abs(xx - 256) < 200  # rotated (diamond) footprint
    data[:, ~footprint] = 0
    src = write_raster(tmp_path / "scene.tif", data, nodata=0)
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = pixel_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.inner(x)

    out, summary = run_dense(tmp_path, src, Counting(), "out", tile_size=64, overlap=0, stitch=Stitch.crop)
    assert summary["tiles"] == 64
    assert summary["tiles_skipped_nodata"] > 10
    assert sum(calls) == summary["tiles_run"] == 64 - summary["tiles_skipped_nodata"]
    with rasterio.open(out) as ds:
        arr = ds.read(1)
    assert (arr[~footprint] == 255).all() and (arr[footprint] != 255).all()


def test_interrupted_run_leaves_no_files(tmp_path: Path) -> None:
    src = write_raster(tmp_path / "scene.tif", textured_scene(300, 300))

    class Failing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.n += 1
            if self.n == 2:
                raise KeyboardInterrupt
            return torch.zeros(x.shape[0], 4, *x.shape[-2:])

    with pytest.raises(KeyboardInterrupt):
        run_dense(
            tmp_path, src, Failing(), "out", tile_size=64, overlap=0, stitch=Stitch.blend, vector=tmp_path / "v.gpkg"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_polygons_land_on_the_classes_and_merge_across_windows(tmp_path: Path) -> None:
    # left 700 columns bright (class 1), the rest dark (class 0): a region wider than a polygon window
    data = np.full((3, 600, 1000), 30, dtype=np.uint8)
    data[:, :, :700] = 220
    data[:, 500:, 900:] = 0  # nodata corner
    src = write_raster(tmp_path / "scene.tif", data, nodata=0)
    model = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.0, -5.0, -5.0]))
        model.weight[1, :, 0, 0] = 1.0  # bright pixels: class 1 wins, dark: class 0
    vec = tmp_path / "poly.gpkg"
    run_dense(tmp_path, src, model.eval(), "out", tile_size=128, overlap=32, stitch=Stitch.blend, vector=vec)
    gdf = gpd.read_file(vec)
    assert gdf.crs.to_epsg() == 32632
    assert sorted(gdf["class_name"]) == ["a", "b"]
    bright = gdf[gdf["class_name"] == "b"].iloc[0]
    x0, y1 = ORIGIN
    assert bright.geometry.bounds == pytest.approx((x0, y1 - 600 * GSD, x0 + 700 * GSD, y1))
    assert bright["area"] == pytest.approx(700 * 600 * GSD * GSD)
    assert 0.5 < bright["mean_prob"] <= 1.0
    dark = gdf[gdf["class_name"] == "a"].iloc[0]
    assert dark["area"] == pytest.approx((300 * 600 - 100 * 100) * GSD * GSD)


def test_polygon_merge_with_small_windows_and_simplify(tmp_path: Path) -> None:
    from lemevit_geo.vector import polygonize

    cls = np.zeros((1, 300, 300), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :300]
    cls[0][(yy - 150) ** 2 + (xx - 150) ** 2 < 120**2] = 1
    cls[0][:20, :20] = 2
    path = write_raster(tmp_path / "cls.tif", cls, nodata=255)
    conf = write_raster(tmp_path / "conf.tif", np.full((1, 300, 300), 127, dtype=np.uint8), nodata=255)
    gdf = polygonize(path, conf, ["bg", "disc", "corner"], window=64)
    assert list(gdf["class_name"]).count("disc") == 1  # one polygon, though the disc spans 25 windows
    disc = gdf[gdf["class_name"] == "disc"].iloc[0]
    assert disc["area"] == pytest.approx((cls[0] == 1).sum() * GSD * GSD)
    assert disc["mean_prob"] == pytest.approx(0.5)
    small = polygonize(path, conf, ["bg", "disc", "corner"], window=64, min_area=500 * GSD * GSD, simplify=2.0)
    assert "corner" not in set(small["class_name"])
    # coverage simplification keeps neighbours sharing their edges: no gaps or overlaps appear
    assert small.union_all().area == pytest.approx(300 * 300 * GSD * GSD - 400 * GSD * GSD, rel=1e-6)
