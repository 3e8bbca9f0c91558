"""`change` with alpha bands, true and false, on the same grid and reprojected (issue 19, "Real files").

A 4-band uint8 GeoTIFF written with GDAL's default options has band 4 flagged as alpha. When it holds NIR
values it is data (a "false alpha"): it must be fed to the model, and a warp onto the earlier grid must add
an alpha band of its own for the area outside the image. A true alpha (0 / 255) masks pixels in both cases.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.warp import transform as transform_xy

from lemevit_geo.bundle import BundleConfig
from lemevit_geo.pipelines.inference.change import change
from lemevit_geo.settings import Engine, Tiling
from tests.conftest import GSD, ORIGIN, cli, cli_main, write_raster

H, W = 160, 144
SQUARE = (slice(60, 90), slice(50, 86))  # rows, cols changed in the later date
HOLE_BEFORE = (slice(0, 24), slice(0, 32))  # alpha 0 in the earlier date (true alpha only)
HOLE_AFTER = (slice(130, 160), slice(110, 144))  # alpha 0 in the later date (true alpha only)
CROP = 12  # rows and columns cut off the top left of the later date before it is reprojected


class Difference(torch.nn.Module):
    """Stand-in change model: change where the dates differ by more than half a standard deviation."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.bands = bands

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, : self.bands] - x[:, self.bands :]).abs().mean(dim=1, keepdim=True)
        return torch.cat([0.5 - d, d - 0.5], dim=1)


def config(bands: int) -> BundleConfig:
    return BundleConfig(
        task="change",
        arch="tiny",
        classes=["no change", "change"],
        bands=bands,
        mean=[128.0] * bands,
        std=[40.0] * bands,
        tile_size=64,
    )


