"""The tiling engine: exact stitching, nodata, bounded buffers, atomic outputs, polygons across seams."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from lemevit_geo.choices import Stitch
from lemevit_geo.pipelines.inference.dense import dense_predict
from lemevit_geo.pipelines.inference.engine import Runtime, SourceSpec
from lemevit_geo.pipelines.inference.tiling import TileGrid, ownership, tile_offsets
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


def test_batches_stay_in_their_tile_row_and_empty_tiles_pass_straight_through() -> None:
    from lemevit_geo.pipelines.inference.engine import TileData, run_tiles

    grid = TileGrid(3 * 64, 4 * 64, 64, 0)
    valid = {0: [1, 0, 0, 1], 1: [0, 0, 0, 0], 2: [1, 1, 1, 1]}
    events: list[tuple[str, int]] = []
    calls: list[int] = []

    class Sink:
        def add(self, item: TileData, output: np.ndarray) -> None:
            events.append(("add", item.tile.index))

        def skip(self, item: TileData) -> None:
            events.append(("skip", item.tile.index))

        def close(self) -> None:
            events.append(("close", -1))

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return x

    def reader() -> object:
        for tile in grid.tiles():
            ok = valid[tile.row][tile.col]
            yield TileData(
                tile, np.zeros((3, 64, 64), np.float32) if ok else None, np.ones((64, 64), bool) if ok else None
            )
            if not ok and tile.index >= 4:  # nothing valid waits in row 1: the empty tile is already handed on
                assert events[-1] == ("skip", tile.index)

    stats = run_tiles(iter(reader()), Model(), Sink(), Runtime(torch.device("cpu"), torch.float32, 3, 1))
    assert [e for e in events if e[0] != "close"] == [("add" if valid[i // 4][i % 4] else "skip", i) for i in range(12)]
    assert calls == [2, 3, 1]  # row 0: two valid tiles; row 2: a full batch, then the rest of the row
    assert (stats.tiles, stats.tiles_run, stats.tiles_skipped, stats.batches) == (12, 6, 6, 3)


def test_blend_weights_sum_to_one_across_every_overlap() -> None:
    from lemevit_geo.pipelines.inference.tiling import blend_window

    for tile, overlap in [(128, 32), (64, 16), (96, 40), (256, 64)]:
        ramp = blend_window(tile, overlap)[tile // 2]
        stride = tile - overlap
        total = np.zeros(stride * 5 + tile)
        for k in range(6):
            total[k * stride : k * stride + tile] += ramp
        inner = total[overlap : 5 * stride + tile - overlap]  # every pixel away from the outer edges
        np.testing.assert_allclose(inner, 1.0, atol=1e-6)
        assert ramp.min() > 0 and ramp[tile // 2] == 1.0


class TileMean(torch.nn.Module):
    """Logits that depend on the whole tile, not on the pixel: (mean of band 1, 0, -4, -4) everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])
        return torch.cat([m, torch.zeros_like(m), torch.full_like(m, -4.0), torch.full_like(m, -4.0)], dim=1)


def test_blending_averages_overlapping_tiles_with_the_raised_cosine_window(tmp_path: Path) -> None:
    height, width, tile, overlap = 200, 333, 128, 48
    cols = np.linspace(0, 235, width, dtype=np.float32)
    data = np.broadcast_to((20 + cols)[None, None, :], (3, height, width)).astype(np.uint8)
    src = write_raster(tmp_path / "gradient.tif", data)
    out, _ = run_dense(
        tmp_path,
        src,
        TileMean(),
        "blend",
        tile_size=tile,
        overlap=overlap,
        stitch=Stitch.blend,
        probabilities=tmp_path / "p.tif",
    )
    with rasterio.open(tmp_path / "p.tif") as ds:
        got = ds.read(1).astype(int)
    # the expected blend, computed independently: raised-cosine ramps over the overlap, 1 inside
    n = overlap
    ramp1d = np.ones(tile)
    ramp1d[:n] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    ramp1d[tile - n :] = ramp1d[:n][::-1]
    x = (data[0].astype(np.float32) - MEAN[0]) / STD[0]
    num, den = np.zeros((height, width)), np.zeros((height, width))
    for y0 in tile_offsets(height, tile, tile - overlap, fit=True):
        for x0 in tile_offsets(width, tile, tile - overlap, fit=True):
            h, w = min(tile, height - y0), min(tile, width - x0)
            mean = x[y0 : y0 + h, x0 : x0 + w].sum() / (tile * tile)  # the tile is zero-padded to its size
            wgt = np.outer(ramp1d[:h], ramp1d[:w])
            num[y0 : y0 + h, x0 : x0 + w] += wgt * mean
            den[y0 : y0 + h, x0 : x0 + w] += wgt
    logit = num / den
    p0 = np.exp(logit) / (np.exp(logit) + 1 + 2 * np.exp(-4.0))
    np.testing.assert_array_less(np.abs(got - np.rint(p0 * 254)), 1.01)
    assert np.ptp(got) > 20  # the tiles really differ, so a wrong window would show


@pytest.mark.parametrize("stitch", [Stitch.crop, Stitch.blend])
def test_sparse_scene_wider_than_a_chunk(tmp_path: Path, stitch: Stitch) -> None:
    """Islands of data in a wide, mostly empty scene: only they are stitched, exactly, across rows and chunks."""
    data = np.zeros((3, 420, 2600), dtype=np.uint8)
    islands = [
        (slice(100, 230), slice(2000, 2300)),
        (slice(5, 60), slice(30, 90)),
        (slice(300, 420), slice(2450, 2600)),
    ]
    for k, (rows, cols) in enumerate(islands):
        data[:, rows, cols] = textured_scene(rows.stop - rows.start, cols.stop - cols.start, seed=k)
    src = write_raster(tmp_path / "sparse.tif", data, nodata=0)
    model = pixel_model(2)
    out, summary = run_dense(tmp_path, src, model, "out", tile_size=128, overlap=32, stitch=stitch)
    expected = whole_scene(model, data)
    expected[(data == 0).all(axis=0)] = 255
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), expected)
    assert summary["tiles_skipped_nodata"] > summary["tiles_run"]
