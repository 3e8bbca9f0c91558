"""Change detection: the Siamese BIT-style model, alignment of the dates, and the `change` command."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.models.factory import build_task_model
from lemevit_geo.pipelines.inference.change import change
from lemevit_geo.settings import DenseOutputs, Engine, Tiling
from tests.conftest import CRS, GSD, ORIGIN, cli_main, textured_scene, write_raster

CONFIG = BundleConfig(
    task="change", arch="tiny", classes=["no change", "change"], bands=3, mean=[128.0] * 3, std=[40.0] * 3, tile_size=64
)
SQUARE = (slice(100, 140), slice(60, 110))  # rows, cols painted in the later image


class Difference(torch.nn.Module):
    """Stand-in change model: change where the dates differ by more than half a standard deviation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, :3] - x[:, 3:]).abs().mean(dim=1, keepdim=True)
        return torch.cat([0.5 - d, d - 0.5], dim=1)


def smooth_scene(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = 128 + 50 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    return np.repeat(base[None], 3, axis=0).clip(1, 255).astype(np.uint8)


def pair(tmp: Path) -> tuple[Path, Path, np.ndarray]:
    before = smooth_scene(240, 200)
    after = before.copy()
    after[:, SQUARE[0], SQUARE[1]] = 250
    return write_raster(tmp / "before.tif", before), write_raster(tmp / "after.tif", after), before


def run(tmp: Path, before: Path, after: Path, bands: tuple[int, ...] | None = None, **outputs: Path) -> dict:
    return change(
        before=before,
        after=after,
        output=tmp / "change.tif",
        model=(Difference(), CONFIG),
        bands=bands,
        engine=Engine(device="cpu", precision="fp32"),
        tiling=Tiling(overlap=16),
        outputs=DenseOutputs(**outputs),
    )


def test_identical_dates_give_no_change(tmp_path: Path) -> None:
    before, _, _ = pair(tmp_path)
    summary = run(tmp_path, before, before)
    with rasterio.open(tmp_path / "change.tif") as ds:
        assert (ds.read(1) == 0).all()
    assert summary["alignment"]["resampled"] is False and summary["class_pixels"]["change"] == 0


def test_painted_square_is_found_in_raster_and_polygons(tmp_path: Path) -> None:
    before, after, _ = pair(tmp_path)
    summary = run(tmp_path, before, after, vector=tmp_path / "changes.gpkg", probabilities=tmp_path / "p.tif")
    with rasterio.open(tmp_path / "change.tif") as ds:
        arr = ds.read(1)
        assert (ds.width, ds.height, ds.crs.to_string()) == (200, 240, CRS)
        assert ds.colormap(1)[1][:3] == (230, 30, 30)
    expected = np.zeros_like(arr)
    expected[SQUARE] = 1
    np.testing.assert_array_equal(arr, expected)
    gdf = gpd.read_file(tmp_path / "changes.gpkg")
    assert list(gdf["class_name"]) == ["change"] and gdf.crs.to_epsg() == 32632
    x0, y1 = ORIGIN
    bounds = (x0 + 60 * GSD, y1 - 140 * GSD, x0 + 110 * GSD, y1 - 100 * GSD)
    assert gdf.geometry.iloc[0].bounds == pytest.approx(bounds)
    assert gdf["area"].iloc[0] == pytest.approx(40 * 50 * GSD * GSD)
    assert summary["alignment"]["overlap_share_before"] == 1.0


def test_shifted_after_is_aligned_exactly(tmp_path: Path) -> None:
    _, _, before_arr = pair(tmp_path)
    before = write_raster(tmp_path / "before.tif", before_arr)
    # the later image covers a window shifted 7 px right and 5 px down, with the square at the same place
    after_arr = np.zeros((3, 240, 200), dtype=np.uint8)
    after_arr[:, :235, :193] = before_arr[:, 5:, 7:]
    after_arr[:, SQUARE[0].start - 5 : SQUARE[0].stop - 5, SQUARE[1].start - 7 : SQUARE[1].stop - 7] = 250
    after = write_raster(
        tmp_path / "after.tif",
        after_arr[:, :235, :193],
        transform=from_origin(ORIGIN[0] + 7 * GSD, ORIGIN[1] - 5 * GSD, GSD, GSD),
    )
    summary = run(tmp_path, before, after)
    align = summary["alignment"]
    assert align["resampled"] is False and tuple(align["after_shift_pixels"]) == (7, 5)
    with rasterio.open(tmp_path / "change.tif") as ds:
        assert (ds.width, ds.height) == (193, 235)
        assert ds.transform == from_origin(ORIGIN[0] + 7 * GSD, ORIGIN[1] - 5 * GSD, GSD, GSD)
        arr = ds.read(1)
    expected = np.zeros((235, 193), dtype=np.uint8)
    expected[SQUARE[0].start - 5 : SQUARE[0].stop - 5, SQUARE[1].start - 7 : SQUARE[1].stop - 7] = 1
    np.testing.assert_array_equal(arr, expected)


def test_after_in_another_crs_is_warped_onto_before_grid(tmp_path: Path) -> None:
    before, after, _ = pair(tmp_path)
    warped = tmp_path / "after_4326.tif"
    with rasterio.open(after) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        dst_arr = np.zeros((3, h, w), dtype=np.uint8)
        reproject(
            src.read(),
            dst_arr,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            resampling=Resampling.bilinear,
            dst_nodata=0,
        )
    write_raster(warped, dst_arr, crs="EPSG:4326", transform=transform, nodata=0)
    summary = run(tmp_path, before, warped, vector=tmp_path / "c.gpkg")
    align = summary["alignment"]
    assert align["resampled"] is True and align["after_crs"] == "EPSG:4326"
    assert align["overlap_share_before"] > 0.95
    with rasterio.open(tmp_path / "change.tif") as ds, rasterio.open(before) as b:
        assert ds.crs == b.crs and ds.res == b.res
        col, row = ~b.transform @ (ds.transform.c, ds.transform.f)
        assert col == int(col) and row == int(row)  # the before grid, cropped
    gdf = gpd.read_file(tmp_path / "c.gpkg")
    found = gdf.union_all()
    x0, y1 = ORIGIN
    square = shapely.box(x0 + 60 * GSD, y1 - 140 * GSD, x0 + 110 * GSD, y1 - 100 * GSD)
    assert found.intersection(square).area / found.union(square).area > 0.85


def test_bad_pairs_are_refused(tmp_path: Path, change_bundle: Path) -> None:
    before, after, _ = pair(tmp_path)
    bundle = change_bundle
    far = write_raster(
        tmp_path / "far.tif", smooth_scene(50, 50), transform=from_origin(ORIGIN[0] + 10_000, ORIGIN[1], GSD, GSD)
    )
    four = write_raster(tmp_path / "four.tif", textured_scene(240, 200, bands=4))
    out = tmp_path / "out.tif"
    for args, message in [
        ([before, far], "do not overlap"),
        ([before, four], "the dates differ in bands"),
        ([before, tmp_path / "missing.tif"], "does not exist"),
    ]:
        r = cli_main("change", *args, "-o", out, "-m", bundle)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()
    r = cli_main("change", before, after, "-o", out, "-m", bundle, "--vector", tmp_path / "v.gpkg", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["outputs"]["vector"].endswith("v.gpkg") and summary["alignment"]["same_crs"]
    with rasterio.open(out) as ds:
        assert ds.read(1).max() <= 1 and ds.tags(1)["CLASS_1"] == "change"


@pytest.mark.parametrize("arch", ["tiny", "small", "base"])
def test_change_model_trains_at_every_size(arch: str) -> None:
    model = build_task_model("change", arch, in_chans=3, num_classes=2, dim=32, tokens=4).train()
    x = torch.randn(2, 6, 128, 128)  # 128 px: every stage (down to 1/32) at a quarter of 256 px's cost
    out = model(x)
    assert out.shape == (2, 2, 128, 128)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 128, 128))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