def dates(true_alpha: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two 4-band uint8 dates. False alpha: band 4 is NIR and only it changes in the square. True alpha:
    band 4 is 0 / 255 with a hole in each date, and the visible bands change in the square."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    rgb = 128 + 50 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    nir = 120 + 60 * np.cos(xx / 19.0) * np.sin(yy / 27.0)
    before = np.stack([rgb, rgb, rgb, nir]).clip(1, 254).astype(np.uint8)
    after = before.copy()
    if true_alpha:
        before[3], after[3] = 255, 255
        before[3][HOLE_BEFORE], after[3][HOLE_AFTER] = 0, 0
        after[:3][:, SQUARE[0], SQUARE[1]] = 250
    else:
        after[3][SQUARE] = np.clip(after[3][SQUARE].astype(int) + 120, 0, 254).astype(np.uint8)
        after[3][after[3] == 255] = 254
    return before, after


def to_4326(tmp: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    """The later date, cropped by :data:`CROP` rows and columns at the top left (so part of the earlier grid
    lies outside it), reprojected to EPSG:4326 (nearest; outside the image: 0 in every band), 4 bands with
    default options (band 4 flagged alpha)."""
    data = data[:, CROP:, CROP:]
    origin = (ORIGIN[0] + CROP * GSD, ORIGIN[1] - CROP * GSD)
    path = write_raster(tmp / "after_crop.tif", data, transform=from_origin(*origin, GSD, GSD))
    out = tmp / "after_4326.tif"
    with rasterio.open(path) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        warped = np.zeros((4, h, w), dtype=np.uint8)
        reproject(
            data,
            warped,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            resampling=Resampling.nearest,
        )
    return write_raster(out, warped, crs="EPSG:4326", transform=transform, nodata=nodata)


def run(tmp: Path, before: Path, after: Path, bands: int) -> tuple[np.ndarray, dict, rasterio.Affine]:
    summary = change(
        before=before,
        after=after,
        output=tmp / "change.tif",
        model=(Difference(bands), config(bands)),
        engine=Engine(device="cpu", precision="fp32"),
        tiling=Tiling(overlap=16),
    )
    with rasterio.open(tmp / "change.tif") as ds:
        return ds.read(1), summary, ds.transform


def inside_after(out_transform: rasterio.Affine, shape: tuple[int, int], after: Path, margin: float) -> np.ndarray:
    """Output pixels whose centre lies inside the later image's extent by at least ``margin`` of its pixels
    (negative: outside by that much)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]] + 0.5
    xs, ys = out_transform * (cols.ravel(), rows.ravel())
    with rasterio.open(after) as src:
        lon, lat = transform_xy("EPSG:32632", src.crs, xs, ys)
        c, r = ~src.transform * (np.asarray(lon), np.asarray(lat))
        inside = (c >= margin) & (c <= src.width - margin) & (r >= margin) & (r <= src.height - margin)
    return inside.reshape(shape)


def shrink(region: tuple[slice, slice], by: int, at: tuple[int, int] = (0, 0)) -> tuple[slice, slice]:
    """``region`` of the earlier grid made smaller by ``by`` on each side (negative: larger), on an output grid
    whose origin is at row and column ``at`` of the earlier grid."""
    rows = slice(max(0, region[0].start + by - at[0]), region[0].stop - by - at[0])
    return rows, slice(max(0, region[1].start + by - at[1]), region[1].stop - by - at[1])


def origin_of(transform: rasterio.Affine) -> tuple[int, int]:
    """Row and column of an output grid's origin on the earlier grid."""
    return round((ORIGIN[1] - transform.f) / GSD), round((transform.c - ORIGIN[0]) / GSD)


@pytest.mark.parametrize("nodata", [None, 0], ids=["no-nodata", "nodata-0"])
@pytest.mark.parametrize("reprojected", [False, True], ids=["same-grid", "epsg4326"])
def test_false_alpha_is_read_and_warped_as_data(tmp_path: Path, reprojected: bool, nodata: int | None) -> None:
    """Band 4 is NIR: read as data, and warped as data (never as GDAL's source alpha). With a nodata value the
    mask comes from it (GDAL's order), and band 4 is data all the same."""
    before_arr, after_arr = dates(true_alpha=False)
    before = write_raster(tmp_path / "before.tif", before_arr, nodata=nodata)
    after = write_raster(tmp_path / "after.tif", after_arr, nodata=nodata)
    with rasterio.open(after) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # GDAL's default for 4-band uint8
    if reprojected:
        after = to_4326(tmp_path, after_arr, nodata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, summary, transform = run(tmp_path, before, after, bands=4)
    assert nodata is not None or any("flagged as alpha but holds values" in str(w.message) for w in caught)
    assert summary["alignment"]["resampled"] is reprojected
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[SQUARE] = 1  # only NIR changed: found only if band 4 is read as data
    if not reprojected:
        np.testing.assert_array_equal(out, expected)
        return
    # on the earlier grid: nodata outside the later image (the added alpha band), values inside
    assert (out[~inside_after(transform, out.shape, after, margin=-1.0)] == 255).all()
    assert (out[~inside_after(transform, out.shape, after, margin=-1.0)] == 255).any()
    inside = inside_after(transform, out.shape, after, margin=2.0)
    at = origin_of(transform)
    if nodata is not None:  # the reprojected image's corners outside the cropped date hold 0: nodata
        rows, cols = np.mgrid[: out.shape[0], : out.shape[1]] + np.array(at)[:, None, None]
        inside &= (rows >= CROP + 2) & (cols >= CROP + 2) & (rows < H - 2) & (cols < W - 2)
    assert (out[inside] != 255).all()
    assert (out[shrink(SQUARE, 2, at)] == 1).all()
    far = np.ones(out.shape, dtype=bool)
    far[shrink(SQUARE, -3, at)] = False
    far &= inside_after(transform, out.shape, after, margin=3.0)
    assert (out[far] == 0).mean() > 0.99


@pytest.mark.parametrize("reprojected", [False, True], ids=["same-grid", "epsg4326"])
def test_true_alpha_masks_on_both_grids(tmp_path: Path, reprojected: bool) -> None:
    before_arr, after_arr = dates(true_alpha=True)
    before = write_raster(tmp_path / "before.tif", before_arr)
    after = write_raster(tmp_path / "after.tif", after_arr)
    if reprojected:
        after = to_4326(tmp_path, after_arr)
    out, summary, transform = run(tmp_path, before, after, bands=3)
    assert summary["alignment"]["resampled"] is reprojected
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[SQUARE] = 1
    expected[HOLE_BEFORE] = expected[HOLE_AFTER] = 255
    if not reprojected:
        np.testing.assert_array_equal(out, expected)
        return
    assert (out[~inside_after(transform, out.shape, after, margin=-1.0)] == 255).all()
    at = origin_of(transform)
    assert (out[shrink(HOLE_BEFORE, 0, at)] == 255).all() and (out[shrink(HOLE_AFTER, 2, at)] == 255).all()
    assert (out[shrink(SQUARE, 2, at)] == 1).all()
    settled = np.ones(out.shape, dtype=bool)  # pixels 3 px or more from every edge of the holes and the square
    for region in (SQUARE, HOLE_BEFORE, HOLE_AFTER):
        settled[shrink(region, -3, at)] = False
    settled &= inside_after(transform, out.shape, after, margin=3.0)
    assert (out[settled] == 0).mean() > 0.99


def test_false_alpha_in_epsg4326_through_the_cli(tmp_path: Path) -> None:
    """The case as it was found: `change` with a random 4-band bundle, the later date in EPSG:4326."""
    before_arr, after_arr = dates(true_alpha=False)
    before = write_raster(tmp_path / "before.tif", before_arr)
    after = to_4326(tmp_path, after_arr)
    bundle = tmp_path / "c4.safetensors"
    cli("bundle", "init", "--task", "change", "--bands", "4", "--tile-size", "64", "-o", bundle)
    out = tmp_path / "change.tif"
    listing = sorted(p.name for p in tmp_path.iterdir())
    r = cli_main("change", before, after, "-o", out, "-m", bundle, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert all(line.startswith("warning: ") for line in r.stderr.strip().splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*listing, "change.tif", "change.tif.aux.xml"])
    with rasterio.open(out) as ds:
        arr, transform = ds.read(1), ds.transform
    assert (arr[~inside_after(transform, arr.shape, after, margin=-1.0)] == 255).all()
    assert (arr[inside_after(transform, arr.shape, after, margin=2.0)] != 255).all()
